"""MegaDecoder: the one Mega decoder, for translation (cross-attention) and language models (without).

Three ways to run it, all giving the same numbers (up to float round-off):

* full forward: ``decoder(tokens, encoder_out)`` (B x T) -> logits B x T x V;
* incremental decoding, fairseq's generator convention: ``decoder(prefix, encoder_out,
  incremental_state=state)`` receives the WHOLE prefix at every step and runs only the tokens it
  has not seen yet (one or several), carrying the EMA state and the attention caches in ``state``;
* streaming: with ``stream_size > 0`` and autograd off, a long input is fed ``stream_size``
  tokens at a time through a private incremental state, so memory grows with the piece, not the
  whole block (except the returned logits). This is how long blocks are evaluated.
"""
import math
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from fairseq.models import FairseqIncrementalDecoder
from fairseq.modules import AdaptiveSoftmax
from torch import Tensor

from mega_fairseq.models.layer_execution import compile_blocks, keep_block_activations, run_block
from mega_fairseq.models.mega_settings import UNBOUNDED_POSITIONS, layer_config, parse_cutoff
from mega_fairseq.modules import FairseqDropout, MegaDecoderLayer, SequenceNorm
from mega_fairseq.modules.attention_weights import causal_attention_mask

IncrementalState = Dict[str, Dict[str, Optional[Tensor]]]


