"""Reference Mega EMA: the plain recurrence, one time step at a time.

This is the definition the fast op (:func:`~.ema_op.multi_head_ema`) is tested against, the
way mamba pairs ``selective_scan_fn`` with ``selective_scan_ref``. It is slow (a Python loop over
time) and written for clarity, not speed; it shares no code with the fast paths (no kernel, no
FFT, no blocks, no ``exp(m log q)``: powers of ``q`` come from repeated multiplication).

Untruncated, per row ``d`` and EMA dimension ``n``::

    h[t] = q * h[t - 1] + p_beta * x[t]          (h[-1] = initial_state, else 0)
    y[t] = sum_n gamma * h[t, n]

Truncated to ``window = W`` taps, ``y[t] = sum_{m < W} k[m] x[t - m]`` with
``k[m] = sum_n gamma p_beta q^m``; inputs before the start come from ``initial_state`` (the
previous ``W - 1`` inputs), else are 0.

Bidirectional: rows ``0..D-1`` of the coefficients run forward in time, rows ``D..2D-1`` run the
same recurrence backward in time; the two outputs are added (lag 0 is counted by both).
"""

from typing import Optional, Tuple, Union

import torch
from torch import Tensor


def _causal_recurrence(x: Tensor, q: Tensor, p_beta: Tensor, gamma: Tensor, state: Tensor) -> Tuple[Tensor, Tensor]:
    """``x``: T x B x D; coefficients D x N; ``state``: B x D x N. Returns (T x B x D, B x D x N)."""
    drive = p_beta * x.unsqueeze(-1)  # T x B x D x N: p_beta x[t]
    states = []
    for t in range(x.size(0)):
        state = q * state + drive[t]
        states.append(state)
    if not states:
        return x.new_zeros(x.shape), state
    return (gamma * torch.stack(states)).sum(-1), state


def _causal_window(x: Tensor, q: Tensor, p_beta: Tensor, gamma: Tensor, window: int, previous: Tensor) -> Tuple[Tensor, Tensor]:
    """Windowed sum. ``x``: T x B x D; ``previous``: B x D x (W-1), oldest first. Returns (T x B x D, B x D x (W-1))."""
    length = x.size(0)
    history = torch.cat([previous.permute(2, 0, 1), x], dim=0)  # (W - 1 + T) x B x D
    out = x.new_zeros(x.shape)
    power = torch.ones_like(q)
    for lag in range(window):
        tap = (gamma * p_beta * power).sum(-1)  # D
        out = out + tap * history[window - 1 - lag : window - 1 - lag + length]
        power = power * q
    return out, history[history.size(0) - (window - 1) :].permute(1, 2, 0)


def ema_reference(
    x: Tensor,
    q: Tensor,
    p_beta: Tensor,
    gamma: Tensor,
    *,
    bidirectional: bool = False,
    window: Optional[int] = None,
    initial_state: Optional[Tensor] = None,
    return_last_state: bool = False,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """EMA of ``x`` by the plain recurrence (same arguments and results as ``multi_head_ema``).

    Args:
        x: ``T x B x D`` input (zero at padded positions).
        q, p_beta, gamma: ``R x N`` coefficients, ``R = D`` (causal) or ``2 D`` (bidirectional).
        bidirectional: add the anti-causal EMA of rows ``D..2D-1``.
        window: keep only the first ``window`` kernel taps; None = all.
        initial_state: causal only. Untruncated: ``B x D x N`` state before ``x``; truncated:
            ``B x D x (W - 1)`` previous inputs, oldest first.
        return_last_state: also return the state after ``x`` (same layout as ``initial_state``).

    Returns:
        ``T x B x D`` (and the last state when ``return_last_state``).
    """
    length, bsz, dim = x.shape
    if bidirectional:
        if initial_state is not None or return_last_state:
            raise ValueError("initial_state/return_last_state need bidirectional=False")
        forward = ema_reference(x, q[:dim], p_beta[:dim], gamma[:dim], window=window)
        backward = ema_reference(x.flip(0), q[dim:], p_beta[dim:], gamma[dim:], window=window)
        return forward + backward.flip(0)
    if window is None:
        state = initial_state if initial_state is not None else x.new_zeros(bsz, dim, q.size(-1))
        out, state = _causal_recurrence(x, q, p_beta, gamma, state)
    else:
        previous = initial_state if initial_state is not None else x.new_zeros(bsz, dim, window - 1)
        out, state = _causal_window(x, q, p_beta, gamma, window, previous)
    return (out, state) if return_last_state else out
