"""Layout change of the EMA's inputs and outputs: Time x Batch x D <-> D x B x T (channel-first).

The FFT and the blocked scan work channel-first (one row per channel, time contiguous); the layers
are Time x Batch x D. A direct ``permute(2, 1, 0).contiguous()`` reads with a large stride for
every element (on CPU, ~50 ms for 2048 x 4 x 512 floats, one thread). Viewed as one
``A x (B C)`` matrix, the transpose takes torch's blocked 2-D transpose (~9 ms), and
``B x C x A`` -> ``C x B x A`` then moves whole contiguous rows (~1 ms). The gradient takes the
same two copies back.
"""

import torch
from torch import Tensor


def _swap_time_and_channels(x: Tensor) -> Tensor:
    """``A x B x C`` -> contiguous ``C x B x A`` in two cheap copies (see the module docstring)."""
    first, middle, last = x.shape
    rows = x.contiguous().view(first, middle * last).t().contiguous()  # (B C) x A
    return rows.view(middle, last, first).transpose(0, 1).contiguous()


class _SwapTimeAndChannels(torch.autograd.Function):
    """:func:`_swap_time_and_channels` with the same cheap swap for the gradient."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return _swap_time_and_channels(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return _swap_time_and_channels(grad)


def swap_time_and_channels(x: Tensor) -> Tensor:
    """Contiguous ``C x B x A`` copy of an ``A x B x C`` tensor (either direction), differentiable."""
    return _SwapTimeAndChannels.apply(x)
