"""Learned scalar bias for each relative distance between a query and a key."""

from typing import Optional

import torch
import torch.nn as nn
from torch import Tensor

from .toeplitz_matrix import toeplitz_from_lags


class SimpleRelativePositionalBias(nn.Module):
    """One learned scalar per relative distance ``key_pos - query_pos`` in ``[-(M-1), M-1]``.

    The parameter ``rel_pos_bias`` has ``2*M - 1`` entries; entry ``M - 1 + d`` is the bias of
    distance ``d``. ``M = max_positions`` is the longest sequence the bias can index.
    """

    def __init__(self, max_positions: int):
        super().__init__()
        if max_positions < 1:
            raise ValueError("max_positions={} must be >= 1".format(max_positions))
        self.max_positions = max_positions
        self.rel_pos_bias = nn.Parameter(torch.empty(2 * max_positions - 1))
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.normal_(self.rel_pos_bias, mean=0.0, std=0.02)

    def check_length(self, seq_len: int):
        """Raise a ValueError when ``seq_len`` positions cannot be indexed."""
        if seq_len > self.max_positions:
            raise ValueError(
                "sequence length {} exceeds max_positions={} of the simple relative positional bias; "
                "allowed lengths: <= {} (raise max_positions, use chunk_size, or rel_pos_bias='rotary')".format(
                    seq_len, self.max_positions, self.max_positions
                )
            )

    def forward(self, seq_len: int) -> Tensor:
        """Bias of a sequence against itself: ``(seq_len, seq_len)``, ``[i, j] = b(j - i)``.

        A Toeplitz matrix of the ``2 seq_len - 1`` central table entries (its backward sums
        diagonals instead of scattering into the table element by element).
        """
        self.check_length(seq_len)
        center = self.max_positions - 1
        lags = self.rel_pos_bias[center - (seq_len - 1): center + seq_len]
        return toeplitz_from_lags(lags.unsqueeze(0))[0]

    def for_step(self, first: int, num_queries: int, num_keys: int) -> Tensor:
        """Bias of queries at positions ``first, ..., first + num_queries - 1`` against keys at
        ``0, ..., num_keys - 1`` (``num_keys <= max_positions``): ``(num_queries, num_keys)``. One query
        (a decoding step) reads its row straight from the table (a view)."""
        if num_queries == 1:
            start = self.max_positions - 1 - first
            return self.rel_pos_bias[start: start + num_keys].unsqueeze(0)
        device = self.rel_pos_bias.device
        return self.for_positions(torch.arange(first, first + num_queries, device=device),
                                  torch.arange(num_keys, device=device))

    def for_positions(self, query_positions: Tensor, key_positions: Tensor, num_positions: Optional[int] = None) -> Tensor:
        """Bias for arbitrary integer positions.

        Args:
            query_positions: ``(..., Q)`` long tensor.
            key_positions: ``(..., K)`` long tensor (leading dims broadcast with the queries').

        Returns:
            ``(..., Q, K)`` with ``[..., i, j] = b(key_positions[j] - query_positions[i])``.
            Distances outside the table are clamped to its ends; callers check lengths with
            :meth:`check_length`. ``num_positions`` is accepted for interface symmetry.
        """
        distance = key_positions.unsqueeze(-2) - query_positions.unsqueeze(-1)
        index = (distance + (self.max_positions - 1)).clamp_(0, 2 * self.max_positions - 2)
        return self.rel_pos_bias[index]

    def extra_repr(self) -> str:
        return "max_positions={}".format(self.max_positions)
