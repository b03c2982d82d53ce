"""MegaEncoder: token embedding followed by a stack of bidirectional Mega encoder layers."""
import math
from typing import Dict, List, Optional

import torch
import torch.nn as nn
from fairseq.models import FairseqEncoder
from torch import Tensor

from mega_fairseq.models.layer_execution import compile_blocks, keep_block_activations, run_block
from mega_fairseq.models.mega_settings import layer_config
from mega_fairseq.modules import FairseqDropout, MegaEncoderLayer, SequenceNorm

EncoderOutDict = Dict[str, List[Tensor]]


def left_to_right_padding(padding_mask: Tensor) -> Tensor:
    """Index that moves each row's leading padding to its right end.

    padding_mask: B x T bool (True = pad). Returns a B x T LongTensor ``order`` (a rotation of
    each row by its number of leading pads) such that ``x.gather(1, order)`` is right padded;
    scattering with the same index undoes it.
    """
    num_leading_pads = padding_mask.long().cumprod(dim=1).sum(dim=1, keepdim=True)
    positions = torch.arange(padding_mask.size(1), device=padding_mask.device).unsqueeze(0)
    return (positions + num_leading_pads) % padding_mask.size(1)


class MegaEncoder(FairseqEncoder):
    """Encode a batch of source sentences.

    The official encoder's behaviour and parameter names (``embed_tokens``, ``layers.N.*``,
    ``final_norm`` when ``normalize_before``, the ``version`` buffer). The output is fairseq's
    encoder-output dict (lists of tensors), so the stock sequence generator can use it.

    A sentence is encoded the same whatever padding its batch gives it: padding is masked in
    every layer and, with chunked attention, left-padded rows are moved to the right first so
    that the chunk boundaries do not depend on the padding.

    Args:
        settings: the model's settings from :func:`mega_settings.read_settings`.
        dictionary: source dictionary.
        embed_tokens: the (possibly shared) source embedding, ``V x D``.
    """

    def __init__(self, settings, dictionary, embed_tokens: nn.Embedding):
        super().__init__(dictionary)
        self.register_buffer("version", torch.Tensor([3]))
        embed_dim = embed_tokens.embedding_dim
        self.padding_idx = embed_tokens.padding_idx
        self.max_source_positions = settings.max_source_positions
        self.chunk_size = settings.encoder_chunk_size
        self.embed_tokens = embed_tokens
        self.embed_scale = 1.0 if settings.no_scale_embedding else math.sqrt(embed_dim)
        self.embedding_dropout = FairseqDropout(settings.dropout, module_name=self.__class__.__name__)
        norm_type = settings.normalization_type
        self.embed_norm = SequenceNorm(norm_type, embed_dim) if settings.normalize_embedding else None
        block = layer_config(settings, "encoder", max_positions=settings.max_source_positions,
                             longest=settings.max_source_positions)
        self.layers = nn.ModuleList([MegaEncoderLayer(block) for _ in range(settings.encoder_layers)])
        self.num_layers = len(self.layers)
        self.final_norm = SequenceNorm(norm_type, embed_dim) if settings.normalize_before else None
        #: recompute each block's activations in the backward (--checkpoint-activations)
        self.checkpoint_activations = bool(settings.checkpoint_activations)
        if settings.keep_activations:
            keep_block_activations(self.layers)
        if settings.compile_layers:
            compile_blocks(self.layers)

    def forward(self, src_tokens: Tensor, src_lengths: Optional[Tensor] = None, return_all_hiddens: bool = False):
        """Encode ``src_tokens`` (B x S, left or right padded).

        Returns a dict of lists (fairseq's convention):
            * ``encoder_out``: ``[S x B x D]``, zero at pad positions;
            * ``encoder_padding_mask``: ``[B x S]`` bool (True = pad), or ``[]`` without padding;
            * ``encoder_embedding``: ``[B x S x D]`` scaled token embeddings;
            * ``encoder_states``: ``S x B x D`` after each layer (with ``return_all_hiddens``);
            * ``src_tokens``, ``src_lengths``: ``[]`` (kept for fairseq's interface).
        """
        if src_tokens.dim() != 2:
            raise ValueError("src_tokens must be Batch x Src token ids, got shape {}".format(tuple(src_tokens.shape)))
        bsz, src_len = src_tokens.shape
        if src_len > self.max_source_positions:
            raise ValueError(
                "source length {} exceeds max_source_positions={} (fairseq skips such sentences with "
                "--skip-invalid-size-inputs-valid-test; or raise --max-source-positions)".format(
                    src_len, self.max_source_positions
                )
            )
        padding_mask = src_tokens.eq(self.padding_idx)
        has_pads = bool(padding_mask.any())

        encoder_embedding = self.embed_scale * self.embed_tokens(src_tokens)
        x = encoder_embedding
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        x = self.embedding_dropout(x)

        order = None
        if has_pads and 0 < self.chunk_size < src_len and bool(padding_mask[:, 0].any()):
            order = left_to_right_padding(padding_mask)
            x = x.gather(1, order.unsqueeze(-1).expand_as(x))
            padding_mask = padding_mask.gather(1, order)
        inverse_mask = (~padding_mask).unsqueeze(-1).type_as(x) if has_pads else None
        if inverse_mask is not None:
            x = x * inverse_mask
        layer_mask = padding_mask if has_pads else None

        # B x S x D -> S x B x D
        x = x.transpose(0, 1)
        encoder_states: List[Tensor] = []
        for layer in self.layers:
            x = run_block(layer, self.checkpoint_activations, x, layer_mask)
            if return_all_hiddens:
                encoder_states.append(x)
        if self.final_norm is not None:
            x = self.final_norm(x)
        if inverse_mask is not None:
            x = x * inverse_mask.transpose(0, 1)

        if order is not None:
            x = self._restore_padding(x, order)
            encoder_states = [self._restore_padding(state, order) for state in encoder_states]
            padding_mask = src_tokens.eq(self.padding_idx)
        return {
            "encoder_out": [x],  # S x B x D
            "encoder_padding_mask": [padding_mask] if has_pads else [],  # B x S
            "encoder_embedding": [encoder_embedding],  # B x S x D
            "encoder_states": encoder_states,  # List[S x B x D]
            "src_tokens": [],
            "src_lengths": [],
        }

    @staticmethod
    def _restore_padding(x: Tensor, order: Tensor) -> Tensor:
        """Undo :func:`left_to_right_padding` on an S x B x D tensor."""
        index = order.t().unsqueeze(-1).expand_as(x)
        return torch.empty_like(x).scatter_(0, index, x)

    @torch.jit.export
    def reorder_encoder_out(self, encoder_out: EncoderOutDict, new_order: Tensor) -> EncoderOutDict:
        """Select batch rows ``new_order`` of every tensor in ``encoder_out`` (beam search)."""

        def select(tensors: List[Tensor], batch_dim: int) -> List[Tensor]:
            return [t.index_select(batch_dim, new_order) for t in tensors]

        return {
            "encoder_out": select(encoder_out["encoder_out"], 1),
            "encoder_padding_mask": select(encoder_out["encoder_padding_mask"], 0),
            "encoder_embedding": select(encoder_out["encoder_embedding"], 0),
            "encoder_states": select(encoder_out["encoder_states"], 1),
            "src_tokens": select(encoder_out["src_tokens"], 0),
            "src_lengths": select(encoder_out["src_lengths"], 0),
        }

    def max_positions(self) -> int:
        return self.max_source_positions
