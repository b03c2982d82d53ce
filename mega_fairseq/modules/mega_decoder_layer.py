"""MegaDecoderLayer: causal Mega attention, optional gated cross-attention, feed-forward network."""

from typing import Dict, Optional

import torch.nn as nn
from torch import Tensor

from .gated_cross_attention import GatedCrossAttention
from .layer_args import attention_kwargs, layer_arg, mega_attention_kwargs, nffn_kwargs
from .moving_average_gated_attention import MovingAverageGatedAttention
from .normalized_feedforward_network import NormalizedFeedForwardNetwork


class MegaDecoderLayer(nn.Module):
    """One decoder block, built from fairseq args like the official layer.

    Reads the ``decoder_*`` twins of :class:`MegaEncoderLayer`'s settings plus
    ``max_target_positions`` (and ``max_source_positions`` for the cross-attention bias, which
    is sized ``max(max_target_positions, max_source_positions)``). ``no_cross_attention=True``
    builds the language-model block (no ``cross_attn``).
    """

    def __init__(self, args, no_cross_attention: bool = False):
        super().__init__()
        self.embed_dim = layer_arg(args, "decoder_embed_dim")
        self.mega_layer = self.build_mega_layer(self.embed_dim, args)
        self.cross_attn = None if no_cross_attention else self.build_cross_attn(self.embed_dim, args)
        ffn_dim = layer_arg(args, "decoder_ffn_embed_dim", 0)
        self.nffn = self.build_nffn_layer(self.embed_dim, args) if ffn_dim > 0 else None
        self.need_attn = False
        self.onnx_trace = False

    def build_mega_layer(self, embed_dim, args) -> MovingAverageGatedAttention:
        max_positions = layer_arg(args, "max_target_positions")
        return MovingAverageGatedAttention(embed_dim=embed_dim, bidirectional=False,
                                           **mega_attention_kwargs(args, "decoder", max_positions))

    def build_cross_attn(self, embed_dim, args) -> GatedCrossAttention:
        # one relative bias serves both lengths: sized by the longer of the two
        max_positions = max(layer_arg(args, "max_target_positions"), layer_arg(args, "max_source_positions"))
        return GatedCrossAttention(embed_dim=embed_dim, zdim=layer_arg(args, "decoder_z_dim"),
                                   ndim=layer_arg(args, "decoder_n_dim"), max_positions=max_positions,
                                   **attention_kwargs(args))

    def build_nffn_layer(self, embed_dim, args) -> NormalizedFeedForwardNetwork:
        return NormalizedFeedForwardNetwork(embed_dim=embed_dim, **nffn_kwargs(args, "decoder"))

    def prepare_for_onnx_export_(self):
        self.onnx_trace = True

    def forward(
        self,
        x: Tensor,
        encoder_out: Optional[Tensor] = None,
        encoder_padding_mask: Optional[Tensor] = None,
        incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]] = None,
        attn_mask: Optional[Tensor] = None,
        decoder_padding_mask: Optional[Tensor] = None,
        need_attn: bool = False,
    ):
        """Run the block.

        Args:
            x: Tgt x Batch x D (in incremental mode: the new tokens only).
            encoder_out: Src x Batch x D, required when the layer has cross-attention.
            encoder_padding_mask: Batch x Src bool, True = pad.
            incremental_state: fairseq incremental-decoding dict.
            attn_mask: causal mask of the full forward (see MovingAverageGatedAttention).
            decoder_padding_mask: Batch x Tgt bool, True = pad (new tokens only when incremental).
            need_attn: return the cross-attention weights (Batch x Tgt x Src).

        Returns:
            ``(x, attn, None)``: x is Tgt x Batch x D; attn is None without cross-attention or
            when not requested.
        """
        x, attn = self.mega_layer(
            x=x,
            padding_mask=decoder_padding_mask,
            incremental_state=incremental_state,
            need_weights=False,
            attn_mask=attn_mask,
        )
        if self.cross_attn is not None:
            if encoder_out is None and not self._has_cached_cross_state(incremental_state):
                raise ValueError("encoder_out (Src x Batch x D) is required by a decoder layer with cross-attention")
            x, attn = self.cross_attn(
                query=x,
                key=encoder_out,
                value=encoder_out,
                padding_mask=decoder_padding_mask,
                key_padding_mask=encoder_padding_mask,
                incremental_state=incremental_state,
                static_kv=True,
                need_weights=need_attn,
            )
        if self.nffn is not None:
            x = self.nffn(x)
        return x, attn, None

    def _has_cached_cross_state(self, incremental_state) -> bool:
        if incremental_state is None:
            return False
        return "prev_key" in self.cross_attn._get_input_buffer(incremental_state)

    def make_generation_fast_(self, need_attn: bool = False, **kwargs):
        self.need_attn = need_attn
