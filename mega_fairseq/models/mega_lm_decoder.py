"""MegaLMDecoder: the decoder-only Mega stack of ``mega_lm`` (no cross-attention).

Three ways to run it, all giving the same numbers (up to float round-off):

* full forward: ``decoder(tokens)`` (B x T) -> logits B x T x V;
* incremental decoding with fairseq's generator convention: ``decoder(prefix,
  incremental_state=state)`` receives the WHOLE prefix at every step (``encoder_out`` is
  accepted and ignored) and runs only the tokens it has not seen yet, carrying the EMA state and
  the attention cache of the current chunk in ``state``;
* streaming: with ``stream_size > 0`` and autograd off, a long input is fed ``stream_size``
  tokens at a time through a private incremental state. Memory then grows with the piece, not
  with the whole block (except the returned logits), which is how long blocks are evaluated.
"""
import math
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from fairseq.models import FairseqIncrementalDecoder
from fairseq.modules import AdaptiveSoftmax
from torch import Tensor

from mega_fairseq.models.mega_lm_config import UNBOUNDED_POSITIONS, parse_cutoff
from mega_fairseq.modules import FairseqDropout, MegaDecoderLayer, SequenceNorm
from mega_fairseq.modules.attention_weights import causal_attention_mask

IncrementalState = Dict[str, Dict[str, Optional[Tensor]]]


