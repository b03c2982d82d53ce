"""Mega building blocks: EMA, gated attention, norms, positional biases, dropout, layers."""

from .activations import get_activation_fn, laplace, relu2, silu, softmax
from .ema_op import multi_head_ema
from .ema_reference import ema_reference
from .exponential_moving_average import MultiHeadEMA
from .fairseq_dropout import FairseqDropout, FairseqFeatureDropout
from .gated_cross_attention import GatedCrossAttention
from .mega_decoder_layer import MegaDecoderLayer
from .mega_encoder_layer import MegaEncoderLayer
from .mega_layer_config import MegaLayerConfig
from .moving_average_gated_attention import MovingAverageGatedAttention
from .normalized_feedforward_network import NormalizedFeedForwardNetwork
from .root_mean_square_norm import RMSNorm
from .rotary_relative_positional_bias import RotaryRelativePositionalBias
from .scale_norm import ScaleNorm
from .sequence_norm import SequenceNorm
from .simple_relative_positional_bias import SimpleRelativePositionalBias

__all__ = [
    "FairseqDropout",
    "FairseqFeatureDropout",
    "GatedCrossAttention",
    "MegaDecoderLayer",
    "MegaEncoderLayer",
    "MegaLayerConfig",
    "MovingAverageGatedAttention",
    "MultiHeadEMA",
    "NormalizedFeedForwardNetwork",
    "RMSNorm",
    "RotaryRelativePositionalBias",
    "ScaleNorm",
    "SequenceNorm",
    "SimpleRelativePositionalBias",
    "ema_reference",
    "get_activation_fn",
    "laplace",
    "multi_head_ema",
    "relu2",
    "silu",
    "softmax",
]
