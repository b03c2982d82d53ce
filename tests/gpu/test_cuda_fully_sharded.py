"""``--ddp-backend fully_sharded`` (fairseq's sharded data parallel, from fairscale) trains ``mega``
on CUDA with the per-update losses of the default DDP backend.

Needs fairscale (``pip install --no-deps fairscale==0.4.13``: pure Python, requires only
torch >= 1.8 and numpy). It cannot run on CPU: fairscale 0.4.13's FullyShardedDataParallel puts
its compute device on CUDA (``_get_default_cuda_device``, ``validate_process_group``) and
fairseq's wrapper passes no other device ("Torch not compiled with CUDA enabled" on a CPU build).
"""
import importlib.util

import pytest

from e2e.test_translation_distributed import MODEL, data, losses  # noqa: F401 (data: fixture)
from gpu.cuda_support import GPU_MARKS, requires_real_cuda
from helpers import run_cli

HAS_FAIRSCALE = importlib.util.find_spec("fairscale") is not None
pytestmark = GPU_MARKS + [requires_real_cuda, pytest.mark.e2e, pytest.mark.skipif(
    not HAS_FAIRSCALE, reason="fairscale is not installed (pip install --no-deps fairscale==0.4.13)")]
ON_GPU = [arg for arg in MODEL if arg != "--cpu"]
TOLERANCE = 2e-3


def test_fully_sharded_trains_mega_like_the_default_backend(data):  # noqa: F811
    default_run = run_cli("fairseq-train", data, *ON_GPU)
    default = losses(default_run.stdout + default_run.stderr)
    sharded_run = run_cli("fairseq-train", data, *ON_GPU, "--ddp-backend", "fully_sharded")
    sharded = losses(sharded_run.stdout + sharded_run.stderr)
    assert "FullyShardedDataParallel" in sharded_run.stdout + sharded_run.stderr
    assert len(sharded) == len(default) == 6, (sharded, default)
    for a, b in zip(sharded, default):
        assert abs(a - b) <= TOLERANCE, (sharded, default)
