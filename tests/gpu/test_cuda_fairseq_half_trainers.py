"""fairseq's own half-precision trainers on CUDA train ``mega_lm``: ``--fp16`` (half model, float32
master weights, dynamic loss scale), ``--bf16`` and ``--amp`` (autocast) give finite per-update
losses, and the loss after ``UPDATES`` updates is within ``LOSS_TOLERANCE`` (relative) of the
float32 run's on the same tiny corpus, same seed."""
import math
import re

import pytest

import mega_fairseq
from gpu.cuda_support import GPU_MARKS, requires_real_cuda
from helpers import run_cli, write_lm_corpus

pytestmark = GPU_MARKS + [requires_real_cuda, pytest.mark.e2e]
UPDATES = 30
LOSS_TOLERANCE = 0.1
TINY_LM = ["--task", "language_modeling", "--arch", "mega_lm", "--decoder-layers", "2", "--decoder-embed-dim", "64",
           "--decoder-hidden-dim", "128", "--decoder-z-dim", "32", "--decoder-n-dim", "8", "--decoder-ffn-embed-dim",
           "128", "--decoder-chunk-size", "32", "--tokens-per-sample", "128", "--sample-break-mode", "none",
           "--dropout", "0", "--criterion", "cross_entropy", "--optimizer", "adam", "--lr", "0.003",
           "--batch-size", "8", "--max-update", str(UPDATES), "--seed", "5", "--no-save", "--disable-validation",
           "--log-format", "simple", "--log-interval", "1", "--no-progress-bar", "--num-workers", "0",
           "--user-dir", mega_fairseq.USER_DIR]


def losses(log: str):
    return [float(x) for x in re.findall(r"train_inner \|.* loss=([0-9.]+|nan|inf),", log)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("half_trainers")
    raw = write_lm_corpus(root / "raw", sizes=(("train", 2000), ("valid", 30), ("test", 30)))
    run_cli("fairseq-preprocess", "--only-source", "--trainpref", raw / "train.txt", "--validpref", raw / "valid.txt",
            "--destdir", root / "bin", "--workers", "1")
    return root / "bin"


@pytest.fixture(scope="module")
def float32_losses(data):
    proc = run_cli("fairseq-train", data, *TINY_LM)
    values = losses(proc.stdout + proc.stderr)
    assert len(values) == UPDATES and values[-1] < 0.7 * values[0], values
    return values


@pytest.mark.parametrize("flags", [["--fp16"], ["--bf16"], ["--amp"], ["--memory-efficient-fp16"]],
                         ids=["fp16", "bf16", "amp", "memory_efficient_fp16"])
def test_fairseq_half_trainer_ends_near_float32(data, float32_losses, flags):
    proc = run_cli("fairseq-train", data, *TINY_LM, *flags)
    values = losses(proc.stdout + proc.stderr)
    # fp16 may skip a first update or two while the loss scale settles ("overflow detected")
    assert UPDATES - 3 <= len(values) <= UPDATES, values
    assert all(math.isfinite(v) for v in values), values
    assert abs(values[-1] - float32_losses[-1]) <= LOSS_TOLERANCE * float32_losses[-1], (values, float32_losses)
