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

Layout: the input and the output are time-major, ``L x B x R`` (time, batch, rows: as the layers
hold them); the in-block matmuls work on a channel-first copy cut into blocks, ``R x (B nb) x C``,
made inside :class:`_BlocksTimesMatrix` and never kept for the backward (it is made again there
from the input, which the caller keeps anyway). Coefficients are ``R x N``, states ``R x B x N``.
Each row's EMA is independent: on the CPU a large input is scanned in groups of rows
(:data:`CPU_GROUP_VALUES`), so that the temporaries stay a few MB each.

Memory kept for the backward: besides the input, only the ``R x C x (C + N)`` matrices and the
``N``-dimensional block states (one value per ``C`` inputs): the state scan across blocks is one
autograd function (:class:`_BlockStateScan`) that keeps its output, not each doubling step.
"""

import functools
from typing import NamedTuple, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .ema_kernel import ema_kernel, geometric_powers
from .ema_layout import _swap_time_and_channels, swap_time_and_channels
from .ema_toeplitz import lag_table
from .recomputed_activations import recompute_on_backward
from .toeplitz_matrix import sum_lag_diagonals, toeplitz_from_lags


def _doubling_scan_values(own_states: Tensor, log_q: Tensor, block: int) -> Tensor:
    """Solve ``H[i] = q^block * H[i-1] + own[i]`` along dim 2 of ``R x B x nb x N`` (log-depth doubling)."""
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


class _BlockStateScan(torch.autograd.Function):
    """``H[i] = a * H[i-1] + own[i]`` along dim 2 of ``R x B x nb x N``, ``a = q^block``; keeps only ``H``.

    Autograd through the doubling steps would keep every step's states (``log2 nb`` tensors the size
    of ``own``). The scan is linear in ``own``: its adjoint ``lam[i] = g[i] + a lam[i+1]`` is the same
    scan run backward over the blocks, ``d/d own = lam`` and ``d/da = sum_i lam[i] H[i-1]``.
    """

    @staticmethod
    def forward(ctx, own_states: Tensor, log_q: Tensor, block: int) -> Tensor:
        states = _doubling_scan_values(own_states, log_q, block)
        ctx.block = block
        ctx.save_for_backward(states, log_q)
        return states

    @staticmethod
    def backward(ctx, grad_states: Tensor):
        states, log_q = ctx.saved_tensors
        block = ctx.block
        grad_own = _doubling_scan_values(grad_states.flip(2), log_q, block).flip(2)
        grad_log_q = None
        if ctx.needs_input_grad[1]:
            # d a / d log q = block * a
            decay = torch.exp(log_q * float(block))
            grad_log_q = (grad_own[:, :, 1:] * states[:, :, :-1]).sum((1, 2)) * decay * float(block)
        return grad_own, grad_log_q, None


def _doubling_scan(own_states: Tensor, log_q: Tensor, block: int) -> Tensor:
    """Solve ``H[i] = q^block * H[i-1] + own[i]`` along dim 2 of ``R x B x nb x N``."""
    if torch.is_grad_enabled() and (own_states.requires_grad or log_q.requires_grad):
        return _BlockStateScan.apply(own_states, log_q, block)
    return _doubling_scan_values(own_states, log_q, block)


def _channel_blocks(x: Tensor, num_blocks: int, block: int) -> Tensor:
    """``L x B x R`` -> channel-first ``R x (B nb) x C`` blocks, zero-padded at the end to ``nb C`` steps."""
    length, bsz, rows = x.shape
    channel_first = _swap_time_and_channels(x)  # R x B x L
    padded = num_blocks * block
    if padded != length:
        channel_first = F.pad(channel_first, (0, padded - length))
    return channel_first.view(rows, bsz * num_blocks, block)


class EMARows(NamedTuple):
    """One EMA direction's coefficients, each ``R x N``: ``p * beta``, ``log q``, ``gamma * sqrt(1/N)``."""

    p_beta: Tensor
    log_q: Tensor
    gamma: Tensor


