"""Bad input gives one clear error naming the argument and the allowed values."""

import argparse

import pytest
import torch

from mega_fairseq.modules import (
    GatedCrossAttention,
    MegaDecoderLayer,
    MovingAverageGatedAttention,
    NormalizedFeedForwardNetwork,
    SequenceNorm,
    get_activation_fn,
)

D, Z, H, N = 8, 4, 12, 2


def test_wrong_input_width():
    module = MovingAverageGatedAttention(D, Z, H, N).eval()
    with pytest.raises(ValueError, match=r"embed_dim=8.*\(5, 2, 6\)"):
        module(torch.randn(5, 2, 6))
    with pytest.raises(ValueError, match=r"embed_dim"):
        module(torch.randn(5, D))
    cross = GatedCrossAttention(D, Z).eval()
    with pytest.raises(ValueError, match=r"query.*embed_dim=8"):
        cross(torch.randn(3, 2, 7), torch.randn(4, 2, D), None)
    with pytest.raises(ValueError, match=r"key must be Src x Batch x D"):
        cross(torch.randn(3, 2, D), torch.randn(4, 2, 5), None)
    nffn = NormalizedFeedForwardNetwork(D, 10)
    with pytest.raises(ValueError, match=r"embed_dim"):
        nffn(torch.randn(3, 2, 9))


def test_wrong_padding_mask_shape():
    module = MovingAverageGatedAttention(D, Z, H, N, bidirectional=True).eval()
    with pytest.raises(ValueError, match=r"padding_mask must be Batch x Time = \(2, 5\)"):
        module(torch.randn(5, 2, D), padding_mask=torch.zeros(5, 2, dtype=torch.bool))


def test_incremental_call_on_bidirectional_module():
    module = MovingAverageGatedAttention(D, Z, H, N, bidirectional=True).eval()
    with pytest.raises(ValueError, match=r"incremental_state.*bidirectional=True.*allowed"):
        module(torch.randn(1, 2, D), incremental_state={})


def test_sequence_longer_than_simple_bias():
    module = MovingAverageGatedAttention(D, Z, H, N, max_positions=6).eval()
    with pytest.raises(ValueError, match=r"sequence length 7 exceeds max_positions=6.*allowed lengths: <= 6"):
        module(torch.randn(7, 1, D))
    # incremental decoding past the table is refused the same way
    state = {}
    with torch.no_grad():
        module(torch.randn(6, 1, D), incremental_state=state)
        with pytest.raises(ValueError, match=r"max_positions=6"):
            module(torch.randn(1, 1, D), incremental_state=state)
    # with chunking the bias is sized by the chunk, so long sequences are fine
    chunked = MovingAverageGatedAttention(D, Z, H, N, chunk_size=4, max_positions=6).eval()
    with torch.no_grad():
        out, _ = chunked(torch.randn(15, 1, D))
    assert out.shape == (15, 1, D)
    cross = GatedCrossAttention(D, Z, max_positions=5).eval()
    with pytest.raises(ValueError, match=r"exceeds max_positions=5"):
        cross(torch.randn(3, 1, D), torch.randn(6, 1, D), None)


@pytest.mark.parametrize("norm_type", ["layer_norm", "groupnorm", ""])
def test_unknown_norm_type(norm_type):
    with pytest.raises(ValueError, match=r"norm_type=.*allowed values: layernorm, scalenorm, rmsnorm, batchnorm, syncbatchnorm"):
        SequenceNorm(norm_type, D)
    with pytest.raises(ValueError, match=r"norm_type="):
        MovingAverageGatedAttention(D, Z, H, N, norm_type=norm_type)


def test_unknown_activation():
    with pytest.raises(ValueError, match=r"activation='swishy'.*allowed values: silu, relu2, laplace, relu"):
        get_activation_fn("swishy")
    with pytest.raises(ValueError, match=r"activation="):
        MovingAverageGatedAttention(D, Z, H, N, activation="swishy")
    with pytest.raises(ValueError, match=r"attention_activation='sigmoid'.*allowed values: softmax, relu2, laplace"):
        MovingAverageGatedAttention(D, Z, H, N, attention_activation="sigmoid")
    with pytest.raises(ValueError, match=r"attention_activation="):
        GatedCrossAttention(D, Z, attention_activation="sigmoid")


def test_unknown_rel_pos_bias():
    with pytest.raises(ValueError, match=r"rel_pos_bias='alibi'.*allowed values: simple, rotary"):
        MovingAverageGatedAttention(D, Z, H, N, rel_pos_bias="alibi")


def test_layer_args_errors():
    with pytest.raises(ValueError, match=r"decoder_z_dim=0 must be a positive integer"):
        MegaDecoderLayer(argparse.Namespace(decoder_embed_dim=D, decoder_z_dim=0, decoder_hidden_dim=H, decoder_n_dim=N))
    args = argparse.Namespace(
        decoder_embed_dim=D, decoder_z_dim=Z, decoder_hidden_dim=H, decoder_n_dim=N, normalization_type="bogus"
    )
    with pytest.raises(ValueError, match=r"normalization_type='bogus' is not supported"):
        MegaDecoderLayer(args)
