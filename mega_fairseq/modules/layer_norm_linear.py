"""``linear(layer_norm(x))`` that keeps ``x`` and the norm's statistics, not the normed copy.

Plain autograd keeps the layer norm's input with its mean and 1/std (for the norm's backward) and
the normed output (for the linear layer's weight gradient): two model-width tensors per token.
:class:`LayerNormLinear` keeps the input and the statistics only and normalises again in the
backward (one element-wise pass), as ``torch.utils.checkpoint`` would for these two ops. Used by
the pre-norm feed-forward block, whose input stays alive anyway for its residual.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .fusion_guard import fused_autograd_applies, has_forward_hooks, plain_module


class LayerNormLinear(torch.autograd.Function):
    """``F.linear(F.layer_norm(x, (D,), norm_weight, norm_bias, eps), weight, bias)``; x ``(..., D)``."""

    @staticmethod
    def forward(ctx, x: Tensor, norm_weight: Optional[Tensor], norm_bias: Optional[Tensor], eps: float,
                weight: Tensor, bias: Optional[Tensor]):
        normed, mean, rstd = torch.native_layer_norm(x, (x.size(-1),), norm_weight, norm_bias, eps)
        ctx.eps = eps
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, norm_weight, norm_bias, mean, rstd, weight)
        return F.linear(normed, weight, bias)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, norm_weight, norm_bias, mean, rstd, weight = ctx.saved_tensors
        dim = x.size(-1)
        grad_rows = grad_out.reshape(-1, grad_out.size(-1))
        grad_weight = grad_bias = None
        if ctx.needs_input_grad[4]:
            normed = torch.native_layer_norm(x, (dim,), norm_weight, norm_bias, ctx.eps)[0]
            grad_weight = grad_rows.t().mm(normed.reshape(-1, dim))
            del normed
        if ctx.has_bias and ctx.needs_input_grad[5]:
            grad_bias = grad_rows.sum(0)
        grad_x = grad_norm_weight = grad_norm_bias = None
        if any(ctx.needs_input_grad[:3]):
            grad_normed = grad_rows.mm(weight).view(x.shape)
            grad_x, grad_norm_weight, grad_norm_bias = torch.ops.aten.native_layer_norm_backward(
                grad_normed, x, [dim], mean, rstd, norm_weight, norm_bias,
                [ctx.needs_input_grad[0], norm_weight is not None and ctx.needs_input_grad[1],
                 norm_bias is not None and ctx.needs_input_grad[2]],
            )
        return grad_x, grad_norm_weight, grad_norm_bias, None, grad_weight, grad_bias


def fusable_layer_norm(norm: nn.Module) -> Optional[nn.LayerNorm]:
    """The ``nn.LayerNorm`` inside ``norm`` (a ``SequenceNorm`` or a LayerNorm) when it normalises the
    last dimension only and carries no hooks; else None."""
    inner = getattr(norm, "norm", norm)
    if not plain_module(inner, nn.LayerNorm) or len(inner.normalized_shape) != 1:
        return None
    if norm is not inner and has_forward_hooks(norm):
        return None
    return inner


def layer_norm_linear(x: Tensor, norm: nn.LayerNorm, linear: nn.Linear) -> Tensor:
    """``linear(norm(x))``; through :class:`LayerNormLinear` when a gradient is needed, ``linear`` is
    a plain ``nn.Linear`` without hooks, no autocast and one dtype; else the two modules."""
    if plain_module(linear, nn.Linear) and fused_autograd_applies(x, norm.weight, norm.bias, linear.weight, linear.bias):
        return LayerNormLinear.apply(x, norm.weight, norm.bias, norm.eps, linear.weight, linear.bias)
    return linear(norm(x))
