"""Shared pytest helpers: run fairseq's command-line tools as a user would, and where things are."""
import os
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES_DIR = Path(__file__).resolve().parent / "fixtures"
REFERENCE_DIR = FIXTURES_DIR / "reference"
PLUGIN_DIR = REPO_ROOT / "mega_fairseq"
BIN_DIR = Path(sys.executable).parent


class CliError(AssertionError):
    pass


def run_cli(tool: str, *args, stdin: str = None, cwd=None, env_extra=None, timeout=600, check=True):
    """Run ``tool`` (e.g. ``fairseq-train``) from this interpreter's environment.

    Returns the CompletedProcess (text mode, stdout and stderr captured). On a non-zero exit it
    fails with the command line and the tail of both streams, unless ``check=False``.
    """
    exe = BIN_DIR / tool
    cmd: List[str] = [str(exe) if exe.exists() else tool, *[str(a) for a in args]]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    if env_extra:
        env.update(env_extra)
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise CliError(f"{' '.join(cmd)}\nexit {proc.returncode}\n--- stdout (tail)\n"
                       f"{proc.stdout[-4000:]}\n--- stderr (tail)\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="session")
def plugin_dir() -> Path:
    return PLUGIN_DIR


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return REFERENCE_DIR
