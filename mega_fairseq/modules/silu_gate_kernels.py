"""The gates' element-wise work in single passes: a compiled CPU kernel (``mega_fairseq/csrc``) with a
plain torch fallback.

The fused gate functions (:mod:`.fused_gates`, :mod:`.gate_projection`) apply silu, its derivative
and the products around them block by block. As plain torch ops every operation is a pass over
the block and every silu or silu derivative an ``exp``: the reset gate's backward alone is five
passes and two ``exp`` per element. The kernel (``csrc/silu_gates.cpp``) does each step below in
one pass with one ``exp`` per element, in the blocks' own layout; its ``exp`` is a vectorised
polynomial (as exact as torch's silu: ~2e-7 relative), about twice as fast as torch's. The kernel
has a copy for AVX-512, one for AVX2 + FMA and one for any x86-64, picked when the library loads.

Each function takes Rows x Cols x Width tensors of one shape whose last dimension is contiguous
(the blocks: a run of time steps Steps x Batch x C, or Sequences x Tokens x H) and writes into the
given outputs. The kernel runs when it is installed and every tensor is a float32 CPU tensor
laid out so (:func:`applies`); otherwise the same values come from torch ops (other dtypes and
devices; float32 results then differ by rounding only). The kernel is built by ``python setup.py
build_ext --inplace`` (``make install``) when torch and a C++ compiler are present.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

try:  # built by setup.py; optional
    from mega_fairseq import _silu_gates as _kernel
except ImportError:  # pragma: no cover - depends on the install
    _kernel = None


def available() -> bool:
    """Whether the compiled kernel is installed."""
    return _kernel is not None


def applies(*tensors: Optional[Tensor]) -> bool:
    """Whether the kernel can run on these tensors (None: an output not asked for): installed, and
    all are float32 CPU tensors of the first one's 3-d shape with a contiguous last dimension."""
    if _kernel is None:
        return False
    shape = tensors[0].shape
    for tensor in tensors:
        if tensor is None:
            continue
        if tensor.dtype != torch.float32 or tensor.device.type != "cpu" or tensor.dim() != 3:
            return False
        if tensor.shape != shape or (tensor.stride(-1) != 1 and tensor.size(-1) > 1):
            return False
    return True


def _bias_applies(x: Tensor, bias: Optional[Tensor]) -> bool:
    """The kernel takes ``bias`` (None, or a contiguous float32 CPU vector of x's last size)."""
    if bias is None:
        return True
    return (bias.dtype == torch.float32 and bias.device.type == "cpu" and bias.dim() == 1
            and bias.size(0) == x.size(-1) and bias.is_contiguous())


