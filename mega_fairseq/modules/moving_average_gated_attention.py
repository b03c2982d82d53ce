"""Moving Average Equipped Gated Attention: the Mega self-attention sub-layer."""

import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq.incremental_decoding_utils import with_incremental_state
from torch import Tensor

from .attention_weights import attention_weights, causal_attention_mask
from .batch_first_linear import batch_first_linear
from .exponential_moving_average import MultiHeadEMA
from .fused_gates import attend_values, attention_projection_fuses, gated_attention_projection, split_gates
from .fusion_guard import compiling, fused_autograd_applies, plain_module
from .gate_projection import project_gates
from .gated_attention_base import GatedAttentionBase
from .recomputed_activations import recompute_applies, recompute_scope
from .relative_positional_bias import build_relative_positional_bias

IncrementalState = Dict[str, Dict[str, Optional[Tensor]]]


@with_incremental_state
class MovingAverageGatedAttention(GatedAttentionBase):
    """Single-head gated attention whose queries and keys come from a multi-head EMA.

    With ``X`` the (normed) input, ``X' = EMA(X)``: ``v = act(W_v X)``; ``[u | z, r | hx] =
    W_mx X'``; ``u = sigmoid(u)``, ``z, r = silu(.)``; ``q = z * gamma[0] + beta[0]`` and ``k =
    z * gamma[1] + beta[1]``; ``h = act(hx + W_h((attn(q, k) v) * r))``; ``out = x + u * (h - x)``.

    With ``chunk_size > 0`` the sequence is cut into chunks that attend only within themselves
    (the EMA still runs over the whole sequence); any length works (the last chunk is padded
    internally). Incremental decoding (causal modules only) caches keys/values of the current
    chunk and remembers decoder padding across steps; a step may hold several tokens.

    Layout: the residual path, the EMA and the gates (u, r, hx) stay Time x Batch; queries,
    keys, values and the attention output are Batch x Time, so chunks are views, never copies
    (``v_proj`` reads the normed input as strided Batch x Time matrices; the gate split writes q
    and k Batch x Time). Training keeps little for the backward: ``mx_proj`` with the gate split
    (``gate_projection``), ``h_proj((attn v) * r)`` and the output gate (``fused_gates``) and the
    EMA's block matmul (``ema_blocked_scan``) are autograd functions that keep pre-activations
    and recompute the rest (see ``tests/modules/test_saved_activations.py``). Padded positions
    holding NaN/inf never reach real ones.

    Constructor arguments, parameter names and the forward signature follow the official code.
    """

    #: open a recompute scope in training (``recomputed_activations``); ``--keep-activations`` turns it off
    recompute_activations = True

    def __init__(
        self,
        embed_dim,
        zdim,
        hdim,
        ndim,
        dropout=0.0,
        attention_dropout=0.0,
        hidden_dropout=0.0,
        activation="silu",
        attention_activation="softmax",
        bidirectional=False,
        chunk_size=-1,
        truncation=None,
        norm_type="layernorm",
        prenorm=True,
        norm_affine=True,
        feature_dropout=False,
        rel_pos_bias="simple",
        max_positions=1024,
        export=False,
    ):
        super().__init__(
            embed_dim, zdim, ndim, dropout, attention_dropout, hidden_dropout, activation, attention_activation,
            norm_type, prenorm, norm_affine, feature_dropout, export,
        )
        self.hdim = hdim
        self.bidirectional = bidirectional

        self.chunk_size = chunk_size if chunk_size is not None else -1
        self.move = MultiHeadEMA(embed_dim, ndim=ndim, bidirectional=bidirectional, truncation=truncation)

        self.v_proj = nn.Linear(embed_dim, hdim)
        self.mx_proj = nn.Linear(embed_dim, zdim + hdim + 2 * embed_dim)
        self.h_proj = nn.Linear(hdim, embed_dim)
        self.gamma = nn.Parameter(torch.empty(2, zdim))
        self.beta = nn.Parameter(torch.empty(2, zdim))

        self.max_positions = max_positions
        bias_positions = self.chunk_size if self.chunked else max_positions
        self.rel_pos_bias = build_relative_positional_bias(rel_pos_bias, zdim, bias_positions)
        self.reset_parameters()

    @property
    def chunked(self) -> bool:
        return self.chunk_size > 0

    def reset_parameters(self):
        for linear in (self.v_proj, self.mx_proj, self.h_proj):
            nn.init.normal_(linear.weight, mean=0.0, std=0.02)
            nn.init.zeros_(linear.bias)
        nn.init.normal_(self.gamma, mean=0.0, std=0.02)
        nn.init.zeros_(self.beta)

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        x: Tensor,
        padding_mask: Optional[Tensor] = None,
        incremental_state: Optional[IncrementalState] = None,
        need_weights: bool = False,
        attn_mask: Optional[Tensor] = None,
        before_attn_fn: bool = False,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """Run the layer.

        Args:
            x: Time x Batch x embed_dim.
            padding_mask: Batch x Time bool (True = pad) or None. In incremental mode it covers
                only the new tokens; earlier padding is remembered.
            incremental_state: fairseq incremental-decoding dict; the call then continues the
                cached sequence with ``x`` (one or more new tokens) and is always causal.
            need_weights: also return the attention weights.
            attn_mask: full-forward mask, ``(n, n)`` with ``n = chunk_size`` when
                ``0 < chunk_size < Time`` else ``n = Time``: additive 0/-inf for softmax,
                multiplicative 1/0 for relu2/laplace (a larger mask is cut to ``n x n``).
                Ignored in incremental mode.
            before_attn_fn: return ``(scores before the attention activation, values)``.

        Returns:
            ``(out, weights)``: out is Time x Batch x embed_dim in x's dtype; weights (or None) is
            Batch x Chunks x ChunkQueries x ChunkKeys.
        """
        seq_len, bsz = self._check_input(x, padding_mask)
        if padding_mask is not None and padding_mask.dtype != torch.bool:
            padding_mask = padding_mask.bool()
        saved_state = None
        if incremental_state is not None:
            if self.bidirectional:
                raise ValueError(
                    "incremental_state is not supported when bidirectional=True; allowed: "
                    "incremental_state=None, or a module built with bidirectional=False"
                )
            saved_state = self._get_input_buffer(incremental_state)

        x = self._finite_at_pads(x, padding_mask)
        # training: the normed input, q, k and the EMA's decay powers are made again in the backward
        # from tensors kept anyway, not kept (recomputed_activations)
        arguments = (x, padding_mask, incremental_state, saved_state, need_weights, attn_mask, before_attn_fn)
        if saved_state is None and self.recompute_activations and recompute_applies(x, self):
            with recompute_scope():
                return self._forward(*arguments)
        return self._forward(*arguments)

    def _forward(self, x, padding_mask, incremental_state, saved_state, need_weights, attn_mask, before_attn_fn):
        residual = x
        if self.prenorm:
            x = self._pre_norm(x)

        whole_sequence = saved_state is None and not before_attn_fn and not self.hidden_dropout.is_active()
        # v_proj reads the normed input as Batch x Time, so v comes out Batch x Time x H: the layout
        # the chunked attention views (Batch x Chunks x ChunkLen x H) without copying it. When the
        # fused attention projection will run, it adds v_proj's bias itself (value_bias)
        fuse_values = whole_sequence and attention_projection_fuses(self.activation, self.h_proj, x, self.v_proj.weight)
        v_pre, value_bias = self._project_values(x, defer_bias=fuse_values)
        # the EMA output before its silu, T x B x D; its projection T x B x (D + Z + H + D) gives
        # u, r_pre, hx (T x B x C) and q, k (B x T x Z)
        ema_pre = self.move(x, padding_mask, incremental_state, activate=False)
        # the fused projection's hx is a buffer of its own, read only by the output gate
        hx_is_scratch = self._fuse_gate_projection(ema_pre)
        if hx_is_scratch:
            # mx_proj(silu(.)) and the split in one function that keeps neither mx nor mx_proj's output
            u, q, k, r_pre, hx = project_gates(
                ema_pre, self.mx_proj.weight, self.mx_proj.bias, self.gamma, self.beta, self.embed_dim, self.zdim, self.hdim
            )
        else:
            mx = self.dropout(F.silu(ema_pre).to(x.dtype))
            u, q, k, r_pre, hx = split_gates(self.mx_proj(mx), self.gamma, self.beta, self.embed_dim, self.zdim, self.hdim)

        if whole_sequence:
            # whole sequence: h_proj((weights @ act(v_pre)) * silu(r_pre)) as one function that
            # keeps none of act(v), the attention output, r or the product for the backward; B x T x D
            weights = self._chunked_weights(q, k, padding_mask, attn_mask)
            dropped = self.attention_dropout(weights).to(v_pre.dtype)
            h = gated_attention_projection(dropped, v_pre, r_pre, self.activation, self.h_proj, value_bias)
        else:
            v = self.hidden_dropout(self.activation(v_pre), batch_first=True)
            if saved_state is not None:
                h, weights = self._incremental_attention(q, k, v, padding_mask, saved_state, before_attn_fn)
                self._set_input_buffer(incremental_state, saved_state)
            else:
                h, weights = self._chunked_attention(q, k, v, padding_mask, attn_mask, before_attn_fn)
            if before_attn_fn:
                return weights, h
            # B x T x H: laid out like h (the first operand), so h_proj reads it as it is
            h = self.h_proj(h * F.silu(r_pre).transpose(0, 1))

        # B x T x D read as T x B x D
        out = self._gated_output(residual, h.transpose(0, 1), u, hx, hx_is_scratch)
        return out, (weights if need_weights else None)

    def _project_values(self, x: Tensor, defer_bias: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
        """``(v_pre, value_bias)``: ``v_proj`` of the normed input x (Time x Batch x D), Batch x Time x
        H. A plain ``nn.Linear`` without hooks reads x in place
        (:func:`~.batch_first_linear.batch_first_linear`: no copy made or kept); with ``defer_bias``
        its bias is left out of v_pre and returned as ``value_bias`` for the caller to add (else
        None). A module with hooks is called on the transposed view (its bias always applied)."""
        proj = self.v_proj
        if plain_module(proj, nn.Linear):
            if defer_bias:
                return batch_first_linear(x, proj.weight, None), proj.bias
            return batch_first_linear(x, proj.weight, proj.bias), None
        return proj(x.transpose(0, 1)), None

    def _fuse_gate_projection(self, ema_pre: Tensor) -> bool:
        """Whether :func:`~.gate_projection.project_gates` may replace dropout + ``mx_proj`` + split:
        a gradient is needed, no dropout on mx, ``mx_proj`` is a plain ``nn.Linear`` without hooks,
        no autocast and one dtype, not under torch.compile (which fuses the plain ops itself)."""
        proj = self.mx_proj
        if self.dropout.is_active() or not plain_module(proj, nn.Linear) or compiling():
            return False
        return fused_autograd_applies(ema_pre, proj.weight, proj.bias, self.gamma, self.beta)

    def _check_input(self, x: Tensor, padding_mask: Optional[Tensor]) -> Tuple[int, int]:
        if x.dim() != 3 or x.size(-1) != self.embed_dim:
            raise ValueError(
                "x must be Time x Batch x embed_dim with embed_dim={}, got shape {}".format(
                    self.embed_dim, tuple(x.shape)
                )
            )
        seq_len, bsz, _ = x.shape
        if padding_mask is not None and tuple(padding_mask.shape) != (bsz, seq_len):
            raise ValueError(
                "padding_mask must be Batch x Time = {}, got shape {}".format((bsz, seq_len), tuple(padding_mask.shape))
            )
        return seq_len, bsz

    # ---------------------------------------------------------------- attention

    def _attend(self, q, k, v, bias, key_padding_mask, attn_mask, before_attn_fn):
        """Attention within frames: q ``(..., Q, Z)``, k ``(..., K, Z)``, v ``(..., K, H)``."""
        weights = attention_weights(
            q, k, bias, self.attention_activation, key_padding_mask, attn_mask, before_attn_fn=before_attn_fn
        )
        if before_attn_fn:
            return v, weights
        h = torch.matmul(self.attention_dropout(weights).to(v.dtype), v)
        return h, weights

    def _chunk_frame(self, seq_len: int) -> Tuple[int, int]:
        """``(frame, num_chunks)``: the attention frame length and the number of frames."""
        if self.chunked and seq_len > self.chunk_size:
            return self.chunk_size, math.ceil(seq_len / self.chunk_size)
        return seq_len, 1

    def _chunked_weights(self, q, k, padding_mask, attn_mask, before_attn_fn=False) -> Tensor:
        """Attention weights (or scores) within each chunk, Batch x Chunks x n x n.

        q, k: B x L x Z (contiguous: the chunks are views); padding_mask: B x L or None. When L is
        not a whole number of chunks, q and k are padded and the extra keys masked as padding.
        """
        bsz, seq_len, _ = q.shape
        frame, num_chunks = self._chunk_frame(seq_len)
        self.rel_pos_bias.check_length(frame)
        extra = num_chunks * frame - seq_len
        if extra > 0:
            q, k = F.pad(q, (0, 0, 0, extra)), F.pad(k, (0, 0, 0, extra))
            if padding_mask is None:
                padding_mask = q.new_zeros(bsz, seq_len, dtype=torch.bool)
            padding_mask = F.pad(padding_mask, (0, extra), value=True)
        q = q.reshape(bsz, num_chunks, frame, self.zdim)
        k = k.reshape(bsz, num_chunks, frame, self.zdim)
        if padding_mask is not None:
            padding_mask = padding_mask.reshape(bsz, num_chunks, frame)
        if attn_mask is not None:
            attn_mask = self._fit_attn_mask(attn_mask, frame).to(q.dtype)
        bias = self.rel_pos_bias(frame).to(q.dtype)
        return attention_weights(
            q, k, bias, self.attention_activation, padding_mask, attn_mask, before_attn_fn=before_attn_fn
        )

    def _chunked_attention(self, q, k, v, padding_mask, attn_mask, before_attn_fn=False):
        """Full-sequence attention, chunk by chunk.

        q, k: B x L x Z; v: B x L x H; padding_mask: B x L or None. Returns h (B x L x H) and the
        weights (B x K x n x n); with ``before_attn_fn``, v in chunks (B x K x n x H) and the scores.
        """
        weights = self._chunked_weights(q, k, padding_mask, attn_mask, before_attn_fn)
        if before_attn_fn:
            bsz, num_chunks, frame, _ = weights.shape
            extra = num_chunks * frame - v.size(1)
            v = F.pad(v, (0, 0, 0, extra)) if extra > 0 else v
            return v.reshape(bsz, num_chunks, frame, self.hdim), weights
        h = attend_values(self.attention_dropout(weights).to(v.dtype), v, v.size(1))
        return h, weights

    @staticmethod
    def _fit_attn_mask(attn_mask: Tensor, frame: int) -> Tensor:
        if attn_mask.dim() != 2 or attn_mask.size(0) < frame or attn_mask.size(1) < frame:
            raise ValueError(
                "attn_mask must be (n, n) with n >= {} (the chunk or sequence length), got shape {}".format(
                    frame, tuple(attn_mask.shape)
                )
            )
        return attn_mask[:frame, :frame]

    def _incremental_attention(self, q, k, v, padding_mask, saved_state, before_attn_fn=False):
        """Attention of new tokens against the cached keys of the current chunk.

        q, k: B x S x Z and v: B x S x H for the S new tokens; padding_mask: B x S or None.
        Updates ``saved_state`` in place; returns h (B x S x H) and the weights.
        """
        bsz, num_new, _ = q.shape
        prev_key = saved_state.get("prev_key")
        prev_value = saved_state.get("prev_value")
        prev_mask = saved_state.get("prev_key_padding_mask")
        num_prev = prev_key.size(1) if prev_key is not None else 0
        if prev_key is not None:
            k = torch.cat([prev_key, k], dim=1)
            v = torch.cat([prev_value, v], dim=1)
        key_padding_mask = self._append_padding_mask(prev_mask, padding_mask, bsz, num_prev, num_new, q.device)
        total = num_prev + num_new

        if self.chunked and total > self.chunk_size:
            # The step crosses a chunk boundary: place the queries at their positions in the
            # frame (dummy queries in front) and run the chunked causal path.
            frame_q = F.pad(q, (0, 0, num_prev, 0))
            mask = causal_attention_mask(self.chunk_size, self.chunk_size, 0, self.attention_activation, q)
            h, weights = self._chunked_attention(frame_q, k, v, key_padding_mask, mask, before_attn_fn)
            if not before_attn_fn:
                h = h[:, num_prev:]
        else:
            self.rel_pos_bias.check_length(total)
            bias = self.rel_pos_bias.for_step(num_prev, num_new, total).to(q.dtype)
            mask = None
            if num_new > 1:
                mask = causal_attention_mask(num_new, total, num_prev, self.attention_activation, q)
            kpm = key_padding_mask.unsqueeze(1) if key_padding_mask is not None else None
            h, weights = self._attend(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), bias, kpm, mask, before_attn_fn)
            if not before_attn_fn:
                h = h.squeeze(1)

        keep = total % self.chunk_size if self.chunked else total
        if keep == 0:
            for name in ("prev_key", "prev_value", "prev_key_padding_mask"):
                saved_state.pop(name, None)
        else:
            saved_state["prev_key"] = k[:, total - keep:]
            saved_state["prev_value"] = v[:, total - keep:]
            if key_padding_mask is not None:
                saved_state["prev_key_padding_mask"] = key_padding_mask[:, total - keep:]
            else:
                saved_state.pop("prev_key_padding_mask", None)
        return h, weights

    @staticmethod
    def _append_padding_mask(prev_mask, new_mask, bsz, num_prev, num_new, device) -> Optional[Tensor]:
        """Padding of cached + new keys (B x (num_prev + num_new)), or None when nothing is padded."""
        if prev_mask is None and new_mask is None:
            return None
        if prev_mask is None:
            prev_mask = torch.zeros(bsz, num_prev, dtype=torch.bool, device=device)
        if new_mask is None:
            new_mask = torch.zeros(bsz, num_new, dtype=torch.bool, device=device)
        return torch.cat([prev_mask, new_mask], dim=1)

    def extra_repr(self) -> str:
        return "edim={}, zdim={}, hdim={}, ndim={}, chunk={}, attn_act={}, prenorm={}".format(
            self.embed_dim, self.zdim, self.hdim, self.ndim, self.chunk_size, self.attention_activation, self.prenorm
        )
