"""MegaEncoderLayer / MegaDecoderLayer read fairseq args from a Namespace or a DictConfig."""

import argparse

import pytest
import torch
from omegaconf import OmegaConf

from mega_fairseq.modules import MegaDecoderLayer, MegaEncoderLayer
from mega_fairseq.modules.fairseq_dropout import FairseqFeatureDropout

FULL_ARGS = dict(
    encoder_embed_dim=16,
    encoder_z_dim=8,
    encoder_hidden_dim=32,
    encoder_n_dim=4,
    encoder_ffn_embed_dim=24,
    encoder_chunk_size=4,
    decoder_embed_dim=16,
    decoder_z_dim=8,
    decoder_hidden_dim=32,
    decoder_n_dim=4,
    decoder_ffn_embed_dim=24,
    decoder_chunk_size=4,
    truncation_length=16,
    rel_pos_bias="rotary",
    normalization_type="rmsnorm",
    normalize_before=True,
    attention_activation_fn="laplace",
    activation_fn="gelu",
    dropout=0.1,
    attention_dropout=0.2,
    hidden_dropout=0.3,
    activation_dropout=0.4,
    feature_dropout=True,
    max_source_positions=64,
    max_target_positions=48,
)


@pytest.mark.parametrize("kind", ["namespace", "dictconfig", "struct_dictconfig"])
def test_layers_read_every_setting(kind):
    if kind == "namespace":
        args = argparse.Namespace(**FULL_ARGS)
    else:
        args = OmegaConf.create(FULL_ARGS)
        if kind == "struct_dictconfig":
            OmegaConf.set_struct(args, True)
    encoder = MegaEncoderLayer(args)
    decoder = MegaDecoderLayer(args)
    lm_block = MegaDecoderLayer(args, no_cross_attention=True)

    mega = encoder.mega_layer
    assert mega.bidirectional and not decoder.mega_layer.bidirectional
    assert (mega.embed_dim, mega.zdim, mega.hdim, mega.ndim, mega.chunk_size) == (16, 8, 32, 4, 4)
    assert mega.move.truncation == 16
    assert mega.attention_activation == "laplace" and mega.prenorm
    assert type(mega.norm.norm).__name__ == "RMSNorm"
    assert type(mega.rel_pos_bias).__name__ == "RotaryRelativePositionalBias"
    assert isinstance(mega.dropout, FairseqFeatureDropout)
    assert (mega.dropout.p, mega.attention_dropout.p, mega.hidden_dropout.p) == (0.1, 0.2, 0.3)
    assert encoder.nffn.hidden_dropout.p == 0.4 and encoder.nffn.fc1.out_features == 24
    assert mega.max_positions == 64 and decoder.mega_layer.max_positions == 48
    assert decoder.cross_attn.max_positions == 64
    assert lm_block.cross_attn is None

    names = set(decoder.state_dict())
    assert {"cross_attn.rel_pos_bias.alpha", "cross_attn.rel_pos_bias._float_tensor", "nffn.fc2.weight"} <= names
    assert not any(name.startswith("cross_attn.") for name in lm_block.state_dict())


def test_missing_optional_settings_get_defaults():
    """Only the dimensions are required; e.g. a missing activation_dropout (bug 4) is 0."""
    args = argparse.Namespace(
        decoder_embed_dim=16, decoder_z_dim=8, decoder_hidden_dim=32, decoder_n_dim=4, decoder_ffn_embed_dim=24,
        activation_dropout=None,
    )
    layer = MegaDecoderLayer(args, no_cross_attention=True)
    assert layer.nffn.hidden_dropout.p == 0.0
    assert layer.mega_layer.chunk_size == -1 and layer.mega_layer.attention_activation == "softmax"
    assert not layer.mega_layer.prenorm
    x = torch.randn(5, 2, 16)
    out, attn, _ = layer.eval()(x)
    assert out.shape == x.shape and attn is None


def test_no_ffn_when_ffn_dim_is_zero():
    args = argparse.Namespace(encoder_embed_dim=16, encoder_z_dim=8, encoder_hidden_dim=32, encoder_n_dim=4,
                              encoder_ffn_embed_dim=0)
    layer = MegaEncoderLayer(args)
    assert layer.nffn is None
    assert not any(name.startswith("nffn.") for name in layer.state_dict())
