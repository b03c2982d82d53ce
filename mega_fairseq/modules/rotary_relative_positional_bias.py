"""Relative positional bias from two learned vectors rotated by their positions (RoPE style)."""

import math
from typing import Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor


def sinusoid_tables(num_positions: int, embed_dim: int) -> Tuple[Tensor, Tensor]:
    """sin and cos of ``position * frequency``, each ``(num_positions, embed_dim // 2)`` float32."""
    half_dim = embed_dim // 2
    frequency = torch.exp(torch.arange(half_dim, dtype=torch.float) * -(math.log(10000) / half_dim))
    angles = torch.arange(num_positions, dtype=torch.float).unsqueeze(1) * frequency.unsqueeze(0)
    return torch.sin(angles), torch.cos(angles)


class RotaryRelativePositionalBias(nn.Module):
    """Bias ``[i, j] = rot(alpha, i) . rot(beta, j)``, which depends only on ``j - i``.

    ``alpha`` and ``beta`` are learned ``(1, embed_dim)`` vectors; ``rot(v, p)`` rotates each pair
    ``(v[k], v[k + embed_dim/2])`` by angle ``p * 10000^(-k / (embed_dim/2))``. The sin/cos
    tables are not saved; they grow on demand beyond ``max_positions``. The ``_float_tensor``
    buffer only records the module's device and dtype (it is part of the official state_dict).
    """

    def __init__(self, embed_dim: int, max_positions: int):
        super().__init__()
        if embed_dim % 2 != 0:
            raise ValueError("embed_dim={} must be even for the rotary relative positional bias".format(embed_dim))
        self.embed_dim = embed_dim
        self.max_positions = max_positions
        self.alpha = nn.Parameter(torch.empty(1, embed_dim))
        self.beta = nn.Parameter(torch.empty(1, embed_dim))
        self.register_buffer("_float_tensor", torch.FloatTensor(1))
        self._sine, self._cosine = sinusoid_tables(max_positions, embed_dim)
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.normal_(self.alpha, mean=0.0, std=0.02)
        nn.init.normal_(self.beta, mean=0.0, std=0.02)

    def check_length(self, seq_len: int):
        """Any length works (the tables grow); kept for interface symmetry."""

    def _tables(self, num_positions: int) -> Tuple[Tensor, Tensor]:
        if num_positions > self._sine.size(0):
            self._sine, self._cosine = sinusoid_tables(num_positions, self.embed_dim)
        like = self._float_tensor
        if self._sine.device != like.device or self._sine.dtype != like.dtype:
            self._sine, self._cosine = self._sine.to(like), self._cosine.to(like)
        return self._sine, self._cosine

    def rotate(self, vector: Tensor, positions: Tensor, num_positions: Optional[int] = None) -> Tensor:
        """Rotate ``vector`` ``(1, E)`` to each of ``positions`` ``(..., P)``: ``(..., P, E)``.

        ``num_positions`` (optional) is an upper bound of ``positions`` + 1, which saves a
        device synchronisation.
        """
        if num_positions is None:
            num_positions = int(positions.max().item()) + 1 if positions.numel() > 0 else 1
        sine, cosine = self._tables(num_positions)
        sin, cos = sine[positions], cosine[positions]
        first, second = torch.chunk(vector, 2, dim=-1)
        return torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)

    def forward(self, seq_len: int) -> Tensor:
        """Bias of a sequence against itself: ``(seq_len, seq_len)``."""
        positions = torch.arange(seq_len, device=self.alpha.device)
        return self.for_positions(positions, positions, seq_len)

    def for_step(self, first: int, num_queries: int, num_keys: int) -> Tensor:
        """Bias of queries at positions ``first, ..., first + num_queries - 1`` against keys at
        ``0, ..., num_keys - 1``: ``(num_queries, num_keys)``."""
        device = self.alpha.device
        return self.for_positions(torch.arange(first, first + num_queries, device=device),
                                  torch.arange(num_keys, device=device), num_keys)

    def for_positions(self, query_positions: Tensor, key_positions: Tensor, num_positions: Optional[int] = None) -> Tensor:
        """Bias for arbitrary non-negative positions: ``(..., Q)`` and ``(..., K)`` give ``(..., Q, K)``.

        ``num_positions`` (optional) bounds every position from above (exclusive).
        """
        rotated_alpha = self.rotate(self.alpha, query_positions, num_positions)
        rotated_beta = self.rotate(self.beta, key_positions, num_positions)
        return torch.matmul(rotated_alpha, rotated_beta.transpose(-1, -2))

    def extra_repr(self) -> str:
        return "embed_dim={}, max_positions={}".format(self.embed_dim, self.max_positions)
