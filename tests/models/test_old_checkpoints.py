"""Checkpoints written by the plugin before the settings/decoder redesign still load and give the
numbers that code computed (tests/fixtures/main_c5153e8/README.md)."""
import pytest
import torch
from fairseq import checkpoint_utils

import mega_fairseq  # noqa: F401  (registers the models)
from helpers import FIXTURES_DIR, max_diff

OLD = FIXTURES_DIR / "main_c5153e8"


@pytest.fixture(scope="module")
def expected():
    return torch.load(OLD / "expected_outputs.pt", weights_only=True)


def load(kind, **overrides):
    folder = OLD / kind
    models, _, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(folder / "checkpoint.pt")], arg_overrides={"data": str(folder), **overrides})
    return models[0].eval(), task


@torch.no_grad()
def test_old_translation_checkpoint_gives_the_old_outputs(expected):
    model, _ = load("mt", source_lang="src", target_lang="tgt")
    case = expected["mt"]
    logits, extra = model(case["src_tokens"], case["src_lengths"], case["prev_output_tokens"])
    assert max_diff(logits, case["logits"]) < 1e-5
    assert max_diff(extra["attn"][0], case["attn"]) < 1e-6
    encoder_out = model.encoder(case["src_tokens"], case["src_lengths"])
    state, steps = {}, []
    for t in range(case["incremental_logits"].size(1)):
        steps.append(model.decoder(case["prev_output_tokens"][:, : t + 1], encoder_out=encoder_out,
                                   incremental_state=state)[0])
    assert max_diff(torch.cat(steps, 1), case["incremental_logits"]) < 1e-5


@torch.no_grad()
def test_old_language_model_checkpoint_gives_the_old_outputs(expected):
    model, _ = load("lm")
    case = expected["lm"]
    assert max_diff(model(case["tokens"])[0], case["logits"]) < 1e-5
    state, steps = {}, []
    for t in range(case["incremental_logits"].size(1)):
        steps.append(model.decoder(case["tokens"][:, : t + 1], incremental_state=state)[0])
    assert max_diff(torch.cat(steps, 1), case["incremental_logits"]) < 1e-5
