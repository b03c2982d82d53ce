"""Blocked ("chunked scan") evaluation of the causal Mega EMA convolution.

For one channel ``d`` the EMA of an input sequence is

    h[t] = q * h[t - 1] + p_beta * x[t]        (N-dimensional state)
    y[t] = sum_n c[n] * h[t, n]

which equals the causal convolution of ``x`` with ``k[m] = sum_n c p_beta q^m``.
Instead of one long FFT (cost O(log L) per token with a large constant and poor
memory locality on CPU) the sequence is cut into blocks of ``C`` steps:

* within a block, the causal convolution is a matmul with a ``C x C``
  lower-triangular Toeplitz matrix built from ``k[0..C-1]``;
* across blocks, only the N-dimensional state travels. A block's own end state
  is ``sum_j p_beta q^(C-1-j) x[j]``; the carried state obeys
  ``H[i] = q^C H[i-1] + own[i]``, solved by a log-depth doubling scan;
* the carried state enters the next block as ``sum_n c q^(t+1) H[i-1]``.

Every step is exact (no division by ``q^t``; powers that underflow to 0 are
fine). The cost per token is ``2C + 4N`` multiply-adds plus a
``O(N log(L / C) / C)`` scan, independent of the sequence length.

The functions take channel-first inputs, ``R x B x L`` (rows, batch, time), and
per-row coefficients of shape ``R x N``; a bidirectional EMA uses them on rows
that hold the time-reversed input.
"""

from typing import Optional

import torch
from torch import Tensor

from .toeplitz_matrix import sum_lag_diagonals


def geometric_powers(log_q: Tensor, start: int, count: int) -> Tensor:
    """``q ** (start + i)`` for ``i < count``, as ``R x N x count``, from ``log q`` (``R x N``)."""
    exponents = torch.arange(start, start + count, device=log_q.device, dtype=log_q.dtype)
    return torch.exp(log_q.unsqueeze(-1) * exponents)


def ema_kernel(p_beta: Tensor, log_q: Tensor, c: Tensor, length: int) -> Tensor:
    """EMA kernel ``k[r, m] = sum_n c p_beta q^m`` for ``m < length``: ``R x length``."""
    powers = geometric_powers(log_q, 0, length)
    return torch.einsum("rn,rnl->rl", c * p_beta, powers)


class _CausalToeplitz(torch.autograd.Function):
    """Toeplitz matrix of a kernel, with a fast diagonal-sum backward.

    Autograd through ``unfold`` scatters the gradient back one element at a
    time; summing the gradient along diagonals with a sheared view is O(C^2)
    vectorised work instead.
    """

    @staticmethod
    def forward(ctx, kernel: Tensor) -> Tensor:
        size = kernel.size(-1)
        # left-padded kernel: padded[C - 1 + m] = kernel[m], zeros for negative lags
        padded = torch.nn.functional.pad(kernel, (size - 1, 0))
        # hankel[r, t, i] = padded[t + i]; with i = C - 1 - j this is kernel[t - j]
        hankel = padded.unfold(-1, size, 1)
        return hankel.flip(-1).transpose(1, 2).contiguous()

    @staticmethod
    def backward(ctx, grad_matrix: Tensor) -> Tensor:
        # the matrix holds kernel[t - j] at [r, j, t]: lag t - j >= 0 sits at C - 1 + t - j
        return sum_lag_diagonals(grad_matrix)[:, grad_matrix.size(-1) - 1:]


def causal_toeplitz_transposed(kernel: Tensor) -> Tensor:
    """``R x C x C`` matrix ``M[r, j, t] = kernel[r, t - j]`` for ``t >= j`` else 0.

    With a block of inputs ``xb`` (``R x rows x C``), ``xb @ M`` is the causal
    convolution of each block with ``kernel`` (``R x C``).
    """
    return _CausalToeplitz.apply(kernel.contiguous())


def _doubling_scan(own_states: Tensor, log_q: Tensor, block: int) -> Tensor:
    """Solve ``H[i] = q^block * H[i-1] + own[i]`` along dim 2 of ``R x B x nb x N``."""
    num_blocks = own_states.size(2)
    states = own_states
    shift = 1
    while shift < num_blocks:
        decay = torch.exp(log_q * float(block * shift)).unsqueeze(1).unsqueeze(1)
        states = torch.cat(
            [states[:, :, :shift], states[:, :, shift:] + decay * states[:, :, :-shift]],
            dim=2,
        )
        shift *= 2
    return states


def chunked_causal_ema(
    x: Tensor,
    p_beta: Tensor,
    log_q: Tensor,
    c: Tensor,
    block: int,
    initial_state: Optional[Tensor] = None,
) -> Tensor:
    """Causal EMA convolution of ``x`` computed block by block.

    Args:
        x: ``R x B x L`` input (already zero at padded positions).
        p_beta, log_q, c: ``R x N`` coefficients (``p * beta``, ``log q``,
            ``gamma * sqrt(1/N)``).
        block: block length ``C`` (clipped to ``L``).
        initial_state: optional ``R x B x N`` state carried in from before ``x``.

    Returns:
        ``R x B x L`` convolution output (without the ``omega`` residual).
    """
    rows, bsz, length = x.shape
    ndim = log_q.size(-1)
    block = max(1, min(block, length))
    num_blocks = -(-length // block)
    padded = num_blocks * block
    if padded != length:
        x = torch.nn.functional.pad(x, (0, padded - length))
    x_blocks = x.reshape(rows, bsz * num_blocks, block)

    toeplitz = causal_toeplitz_transposed(ema_kernel(p_beta, log_q, c, block))
    out = torch.bmm(x_blocks, toeplitz)

    if num_blocks > 1 or initial_state is not None:
        # own end-of-block states: sum_j p_beta q^(C-1-j) x[j] -> R x B x nb x N
        to_end = (p_beta.unsqueeze(-1) * geometric_powers(log_q, 0, block).flip(-1)).transpose(1, 2)
        own = torch.bmm(x_blocks, to_end).view(rows, bsz, num_blocks, ndim)
        if initial_state is not None:
            decay = torch.exp(log_q * float(block)).unsqueeze(1)
            own = torch.cat([own[:, :, :1] + (decay * initial_state).unsqueeze(2), own[:, :, 1:]], dim=2)
        states = _doubling_scan(own, log_q, block)
        start = initial_state if initial_state is not None else states.new_zeros(rows, bsz, ndim)
        carried = torch.cat([start.unsqueeze(2), states[:, :, :-1]], dim=2)
        # state read-out inside the next block: sum_n c q^(t+1) H -> R x B x nb x C
        read_out = c.unsqueeze(-1) * geometric_powers(log_q, 1, block)
        out = out + torch.bmm(carried.reshape(rows, bsz * num_blocks, ndim), read_out)

    out = out.view(rows, bsz, padded)
    if padded != length:
        out = out[..., :length]
    return out
