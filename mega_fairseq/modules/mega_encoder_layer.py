"""MegaEncoderLayer: bidirectional Mega attention followed by a normalized feed-forward network."""

from typing import Optional

import torch.nn as nn
from torch import Tensor

from .mega_layer_config import MegaLayerConfig
from .moving_average_gated_attention import MovingAverageGatedAttention
from .normalized_feedforward_network import NormalizedFeedForwardNetwork
from .recomputed_activations import recompute_applies, recompute_scope


class MegaEncoderLayer(nn.Module):
    """One bidirectional block: ``mega_layer`` (MovingAverageGatedAttention) then ``nffn``.

    Args:
        cfg: the block's settings (:class:`MegaLayerConfig`); ``cfg.ffn_hidden_dim == 0`` builds
            no feed-forward block. ``cfg.cross_max_positions`` is ignored (encoders do not
            cross-attend). The official constructor's fairseq args (``encoder_*`` settings of
            the ``mega`` model, Namespace or DictConfig) are accepted too and converted once.
    """

    #: open a recompute scope around both sub-layers in training (``recomputed_activations``);
    #: ``--keep-activations`` turns it off (``models/layer_execution.keep_block_activations``)
    recompute_activations = True

    def __init__(self, cfg: MegaLayerConfig):
        super().__init__()
        if not isinstance(cfg, MegaLayerConfig):
            from mega_fairseq.models.mega_settings import layer_config_from_args

            cfg = layer_config_from_args(cfg, "encoder")
        self.embed_dim = cfg.embed_dim
        self.mega_layer = build_mega_attention(cfg, bidirectional=True)
        self.nffn = build_nffn(cfg)

    def forward(self, x: Tensor, encoder_padding_mask: Optional[Tensor]) -> Tensor:
        """x: Src x Batch x D; encoder_padding_mask: Batch x Src bool (True = pad) or None.

        Returns Src x Batch x D (pad positions are not zeroed here; the encoder does it).
        """
        if self.recompute_activations and recompute_applies(x, self.mega_layer):
            # training: the attention's output (which the feed-forward network would keep) and other
            # cheap tensors are remade in the backward (recomputed_activations)
            with recompute_scope():
                return self._forward(x, encoder_padding_mask)
        return self._forward(x, encoder_padding_mask)

    def _forward(self, x: Tensor, encoder_padding_mask: Optional[Tensor]) -> Tensor:
        x, _ = self.mega_layer(x, encoder_padding_mask)
        if self.nffn is not None:
            x = self.nffn(x)
        return x


def build_mega_attention(cfg: MegaLayerConfig, bidirectional: bool) -> MovingAverageGatedAttention:
    """The block's gated attention (``mega_layer``) from its settings."""
    return MovingAverageGatedAttention(
        embed_dim=cfg.embed_dim,
        zdim=cfg.zdim,
        hdim=cfg.hdim,
        ndim=cfg.ndim,
        bidirectional=bidirectional,
        chunk_size=cfg.chunk_size,
        truncation=cfg.truncation,
        max_positions=cfg.max_positions,
        **cfg.attention_kwargs,
    )


def build_nffn(cfg: MegaLayerConfig) -> Optional[NormalizedFeedForwardNetwork]:
    """The block's feed-forward network (``nffn``), or None when ``cfg.ffn_hidden_dim == 0``."""
    if cfg.ffn_hidden_dim <= 0:
        return None
    return NormalizedFeedForwardNetwork(embed_dim=cfg.embed_dim, ffn_hidden_dim=cfg.ffn_hidden_dim,
                                        hidden_dropout=cfg.activation_dropout, **cfg.sublayer_kwargs)
