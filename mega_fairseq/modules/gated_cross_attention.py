"""Gated cross-attention: the Mega decoder's attention over the encoder output."""

from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq.incremental_decoding_utils import with_incremental_state
from torch import Tensor

from .attention_weights import attention_weights
from .gated_attention_base import GatedAttentionBase
from .relative_positional_bias import build_relative_positional_bias

IncrementalState = Dict[str, Dict[str, Optional[Tensor]]]


def real_positions(key_padding_mask: Optional[Tensor], num_keys: int, device) -> Tensor:
    """Position of each key among the real (non-pad) keys of its row.

    Returns ``(num_keys,)`` (no mask) or ``(B, num_keys)``; pad keys get the position of the
    next real key (or 0), which is irrelevant since they are masked.
    """
    if key_padding_mask is None:
        return torch.arange(num_keys, device=device)
    real = (~key_padding_mask).long()
    return (real.cumsum(dim=1) - real).clamp_(min=0)


@with_incremental_state
class GatedCrossAttention(GatedAttentionBase):
    """Single-head gated attention of decoder states (queries) over encoder states (keys/values).

    ``[u | r | q] = W_q norm(x)``, ``u = sigmoid``, ``r = silu``; ``k = W_k enc``, ``v = act(W_v
    enc)``; ``h = act(W_h((attn(q, k) v) * r))``; ``out = x + u * (h - x)`` (norm after when not
    prenorm).

    Padding invariance: the relative positional bias indexes each source token by its position
    among the real tokens of its row, so a sentence gives the same output whatever padding its
    batch adds (the official code indexes raw positions, so left padding shifts it).
    ``padding_invariant=False`` restores the official indexing, for checking against it.
    """

    def __init__(
        self,
        embed_dim,
        zdim,
        ndim=2,
        dropout=0.0,
        attention_dropout=0.0,
        hidden_dropout=0.0,
        activation="silu",
        attention_activation="softmax",
        norm_type="layernorm", prenorm=True, norm_affine=True,  # the norm
        feature_dropout=False,
        rel_pos_bias="simple", max_positions=1024,  # the relative positional bias
        export=False,
        padding_invariant=True,
    ):
        super().__init__(
            embed_dim, zdim, ndim, dropout, attention_dropout, hidden_dropout, activation, attention_activation,
            norm_type, prenorm, norm_affine, feature_dropout, export,
        )
        self.padding_invariant = padding_invariant

        self.k_proj = nn.Linear(embed_dim, zdim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, 2 * embed_dim + zdim)
        self.h_proj = nn.Linear(embed_dim, embed_dim)

        self.max_positions = max_positions
        self.rel_pos_bias = build_relative_positional_bias(rel_pos_bias, zdim, max_positions)
        self.reset_parameters()

    def reset_parameters(self):
        for linear in (self.k_proj, self.v_proj, self.q_proj, self.h_proj):
            nn.init.normal_(linear.weight, mean=0.0, std=0.02)
            nn.init.zeros_(linear.bias)

    def forward(
        self,
        query: Tensor,
        key: Optional[Tensor],
        value: Optional[Tensor],
        padding_mask: Optional[Tensor] = None,
        key_padding_mask: Optional[Tensor] = None,
        incremental_state: Optional[IncrementalState] = None,
        need_weights: bool = False,
        static_kv: bool = False,
        before_attn_fn: bool = False,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """Attend from the decoder states to the encoder states.

        Args:
            query: Tgt x Batch x D decoder states (in incremental mode: the new tokens only).
            key, value: Src x Batch x D encoder states (``value`` is unused: keys and values are
                both projected from ``key``, as in the official code). May be None on
                incremental steps after the first.
            padding_mask: Batch x Tgt decoder padding (unused: every query is computed).
            key_padding_mask: Batch x Src bool, True = pad.
            incremental_state: fairseq incremental-decoding dict; projected keys/values are
                computed on the first step and reused (encoder states are static).
            need_weights: also return the attention weights (Batch x Tgt x Src).
            static_kv: kept for the official signature; cached keys/values are always reused.
            before_attn_fn: return ``(scores before the attention activation, values)``.

        Returns:
            ``(out, weights)``: out is Tgt x Batch x D in query's dtype.
        """
        tgt_len, bsz = self._check_query(query)
        saved_state = self._get_input_buffer(incremental_state) if incremental_state is not None else None
        first_position = 0
        if saved_state is not None and "prev_num_steps" in saved_state:
            first_position = int(saved_state["prev_num_steps"]) + 1

        x = self.norm(query) if self.prenorm else query
        # Tgt x B x (D + D + Z)
        u, r, q = torch.split(self.q_proj(x), [self.embed_dim, self.embed_dim, self.zdim], dim=-1)
        u = torch.sigmoid(u)
        r = F.silu(r)

        if saved_state is not None and "prev_key" in saved_state:
            k, v = saved_state["prev_key"], saved_state["prev_value"]
            key_padding_mask = saved_state.get("prev_key_padding_mask")
        else:
            if key is None:
                raise ValueError("key (the encoder output, Src x Batch x D) is required on the first call")
            if key.dim() != 3 or key.size(1) != bsz or key.size(2) != self.embed_dim:
                raise ValueError(
                    "key must be Src x Batch x D = (S, {}, {}), got shape {}".format(bsz, self.embed_dim, tuple(key.shape))
                )
            if key_padding_mask is not None:
                if tuple(key_padding_mask.shape) != (bsz, key.size(0)):
                    raise ValueError(
                        "key_padding_mask must be Batch x Src = {}, got shape {}".format(
                            (bsz, key.size(0)), tuple(key_padding_mask.shape)
                        )
                    )
                key_padding_mask = key_padding_mask.bool()
                key = self._finite_at_pads(key, key_padding_mask)
            # keys and values from one matmul over the encoder states: Src x B x (Z + D)
            weight = torch.cat([self.k_proj.weight, self.v_proj.weight], dim=0)
            bias = torch.cat([self.k_proj.bias, self.v_proj.bias], dim=0)
            k, v = torch.split(F.linear(key, weight, bias), [self.zdim, self.embed_dim], dim=-1)
            # Src x B x C -> B x Src x C
            k = k.transpose(0, 1)
            v = self.hidden_dropout(self.activation(v), batch_first=False).transpose(0, 1)
        if saved_state is not None:
            saved_state["prev_key"] = k
            saved_state["prev_value"] = v
            if key_padding_mask is not None:
                saved_state["prev_key_padding_mask"] = key_padding_mask
            saved_state["prev_num_steps"] = first_position + tgt_len - 1
            self._set_input_buffer(incremental_state, saved_state)

        src_len = k.size(1)
        frame = max(first_position + tgt_len, src_len)
        self.rel_pos_bias.check_length(frame)
        query_positions = torch.arange(first_position, first_position + tgt_len, device=query.device)
        if self.padding_invariant:
            key_positions = real_positions(key_padding_mask, src_len, query.device)
        else:
            key_positions = torch.arange(src_len, device=query.device)
        # Tgt x Src, or B x Tgt x Src with per-row key positions
        bias = self.rel_pos_bias.for_positions(query_positions, key_positions, frame).to(q.dtype)

        # Tgt x B x Z -> B x Tgt x Z
        q = q.transpose(0, 1)
        weights = attention_weights(
            q, k, bias, self.attention_activation, key_padding_mask, None, before_attn_fn=before_attn_fn
        )
        if before_attn_fn:
            return weights, v
        # B x Tgt x D; r first: the product is laid out Tgt x Batch like r
        h = torch.bmm(self.attention_dropout(weights).to(v.dtype), v)
        out = self._gated_output(query, self.h_proj(r * h.transpose(0, 1)), u)
        return out, (weights if need_weights else None)

    def _check_query(self, query: Tensor) -> Tuple[int, int]:
        if query.dim() != 3 or query.size(-1) != self.embed_dim:
            raise ValueError(
                "query must be Tgt x Batch x embed_dim with embed_dim={}, got shape {}".format(
                    self.embed_dim, tuple(query.shape)
                )
            )
        return query.size(0), query.size(1)
