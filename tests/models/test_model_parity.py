"""The ``mega`` model reproduces the official MegaModel (reference fixtures), batch-invariantly."""
import pytest
import torch

from helpers import build_fixture_model, incremental_logits, load_fixture
from helpers import max_diff

TOL = 1e-5
FIXTURES = ["mega_model_tiny", "mega_model_tiny_f64"]



@pytest.fixture(scope="module", params=FIXTURES)
def case(request):
    fixture = load_fixture(request.param)
    model = build_fixture_model(fixture)
    inputs = fixture["inputs"]
    with torch.no_grad():
        encoder_out = model.encoder(inputs["src_tokens"], inputs["src_lengths"], return_all_hiddens=True)
        logits, extra = model(inputs["src_tokens"], inputs["src_lengths"], inputs["prev_output_tokens"])
        features, _ = model.decoder(inputs["prev_output_tokens"], encoder_out=encoder_out, features_only=True)
        lprobs = model.get_normalized_probs((logits, extra), log_probs=True)
        inc = incremental_logits(model, encoder_out, inputs["prev_output_tokens"])
    return dict(fixture=fixture, model=model, encoder_out=encoder_out, logits=logits, extra=extra,
                features=features, lprobs=lprobs, incremental=inc)


def test_encoder_outputs_match_official(case):
    official = case["fixture"]["outputs"]["encoder"]
    ours = case["encoder_out"]
    assert max_diff(ours["encoder_out"][0], official["encoder_out"]) < TOL
    assert torch.equal(ours["encoder_padding_mask"][0], official["encoder_padding_mask"])
    assert max_diff(ours["encoder_embedding"][0], official["encoder_embedding"]) < TOL
    assert len(ours["encoder_states"]) == len(official["encoder_states"])
    for mine, theirs in zip(ours["encoder_states"], official["encoder_states"]):
        # the official layers leave values at pad positions (bug 12); compare real positions
        real = ~official["encoder_padding_mask"].t()
        assert max_diff(mine[real], theirs[real]) < TOL


def unpadded_source_rows(fixture):
    return [b for b, row in enumerate(fixture["per_row"]) if row["src_tokens"].size(1) == fixture["inputs"]["src_tokens"].size(1)]


def test_rows_without_source_padding_match_official_batch(case):
    fixture, official = case["fixture"], case["fixture"]["outputs"]
    rows = unpadded_source_rows(fixture)
    assert rows, "the fixture should have a row without source padding"
    for b in rows:
        assert max_diff(case["logits"][b], official["logits"][b]) < TOL
        assert max_diff(case["lprobs"][b], official["lprobs"][b]) < TOL
        assert max_diff(case["features"][b], official["decoder_features"][b]) < TOL
        assert max_diff(case["extra"]["attn"][0][b], official["decoder_attn"][b]) < TOL
        assert max_diff(case["incremental"][b], official["incremental_logits"][b]) < TOL
        for mine, theirs in zip(case["extra"]["inner_states"], official["decoder_inner_states"]):
            real = fixture["inputs"]["prev_output_tokens"][b].ne(1)
            assert max_diff(mine[:, b][real], theirs[:, b][real]) < TOL


def test_every_batched_row_matches_its_unpadded_official_run(case):
    """Bug 8: official left-padded rows depend on their padding; ours must equal per_row."""
    for b, row in enumerate(case["fixture"]["per_row"]):
        tgt_len, src_len = row["prev_output_tokens"].size(1), row["src_tokens"].size(1)
        assert max_diff(case["logits"][b, :tgt_len], row["logits"][0]) < TOL, b
        assert max_diff(case["incremental"][b, :tgt_len], row["incremental_logits"][0]) < TOL, b
        # our batched cross attention over the row's real (right-most) source positions
        attn = case["extra"]["attn"][0][b, :tgt_len]
        assert max_diff(attn[:, -src_len:], row["decoder_attn"][0]) < TOL, b
        if src_len < attn.size(1):
            assert attn[:, :-src_len].abs().max().item() == 0.0, "weight on source padding"


def test_single_unpadded_rows_match_official(case):
    model = case["model"]
    for row in case["fixture"]["per_row"]:
        with torch.no_grad():
            logits, extra = model(row["src_tokens"], row["src_lengths"], row["prev_output_tokens"])
            enc = model.encoder(row["src_tokens"], row["src_lengths"])
            inc = incremental_logits(model, enc, row["prev_output_tokens"])
        assert max_diff(logits, row["logits"]) < TOL
        assert max_diff(extra["attn"][0], row["decoder_attn"]) < TOL
        assert max_diff(inc, row["incremental_logits"]) < TOL


def test_padded_target_positions_give_zero_logits(case):
    pads = case["fixture"]["inputs"]["prev_output_tokens"].eq(1)
    assert pads.any()
    assert case["logits"][pads].abs().max().item() == 0.0


def test_incremental_decoding_equals_full_forward(case):
    fixture = case["fixture"]
    real = fixture["inputs"]["prev_output_tokens"].ne(1)
    assert max_diff(case["incremental"][real], case["logits"][real]) < TOL
