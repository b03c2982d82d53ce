"""Single-head attention weights shared by the Mega self- and cross-attention.

Mega scores a query against a key with ``q . k`` plus a relative positional bias, then turns
scores into weights with one of three attention activations:

* ``softmax``: ``softmax(q . k / sqrt(z) + bias)`` over the visible, non-pad keys;
* ``relu2`` / ``laplace``: ``act(q . k / n + bias)`` element-wise, zero on hidden or pad keys,
  where ``n`` is the number of visible non-pad keys of that query (the official code counts pad
  keys too when a causal mask is given; counting only real keys is the same wherever no pad key is
  visible).

Masks follow the official conventions: ``key_padding_mask`` is bool, True = pad; ``attn_mask``
is additive (0 / -inf) for softmax and multiplicative (1 / 0) for the element-wise activations.

No NaN: a query that sees no real key (e.g. a left pad under a causal mask, or a fully padded
row) spreads its weight uniformly over its visible keys instead of producing 0/0.
"""

from typing import Optional

import torch
from torch import Tensor

from .activations import laplace, relu2, softmax


def causal_attention_mask(
    num_queries: int,
    num_keys: int,
    query_offset: int,
    attention_activation: str,
    like: Tensor,
) -> Tensor:
    """Causal mask for queries at positions ``query_offset + i`` against keys at positions ``j``.

    Returns ``(num_queries, num_keys)`` in ``like``'s dtype/device: additive (0 where
    ``j <= query_offset + i``, -inf elsewhere) for softmax, multiplicative (1 / 0) otherwise.
    """
    query_pos = torch.arange(query_offset, query_offset + num_queries, device=like.device).unsqueeze(1)
    key_pos = torch.arange(num_keys, device=like.device).unsqueeze(0)
    visible = key_pos <= query_pos
    if attention_activation == "softmax":
        mask = torch.zeros(num_queries, num_keys, dtype=like.dtype, device=like.device)
        return mask.masked_fill_(~visible, float("-inf"))
    return visible.to(like.dtype)


def _visible_real_key_counts(key_padding_mask: Optional[Tensor], attn_mask: Optional[Tensor], num_keys: int, like: Tensor):
    """Number of visible non-pad keys per query, clamped to >= 1, broadcastable to the scores."""
    if key_padding_mask is None and attn_mask is None:
        return float(num_keys)
    if attn_mask is None:
        # (..., K) -> (..., 1, 1)
        real = (~key_padding_mask).to(like.dtype)
        return real.sum(dim=-1, keepdim=True).clamp(min=1.0).unsqueeze(-1)
    if key_padding_mask is None:
        # (Q, K) -> (Q, 1)
        return attn_mask.sum(dim=-1, keepdim=True).clamp(min=1.0)
    real = (~key_padding_mask).to(like.dtype)
    # (..., K) x (K, Q) -> (..., Q) -> (..., Q, 1)
    return torch.matmul(real, attn_mask.transpose(0, 1)).clamp(min=1.0).unsqueeze(-1)


def scaled_scores_plus(q: Tensor, k: Tensor, additive: Tensor, scale: float) -> Tensor:
    """``additive + scale * q @ k^T`` as one batched matmul.

    q: ``(..., Q, Z)``; k: ``(..., K, Z)`` with the same leading dims; additive: ``(Q, K)`` or
    ``(..., Q, K)`` (broadcastable). Returns ``(..., Q, K)`` in q's dtype.
    """
    lead = q.shape[:-2]
    num_queries, num_keys = q.size(-2), k.size(-2)
    if additive.dim() > 2:
        additive = additive.expand(*lead, num_queries, num_keys).reshape(-1, num_queries, num_keys)
    flat_q = q.reshape(-1, num_queries, q.size(-1))
    flat_k = k.reshape(-1, num_keys, k.size(-1))
    scores = torch.baddbmm(additive.to(q.dtype), flat_q, flat_k.transpose(1, 2), alpha=scale)
    return scores.view(*lead, num_queries, num_keys)


def attention_weights(
    q: Tensor,
    k: Tensor,
    bias: Tensor,
    attention_activation: str,
    key_padding_mask: Optional[Tensor] = None,
    attn_mask: Optional[Tensor] = None,
    before_attn_fn: bool = False,
) -> Tensor:
    """Attention weights of queries against keys.

    Args:
        q: ``(..., Q, Z)`` queries.
        k: ``(..., K, Z)`` keys (leading dims equal to q's).
        bias: relative positional bias broadcastable to ``(..., Q, K)``.
        attention_activation: ``softmax``, ``relu2`` or ``laplace``.
        key_padding_mask: ``(..., K)`` bool, True = pad, or None.
        attn_mask: ``(Q, K)`` additive (softmax) or multiplicative (others) mask, or None.
        before_attn_fn: return the scores before the activation instead.

    Returns:
        ``(..., Q, K)`` weights: float32 for softmax, q's dtype otherwise.
    """
    num_keys = k.size(-2)
    if attention_activation == "softmax":
        # Everything added to q . k / sqrt(z) is gathered into one additive term first (bias,
        # padding, causal mask: at most (..., Q, K)), so that the scaling, the product and the
        # sum are a single batched matmul.
        additive = bias
        if key_padding_mask is not None:
            # The most negative finite value, not -inf: a query whose visible keys are all pads
            # then gets uniform weights over them instead of NaN, while a query that sees any real
            # key gives its pad keys a weight of exactly 0 (min + q . k rounds back to min).
            additive = additive.masked_fill(key_padding_mask.unsqueeze(-2), torch.finfo(bias.dtype).min)
        if attn_mask is not None:
            additive = additive + attn_mask
        scores = scaled_scores_plus(q, k, additive, q.size(-1) ** -0.5)
        if before_attn_fn:
            return scores
        return softmax(scores, dim=-1)

    lengths = _visible_real_key_counts(key_padding_mask, attn_mask, num_keys, q)
    scores = torch.matmul(q, k.transpose(-1, -2)) / lengths + bias
    if before_attn_fn:
        return scores
    if attention_activation == "relu2":
        weights = relu2(scores)
    elif attention_activation == "laplace":
        weights = laplace(scores)
    else:
        raise ValueError(
            "attention_activation={!r} is not supported; allowed values: softmax, relu2, laplace".format(
                attention_activation
            )
        )
    if key_padding_mask is not None:
        weights = weights.masked_fill(key_padding_mask.unsqueeze(-2), 0.0)
    if attn_mask is not None:
        weights = weights * attn_mask
    return weights
