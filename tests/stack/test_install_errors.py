"""tools/install.sh stops with one clear message on bad set-ups (before touching .venv)."""
import os
import subprocess

from helpers import REPO_ROOT


def test_unsupported_python_is_refused_with_what_to_do(tmp_path):
    fake = tmp_path / "python3.9"
    fake.write_text("#!/bin/sh\necho 3.9\n")
    fake.chmod(0o755)
    proc = subprocess.run(["bash", str(REPO_ROOT / "tools" / "install.sh")], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": str(fake)})
    assert proc.returncode == 1
    assert "Python 3.9 is not supported" in proc.stderr
    assert "pip install --no-deps -e ." in proc.stderr  # the way forward on an older Python


def test_missing_python_is_reported(tmp_path):
    proc = subprocess.run(["bash", str(REPO_ROOT / "tools" / "install.sh")], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": str(tmp_path / "no-such-python")})
    assert proc.returncode == 1
    assert "not found" in proc.stderr and "Python 3.11" in proc.stderr


def test_a_cached_sdist_with_the_wrong_sha256_is_deleted_and_refused(tmp_path):
    # checked before anything else happens (even when .venv is up to date), so a tampered or truncated
    # download is never built
    sdist = tmp_path / "sdist" / "fairseq-0.12.2.tar.gz"
    sdist.parent.mkdir()
    sdist.write_bytes(b"not the fairseq sdist")
    proc = subprocess.run(["bash", str(REPO_ROOT / "tools" / "install.sh")], capture_output=True, text=True,
                          env={**os.environ, "MEGA_FAIRSEQ_CACHE": str(tmp_path)})
    assert proc.returncode == 1
    assert "expected 34f1b18426bf3844714534162f065ab733e049597476daa35fffb4d06a92b524" in proc.stderr
    assert "re-run make install to download it again" in proc.stderr
    assert not sdist.exists()
