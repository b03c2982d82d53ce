"""The Mega EMA as its plain recurrence, run by a compiled CPU kernel (``mega_fairseq/csrc``).

For each channel the causal EMA is the recurrence of :func:`~.ema_reference.ema_reference`::

    h[t] = q * h[t - 1] + p_beta * x[t]        (N-dimensional state)
    y[t] = sum_n gamma[n] * h[t, n]  (+ omega * x[t])

and the anti-causal one the same with time running backward. On the CPU the compiled kernel runs it
directly in the layers' Time x Batch x D layout, a segment of steps at a time: the segment's rows
are copied into small local arrays of one-register blocks of channels, and for each block the
states of a few EMA dimensions at once (four forward, two backward) stay in registers through the
segment (a copy for AVX2 + FMA machines, picked when the library loads, and one for any x86-64; on
AVX-512 machines the backward runs a copy of its own with twice the block width and four dimensions
at once, 26 % faster, and ``_kernel.set_wide_vectors(False)`` switches it off, for the tests).
There is no layout change, no block matrix and no FFT, so it is also the most exact path (the
reference itself). Its backward runs the adjoint recurrence
``lam[t] = gamma * gy[t] + q * lam[t + 1]`` back over the sequence and sums the coefficients'
gradients (in float64 across sequences); it keeps only the input and the state at the
start of every :data:`SEGMENT` steps (``N / SEGMENT`` values a token), and remakes a segment's
states from them.

The kernel is built in place by ``python setup.py build_ext --inplace`` (``make install`` runs it)
when torch and a C++ compiler are present; without it :func:`available` is False and the op uses
the blocked scan (same values).

Shapes: x ``T x B x D`` (float32 or float64, CPU); coefficients ``D x N`` per direction; omega ``D``.
"""

from typing import Optional, Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .fusion_guard import compiling

try:  # built by setup.py; optional
    from mega_fairseq import _ema_recurrence as _kernel
except ImportError:  # pragma: no cover - depends on the install
    _kernel = None

#: steps between the states the forward keeps for the backward
SEGMENT = 64


def available() -> bool:
    """Whether the compiled kernel is installed."""
    return _kernel is not None


def applies(x: Tensor, *tensors: Optional[Tensor]) -> bool:
    """Whether :func:`recurrence_ema` can run ``x`` with these coefficients: the kernel is installed,
    everything is on the CPU in ``x``'s dtype (float32 or float64), not under torch.compile."""
    if _kernel is None or x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return False
    if compiling():
        return False
    return all(t is None or (t.device.type == "cpu" and t.dtype == x.dtype) for t in tensors)


def _directions(coefficients: Sequence[Tensor]):
    """Each direction's ``(q, p_beta, gamma)`` as the kernel reads them (``N x D``, contiguous) from
    the flat ``D x N`` coefficients: the causal direction's three, then the anti-causal one's."""
    channel_inner = [c.t().contiguous() for c in coefficients]
    return [channel_inner[i : i + 3] for i in range(0, len(channel_inner), 3)]


def _forward(x: Tensor, omega: Optional[Tensor], directions, keep: bool):
    """``(out, states)``: the kernel over every direction, the second one added into the first's
    output (omega with the first only); ``states`` holds each direction's segment states when ``keep``."""
    out, states = None, []
    for index, (q, p_beta, gamma) in enumerate(directions):
        out, kept = _kernel.forward(x, q, p_beta, gamma, omega if index == 0 else None, out, index == 1, SEGMENT, keep)
        states.append(kept)
    return out, states


class _EMARecurrence(torch.autograd.Function):
    """The EMA (one or two directions) plus ``omega * x``; keeps x and the segment states."""

    @staticmethod
    def forward(ctx, x, omega, *coefficients):
        directions = _directions(coefficients)
        out, states = _forward(x, omega, directions, keep=True)
        ctx.save_for_backward(x, omega, *states, *[t for direction in directions for t in direction])
        ctx.has_omega = omega is not None
        ctx.num_directions = len(directions)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, omega, *rest = ctx.saved_tensors
        count = ctx.num_directions
        states, flat = rest[:count], rest[count:]
        grad = grad.contiguous()
        grad_x, grads, grad_omega = None, [], None
        for index in range(count):
            q, p_beta, gamma = flat[3 * index : 3 * index + 3]
            grad_x, grad_q, grad_p_beta, grad_gamma, omega_sum = _kernel.backward(
                x, grad, q, p_beta, gamma, omega if index == 0 else None, states[index], grad_x, index == 1, SEGMENT)
            grads += [g.t().to(x.dtype) for g in (grad_q, grad_p_beta, grad_gamma)]
            if index == 0 and ctx.has_omega:
                grad_omega = omega_sum.to(x.dtype)
        return (grad_x, grad_omega, *grads)


def recurrence_ema(x: Tensor, q: Tensor, p_beta: Tensor, gamma: Tensor, bidirectional: bool = False,
                   omega: Optional[Tensor] = None) -> Tensor:
    """The EMA of a whole sequence by the compiled recurrence (see the module docstring).

    Args:
        x: ``T x B x D`` (zero at padded positions), CPU, float32 or float64.
        q, p_beta, gamma: ``R x N`` with ``R = D`` (``2 D`` when ``bidirectional``: rows ``D..2D-1``
            are the anti-causal EMA; lag 0 is counted by both directions).
        omega: optional ``D`` residual weights: the output is then ``EMA(x) + omega * x``.

    Returns:
        ``T x B x D``, contiguous.
    """
    if not applies(x, q, p_beta, gamma, omega):
        raise RuntimeError("the compiled EMA recurrence does not apply here (installed: {}; x: {} on {})".format(
            available(), x.dtype, x.device))
    dim = x.size(-1)
    x = x.contiguous()
    omega = omega.contiguous() if omega is not None else None
    coefficients = [q[:dim], p_beta[:dim], gamma[:dim]]
    if bidirectional:
        coefficients += [q[dim:], p_beta[dim:], gamma[dim:]]
    tensors = (x, omega, *coefficients)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return _EMARecurrence.apply(*tensors)
    return _forward(x, omega, _directions(coefficients), keep=False)[0]
