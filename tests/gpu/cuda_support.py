"""What the GPU tests share: the device under test, the skip rule and the comparisons.

Every test in ``tests/gpu`` is marked ``gpu`` and skipped, with the reason shown by ``pytest -ra``,
where ``torch.cuda.is_available()`` is False. ``make gpu-check`` runs them and writes
``gpu-check.json`` (``tests/gpu/run_gpu_check.py``).

``MEGA_GPU_TEST_DEVICE=cpu`` runs the same tests with the CPU as the "device" (a dry run of the
test code on a machine without CUDA: comparisons are then CPU against CPU, so it checks the
tests, not the GPU); the fairseq command-line checks stay skipped there (``--fp16`` needs CUDA).
"""
import os

import pytest
import torch

#: the device the tests compare against the CPU
DEVICE = torch.device(os.environ.get("MEGA_GPU_TEST_DEVICE", "cuda"))
ON_CUDA = DEVICE.type == "cuda"
AVAILABLE = torch.cuda.is_available() if ON_CUDA else True
SKIP_REASON = "no CUDA device: torch.cuda.is_available() is False (torch {}, built for CUDA {})".format(
    torch.__version__, torch.version.cuda)

#: module-level marks of every GPU test file
GPU_MARKS = [pytest.mark.gpu, pytest.mark.skipif(not AVAILABLE, reason=SKIP_REASON)]
#: fairseq's --fp16/--bf16 trainers need a real CUDA device
requires_real_cuda = pytest.mark.skipif(not (ON_CUDA and AVAILABLE), reason=SKIP_REASON)

#: float32 on the device against float32 on the CPU: max |device - cpu| / max |cpu|
FLOAT32_RELATIVE_TOLERANCE = 1e-5


@pytest.fixture(autouse=True, scope="session")
def exact_float32_matmuls():
    """TF32 off: float32 matmuls on Ampere+ GPUs must be float32 to compare with the CPU."""
    if not torch.cuda.is_available():
        yield
        return
    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """``max |value - reference| / max |reference|`` in float64 on the CPU."""
    value, reference = value.detach().cpu().double(), reference.detach().cpu().double()
    return ((value - reference).abs().max() / reference.abs().max().clamp_min(1e-30)).item()


def to_device(value, device=DEVICE):
    """``value`` (tensor, or nested dict/list/tuple of them) moved to ``device``."""
    if torch.is_tensor(value):
        return value.to(device)
    if isinstance(value, dict):
        return {key: to_device(item, device) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(item, device) for item in value)
    return value