def _block_matrix(block: int, causal: Optional[EMARows], anti_causal: Optional[EMARows], with_projections: bool,
                  residual: Optional[Tensor] = None) -> Tensor:
    """``R x C x M``: the in-block Toeplitz matrix (``M = C``), then with ``with_projections`` each
    direction's boundary projection (``N`` columns each: causal ``p_beta q^(C-1-j)``, anti-causal
    ``p_beta q^j`` for input ``j`` of the block). A ``residual`` (``R``) adds to the lag-0 tap."""
    forward_kernel = backward_kernel = None
    if causal is not None:
        forward_kernel = ema_kernel(causal.p_beta, causal.log_q, causal.gamma, block)
    if anti_causal is not None:
        backward_kernel = ema_kernel(anti_causal.p_beta, anti_causal.log_q, anti_causal.gamma, block)
    if forward_kernel is None:
        forward_kernel = backward_kernel.new_zeros(backward_kernel.size(0), 1)
    if residual is not None:
        forward_kernel = torch.cat([forward_kernel[:, :1] + residual.unsqueeze(-1), forward_kernel[:, 1:]], dim=-1)
    pieces = [toeplitz_from_lags(lag_table(block, forward_kernel, backward_kernel))]
    if with_projections:
        if causal is not None:
            pieces.append((causal.p_beta.unsqueeze(-1) * geometric_powers(causal.log_q, 0, block).flip(-1)).transpose(1, 2))
        if anti_causal is not None:
            pieces.append((anti_causal.p_beta.unsqueeze(-1) * geometric_powers(anti_causal.log_q, 0, block)).transpose(1, 2))
    return torch.cat(pieces, dim=2) if len(pieces) > 1 else pieces[0]


def _direction_gradients(rows: EMARows, grad_taps: Tensor, grad_projection: Optional[Tensor], to_block_end: bool):
    """``(p_beta, log_q, gamma)`` gradients of one direction's taps ``k[m] = sum_n gamma p_beta q^m``
    (``grad_taps``: R x C) and of its boundary projection (``R x C x N``, entry ``[j, n]`` =
    ``p_beta q^e`` with ``e = C-1-j`` when ``to_block_end`` else ``j``), or None."""
    block = grad_taps.size(-1)
    powers = geometric_powers(rows.log_q, 0, block)  # R x N x C: q^m
    steps = torch.arange(block, device=powers.device, dtype=powers.dtype)
    weighted = grad_taps.unsqueeze(1) * powers  # g[m] q^m
    grad_c = weighted.sum(-1)  # d/d (gamma p_beta)
    grad_log_q = rows.gamma * rows.p_beta * (weighted * steps).sum(-1)
    grad_p_beta = grad_c * rows.gamma
    grad_gamma = grad_c * rows.p_beta
    if grad_projection is not None:
        by_power = grad_projection.transpose(1, 2)  # R x N x C, by input j
        if to_block_end:
            by_power = by_power.flip(-1)  # now by exponent C-1-j
        weighted = by_power * powers
        grad_p_beta = grad_p_beta + weighted.sum(-1)
        grad_log_q = grad_log_q + rows.p_beta * (weighted * steps).sum(-1)
    return grad_p_beta, grad_log_q, grad_gamma


def _directions(coefficients, has_causal: bool, has_anti_causal: bool):
    """``(causal, anti_causal, residual)`` from the flat coefficients: each present direction's three
    ``R x N`` tensors, then the optional ``R`` residual."""
    causal = EMARows(*coefficients[:3]) if has_causal else None
    anti_causal = EMARows(*coefficients[3 * has_causal : 3 * has_causal + 3]) if has_anti_causal else None
    rest = coefficients[3 * (has_causal + has_anti_causal):]
    return causal, anti_causal, (rest[0] if rest else None)


