"""MegaDecoder: causal Mega decoder layers (with or without cross-attention) and the output layer."""
import math
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from fairseq import options
from fairseq.models import FairseqIncrementalDecoder
from fairseq.modules import AdaptiveSoftmax
from torch import Tensor

from mega_fairseq.models.mega_config import layer_namespace
from mega_fairseq.modules import FairseqDropout, MegaDecoderLayer, SequenceNorm
from mega_fairseq.modules.attention_weights import causal_attention_mask

IncrementalState = Dict[str, Dict[str, Optional[Tensor]]]


class MegaDecoder(FairseqIncrementalDecoder):
    """Decode target prefixes, attending to an encoder output when the layers have cross-attention.

    Parameter names and behaviour follow the official decoder (``embed_tokens``, ``layers.N.*``,
    ``final_norm`` when ``normalize_before``, ``output_projection`` tied to the embedding when
    shared, the ``version`` buffer). Differences, all on purpose: any target length works with
    chunked attention (the layers pad internally); decoder padding is remembered across
    incremental steps; under ``incremental_state`` the decoder runs only the tokens it has not
    seen yet (fairseq's generator passes the whole prefix, one more token at each step).

    Args:
        args: resolved Mega settings (see :func:`mega_config.as_namespace`).
        dictionary: target dictionary.
        embed_tokens: the (possibly shared) target embedding, ``V x D``.
        no_cross_attention: build layers without cross-attention (a decoder-only model).
    """

    def __init__(self, args, dictionary, embed_tokens: nn.Embedding, no_cross_attention: bool = False):
        super().__init__(dictionary)
        self.register_buffer("version", torch.Tensor([3]))
        embed_dim = args.decoder_embed_dim
        if embed_tokens.embedding_dim != embed_dim:
            raise ValueError("the decoder embedding has dimension {} but decoder_embed_dim={}".format(
                embed_tokens.embedding_dim, embed_dim))
        self.embed_dim = embed_dim
        self.padding_idx = embed_tokens.padding_idx
        self.max_target_positions = args.max_target_positions
        self.chunk_size = args.decoder_chunk_size
        self.attention_activation = args.attention_activation_fn
        self.no_cross_attention = no_cross_attention
        self.share_input_output_embed = args.share_decoder_input_output_embed
        self.embed_tokens = embed_tokens
        self.embed_scale = 1.0 if args.no_scale_embedding else math.sqrt(embed_dim)
        self.embedding_dropout = FairseqDropout(args.dropout, module_name=self.__class__.__name__)
        self.embed_norm = SequenceNorm(args.normalization_type, embed_dim) if args.normalize_embedding else None
        layer_args = layer_namespace(args, args.max_target_positions)
        self.layers = nn.ModuleList(
            [MegaDecoderLayer(layer_args, no_cross_attention=no_cross_attention) for _ in range(args.decoder_layers)]
        )
        self.num_layers = len(self.layers)
        self.final_norm = SequenceNorm(args.normalization_type, embed_dim) if args.normalize_before else None
        self._build_output_layer(args, dictionary)

    def _build_output_layer(self, args, dictionary) -> None:
        self.adaptive_softmax = None
        self.output_projection = None
        if args.adaptive_softmax_cutoff is not None:
            self.adaptive_softmax = AdaptiveSoftmax(
                len(dictionary),
                self.embed_dim,
                options.eval_str_list(args.adaptive_softmax_cutoff, type=int),
                dropout=args.adaptive_softmax_dropout,
                adaptive_inputs=self.embed_tokens if args.tie_adaptive_weights else None,
                factor=args.adaptive_softmax_factor,
                tie_proj=args.tie_adaptive_proj,
            )
        elif self.share_input_output_embed:
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
            prev_output_tokens: B x T, ``[eos, y1, ...]`` right padded (under
                ``incremental_state``: the whole prefix so far, or only the new tokens).
            encoder_out: the encoder's output dict (required with cross-attention).
            incremental_state: fairseq's incremental decoding state.
            features_only: return the B x T x D features instead of the logits.
            full_context_alignment: no causal mask (fairseq's alignment training).
            alignment_layer: layer whose cross-attention is returned (default: the last).

        Returns:
            ``(logits B x T x V or features B x T x D, {"attn": [B x T x S or None],
            "inner_states": [T x B x D, ...]})``; under ``incremental_state`` T counts only the
            new tokens.
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
        if alignment_layer is None:
            alignment_layer = self.num_layers - 1
        enc, enc_padding_mask = self._unpack_encoder_out(encoder_out)
        tokens = self._new_tokens(prev_output_tokens, incremental_state)
        seq_len = tokens.size(1)

        x = self.embed_scale * self.embed_tokens(tokens)
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        x = self.embedding_dropout(x)
        padding_mask = tokens.eq(self.padding_idx)
        if not bool(padding_mask.any()):
            padding_mask = None
        inverse_mask = None if padding_mask is None else (~padding_mask).unsqueeze(-1).type_as(x)
        if inverse_mask is not None:
            x = x * inverse_mask

        # B x T x D -> T x B x D
        x = x.transpose(0, 1)
        attn_mask = None
        if incremental_state is None and not full_context_alignment:
            attn_mask = self._causal_mask(seq_len, x)
        attn: Optional[Tensor] = None
        inner_states: List[Optional[Tensor]] = [x]
        for idx, layer in enumerate(self.layers):
            x, layer_attn, _ = layer(
                x,
                enc,
                enc_padding_mask,
                incremental_state,
                attn_mask=attn_mask,
                decoder_padding_mask=padding_mask,
                need_attn=idx == alignment_layer,
            )
            inner_states.append(x)
            if layer_attn is not None and idx == alignment_layer:
                attn = layer_attn.float().to(x)
        if self.final_norm is not None:
            x = self.final_norm(x)
        if inverse_mask is not None:
            x = x * inverse_mask.transpose(0, 1)
        # T x B x D -> B x T x D
        return x.transpose(0, 1), {"attn": [attn], "inner_states": inner_states}

    def _unpack_encoder_out(self, encoder_out) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        if self.no_cross_attention or encoder_out is None:
            if not self.no_cross_attention:
                raise ValueError("encoder_out is required: this decoder's layers attend to the encoder output")
            return None, None
        enc = encoder_out["encoder_out"][0]
        masks = encoder_out.get("encoder_padding_mask") or []
        return enc, (masks[0] if len(masks) > 0 else None)

    def _new_tokens(self, prev_output_tokens: Tensor, incremental_state: Optional[IncrementalState]) -> Tensor:
        """The tokens to run: all of them, or under ``incremental_state`` those not seen yet."""
        if prev_output_tokens.dim() != 2:
            raise ValueError("prev_output_tokens must be Batch x Tgt token ids, got shape {}".format(
                tuple(prev_output_tokens.shape)))
        total = prev_output_tokens.size(1)
        if incremental_state is None:
            if total > self.max_target_positions:
                raise ValueError("target length {} exceeds max_target_positions={}".format(
                    total, self.max_target_positions))
            return prev_output_tokens
        state = self.get_incremental_state(incremental_state, "decoder_steps") or {}
        done = int(state.get("num_steps", 0))
        # The whole prefix (fairseq's generator): skip what was already run. Otherwise the
        # call holds only new tokens.
        tokens = prev_output_tokens[:, done:] if total > done else prev_output_tokens
        if done + tokens.size(1) > self.max_target_positions:
            raise ValueError("decoding past max_target_positions={}".format(self.max_target_positions))
        self.set_incremental_state(incremental_state, "decoder_steps", {"num_steps": done + tokens.size(1)})
        return tokens

    def _causal_mask(self, seq_len: int, like: Tensor) -> Tensor:
        """(n, n) causal mask with n = chunk size when the sequence is chunked, else n = seq_len."""
        frame = self.chunk_size if 0 < self.chunk_size < seq_len else seq_len
        return causal_attention_mask(frame, frame, 0, self.attention_activation, like)

    def output_layer(self, features: Tensor) -> Tensor:
        """B x T x D features -> B x T x V logits (features unchanged with adaptive softmax)."""
        if self.adaptive_softmax is None:
            return self.output_projection(features)
        return features

    def max_positions(self) -> int:
        return self.max_target_positions