class MegaLMDecoder(FairseqIncrementalDecoder):
    """Embeddings -> ``decoder_layers`` x :class:`MegaDecoderLayer` (no cross-attention) -> output.

    Args:
        settings: resolved settings (see :func:`~mega_fairseq.models.mega_lm_config.resolve_lm_settings`).
        dictionary: the output dictionary (its length is the vocabulary of the logits).
        embed_tokens: ``nn.Embedding`` or ``AdaptiveInput`` producing ``embedding_dim`` features.
    """

    def __init__(self, settings, dictionary, embed_tokens: nn.Module):
        super().__init__(dictionary)
        self.register_buffer("version", torch.Tensor([3]))
        self.embed_dim = settings.decoder_embed_dim
        self.chunk_size = settings.decoder_chunk_size
        self.max_target_positions = settings.max_target_positions
        self.attention_activation = settings.attention_activation_fn
        self.padding_idx = embed_tokens.padding_idx
        #: > 0: autograd-free forwards longer than this are streamed in pieces of this many tokens.
        self.stream_size = 0

        self.embed_tokens = embed_tokens
        self.embed_scale = 1.0 if settings.no_scale_embedding else math.sqrt(self.embed_dim)
        input_dim = embed_tokens.embedding_dim
        self.project_in_dim = None
        if input_dim != self.embed_dim:
            self.project_in_dim = nn.Linear(input_dim, self.embed_dim, bias=False)
            nn.init.xavier_uniform_(self.project_in_dim.weight)
        norm_type = settings.normalization_type
        self.embed_norm = SequenceNorm(norm_type, self.embed_dim) if settings.normalize_embedding else None
        self.embedding_dropout = FairseqDropout(settings.dropout, module_name=self.__class__.__name__)

        self.layers = nn.ModuleList([MegaDecoderLayer(settings, no_cross_attention=True)
                                     for _ in range(settings.decoder_layers)])
        self.num_layers = len(self.layers)
        self.final_norm = None
        if settings.normalize_before:
            self.final_norm = SequenceNorm(norm_type, self.embed_dim, affine=not settings.no_affine_final_norm)

        self.adaptive_softmax = None
        self.output_projection = None
        softmax_cutoff = parse_cutoff(settings.adaptive_softmax_cutoff, "adaptive_softmax_cutoff", len(dictionary))
        if softmax_cutoff is not None:
            self.adaptive_softmax = AdaptiveSoftmax(
                len(dictionary),
                self.embed_dim,
                softmax_cutoff,
                dropout=settings.adaptive_softmax_dropout,
                adaptive_inputs=embed_tokens if settings.tie_adaptive_weights else None,
                factor=settings.adaptive_softmax_factor,
                tie_proj=settings.tie_adaptive_proj,
            )
        elif settings.share_decoder_input_output_embed:
            weight = embed_tokens.weight
            self.output_projection = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
            self.output_projection.weight = weight
        else:
            self.output_projection = nn.Linear(self.embed_dim, len(dictionary), bias=False)
            nn.init.normal_(self.output_projection.weight, mean=0.0, std=self.embed_dim ** -0.5)

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        prev_output_tokens: Tensor,
        encoder_out: Optional[Any] = None,
        incremental_state: Optional[IncrementalState] = None,
        features_only: bool = False,
        return_all_hiddens: bool = False,
        **unused,
    ) -> Tuple[Tensor, Dict[str, Any]]:
        """Score ``prev_output_tokens``.

        Args:
            prev_output_tokens: B x T token ids, right-padded with the dictionary's pad. Under
                ``incremental_state``: the whole prefix decoded so far (generator convention).
            encoder_out: ignored (a language model has no encoder; the generator passes it).
            incremental_state: fairseq incremental-decoding dict, or None for a full forward.
            features_only: return B x T x embed_dim features instead of logits.

        Returns:
            ``(x, extra)``: x is B x T x V logits (B x T x embed_dim features with adaptive softmax
            or ``features_only``; only the new tokens under ``incremental_state``); ``extra`` holds
            ``inner_states`` (list of T x B x embed_dim) and ``attn`` ([None]).
        """
        x, extra = self.extract_features(prev_output_tokens, incremental_state=incremental_state)
        if not features_only:
            x = self.output_layer(x)
        return x, extra

    def extract_features(
        self,
        prev_output_tokens: Tensor,
        encoder_out: Optional[Any] = None,
        incremental_state: Optional[IncrementalState] = None,
        **unused,
    ) -> Tuple[Tensor, Dict[str, Any]]:
        """Like :meth:`forward` but returns B x T x embed_dim features."""
        if prev_output_tokens.dim() != 2:
            raise ValueError("prev_output_tokens must be Batch x Time token ids, got shape {}".format(
                tuple(prev_output_tokens.shape)))
        if incremental_state is not None:
            seen = self._num_seen(incremental_state)
            if prev_output_tokens.size(1) <= seen:
                raise ValueError(
                    "incremental decoding: got a prefix of {} tokens but {} were already decoded; pass the "
                    "whole prefix including at least one new token (fairseq generator convention)".format(
                        prev_output_tokens.size(1), seen))
            x, extra = self._run(prev_output_tokens[:, seen:], incremental_state)
            self._set_num_seen(incremental_state, prev_output_tokens.size(1))
            return x, extra
        if self.stream_size > 0 and prev_output_tokens.size(1) > self.stream_size and not torch.is_grad_enabled():
            return self._stream(prev_output_tokens)
        return self._run(prev_output_tokens, None)

    def _stream(self, tokens: Tensor) -> Tuple[Tensor, Dict[str, Any]]:
        """Feed B x T ``tokens`` in pieces of ``stream_size`` with the Mega state carried across."""
        state: IncrementalState = {}
        pieces = []
        for start in range(0, tokens.size(1), self.stream_size):
            features, _ = self._run(tokens[:, start:start + self.stream_size], state)
            pieces.append(features)
        return torch.cat(pieces, dim=1), {"attn": [None], "inner_states": None}

    def _run(self, tokens: Tensor, incremental_state: Optional[IncrementalState]) -> Tuple[Tensor, Dict[str, Any]]:
        """Run B x T ``tokens`` (continuing ``incremental_state`` when given) -> B x T x D features."""
        x = self.embed_scale * self.embed_tokens(tokens)
        if self.project_in_dim is not None:
            x = self.project_in_dim(x)
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        x = self.embedding_dropout(x)

        padding_mask: Optional[Tensor] = tokens.eq(self.padding_idx)
        if not padding_mask.any():
            padding_mask = None
        else:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)

        # B x T x C -> T x B x C
        x = x.transpose(0, 1)
        attn_mask = None if incremental_state is not None else self._causal_mask(x)
        inner_states: List[Optional[Tensor]] = [x]
        for layer in self.layers:
            x, _, _ = layer(x, incremental_state=incremental_state, attn_mask=attn_mask,
                            decoder_padding_mask=padding_mask)
            inner_states.append(x)
        if self.final_norm is not None:
            x = self.final_norm(x)
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.transpose(0, 1).unsqueeze(-1), 0.0)
        # T x B x C -> B x T x C
        return x.transpose(0, 1), {"attn": [None], "inner_states": inner_states}

    def _causal_mask(self, x: Tensor) -> Optional[Tensor]:
        """The full-forward mask for T x B x C ``x``: (n, n), n = chunk_size if 0 < chunk < T else T."""
        seq_len = x.size(0)
        if seq_len <= 1:
            return None
        frame = self.chunk_size if 0 < self.chunk_size < seq_len else seq_len
        return causal_attention_mask(frame, frame, 0, self.attention_activation, x)

    def output_layer(self, features: Tensor) -> Tensor:
        """B x T x D features -> B x T x V logits (features unchanged with adaptive softmax)."""
        if self.adaptive_softmax is not None:
            return features
        return self.output_projection(features)

    def max_positions(self) -> int:
        """Longest input: unbounded with chunked attention, else ``max_target_positions``."""
        return UNBOUNDED_POSITIONS if self.chunk_size > 0 else self.max_target_positions

    # -------------------------------------------------------- incremental state

    def _num_seen(self, incremental_state: IncrementalState) -> int:
        buffer = self.get_incremental_state(incremental_state, "position")
        if buffer is None or buffer.get("num_seen") is None:
            return 0
        return int(buffer["num_seen"].item())

    def _set_num_seen(self, incremental_state: IncrementalState, num_seen: int) -> None:
        self.set_incremental_state(incremental_state, "position", {"num_seen": torch.tensor(num_seen)})
