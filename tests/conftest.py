"""pytest wiring only: shared fixtures and the ``e2e`` marker (helpers live in ``helpers.py``).

Tests under ``tests/e2e/`` and ``tests/stack/`` run fairseq's command-line tools or the install
script in subprocesses; they are marked ``e2e`` here, so ``pytest -m "not e2e"`` (``make
test-fast``) is the quick unit loop. A test elsewhere that starts a subprocess marks itself with
``@pytest.mark.e2e``.
"""
from pathlib import Path

import pytest
import torch

from helpers import PLUGIN_DIR, REFERENCE_DIR

E2E_FOLDERS = ("e2e", "stack")
TESTS_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        folder = Path(str(item.fspath)).resolve().relative_to(TESTS_DIR).parts[0]
        if folder in E2E_FOLDERS:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def plugin_dir() -> Path:
    return PLUGIN_DIR


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return REFERENCE_DIR


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch uses one thread for the module's tests, then the previous count again."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
