"""Toeplitz matrices built from a table of per-lag values, with a fast backward.

Used by the EMA's direct convolution (one matrix per channel) and by the simple relative
positional bias (one matrix of ``bias(key - query)``).
"""

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


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
    @once_differentiable
    def backward(ctx, grad_matrix: Tensor) -> Tensor:
        return sum_lag_diagonals(grad_matrix)


def sum_lag_diagonals(grad_matrix: Tensor, max_buffer_elements: int = 1 << 20) -> Tensor:
    """``R x (2L - 1)`` sums of an ``R x L x L`` matrix (any strides) along its diagonals: entry
    ``L - 1 + t - s`` collects every ``[r, s, t]``. The backward of building a Toeplitz matrix from
    its lags. Rows are taken in groups whose sheared buffer holds at most ``max_buffer_elements``."""
    rows, size, _ = grad_matrix.shape
    width = 2 * size - 1
    group = max(1, min(rows, max_buffer_elements // (size * width)))
    if group >= rows:
        return _sheared_sum(grad_matrix)
    return torch.cat([_sheared_sum(grad_matrix[start : start + group]) for start in range(0, rows, group)])


def _sheared_sum(grad_matrix: Tensor) -> Tensor:
    rows, size, _ = grad_matrix.shape
    width = 2 * size - 1
    # sheared[r, s, L - 1 + t - s] = grad[r, s, t]; summing over s collects each lag
    sheared = grad_matrix.new_zeros(rows, size, width)
    # (a fresh tensor starts at storage offset 0: a constant offset keeps torch.compile in one graph)
    sheared.as_strided((rows, size, size), (size * width, width - 1, 1), size - 1).copy_(grad_matrix)
    return sheared.sum(1)


def toeplitz_from_lags(lags: Tensor) -> Tensor:
    """``R x L x L`` Toeplitz matrices from an ``R x (2L - 1)`` table indexed by lag ``+ L - 1``."""
    if lags.dim() != 2 or lags.size(-1) % 2 != 1:
        raise ValueError("lags must be R x (2L - 1), got shape {}".format(tuple(lags.shape)))
    return _ToeplitzFromLags.apply(lags.contiguous())
