"""Parity with the official implementation: the attention and layer fixtures.

Each fixture stores the official constructor config, a state_dict, inputs and the official
outputs. We load the state_dict with strict=True and compare at 1e-5 (float32 and the f64 twins).
"""

import argparse
from pathlib import Path

import pytest
import torch

from mega_fairseq.modules import MegaDecoderLayer, MegaEncoderLayer, MovingAverageGatedAttention

from helpers import REFERENCE_DIR as REFERENCE
from helpers import max_diff
TOL = 1e-5
SUFFIXES = ["", "_f64"]


def load(name):
    return torch.load(REFERENCE / "{}.pt".format(name), weights_only=True)


def prepared(module, fixture):
    module.load_state_dict(fixture["state_dict"], strict=True)
    if fixture["dtype"] == "float64":
        module.double()
    return module.eval()



@pytest.mark.parametrize("suffix", SUFFIXES)
def test_mega_attention_causal(suffix):
    fixture = load("mega_attention_causal" + suffix)
    module = prepared(MovingAverageGatedAttention(**fixture["config"]), fixture)
    x, attn_mask = fixture["inputs"]["x"], fixture["inputs"]["attn_mask"]
    expected = fixture["outputs"]
    with torch.no_grad():
        out, weights = module(x, attn_mask=attn_mask, need_weights=True)
        assert out.dtype == x.dtype
        assert max_diff(out, expected["full"]) < TOL
        assert max_diff(weights, expected["attn_weights"]) < TOL

        scores, values = module(x, attn_mask=attn_mask, before_attn_fn=True)
        finite = torch.isfinite(expected["before_attn_fn_scores"])
        assert max_diff(scores[finite], expected["before_attn_fn_scores"][finite]) < TOL
        assert max_diff(values, expected["before_attn_fn_v"]) < TOL

        state, steps, step_weights = {}, [], []
        for t in range(x.size(0)):
            step_out, step_w = module(x[t : t + 1], incremental_state=state, need_weights=True)
            steps.append(step_out)
            step_weights.append(step_w)
    assert max_diff(torch.cat(steps), expected["incremental"]) < TOL
    for ours, official in zip(step_weights, expected["incremental_attn_weights_per_step"]):
        assert ours.shape == official.shape
        assert max_diff(ours, official) < TOL
    # the cached keys/values equal the official buffers
    buffers = {key.split("|")[0]: value for key, value in expected["incremental_state_final"].items()}
    official_attn = buffers["<root>"]
    ours = module._get_input_buffer(state)
    assert max_diff(ours["prev_key"], official_attn["prev_key"]) < TOL
    assert max_diff(ours["prev_value"], official_attn["prev_value"]) < TOL


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_mega_encoder_layer(suffix):
    fixture = load("mega_encoder_layer" + suffix)
    layer = prepared(MegaEncoderLayer(argparse.Namespace(**fixture["config"])), fixture)
    with torch.no_grad():
        out = layer(fixture["inputs"]["x"], fixture["inputs"]["encoder_padding_mask"])
    assert max_diff(out, fixture["outputs"]["full"]) < TOL


def run_decoder(layer, inputs):
    """Full forward and one-token incremental decoding, as the fixture recorded them."""
    x, enc, enc_mask = inputs["x"], inputs["encoder_out"], inputs["encoder_padding_mask"]
    with torch.no_grad():
        full, cross, _ = layer(x, enc, enc_mask, None, attn_mask=inputs["attn_mask"], need_attn=True)
        state, steps, step_cross = {}, [], []
        for t in range(x.size(0)):
            out, attn, _ = layer(x[t : t + 1], enc, enc_mask, state, need_attn=True)
            steps.append(out)
            step_cross.append(attn)
    return full, cross, torch.cat(steps), torch.cat(step_cross, dim=1)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_mega_decoder_layer_official_positions(suffix):
    """With the official raw source positions every row matches, padded rows included."""
    fixture = load("mega_decoder_layer" + suffix)
    layer = prepared(MegaDecoderLayer(argparse.Namespace(**fixture["config"])), fixture)
    layer.cross_attn.padding_invariant = False
    full, cross, incremental, incremental_cross = run_decoder(layer, fixture["inputs"])
    expected = fixture["outputs"]
    assert max_diff(full, expected["full"]) < TOL
    assert max_diff(cross, expected["cross_attn_weights"]) < TOL
    assert max_diff(incremental, expected["incremental"]) < TOL
    assert max_diff(incremental_cross, expected["incremental_cross_attn_weights"]) < TOL


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_mega_decoder_layer_padding_invariant(suffix):
    """The default (padding-invariant) layer matches the official rows whose source has no padding."""
    fixture = load("mega_decoder_layer" + suffix)
    layer = prepared(MegaDecoderLayer(argparse.Namespace(**fixture["config"])), fixture)
    assert layer.cross_attn.padding_invariant
    full, cross, incremental, incremental_cross = run_decoder(layer, fixture["inputs"])
    expected = fixture["outputs"]
    unpadded = ~fixture["inputs"]["encoder_padding_mask"].any(dim=1)
    assert unpadded.any() and not unpadded.all()
    rows = unpadded.nonzero().flatten()
    assert max_diff(full[:, rows], expected["full"][:, rows]) < TOL
    assert max_diff(cross[rows], expected["cross_attn_weights"][rows]) < TOL
    assert max_diff(incremental[:, rows], expected["incremental"][:, rows]) < TOL
    assert max_diff(incremental_cross[rows], expected["incremental_cross_attn_weights"][rows]) < TOL
    # and incremental equals our own full forward on every row
    assert max_diff(incremental, full) < TOL
