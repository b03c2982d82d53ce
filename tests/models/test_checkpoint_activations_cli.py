"""``--checkpoint-activations`` from the command line: ``fairseq-train`` of ``mega_lm`` with dropout
gives exactly the per-update losses of the same run without it (``mega`` reads the same field
through the same decoder/encoder code: ``test_checkpoint_activations.py`` checks both in-process)."""

import pytest

from helpers import run_cli, train_losses as losses
from modules.test_compile_cli import TINY_LM, data as lm_data  # noqa: F401 (lm_data: fixture)

WITH_DROPOUT = ["--dropout", "0.1", "--attention-dropout", "0.1", "--hidden-dropout", "0.1"]


def train_both(*args):
    plain = run_cli("fairseq-train", *args)
    checkpointed = run_cli("fairseq-train", *args, "--checkpoint-activations")
    log = checkpointed.stdout + checkpointed.stderr
    assert "'checkpoint_activations': True" in log or "checkpoint_activations=True" in log
    return losses(plain.stdout + plain.stderr), losses(log)


@pytest.mark.e2e
def test_language_model_trains_identically_with_checkpointed_activations(lm_data):  # noqa: F811
    plain, checkpointed = train_both(lm_data, *TINY_LM, *WITH_DROPOUT)
    assert len(plain) == 3 and plain == checkpointed, (plain, checkpointed)
