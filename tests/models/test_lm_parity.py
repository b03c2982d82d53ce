"""mega_lm reproduces the official MegaLanguageModel outputs (fixtures mega_lm_tiny[_f64].pt).

Checked: the full forward, incremental decoding under fairseq's generator convention (the whole
prefix at every step; the official decoder took only the new token, which is what the fixture's
``incremental_logits`` record) and each unpadded row (``per_row``).
"""
import argparse
from pathlib import Path

import pytest
import torch
from fairseq.data import Dictionary

from mega_fairseq.models.mega_lm import MegaLanguageModel

from helpers import REFERENCE_DIR as REFERENCE
TOLERANCE = 1e-5


def load_fixture(name: str):
    return torch.load(REFERENCE / name, weights_only=True)


def fixture_dictionary(fixture) -> Dictionary:
    dictionary = Dictionary()
    spec = fixture["dictionary"]
    for symbol, count in zip(spec["symbols"][spec["nspecial"]:], spec["counts"][spec["nspecial"]:]):
        dictionary.add_symbol(symbol, n=count)
    assert dictionary.pad() == spec["pad"] and dictionary.eos() == spec["eos"]
    return dictionary


class DictionaryTask:
    def __init__(self, dictionary):
        self.source_dictionary = dictionary
        self.target_dictionary = dictionary


def fixture_model(fixture) -> MegaLanguageModel:
    model = MegaLanguageModel.build_model(argparse.Namespace(**fixture["config"]),
                                          DictionaryTask(fixture_dictionary(fixture)))
    model.load_state_dict(fixture["state_dict"], strict=True)
    return model.to(fixture["state_dict"]["decoder.embed_tokens.weight"].dtype).eval()


def decode_with_prefixes(model, tokens):
    """Generator convention: feed tokens[:, :t+1] at step t with one incremental state."""
    state = {}
    steps = [model.decoder(tokens[:, :t + 1], encoder_out=None, incremental_state=state)[0]
             for t in range(tokens.size(1))]
    return torch.cat(steps, dim=1)


@pytest.fixture(scope="module", params=["mega_lm_tiny.pt", "mega_lm_tiny_f64.pt"])
def reference(request):
    fixture = load_fixture(request.param)
    return fixture, fixture_model(fixture)


def test_state_dict_names_and_shapes_match_official(reference):
    fixture, model = reference
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    official = {k: tuple(v.shape) for k, v in fixture["state_dict"].items()}
    assert ours == official


def test_full_forward_matches_official(reference):
    fixture, model = reference
    with torch.no_grad():
        logits, extra = model(fixture["inputs"]["src_tokens"], fixture["inputs"]["src_lengths"])
    assert (logits - fixture["outputs"]["logits"]).abs().max().item() < TOLERANCE
    for ours, official in zip(extra["inner_states"], fixture["outputs"]["inner_states"]):
        assert (ours - official).abs().max().item() < TOLERANCE


def test_normalized_probs_match_official(reference):
    fixture, model = reference
    with torch.no_grad():
        out = model(fixture["inputs"]["src_tokens"])
        lprobs = model.get_normalized_probs(out, log_probs=True)
    assert (lprobs - fixture["outputs"]["lprobs"]).abs().max().item() < TOLERANCE


def test_incremental_prefix_convention_matches_official_incremental_logits(reference):
    fixture, model = reference
    with torch.no_grad():
        logits = decode_with_prefixes(model, fixture["inputs"]["src_tokens"])
    assert (logits - fixture["outputs"]["incremental_logits"]).abs().max().item() < TOLERANCE


def test_each_unpadded_row_matches_official_per_row(reference):
    fixture, model = reference
    for row in fixture["per_row"]:
        with torch.no_grad():
            full = model(row["src_tokens"], row["src_lengths"])[0]
            incremental = decode_with_prefixes(model, row["src_tokens"])
        assert (full - row["logits"]).abs().max().item() < TOLERANCE
        assert (incremental - row["incremental_logits"]).abs().max().item() < TOLERANCE


def test_batched_real_positions_equal_per_row(reference):
    fixture, model = reference
    with torch.no_grad():
        batched = model(fixture["inputs"]["src_tokens"])[0]
    for b, row in enumerate(fixture["per_row"]):
        length = row["src_tokens"].size(1)
        assert (batched[b, :length] - row["logits"][0]).abs().max().item() < TOLERANCE


def test_official_generator_errors_are_gone():
    """The fixture records the official decoder crashing on the generator's calls (bug 5)."""
    fixture = load_fixture("mega_lm_tiny.pt")
    assert "TypeError" in fixture["outputs"]["encoder_out_kwarg_error"]
    assert "Error" in fixture["outputs"]["prefix_convention_error"]
    model = fixture_model(fixture)
    tokens = fixture["inputs"]["src_tokens"][:1, :3]
    with torch.no_grad():
        state = {}
        model.decoder(tokens[:, :1], encoder_out={"encoder_out": []}, incremental_state=state)
        second = model.decoder(tokens[:, :2], encoder_out=None, incremental_state=state)[0]
    assert second.shape == (1, 1, len(fixture["dictionary"]["symbols"]))
