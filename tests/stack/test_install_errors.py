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
