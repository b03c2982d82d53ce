"""``linear(silu(pre))`` that keeps only ``pre`` for the backward.

Plain autograd keeps both ``pre`` (for silu's derivative) and ``silu(pre)`` (the linear layer's
input, for its weight gradient): two hidden-width tensors per token. :class:`SiluLinear` keeps
``pre`` alone and recomputes ``silu(pre)`` in the backward (one element-wise pass), and turns
the hidden gradient into ``pre``'s gradient in place. Used by the feed-forward block.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


class SiluLinear(torch.autograd.Function):
    """``F.linear(silu(pre), weight, bias)``; pre ``(..., F)``, weight ``(D, F)``, bias ``(D,)`` or None."""

    @staticmethod
    def forward(ctx, pre: Tensor, weight: Tensor, bias: Optional[Tensor]):
        ctx.save_for_backward(pre, weight)
        ctx.has_bias = bias is not None
        return F.linear(F.silu(pre), weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        pre, weight = ctx.saved_tensors
        # under autocast the forward ran in a lower precision than the weight: the backward
        # computes in grad_out's dtype; autograd casts each gradient to its input's dtype
        grad_rows = grad_out.reshape(-1, grad_out.size(-1))
        grad_pre = grad_weight = grad_bias = None
        if ctx.needs_input_grad[1]:
            hidden = F.silu(pre).reshape(-1, pre.size(-1)).to(grad_rows.dtype)
            grad_weight = grad_rows.t().mm(hidden)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_rows.sum(0)
        if ctx.needs_input_grad[0]:
            grad_hidden = grad_rows.mm(weight.to(grad_rows.dtype)).view(pre.shape).to(pre.dtype)
            grad_pre = torch.ops.aten.silu_backward.grad_input(grad_hidden, pre, grad_input=grad_hidden)
        return grad_pre, grad_weight, grad_bias


def silu_linear(pre: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """``F.linear(silu(pre), weight, bias)``; through :class:`SiluLinear` when a gradient is needed."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (pre, weight, bias)):
        return SiluLinear.apply(pre, weight, bias)
    return F.linear(F.silu(pre), weight, bias)