class _BlocksTimesMatrix(torch.autograd.Function):
    """``blocks(x) @ matrix``: the channel-first blocks of ``x`` (``L x B x R``) times the EMA's
    ``R x C x M`` block matrix (:func:`_block_matrix`), built here from the coefficients (and the
    optional residual added to the lag-0 tap: ``omega * x`` comes out of the same matmul).

    Keeps only ``x`` (which the caller keeps anyway) and the ``R x N`` coefficients: the blocks (a
    copy of ``x``) and the matrix are made again in the backward, and the coefficients' gradients
    are explicit (:func:`_direction_gradients`). Returns ``R x (B nb) x M``.

    Arguments after ``x``: ``num_blocks, block, with_projections, has_causal, has_anti_causal`` and
    the coefficients ``p_beta, log_q, gamma`` of the causal, then the anti-causal direction (those
    present), then the residual (when given).
    """

    @staticmethod
    def forward(ctx, x, num_blocks, block, with_projections, has_causal, has_anti_causal, *coefficients):
        ctx.layout = (num_blocks, block, with_projections, has_causal, has_anti_causal)
        ctx.save_for_backward(x, *coefficients)
        causal, anti_causal, residual = _directions(coefficients, has_causal, has_anti_causal)
        matrix = _block_matrix(block, causal, anti_causal, with_projections, residual)
        return torch.bmm(_channel_blocks(x, num_blocks, block), matrix)

    @staticmethod
    def backward(ctx, grad):
        x, *coefficients = ctx.saved_tensors
        num_blocks, block, with_projections, has_causal, has_anti_causal = ctx.layout
        causal, anti_causal, residual = _directions(coefficients, has_causal, has_anti_causal)
        grad_x = None
        if ctx.needs_input_grad[0]:
            matrix = _block_matrix(block, causal, anti_causal, with_projections, residual)
            length, bsz, rows = x.shape
            grad_blocks = torch.bmm(grad, matrix.transpose(1, 2))  # R x (B nb) x C
            grad_x = _swap_time_and_channels(grad_blocks.view(rows, bsz, num_blocks * block))[:length]
        grad_coefficients = [None] * len(coefficients)
        if any(ctx.needs_input_grad[6:]):
            grad_matrix = torch.bmm(_channel_blocks(x, num_blocks, block).transpose(1, 2), grad)  # R x C x M
            grad_lags = sum_lag_diagonals(grad_matrix[..., :block])  # R x (2C - 1), lag + C - 1
            ndim = coefficients[0].size(-1)
            projection_start = block
            grads = []
            if causal is not None:
                projection = grad_matrix[..., block : block + ndim] if with_projections else None
                grads += _direction_gradients(causal, grad_lags[:, block - 1 :], projection, to_block_end=True)
                projection_start += ndim
            if anti_causal is not None:
                projection = grad_matrix[..., projection_start : projection_start + ndim] if with_projections else None
                grads += _direction_gradients(anti_causal, grad_lags[:, :block].flip(-1), projection, to_block_end=False)
            if residual is not None:
                grads.append(grad_lags[:, block - 1])  # the lag-0 tap's gradient
            grad_coefficients = [g if need else None for g, need in zip(grads, ctx.needs_input_grad[6:])]
        return (grad_x, None, None, None, None, None, *grad_coefficients)


def _blocks_times_matrix(x: Tensor, num_blocks: int, block: int, causal: Optional[EMARows],
                         anti_causal: Optional[EMARows], with_projections: bool, residual: Optional[Tensor]) -> Tensor:
    """``R x (B nb) x M``: the blocks of ``x`` times :func:`_block_matrix` (see :class:`_BlocksTimesMatrix`)."""
    coefficients = (tuple(causal) if causal is not None else ()) + (tuple(anti_causal) if anti_causal is not None else ())
    if residual is not None:
        coefficients += (residual,)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x,) + coefficients):
        return _BlocksTimesMatrix.apply(x, num_blocks, block, with_projections, causal is not None,
                                        anti_causal is not None, *coefficients)
    matrix = _block_matrix(block, causal, anti_causal, with_projections, residual)
    return torch.bmm(_channel_blocks(x, num_blocks, block), matrix)


