"""LRAEncoder: the fairseq encoder of the sequence classifiers, holding ``self.encoder``.

The official model nests the Mega stack one level down (``model.encoder.encoder``), so every
parameter name starts with ``encoder.encoder.``; this class keeps that layout.
"""
from typing import List, Optional, Tuple

import torch
from fairseq.models import FairseqEncoder
from torch import Tensor

from mega_fairseq.models.lra_sequence_encoder import MegaSequenceEncoder


class LRAEncoder(FairseqEncoder):
    """Wraps a :class:`MegaSequenceEncoder` as a ``FairseqEncoder`` (``dictionary`` None for real-valued input)."""

    def __init__(self, dictionary, encoder: MegaSequenceEncoder):
        super().__init__(dictionary)
        self.encoder = encoder

    def forward(self, src_tokens: Tensor, src_lengths: Optional[Tensor] = None,
                **kwargs) -> Tuple[List[Tensor], Tensor]:
        """src_tokens: Batch x Time (ids or real values); returns ``([states Time x Batch x D], rep Batch x D)``
        as the official encoder does. Without ``src_lengths``: the non-pad count for text, Time otherwise."""
        if src_lengths is None:
            if self.encoder.padding_idx is not None:
                src_lengths = src_tokens.ne(self.encoder.padding_idx).sum(dim=1)
            else:
                src_lengths = torch.full((src_tokens.size(0),), src_tokens.size(1), dtype=torch.long,
                                         device=src_tokens.device)
        return self.encoder(src_tokens, src_lengths, last_state_only=True)

    def max_positions(self) -> int:
        return self.encoder.max_positions
