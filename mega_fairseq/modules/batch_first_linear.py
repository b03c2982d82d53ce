"""A linear layer that reads a Time x Batch input and writes its output Batch x Time.

The Mega self-attention keeps its values Batch x Time (the chunked attention views them without
copying) while its normed input is Time x Batch. ``F.linear(x.transpose(0, 1), W, b)`` works, but
the matmul first makes a contiguous Batch x Time copy of the input and keeps that copy for the
weight gradient, although the input itself stays alive for the layer's other consumers.
:class:`BatchFirstLinear` reads each sequence as a strided matrix (rows ``Batch x D`` apart, which
the GEMM takes as its leading dimension), so nothing is copied in the forward and only the input
itself is kept.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .fusion_guard import fused_autograd_applies

#: from this many steps per sequence the strided path runs (shorter sequences: one GEMM reads the
#: weight once for the whole batch, the copy is small and the batched GEMM's per-sequence calls cost more)
MIN_SEQUENCE_LENGTH = 128
#: up to this many sequences the weight gradient is one accumulating GEMM per sequence; beyond,
#: one GEMM over a Batch x Time copy of the input (made in the backward, not kept)
_PER_SEQUENCE_MAX_BATCH = 8


class BatchFirstLinear(torch.autograd.Function):
    """``F.linear(x.transpose(0, 1), weight, bias)`` for x Time x Batch x D; returns Batch x Time x H."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Optional[Tensor]):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _forward(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight = ctx.saved_tensors
        seq_len, bsz, dim = x.shape
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            # Batch x Time x D, handed back as the Time x Batch view of it
            grad_x = torch.matmul(grad_out, weight).transpose(0, 1)
        if ctx.needs_input_grad[1]:
            if bsz <= _PER_SEQUENCE_MAX_BATCH:
                grad_weight = grad_out[0].t().mm(x[:, 0])
                for b in range(1, bsz):
                    grad_weight.addmm_(grad_out[b].t(), x[:, b])
            else:
                grad_weight = grad_out.reshape(-1, grad_out.size(-1)).t().mm(x.transpose(0, 1).reshape(-1, dim))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_out.sum((0, 1))
        return grad_x, grad_weight, grad_bias


def _forward(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    x_bt = x.transpose(0, 1)  # Batch x Time x D, rows Batch x D apart: a strided matrix per sequence
    weight_t = weight.t().expand(x_bt.size(0), -1, -1)
    if bias is None:
        return torch.bmm(x_bt, weight_t)
    return torch.baddbmm(bias, x_bt, weight_t)


def batch_first_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """``F.linear(x.transpose(0, 1), weight, bias)``: x Time x Batch x D (last dim contiguous), weight
    H x D, bias H or None; returns Batch x Time x H. Through :class:`BatchFirstLinear` when a gradient
    is needed, the sequences are long (:data:`MIN_SEQUENCE_LENGTH`) and the dtypes agree (not under
    autocast), else ``F.linear``."""
    long_sequences = x.dim() == 3 and x.size(0) >= MIN_SEQUENCE_LENGTH and x.stride(-1) == 1
    if long_sequences and fused_autograd_applies(x, weight, bias):
        return BatchFirstLinear.apply(x, weight, bias)
    return F.linear(x.transpose(0, 1), weight, bias)
