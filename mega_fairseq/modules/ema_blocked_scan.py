"""Blocked-scan evaluation of the Mega EMA (long sequences, carried states).

For one row ``r`` the causal EMA of an input sequence is

    h[t] = q * h[t - 1] + p_beta * x[t]        (N-dimensional state)
    y[t] = sum_n gamma[n] * h[t, n]

which equals the causal convolution of ``x`` with ``k[m] = sum_n gamma p_beta q^m``; the
anti-causal EMA runs the same recurrence backward in time (``y[t] = sum_m k[m] x[t + m]``).
Instead of one long FFT (cost O(log L) per token with a large constant and poor
memory locality on CPU) the sequence is cut into blocks of ``C <= scan_block`` steps (the fewest blocks, of one length):

* within a block, the convolution is a matmul with a ``C x C`` Toeplitz matrix built from
  ``k[0..C-1]`` (upper triangle causal, lower triangle anti-causal, both for the bidirectional
  EMA: one matmul serves both directions);
* across blocks, only the N-dimensional states travel. A block's own state at its end is
  ``sum_j p_beta q^(C-1-j) x[j]`` (causal), at its start ``sum_j p_beta q^j x[j]`` (anti-causal);
  the carried states obey ``H[i] = q^C H[i-1] + own[i]`` (causal: forward over blocks;
  anti-causal: backward), solved by a log-depth doubling scan;
* the carried state enters a block as ``sum_n gamma q^(t+1) H`` (causal, from the block before)
  and ``sum_n gamma q^(C-t) H`` (anti-causal, from the block after).

A causal initial state enters as the state carried into the first block, and the state after the
last input is returned on request (the decoding steps use both). Every step is exact (no
division by ``q^t``; powers that underflow to 0 are fine). The cost per token is
``2C + 4N`` multiply-adds per direction plus a ``O(N log(L / C) / C)`` scan, independent of the
length.

Channel-first layout: inputs ``R x B x L`` (rows, batch, time), coefficients ``R x N``,
states ``R x B x N``.
"""

from typing import NamedTuple, Optional, Tuple, Union

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


class EMARows(NamedTuple):
    """One EMA direction's coefficients, each ``R x N``: ``p * beta``, ``log q``, ``gamma * sqrt(1/N)``."""

    p_beta: Tensor
    log_q: Tensor
    gamma: Tensor