class _ScaledPowers(torch.autograd.Function):
    """``gamma q^(t+1)`` for ``t < C``, ``R x N x C``, from gamma and log q (``R x N``), keeping only
    those two for the backward (autograd through ``exp`` would keep the ``R x N x C`` powers)."""

    @staticmethod
    def forward(ctx, gamma: Tensor, log_q: Tensor, block: int) -> Tensor:
        ctx.block = block
        ctx.save_for_backward(gamma, log_q)
        return gamma.unsqueeze(-1) * geometric_powers(log_q, 1, block)

    @staticmethod
    def backward(ctx, grad: Tensor):
        gamma, log_q = ctx.saved_tensors
        weighted = grad * geometric_powers(log_q, 1, ctx.block)  # g q^(t+1)
        exponents = torch.arange(1, ctx.block + 1, device=grad.device, dtype=grad.dtype)
        grad_gamma = weighted.sum(-1) if ctx.needs_input_grad[0] else None
        grad_log_q = gamma * (weighted * exponents).sum(-1) if ctx.needs_input_grad[1] else None
        return grad_gamma, grad_log_q, None


def _scaled_powers(gamma: Tensor, log_q: Tensor, block: int) -> Tensor:
    """``gamma[..., None] * q^(1..C)``, ``R x N x C`` (see :class:`_ScaledPowers`)."""
    if torch.is_grad_enabled() and (gamma.requires_grad or log_q.requires_grad):
        return _ScaledPowers.apply(gamma, log_q, block)
    return gamma.unsqueeze(-1) * geometric_powers(log_q, 1, block)


def _read_out(causal: Optional[EMARows], anti_causal: Optional[EMARows], block: int) -> Tensor:
    """How a carried state enters each step of a block, ``R x N' x C`` (the directions' N rows
    stacked): from the block before ``gamma q^(t+1)`` (causal), from the block after ``gamma
    q^(C-t)`` (anti-causal). In a recompute scope it is not kept for the backward: it is remade from
    the ``R x N`` coefficients."""
    pieces = []
    for rows, flip in ((causal, False), (anti_causal, True)):
        if rows is None:
            continue
        scaled = _scaled_powers(rows.gamma, rows.log_q, block)
        pieces.append(scaled.flip(-1) if flip else scaled)
    read_out = torch.cat(pieces, dim=1) if len(pieces) > 1 else pieces[0]
    return recompute_on_backward(read_out, functools.partial(_read_out, _detached(causal), _detached(anti_causal), block))


def _detached(rows: Optional[EMARows]) -> Optional[EMARows]:
    return None if rows is None else EMARows(*(t.detach() for t in rows))


