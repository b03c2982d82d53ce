"""The Mega EMA's convolution kernel and the powers of its decay factors.

Per row ``r`` (a channel, or the anti-causal copy of one) and EMA dimension ``n``, with
``q = 1 - p * sigmoid(alpha)``, ``p_beta = p * beta`` and ``gamma`` already scaled by
``sqrt(1/N)``, the EMA output is the causal convolution of the input with

    k[r, m] = sum_n gamma[r, n] * p_beta[r, n] * q[r, n] ** m        (m = 0, 1, ...)

Powers are taken as ``exp(m * log q)``: exact enough, vectorised, and a power that underflows
is simply 0 (never a division by ``q ** m``).
"""

import torch
from torch import Tensor


def geometric_powers(log_q: Tensor, start: int, count: int) -> Tensor:
    """``q ** (start + i)`` for ``i < count``, as ``R x N x count``, from ``log q`` (``R x N``)."""
    exponents = torch.arange(start, start + count, device=log_q.device, dtype=log_q.dtype)
    return torch.exp(log_q.unsqueeze(-1) * exponents)


def ema_kernel(p_beta: Tensor, log_q: Tensor, gamma: Tensor, length: int) -> Tensor:
    """Kernel taps ``k[r, m] = sum_n gamma p_beta q^m`` for ``m < length``: ``R x length``.

    Args:
        p_beta, log_q, gamma: ``R x N`` coefficients (``p * beta``, ``log q``, ``gamma * sqrt(1/N)``).
        length: number of taps.
    """
    return torch.einsum("rn,rnl->rl", gamma * p_beta, geometric_powers(log_q, 0, length))
