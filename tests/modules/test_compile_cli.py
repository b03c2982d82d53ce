"""``--compile-layers`` from the command line: ``fairseq-train`` compiles every Mega block
(inductor, C++ on CPU) and trains with the same per-update losses as eager (dropout 0: compiled
random numbers differ from eager ones by design)."""

import pytest

import mega_fairseq
from helpers import run_cli, train_losses as losses, write_lm_corpus

TINY_LM = ["--task", "language_modeling", "--arch", "mega_lm", "--decoder-layers", "1", "--decoder-embed-dim", "16",
           "--decoder-hidden-dim", "24", "--decoder-z-dim", "8", "--decoder-n-dim", "4", "--decoder-ffn-embed-dim",
           "24", "--decoder-chunk-size", "8", "--tokens-per-sample", "32", "--sample-break-mode", "none",
           "--dropout", "0", "--criterion", "cross_entropy", "--optimizer", "adam", "--lr", "0.005",
           "--batch-size", "4", "--max-update", "3", "--seed", "5", "--cpu", "--no-save", "--disable-validation",
           "--log-format", "simple", "--log-interval", "1", "--no-progress-bar", "--num-workers", "0",
           "--user-dir", mega_fairseq.USER_DIR]
TOLERANCE = 1e-4  # losses printed with 3 decimals


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("compile_cli")
    raw = write_lm_corpus(root / "raw")
    run_cli("fairseq-preprocess", "--only-source", "--trainpref", raw / "train.txt", "--validpref", raw / "valid.txt",
            "--destdir", root / "bin", "--workers", "1")
    return root / "bin"


@pytest.mark.e2e
def test_compile_layers_trains_with_the_same_losses_as_eager(data):
    eager = run_cli("fairseq-train", data, *TINY_LM)
    compiled = run_cli("fairseq-train", data, *TINY_LM, "--compile-layers")
    eager_losses = losses(eager.stdout + eager.stderr)
    compiled_log = compiled.stdout + compiled.stderr
    compiled_losses = losses(compiled_log)
    assert "compile_layers=True" in compiled_log.replace("'compile_layers': True", "compile_layers=True")
    assert len(eager_losses) == len(compiled_losses) == 3, (eager_losses, compiled_losses)
    for a, b in zip(compiled_losses, eager_losses):
        assert abs(a - b) <= TOLERANCE, (compiled_losses, eager_losses)
