"""MegaEncoderLayer / MegaDecoderLayer: built from a typed MegaLayerConfig, or (the official
constructor) from fairseq args in a Namespace or a DictConfig, converted once."""

import argparse

import pytest
import torch
from omegaconf import OmegaConf

from mega_fairseq.modules import MegaDecoderLayer, MegaEncoderLayer, MegaLayerConfig
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


def test_missing_settings_get_the_mega_model_defaults():
    """Args missing a setting get MegaConfig's default (the official base architecture), the one
    place defaults live; e.g. a missing activation_dropout (official bug 4) is 0.0, dropout 0.1."""
    from mega_fairseq.models.mega_config import MegaConfig

    args = argparse.Namespace(
        decoder_embed_dim=16, decoder_z_dim=8, decoder_hidden_dim=32, decoder_n_dim=4, decoder_ffn_embed_dim=24,
        activation_dropout=None,
    )
    layer = MegaDecoderLayer(args, no_cross_attention=True)
    assert layer.nffn.hidden_dropout.p == MegaConfig.activation_dropout == 0.0
    assert layer.mega_layer.dropout.p == MegaConfig.dropout == 0.1
    assert layer.mega_layer.move.truncation == MegaConfig.truncation_length == 1024
    assert layer.mega_layer.chunk_size == -1 and layer.mega_layer.attention_activation == "softmax"
    assert not layer.mega_layer.prenorm
    x = torch.randn(5, 2, 16)
    out, attn, _ = layer.eval()(x)
    assert out.shape == x.shape and attn is None


def typed_config(**overrides) -> MegaLayerConfig:
    values = dict(embed_dim=16, zdim=8, hdim=32, ndim=4, ffn_hidden_dim=24, chunk_size=4, truncation=16,
                  max_positions=48, cross_max_positions=64, dropout=0.1, attention_dropout=0.2, hidden_dropout=0.3,
                  activation_dropout=0.4, feature_dropout=True, activation="gelu", attention_activation="laplace",
                  norm_type="rmsnorm", prenorm=True, rel_pos_bias="rotary")
    values.update(overrides)
    return MegaLayerConfig(**values)


def test_typed_config_builds_the_same_layers_as_the_official_args():
    args = argparse.Namespace(**FULL_ARGS)
    from_args, typed = MegaDecoderLayer(args), MegaDecoderLayer(typed_config())
    assert repr(from_args) == repr(typed)
    assert {k: v.shape for k, v in from_args.state_dict().items()} == {k: v.shape for k, v in typed.state_dict().items()}
    assert repr(MegaEncoderLayer(args)) == repr(MegaEncoderLayer(typed_config(max_positions=64)))
    assert MegaDecoderLayer(typed_config(cross_max_positions=None)).cross_attn is None


@pytest.mark.parametrize("overrides, message", [
    ({"chunk_size": 0}, r"chunk_size=0 is not supported"),
    ({"chunk_size": -7}, r"chunk_size=-7 is not supported"),
    ({"zdim": 0}, r"zdim=0 must be a positive integer"),
    ({"ffn_hidden_dim": -1}, r"ffn_hidden_dim=-1 must be >= 0"),
])
def test_typed_config_rejects_bad_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        typed_config(**overrides)


def test_no_ffn_when_ffn_dim_is_zero():
    args = argparse.Namespace(encoder_embed_dim=16, encoder_z_dim=8, encoder_hidden_dim=32, encoder_n_dim=4,
                              encoder_ffn_embed_dim=0)
    layer = MegaEncoderLayer(args)
    assert layer.nffn is None
    assert not any(name.startswith("nffn.") for name in layer.state_dict())
