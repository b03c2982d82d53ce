"""MegaEncoderLayer: bidirectional Mega attention followed by a normalized feed-forward network."""

from typing import Optional

import torch.nn as nn
from torch import Tensor

from .layer_args import layer_arg, mega_attention_kwargs, nffn_kwargs
from .moving_average_gated_attention import MovingAverageGatedAttention
from .normalized_feedforward_network import NormalizedFeedForwardNetwork


class MegaEncoderLayer(nn.Module):
    """One encoder block, built from fairseq args like the official layer.

    Reads ``encoder_embed_dim``, ``encoder_z_dim``, ``encoder_hidden_dim``, ``encoder_n_dim``,
    ``encoder_ffn_embed_dim`` (0 or less: no feed-forward block), ``encoder_chunk_size``,
    ``truncation_length``, ``rel_pos_bias``, ``max_source_positions``, ``normalization_type``,
    ``normalize_before``, ``activation_fn``, ``attention_activation_fn``, ``dropout``,
    ``attention_dropout``, ``hidden_dropout``, ``activation_dropout``, ``feature_dropout``.
    Works with an argparse Namespace or an omegaconf DictConfig; optional settings that are
    missing get the defaults of :mod:`layer_args`.
    """

    def __init__(self, args):
        super().__init__()
        self.embed_dim = layer_arg(args, "encoder_embed_dim")
        self.mega_layer = self.build_mega_layer(self.embed_dim, args)
        ffn_dim = layer_arg(args, "encoder_ffn_embed_dim", 0)
        self.nffn = self.build_nffn_layer(self.embed_dim, args) if ffn_dim > 0 else None

    def build_mega_layer(self, embed_dim, args) -> MovingAverageGatedAttention:
        max_positions = layer_arg(args, "max_source_positions")
        return MovingAverageGatedAttention(embed_dim=embed_dim, bidirectional=True,
                                           **mega_attention_kwargs(args, "encoder", max_positions))

    def build_nffn_layer(self, embed_dim, args) -> NormalizedFeedForwardNetwork:
        return NormalizedFeedForwardNetwork(embed_dim=embed_dim, **nffn_kwargs(args, "encoder"))

    def forward(self, x: Tensor, encoder_padding_mask: Optional[Tensor]) -> Tensor:
        """x: Src x Batch x D; encoder_padding_mask: Batch x Src bool (True = pad) or None.

        Returns Src x Batch x D (pad positions are not zeroed here; the encoder does it).
        """
        x, _ = self.mega_layer(x, encoder_padding_mask)
        if self.nffn is not None:
            x = self.nffn(x)
        return x