def blocked_scan_ema(
    x: Tensor,
    scan_block: int,
    causal: Optional[EMARows] = None,
    anti_causal: Optional[EMARows] = None,
    initial_state: Optional[Tensor] = None,
    return_last_state: bool = False,
    residual: Optional[Tensor] = None,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Causal and/or anti-causal EMA of ``x`` (their sum), plus ``residual * x``, computed block by block.

    Args:
        x: ``L x B x R`` input (already zero at padded positions), ``L >= 1``.
        scan_block: the longest block ``C``; the sequence is cut into the fewest blocks of at most
            ``C`` steps, all of one length.
        causal: coefficients of the causal EMA, or None.
        anti_causal: coefficients of the anti-causal EMA, or None (at least one is given; lag 0
            is counted by both).
        initial_state: causal only: optional ``R x B x N`` state before ``x``.
        return_last_state: causal only: also return the ``R x B x N`` state after the last input.
        residual: optional ``R`` weights of the input added to the output (Mega's ``omega``): they
            join the lag-0 tap of the in-block matrix, so the sum costs no pass of its own. The
            returned state does not include it.

    Returns:
        ``L x B x R`` EMA output (plus ``residual * x``), and the last state on request.
    """
    if causal is None and anti_causal is None:
        raise ValueError("blocked_scan_ema needs causal or anti_causal coefficients")
    if anti_causal is not None and (initial_state is not None or return_last_state):
        raise ValueError("initial_state and return_last_state are for the causal EMA only")
    groups = _row_groups(x)
    if groups > 1:
        return _grouped_scan(x, scan_block, causal, anti_causal, initial_state, return_last_state, residual, groups)
    return _scan(x, scan_block, causal, anti_causal, initial_state, return_last_state, residual)


#: on the CPU, rows are scanned in groups of about this many values (Time x Batch x Rows); None:
#: a quarter of the input, kept within :data:`CPU_GROUP_RANGE`. The scan's temporaries
#: (channel-first copies, block products, their gradients) are then a fraction of the input each,
#: which the allocator reuses, instead of input-sized buffers that it maps fresh (and the kernel
#: zero-fills page by page) every time; every group costs a few dozen small operations.
CPU_GROUP_VALUES: Optional[int] = None
CPU_GROUP_RANGE = (1 << 17, 1 << 19)


def _row_groups(x: Tensor) -> int:
    """How many row groups the scan of ``x`` (``L x B x R``) runs in: 1 off the CPU or for small inputs."""
    if x.device.type != "cpu":
        return 1
    values = CPU_GROUP_VALUES
    if values is None:
        low, high = CPU_GROUP_RANGE
        values = min(max(x.numel() // 4, low), high)
    return max(1, min(x.size(2), x.numel() // values))


def _grouped_scan(x, scan_block, causal, anti_causal, initial_state, return_last_state, residual, groups):
    """:func:`blocked_scan_ema` over ``groups`` groups of rows (each row's EMA is independent):
    one split of the input and coefficients, one concatenation of the outputs."""
    rows = x.size(2)
    sizes = [rows // groups + (1 if i < rows % groups else 0) for i in range(groups)]

    def split_rows(tensor, dim=0):
        return [None] * groups if tensor is None else tensor.split(sizes, dim)

    def split_direction(direction):
        if direction is None:
            return [None] * groups
        return [EMARows(*parts) for parts in zip(*(split_rows(t) for t in direction))]

    results = [
        _scan(part, scan_block, c, a, s, return_last_state, w)
        for part, c, a, s, w in zip(x.split(sizes, 2), split_direction(causal), split_direction(anti_causal),
                                    split_rows(initial_state), split_rows(residual))
    ]
    if not return_last_state:
        return torch.cat(results, dim=2)
    return torch.cat([r[0] for r in results], dim=2), torch.cat([r[1] for r in results], dim=0)


def _scan(x, scan_block, causal, anti_causal, initial_state, return_last_state, residual=None):
    """:func:`blocked_scan_ema` of all rows of ``x`` at once."""
    length, bsz, rows = x.shape
    num_blocks = -(-length // max(1, scan_block))
    # the fewest blocks of at most scan_block steps, all of one length: padding stays below one
    # step per block (L=80 with scan_block 64: 2 x 40, not 64 + 16 padded to 128)
    block = -(-length // num_blocks)
    padded = num_blocks * block

    if num_blocks == 1 and initial_state is None and not return_last_state:
        out = _blocks_times_matrix(x, 1, block, causal, anti_causal, False, residual)  # R x B x C
        return swap_time_and_channels(out)[:length]

    # the in-block convolution and the boundary states of each block's own inputs (to the block's
    # end: causal; to its start: anti-causal) in one matmul: R x (B nb) x (C + N [+ N])
    product = _blocks_times_matrix(x, num_blocks, block, causal, anti_causal, True, residual)
    # one split: its backward joins the two gradients in one copy (two slices would each zero-fill
    # a product-sized gradient and add them)
    in_block, own = product.split([block, product.size(-1) - block], dim=-1)
    own = own.reshape(rows, bsz, num_blocks, -1)
    read_out = _read_out(causal, anti_causal, block)

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
    out = torch.baddbmm(in_block, carried_all.reshape(rows, bsz * num_blocks, -1), read_out)
    out = swap_time_and_channels(out.view(rows, bsz, padded))[:length]  # L x B x R
    if not return_last_state:
        return out
    if padded == length:
        return out, states[:, :, -1]
    # the last block is partial (r real steps): its end state is q^r H_before + its own r inputs,
    # not the padded block's end state (which has decayed past the last input)
    real = length - (num_blocks - 1) * block
    last_inputs = x[padded - block : padded - block + real].permute(2, 1, 0)  # R x B x r
    # p_beta q^(r-1-j) for the last block's r inputs
    to_end = (causal.p_beta.unsqueeze(-1) * geometric_powers(causal.log_q, 0, real).flip(-1)).transpose(1, 2)  # R x r x N
    last_state = torch.exp(causal.log_q * float(real)).unsqueeze(1) * carried[0][:, :, -1] + torch.bmm(
        last_inputs, to_end
    )
    return out, last_state