def silu_into(x: Tensor, out: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """``out = silu(x + bias)`` (``silu(x)`` when bias is None; bias: a vector over the last
    dimension); returns out."""
    if applies(x, out) and _bias_applies(x, bias):
        _kernel.silu(x, out, bias)
        return out
    if bias is not None:
        return torch.ops.aten.silu_(torch.add(x, bias, out=out))
    return torch.ops.aten.silu.out(x, out=out)


def silu_with_slope(x: Tensor, out: Tensor, slope: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """``out = silu(v)`` and ``slope = silu'(v)`` with ``v = x + bias`` (``x`` when bias is None), for a
    backward that multiplies by the slope later; returns out."""
    if applies(x, out, slope) and _bias_applies(x, bias):
        _kernel.silu_with_slope(x, out, slope, bias)
        return out
    if bias is not None:
        x = torch.add(x, bias, out=out)
    torch.ops.aten.silu_backward.grad_input(torch.ones((), dtype=x.dtype, device=x.device).expand_as(x), x,
                                            grad_input=slope)
    return torch.ops.aten.silu.out(x, out=out)


def mul_silu_(a: Tensor, r_pre: Tensor, scratch: Tensor) -> Tensor:
    """``a *= silu(r_pre)`` in place; returns a. ``scratch`` (a's shape) is only used by the fallback."""
    if applies(a, r_pre):
        _kernel.mul_silu_(a, r_pre)
        return a
    return a.mul_(torch.ops.aten.silu.out(r_pre, out=scratch))


def reset_gate_backward(attended: Tensor, grad: Tensor, r_pre: Tensor, gated: Optional[Tensor],
                        grad_r_pre: Optional[Tensor], scratch: Tensor) -> Tensor:
    """The backward of the reset gate ``p = attended * silu(r_pre)`` for ``grad = dL/dp``.

    Writes ``gated = p`` (for the next projection's weight gradient; skipped when None) and
    ``grad_r_pre = grad * attended * silu'(r_pre)`` (skipped when None), then turns ``grad`` into
    ``dL/dattended = grad * silu(r_pre)`` in place and returns it. ``attended`` is not needed
    afterwards (the fallback overwrites it); ``scratch`` (its shape) is only used by the fallback.
    """
    if applies(attended, grad, r_pre, gated, grad_r_pre):
        _kernel.reset_gate_backward(attended, grad, r_pre, gated, grad_r_pre)
        return grad
    reset = torch.ops.aten.silu.out(r_pre, out=scratch)
    if gated is not None:
        torch.mul(attended, reset, out=gated)
    if grad_r_pre is not None:
        torch.ops.aten.silu_backward.grad_input(attended.mul_(grad), r_pre, grad_input=grad_r_pre)
    return grad.mul_(reset)


def gated_output_into(residual: Tensor, pre: Tensor, u: Tensor, out: Tensor) -> Tensor:
    """``out = residual + u * (silu(pre) - residual)`` (the update gate); returns out."""
    if applies(residual, pre, u, out):
        _kernel.gated_output(residual, pre, u, out)
        return out
    gated = torch.ops.aten.silu.out(pre, out=out)
    return torch.lerp(residual, gated, u, out=gated)


def gated_output_backward(grad: Tensor, residual: Tensor, pre: Tensor, u: Tensor, grad_pre: Tensor,
                          grad_residual: Optional[Tensor], grad_u: Optional[Tensor], scratch: Tensor) -> None:
    """The gradients of ``out = residual + u * (silu(pre) - residual)`` from ``grad = dL/dout``:
    ``grad_pre = grad * u * silu'(pre)``, ``grad_residual = grad * (1 - u)`` and ``grad_u = grad *
    (silu(pre) - residual)`` (the last two skipped when None). ``scratch`` (grad's shape) is only
    used by the fallback."""
    if applies(grad, residual, pre, u, grad_pre, grad_residual, grad_u):
        _kernel.gated_output_backward(grad, residual, pre, u, grad_pre, grad_residual, grad_u)
        return
    through = torch.mul(grad, u, out=scratch)
    if grad_residual is not None:
        torch.sub(grad, through, out=grad_residual)
    if grad_u is not None:
        torch.ops.aten.silu.out(pre, out=grad_u).sub_(residual).mul_(grad)
    torch.ops.aten.silu_backward.grad_input(through, pre, grad_input=grad_pre)


def _rows_fit(rows: Tensor, width: int) -> bool:
    """The kernel takes ``rows`` (gamma or beta) as a contiguous float32 CPU 2 x width tensor."""
    return rows.dtype == torch.float32 and rows.device.type == "cpu" and rows.shape == (2, width) and rows.is_contiguous()


def query_key_into(z_pre: Tensor, gamma: Tensor, beta: Tensor, q: Tensor, k: Tensor):
    """``q = z * gamma[0] + beta[0]`` and ``k = z * gamma[1] + beta[1]`` with ``z = silu(z_pre)``, written
    into q and k (all three one shape, e.g. Time x Batch x Z views; gamma, beta 2 x Z). The kernel forms
    z on the fly (no z-sized temporary)."""
    if applies(z_pre, q, k) and _rows_fit(gamma, z_pre.size(-1)) and _rows_fit(beta, z_pre.size(-1)):
        _kernel.query_key(z_pre, gamma, beta, q, k)
        return
    z = F.silu(z_pre)
    torch.addcmul(beta[0], z, gamma[0], out=q)
    torch.addcmul(beta[1], z, gamma[1], out=k)


def query_key_backward(grad_q: Tensor, grad_k: Tensor, z_pre: Tensor, gamma: Tensor, grad_z_pre: Tensor,
                       with_sums: bool) -> Optional[Tensor]:
    """The backward of ``q = z * gamma[0] + beta[0]`` and ``k = z * gamma[1] + beta[1]`` with ``z =
    silu(z_pre)``, from ``grad_q = dL/dq`` and ``grad_k = dL/dk`` (all four operands one shape, e.g.
    Time x Batch x Z views; gamma 2 x Z): writes ``grad_z_pre = (grad_q * gamma[0] + grad_k * gamma[1])
    * silu'(z_pre)``. With ``with_sums`` also returns the 4 x Z float64 column sums (over the first two
    dimensions) of ``grad_q * z``, ``grad_k * z``, ``grad_q`` and ``grad_k``: the gradients of gamma and
    beta; else None. The kernel forms z and its slope on the fly (no z-sized temporary)."""
    if applies(grad_q, grad_k, z_pre, grad_z_pre) and _rows_fit(gamma, z_pre.size(-1)):
        sums = z_pre.new_zeros(4, z_pre.size(-1), dtype=torch.float64) if with_sums else None
        _kernel.query_key_backward(grad_q, grad_k, z_pre, gamma, grad_z_pre, sums)
        return sums
    sigmoid = torch.sigmoid(z_pre)
    z = z_pre * sigmoid
    torch.mul(grad_q, gamma[0], out=grad_z_pre).addcmul_(grad_k, gamma[1]).mul_(sigmoid * (1 + z_pre * (1 - sigmoid)))
    if not with_sums:
        return None
    sums = [(grad_q * z).sum((0, 1)), (grad_k * z).sum((0, 1)), grad_q.sum((0, 1)), grad_k.sum((0, 1))]
    return torch.stack(sums).double()
