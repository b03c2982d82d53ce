"""Direct (dense Toeplitz) evaluation of the Mega EMA convolution for short sequences.

For a sequence of ``L`` steps the EMA convolution of one channel is a matrix product with an
``L x L`` Toeplitz matrix: entry ``[s, t]`` is the kernel tap for lag ``t - s`` (output ``t``,
input ``s``). Causal kernels fill the upper triangle (``t >= s``); the bidirectional EMA also
fills the lower one with its anti-causal kernel, the lag-0 tap being counted by both directions.

Batched over channels this is a single ``bmm`` of ``D x B x L`` by ``D x L x L``: for the
sentence lengths of translation (tens of tokens) it needs fewer operations than an FFT and, in the
bidirectional case, none of the flips and doubled rows of the blocked scan.

:func:`toeplitz_conv_tbd` takes and returns the layers' Time x Batch x D layout and handles the
layout changes itself (see there); :func:`lag_table` also serves the blocked scan's in-block
matrix. Inputs are already in the compute dtype.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from .toeplitz_matrix import toeplitz_from_lags


def lag_table(length: int, forward_kernel: Tensor, backward_kernel: Optional[Tensor] = None) -> Tensor:
    """Lag table ``R x (2 length - 1)`` of a causal (and optional anti-causal) kernel.

    Args:
        length: sequence length ``L``.
        forward_kernel: ``R x K`` causal taps (``K <= L``; missing taps are zero).
        backward_kernel: ``R x K`` anti-causal taps (tap ``m`` weighs ``x[t + m]``), or None.
    """
    for kernel in (forward_kernel, backward_kernel):
        if kernel is not None and kernel.size(-1) > length:
            raise ValueError("kernel length {} exceeds the sequence length {}".format(kernel.size(-1), length))
    causal = F.pad(forward_kernel, (0, length - forward_kernel.size(-1)))
    if backward_kernel is None:
        return F.pad(causal, (length - 1, 0))
    anti = F.pad(backward_kernel, (0, length - backward_kernel.size(-1)))
    return torch.cat([anti[:, 1:].flip(-1), causal[:, :1] + anti[:, :1], causal[:, 1:]], dim=-1)


def _batch_channel_time(x: Tensor) -> Tensor:
    """``L x B x D`` -> contiguous ``B x D x L`` as one 2-D transpose of ``L x (B D)`` (torch's blocked
    transpose: ~4-7x faster than ``permute(1, 2, 0).contiguous()`` at D = 512, equal for small sizes)."""
    length, bsz, dim = x.shape
    return x.reshape(length, bsz * dim).t().contiguous().view(bsz, dim, length)


class _ToeplitzConvTBD(torch.autograd.Function):
    """``y = x @ M`` per channel for Time x Batch x D tensors, with cheap layout changes.

    ``bmm`` on a permuted Time x Batch x D view copies every channel's matrix separately
    (forward and backward), and a contiguous D x B x L copy is a full transpose. A Batch x D x L
    copy is a cheaper, blocked transpose (one ``L x D`` tile per batch row) whose D x B x L view is
    a valid strided ``bmm`` operand. The result is returned as a Time x Batch x D view of the
    D x B x L product (the next element-wise op reads it in place).
    """

    @staticmethod
    def forward(ctx, x: Tensor, matrix: Tensor) -> Tensor:
        x_bdl = _batch_channel_time(x)
        ctx.save_for_backward(x_bdl, matrix)
        return torch.bmm(x_bdl.transpose(0, 1), matrix).permute(2, 1, 0)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        x_bdl, matrix = ctx.saved_tensors
        grad_dbl = _batch_channel_time(grad_out).transpose(0, 1)  # D x B x L view
        grad_x = grad_matrix = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.bmm(grad_dbl, matrix.transpose(1, 2)).permute(2, 1, 0)
        if ctx.needs_input_grad[1]:
            # D x L x B @ D x B x L -> D x L x L
            grad_matrix = torch.bmm(x_bdl.permute(1, 2, 0), grad_dbl)
        return grad_x, grad_matrix


def toeplitz_conv_tbd(x: Tensor, forward_kernel: Tensor, backward_kernel: Optional[Tensor] = None) -> Tensor:
    """``y[t] = sum_m fwd[m] x[t - m] (+ sum_m bwd[m] x[t + m])`` as one batched matmul per channel.

    Args:
        x: ``T x B x D`` input (zero at padded positions).
        forward_kernel: ``D x K`` causal kernel, ``K <= T``.
        backward_kernel: ``D x K`` anti-causal kernel, or None (causal only).

    Returns:
        ``T x B x D`` (a strided view of a ``D x B x T`` product).
    """
    matrix = toeplitz_from_lags(lag_table(x.size(0), forward_kernel, backward_kernel))
    return _ToeplitzConvTBD.apply(x, matrix)