def blocked_scan_ema(
    x: Tensor,
    scan_block: int,
    causal: Optional[EMARows] = None,
    anti_causal: Optional[EMARows] = None,
    initial_state: Optional[Tensor] = None,
    return_last_state: bool = False,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Causal and/or anti-causal EMA of ``x`` (their sum), computed block by block.

    Args:
        x: ``R x B x L`` input (already zero at padded positions), ``L >= 1``.
        scan_block: the longest block ``C``; the sequence is cut into the fewest blocks of at most
            ``C`` steps, all of one length.
        causal: coefficients of the causal EMA, or None.
        anti_causal: coefficients of the anti-causal EMA, or None (at least one is given; lag 0
            is counted by both).
        initial_state: causal only: optional ``R x B x N`` state before ``x``.
        return_last_state: causal only: also return the ``R x B x N`` state after the last input.

    Returns:
        ``R x B x L`` EMA output (without the ``omega`` residual), and the last state on request.
    """
    if causal is None and anti_causal is None:
        raise ValueError("blocked_scan_ema needs causal or anti_causal coefficients")
    if anti_causal is not None and (initial_state is not None or return_last_state):
        raise ValueError("initial_state and return_last_state are for the causal EMA only")
    rows, bsz, length = x.shape
    num_blocks = -(-length // max(1, scan_block))
    # the fewest blocks of at most scan_block steps, all of one length: padding stays below one
    # step per block (L=80 with scan_block 64: 2 x 40, not 64 + 16 padded to 128)
    block = -(-length // num_blocks)
    padded = num_blocks * block
    if padded != length:
        x = F.pad(x, (0, padded - length))  # zeros at the end: nothing flows back from them
    x_blocks = x.reshape(rows, bsz * num_blocks, block)

    forward_kernel = backward_kernel = None
    if causal is not None:
        forward_kernel = ema_kernel(causal.p_beta, causal.log_q, causal.gamma, block)
    if anti_causal is not None:
        backward_kernel = ema_kernel(anti_causal.p_beta, anti_causal.log_q, anti_causal.gamma, block)
    if forward_kernel is None:
        forward_kernel = backward_kernel.new_zeros(rows, 1)
    toeplitz = toeplitz_from_lags(lag_table(block, forward_kernel, backward_kernel))
    out = torch.bmm(x_blocks, toeplitz)
    if num_blocks == 1 and initial_state is None and not return_last_state:
        return out.view(rows, bsz, padded)[..., :length]

    # boundary states of each block's own inputs, both directions in one matmul: R x C x (N [+ N])
    projections, read_outs = [], []
    if causal is not None:  # to the block's end: p_beta q^(C-1-j)
        projections.append(causal.p_beta.unsqueeze(-1) * geometric_powers(causal.log_q, 0, block).flip(-1))
        read_outs.append(causal.gamma.unsqueeze(-1) * geometric_powers(causal.log_q, 1, block))  # gamma q^(t+1)
    if anti_causal is not None:  # to the block's start: p_beta q^j
        projections.append(anti_causal.p_beta.unsqueeze(-1) * geometric_powers(anti_causal.log_q, 0, block))
        read_outs.append(anti_causal.gamma.unsqueeze(-1) * geometric_powers(anti_causal.log_q, 1, block).flip(-1))
    own = torch.bmm(x_blocks, torch.cat(projections, dim=1).transpose(1, 2)).view(rows, bsz, num_blocks, -1)

    carried = []  # the state each block receives from the others, R x B x nb x N per direction
    if causal is not None:
        ndim = causal.log_q.size(-1)
        own_causal = own[..., :ndim]
        if initial_state is not None:
            decay = torch.exp(causal.log_q * float(block)).unsqueeze(1)
            own_causal = torch.cat(
                [own_causal[:, :, :1] + (decay * initial_state).unsqueeze(2), own_causal[:, :, 1:]], dim=2
            )
        states = _doubling_scan(own_causal, causal.log_q, block)  # state at the end of each block
        start = initial_state if initial_state is not None else states.new_zeros(rows, bsz, ndim)
        carried.append(torch.cat([start.unsqueeze(2), states[:, :, :-1]], dim=2))
    if anti_causal is not None:
        own_anti = own[..., own.size(-1) - anti_causal.log_q.size(-1):]
        # state at the start of each block from it and every later block: a scan over reversed blocks
        states_anti = _doubling_scan(own_anti.flip(2), anti_causal.log_q, block).flip(2)
        carried.append(F.pad(states_anti[:, :, 1:], (0, 0, 0, 1)))
    carried_all = torch.cat(carried, dim=-1) if len(carried) > 1 else carried[0]
    read_out = torch.cat(read_outs, dim=1) if len(read_outs) > 1 else read_outs[0]
    out = torch.baddbmm(out, carried_all.reshape(rows, bsz * num_blocks, -1), read_out)
    out = out.view(rows, bsz, padded)[..., :length]
    if not return_last_state:
        return out
    if padded == length:
        return out, states[:, :, -1]
    # the last block is partial (r real steps): its end state is q^r H_before + its own r inputs,
    # not the padded block's end state (which has decayed past the last input)
    real = length - (num_blocks - 1) * block
    last_inputs = x[..., padded - block : padded - block + real]  # R x B x r
    to_end = projections[0][..., block - real:].transpose(1, 2)  # R x r x N
    last_state = torch.exp(causal.log_q * float(real)).unsqueeze(1) * carried[0][:, :, -1] + torch.bmm(
        last_inputs, to_end
    )
    return out, last_state
