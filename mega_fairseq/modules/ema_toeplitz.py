"""Direct (dense Toeplitz) evaluation of the Mega EMA convolution for short sequences.

For a sequence of ``L`` steps the EMA convolution of one channel is a matrix product with an
``L x L`` Toeplitz matrix: entry ``[s, t]`` is the kernel tap for lag ``t - s`` (output ``t``,
input ``s``). Causal kernels fill the upper triangle (``t >= s``); the bidirectional EMA also
fills the lower one with its anti-causal kernel, the lag-0 tap being counted by both directions.

Batched over channels this is a single ``bmm`` of ``D x B x L`` by ``D x L x L``: for the
sentence lengths of translation (tens of tokens) it needs fewer operations than an FFT and, in the
bidirectional case, none of the flips and doubled rows of the blocked scan.

Inputs are channel-first, ``D x B x L``, already in the compute dtype.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


class _ToeplitzFromLags(torch.autograd.Function):
    """``R x (2L - 1)`` lag table -> ``R x L x L`` matrix ``M[r, s, t] = lags[r, L - 1 + t - s]``.

    The backward sums the gradient along each diagonal through a sheared strided view (one
    vectorised copy and one sum) instead of autograd's element-by-element scatter.
    """

    @staticmethod
    def forward(ctx, lags: Tensor) -> Tensor:
        size = (lags.size(-1) + 1) // 2
        # windows[r, i, t] = lags[r, i + t]; row i = L - 1 - s gives lags[L - 1 + t - s]
        return lags.unfold(-1, size, 1).flip(1).contiguous()

    @staticmethod
    def backward(ctx, grad_matrix: Tensor) -> Tensor:
        rows, size, _ = grad_matrix.shape
        width = 2 * size - 1
        # sheared[r, s, L - 1 + t - s] = grad[r, s, t]; summing over s collects each lag
        sheared = grad_matrix.new_zeros(rows, size, width)
        sheared.as_strided(
            (rows, size, size), (size * width, width - 1, 1), sheared.storage_offset() + size - 1
        ).copy_(grad_matrix)
        return sheared.sum(1)


def toeplitz_from_lags(lags: Tensor) -> Tensor:
    """``R x L x L`` Toeplitz matrices from an ``R x (2L - 1)`` table indexed by lag ``+ L - 1``."""
    if lags.dim() != 2 or lags.size(-1) % 2 != 1:
        raise ValueError("lags must be R x (2L - 1), got shape {}".format(tuple(lags.shape)))
    return _ToeplitzFromLags.apply(lags.contiguous())


def lag_table(length: int, forward_kernel: Tensor, backward_kernel: Optional[Tensor] = None) -> Tensor:
    """Lag table ``R x (2 length - 1)`` of a causal (and optional anti-causal) kernel.

    Args:
        length: sequence length ``L``.
        forward_kernel: ``R x K`` causal taps (``K <= L``; missing taps are zero).
        backward_kernel: ``R x K`` anti-causal taps (tap ``m`` weighs ``x[t + m]``), or None.
    """
    taps = forward_kernel.size(-1)
    if taps > length:
        raise ValueError("kernel length {} exceeds the sequence length {}".format(taps, length))
    causal = F.pad(forward_kernel, (0, length - taps))
    if backward_kernel is None:
        return F.pad(causal, (length - 1, 0))
    anti = F.pad(backward_kernel, (0, length - taps))
    return torch.cat([anti[:, 1:].flip(-1), causal[:, :1] + anti[:, :1], causal[:, 1:]], dim=-1)


def toeplitz_conv(x: Tensor, forward_kernel: Tensor, backward_kernel: Optional[Tensor] = None) -> Tensor:
    """``y[t] = sum_m fwd[m] x[t - m] (+ sum_m bwd[m] x[t + m])`` as one batched matmul.

    Args:
        x: ``D x B x L`` input (any strides; zero at padded positions).
        forward_kernel: ``D x K`` causal kernel, ``K <= L``.
        backward_kernel: ``D x K`` anti-causal kernel or None (causal only).

    Returns:
        ``D x B x L``.
    """
    matrix = toeplitz_from_lags(lag_table(x.size(-1), forward_kernel, backward_kernel))
    return torch.bmm(x, matrix)