class MegaDecoder(FairseqIncrementalDecoder):
    """Embeddings -> ``decoder_layers`` x :class:`MegaDecoderLayer` -> final norm -> output layer.

    Parameter names follow the official decoders (``embed_tokens``, ``project_in_dim`` when the
    input embedding is narrower, ``layers.N.*``, ``final_norm`` when ``normalize_before``,
    ``output_projection`` or ``adaptive_softmax``, the ``version`` buffer). Differences, all on
    purpose: any target length works with chunked attention (the layers pad internally); decoder
    padding is remembered across incremental steps; a step may hold several new tokens.

    Args:
        settings: the model's settings from :func:`mega_settings.read_settings` (``decoder_*``,
            ``max_target_positions``, the layer flavour and output-layer fields).
        dictionary: the output dictionary (its length is the vocabulary of the logits).
        embed_tokens: ``nn.Embedding`` or ``AdaptiveInput`` producing ``embedding_dim`` features;
            a projection ``project_in_dim`` is added when that differs from ``decoder_embed_dim``.
        cross_max_positions: build layers with cross-attention whose relative bias covers this
            many positions (translation); None: no cross-attention (a language model).
        final_norm_affine: whether the final norm (``normalize_before``) has affine parameters.
    """

    def __init__(self, settings, dictionary, embed_tokens: nn.Module, cross_max_positions: Optional[int] = None,
                 final_norm_affine: bool = True):
        super().__init__(dictionary)
        self.register_buffer("version", torch.Tensor([3]))
        self.embed_dim = embed_dim = settings.decoder_embed_dim
        self.padding_idx = embed_tokens.padding_idx
        self.max_target_positions = settings.max_target_positions
        self.chunk_size = settings.decoder_chunk_size
        self.attention_activation = settings.attention_activation_fn
        self.cross_attention = cross_max_positions is not None
        #: > 0: autograd-free forwards longer than this are streamed in pieces of this many tokens.
        self.stream_size = 0

        self.embed_tokens = embed_tokens
        self.embed_scale = 1.0 if settings.no_scale_embedding else math.sqrt(embed_dim)
        self.project_in_dim = None
        if embed_tokens.embedding_dim != embed_dim:
            self.project_in_dim = nn.Linear(embed_tokens.embedding_dim, embed_dim, bias=False)
            nn.init.xavier_uniform_(self.project_in_dim.weight)
        norm_type = settings.normalization_type
        self.embed_norm = SequenceNorm(norm_type, embed_dim) if settings.normalize_embedding else None
        self.embedding_dropout = FairseqDropout(settings.dropout, module_name=self.__class__.__name__)

        longest = None if self.max_positions() == UNBOUNDED_POSITIONS else self.max_target_positions
        block = layer_config(settings, "decoder", max_positions=self.max_target_positions, longest=longest,
                             cross_max_positions=cross_max_positions)
        self.layers = nn.ModuleList([MegaDecoderLayer(block) for _ in range(settings.decoder_layers)])
        self.num_layers = len(self.layers)
        #: recompute each block's activations in the backward (--checkpoint-activations; not while decoding)
        self.checkpoint_activations = bool(settings.checkpoint_activations)
        if settings.keep_activations:
            keep_block_activations(self.layers)
        if settings.compile_layers:
            compile_blocks(self.layers)
        self.final_norm = None
        if settings.normalize_before:
            self.final_norm = SequenceNorm(norm_type, embed_dim, affine=final_norm_affine)
        self._build_output_layer(settings, dictionary)

    def _build_output_layer(self, settings, dictionary) -> None:
        self.adaptive_softmax = None
        self.output_projection = None
        cutoff = parse_cutoff(settings.adaptive_softmax_cutoff, "adaptive_softmax_cutoff", len(dictionary))
        if cutoff is not None:
            self.adaptive_softmax = AdaptiveSoftmax(
                len(dictionary),
                self.embed_dim,
                cutoff,
                dropout=settings.adaptive_softmax_dropout,
                adaptive_inputs=self.embed_tokens if settings.tie_adaptive_weights else None,
                factor=settings.adaptive_softmax_factor,
                tie_proj=settings.tie_adaptive_proj,
            )
        elif settings.share_decoder_input_output_embed:
            vocab, dim = self.embed_tokens.weight.shape
            self.output_projection = nn.Linear(dim, vocab, bias=False)
            self.output_projection.weight = self.embed_tokens.weight
        else:
            self.output_projection = nn.Linear(self.embed_dim, len(dictionary), bias=False)
            nn.init.normal_(self.output_projection.weight, mean=0.0, std=self.embed_dim ** -0.5)

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        prev_output_tokens: Tensor,
        encoder_out: Optional[Dict[str, List[Tensor]]] = None,
        incremental_state: Optional[IncrementalState] = None,
        features_only: bool = False,
        full_context_alignment: bool = False,
        alignment_layer: Optional[int] = None,
        alignment_heads: Optional[int] = None,
        src_lengths: Optional[Any] = None,
        return_all_hiddens: bool = False,
    ) -> Tuple[Tensor, Dict[str, Any]]:
        """Score the next tokens.

        Args:
            prev_output_tokens: B x T token ids, ``[eos, y1, ...]`` right padded; under
                ``incremental_state`` the whole prefix so far (generator convention).
            encoder_out: the encoder's output dict (required with cross-attention; ignored by a
                language model, to which the generator passes it too).
            incremental_state: fairseq's incremental decoding state.
            features_only: return the B x T x D features instead of the logits.
            full_context_alignment: no causal mask (fairseq's alignment training).
            alignment_layer: layer whose cross-attention is returned (default: the last).

        Returns:
            ``(logits B x T x V, or features B x T x D with adaptive softmax or features_only,
            {"attn": [B x T x S or None], "inner_states": [T x B x D, ...]})``; under
            ``incremental_state`` T counts only the new tokens.
        """
        x, extra = self.extract_features(
            prev_output_tokens, encoder_out, incremental_state, full_context_alignment, alignment_layer
        )
        if not features_only:
            x = self.output_layer(x)
        return x, extra

    def extract_features(
        self,
        prev_output_tokens: Tensor,
        encoder_out: Optional[Dict[str, List[Tensor]]] = None,
        incremental_state: Optional[IncrementalState] = None,
        full_context_alignment: bool = False,
        alignment_layer: Optional[int] = None,
        **unused,
    ) -> Tuple[Tensor, Dict[str, Any]]:
        """Like :meth:`forward` without the output layer: features are B x T x D."""
        if prev_output_tokens.dim() != 2:
            raise ValueError("prev_output_tokens must be Batch x Time token ids, got shape {}".format(
                tuple(prev_output_tokens.shape)))
        enc, enc_padding_mask = self._unpack_encoder_out(encoder_out)
        if incremental_state is not None:
            tokens = self._new_tokens(prev_output_tokens, incremental_state)
            return self._run(tokens, enc, enc_padding_mask, incremental_state, False, alignment_layer)
        if prev_output_tokens.size(1) > self.max_positions():
            raise ValueError("target length {} exceeds max_target_positions={}".format(
                prev_output_tokens.size(1), self.max_target_positions))
        if self.stream_size > 0 and prev_output_tokens.size(1) > self.stream_size and not torch.is_grad_enabled():
            return self._stream(prev_output_tokens, enc, enc_padding_mask)
        return self._run(prev_output_tokens, enc, enc_padding_mask, None, full_context_alignment, alignment_layer)

    def _stream(self, tokens: Tensor, enc: Optional[Tensor], enc_padding_mask: Optional[Tensor]):
        """Feed B x T ``tokens`` in pieces of ``stream_size`` with the Mega state carried across."""
        state: IncrementalState = {}
        pieces = []
        for start in range(0, tokens.size(1), self.stream_size):
            features, _ = self._run(tokens[:, start:start + self.stream_size], enc, enc_padding_mask, state)
            pieces.append(features)
        return torch.cat(pieces, dim=1), {"attn": [None], "inner_states": None}

    def _run(
        self,
        tokens: Tensor,
        enc: Optional[Tensor],
        enc_padding_mask: Optional[Tensor],
        incremental_state: Optional[IncrementalState],
        full_context_alignment: bool = False,
        alignment_layer: Optional[int] = None,
    ) -> Tuple[Tensor, Dict[str, Any]]:
        """Run B x T ``tokens`` (continuing ``incremental_state`` when given) -> B x T x D features."""
        if alignment_layer is None:
            alignment_layer = self.num_layers - 1
        x = self.embed_scale * self.embed_tokens(tokens)
        if self.project_in_dim is not None:
            x = self.project_in_dim(x)
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        x = self.embedding_dropout(x)
        padding_mask: Optional[Tensor] = tokens.eq(self.padding_idx)
        if not bool(padding_mask.any()):
            padding_mask = None
        else:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)

        # B x T x D -> T x B x D
        x = x.transpose(0, 1)
        attn_mask = None
        if incremental_state is None and not full_context_alignment:
            attn_mask = self._causal_mask(x)
        attn: Optional[Tensor] = None
        inner_states: List[Optional[Tensor]] = [x]
        for idx, layer in enumerate(self.layers):
            x, layer_attn, _ = run_block(layer, self.checkpoint_activations and incremental_state is None,
                                         x, enc, enc_padding_mask, incremental_state, attn_mask=attn_mask,
                                         decoder_padding_mask=padding_mask, need_attn=idx == alignment_layer)
            inner_states.append(x)
            if layer_attn is not None and idx == alignment_layer:
                attn = layer_attn.float().to(x)
        if self.final_norm is not None:
            x = self.final_norm(x)
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.transpose(0, 1).unsqueeze(-1), 0.0)
        # T x B x D -> B x T x D
        return x.transpose(0, 1), {"attn": [attn], "inner_states": inner_states}

    def _unpack_encoder_out(self, encoder_out) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        """(S x B x D encoder states, B x S padding mask) for cross-attention; (None, None) without it."""
        if not self.cross_attention:
            return None, None
        if encoder_out is None:
            raise ValueError("encoder_out is required: this decoder's layers attend to the encoder output")
        masks = encoder_out.get("encoder_padding_mask") or []
        return encoder_out["encoder_out"][0], (masks[0] if len(masks) > 0 else None)

    def _new_tokens(self, prev_output_tokens: Tensor, incremental_state: IncrementalState) -> Tensor:
        """The tokens of the prefix not decoded yet (fairseq's generator passes the whole prefix)."""
        state = self.get_incremental_state(incremental_state, "decoder_steps")
        done = 0 if state is None or state.get("num_steps") is None else int(state["num_steps"].item())
        total = prev_output_tokens.size(1)
        if total <= done:
            raise ValueError(
                "incremental decoding: got a prefix of {} tokens but {} were already decoded; pass the whole "
                "prefix including at least one new token (fairseq generator convention)".format(total, done))
        if total > self.max_positions():
            raise ValueError("decoding past max_target_positions={}".format(self.max_target_positions))
        self.set_incremental_state(incremental_state, "decoder_steps", {"num_steps": torch.tensor(total)})
        return prev_output_tokens[:, done:]

    def _causal_mask(self, x: Tensor) -> Optional[Tensor]:
        """The full-forward mask for T x B x D ``x``: (n, n), n = chunk_size if 0 < chunk < T else T."""
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
        """Longest target: unbounded for a chunked decoder without cross-attention (any length
        works), else ``max_target_positions``."""
        if self.chunk_size > 0 and not self.cross_attention:
            return UNBOUNDED_POSITIONS
        return self.max_target_positions
