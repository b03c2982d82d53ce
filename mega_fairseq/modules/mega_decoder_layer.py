"""MegaDecoderLayer: causal Mega attention, optional gated cross-attention, feed-forward network."""

from typing import Dict, Optional

import torch.nn as nn
from torch import Tensor

from .gated_cross_attention import GatedCrossAttention
from .mega_encoder_layer import build_mega_attention, build_nffn
from .mega_layer_config import MegaLayerConfig
from .recomputed_activations import recompute_applies, recompute_scope


class MegaDecoderLayer(nn.Module):
    """One causal block: ``mega_layer``, then ``cross_attn`` (if any), then ``nffn``.

    Args:
        cfg: the block's settings (:class:`MegaLayerConfig`). ``cfg.cross_max_positions`` set:
            the block has gated cross-attention over an encoder output, its relative bias
            covering that many positions; None: a language-model block (no ``cross_attn``).
            The official constructor's fairseq args (``decoder_*`` settings of the ``mega``
            model, Namespace or DictConfig) are accepted too and converted once; then
            ``no_cross_attention=True`` builds the language-model block.
    """

    #: open a recompute scope around both sub-layers in training (``recomputed_activations``);
    #: ``--keep-activations`` turns it off (``models/layer_execution.keep_block_activations``)
    recompute_activations = True

    def __init__(self, cfg: MegaLayerConfig, no_cross_attention: bool = False):
        super().__init__()
        if not isinstance(cfg, MegaLayerConfig):
            from mega_fairseq.models.mega_settings import layer_config_from_args

            cfg = layer_config_from_args(cfg, "decoder", cross_attention=not no_cross_attention)
        self.embed_dim = cfg.embed_dim
        self.mega_layer = build_mega_attention(cfg, bidirectional=False)
        self.cross_attn = None
        if cfg.cross_max_positions is not None:
            self.cross_attn = GatedCrossAttention(embed_dim=cfg.embed_dim, zdim=cfg.zdim, ndim=cfg.ndim,
                                                  max_positions=cfg.cross_max_positions, **cfg.attention_kwargs)
        self.nffn = build_nffn(cfg)
        self.need_attn = False
        self.onnx_trace = False

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
        if incremental_state is None and self.recompute_activations and recompute_applies(x, self.mega_layer):
            # training: tensors both sub-layers would keep and that are cheap to remake are remade
            # in the backward (recomputed_activations), the attention's output among them
            with recompute_scope():
                return self._forward(x, encoder_out, encoder_padding_mask, incremental_state, attn_mask,
                                     decoder_padding_mask, need_attn)
        return self._forward(x, encoder_out, encoder_padding_mask, incremental_state, attn_mask,
                             decoder_padding_mask, need_attn)

    def _forward(self, x, encoder_out, encoder_padding_mask, incremental_state, attn_mask, decoder_padding_mask,
                 need_attn):
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
