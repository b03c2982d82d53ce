"""Blocked-scan evaluation of the causal Mega EMA (long sequences, carried states).

For one row ``r`` the EMA of an input sequence is

    h[t] = q * h[t - 1] + p_beta * x[t]        (N-dimensional state)
    y[t] = sum_n gamma[n] * h[t, n]

which equals the causal convolution of ``x`` with ``k[m] = sum_n gamma p_beta q^m``.
Instead of one long FFT (cost O(log L) per token with a large constant and poor
memory locality on CPU) the sequence is cut into blocks of ``C = scan_block`` steps:

* within a block, the causal convolution is a matmul with a ``C x C``
  Toeplitz matrix built from ``k[0..C-1]``;
* across blocks, only the N-dimensional state travels. A block's own end state
  is ``sum_j p_beta q^(C-1-j) x[j]``; the carried state obeys
  ``H[i] = q^C H[i-1] + own[i]``, solved by a log-depth doubling scan;
* the carried state enters the next block as ``sum_n gamma q^(t+1) H[i-1]``.

An initial state enters as the state carried into the first block, and the state after the
last input is returned on request (the decoding steps use both). Every step is exact (no
division by ``q^t``; powers that underflow to 0 are fine). The cost per token is
``2C + 4N`` multiply-adds plus a ``O(N log(L / C) / C)`` scan, independent of the length.

Channel-first layout: inputs ``R x B x L`` (rows, batch, time), coefficients ``R x N``,
states ``R x B x N``.
"""

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .ema_kernel import ema_kernel, geometric_powers
from .ema_toeplitz import lag_table
from .toeplitz_matrix import toeplitz_from_lags


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


def blocked_scan_ema(
    x: Tensor,
    p_beta: Tensor,
    log_q: Tensor,
    gamma: Tensor,
    scan_block: int,
    initial_state: Optional[Tensor] = None,
    return_last_state: bool = False,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Causal EMA of ``x`` computed block by block.

    Args:
        x: ``R x B x L`` input (already zero at padded positions), ``L >= 1``.
        p_beta, log_q, gamma: ``R x N`` coefficients (``p * beta``, ``log q``,
            ``gamma * sqrt(1/N)``).
        scan_block: block length ``C`` (clipped to ``L``).
        initial_state: optional ``R x B x N`` state before ``x``.
        return_last_state: also return the ``R x B x N`` state after the last input.

    Returns:
        ``R x B x L`` EMA output (without the ``omega`` residual), and the last state on request.
    """
    rows, bsz, length = x.shape
    ndim = log_q.size(-1)
    block = max(1, min(scan_block, length))
    num_blocks = -(-length // block)
    padded = num_blocks * block
    if padded != length:
        x = F.pad(x, (0, padded - length))
    x_blocks = x.reshape(rows, bsz * num_blocks, block)

    toeplitz = toeplitz_from_lags(lag_table(block, ema_kernel(p_beta, log_q, gamma, block)))
    out = torch.bmm(x_blocks, toeplitz)
    if num_blocks == 1 and initial_state is None and not return_last_state:
        return out.view(rows, bsz, padded)[..., :length]

    # own end-of-block states: sum_j p_beta q^(C-1-j) x[j] -> R x B x nb x N
    to_end = (p_beta.unsqueeze(-1) * geometric_powers(log_q, 0, block).flip(-1)).transpose(1, 2)  # R x C x N
    own = torch.bmm(x_blocks, to_end).view(rows, bsz, num_blocks, ndim)
    if initial_state is not None:
        decay = torch.exp(log_q * float(block)).unsqueeze(1)
        own = torch.cat([own[:, :, :1] + (decay * initial_state).unsqueeze(2), own[:, :, 1:]], dim=2)
    states = _doubling_scan(own, log_q, block)  # state at the end of each block
    start = initial_state if initial_state is not None else states.new_zeros(rows, bsz, ndim)
    carried = torch.cat([start.unsqueeze(2), states[:, :, :-1]], dim=2)  # state before each block
    # state read-out inside each block: sum_n gamma q^(t+1) H -> R x B x nb x C
    read_out = gamma.unsqueeze(-1) * geometric_powers(log_q, 1, block)
    out = torch.baddbmm(out, carried.reshape(rows, bsz * num_blocks, ndim), read_out)
    out = out.view(rows, bsz, padded)[..., :length]
    if not return_last_state:
        return out
    if padded == length:
        return out, states[:, :, -1]
    # the last block is partial (r real steps): its end state is q^r H_before + its own r inputs,
    # not the padded block's end state (which has decayed past the last input)
    real = length - (num_blocks - 1) * block
    last_inputs = x[..., padded - block : padded - block + real]  # R x B x r
    last_state = torch.exp(log_q * float(real)).unsqueeze(1) * carried[:, :, -1] + torch.bmm(
        last_inputs, to_end[:, block - real:]
    )
    return out, last_state
