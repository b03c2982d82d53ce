"""The Mega EMA as one functional op: every algorithm and streaming mode behind one entry point.

:func:`multi_head_ema` takes the input (Time x Batch x D), the EMA coefficients and the options,
and is the only place that decides how the EMA is computed. Its definition is the plain
recurrence :func:`~.ema_reference.ema_reference`, which takes the same arguments (the optional
``omega`` residual aside: the op's output is then the reference plus ``omega * x``); the tests
pair the two on a grid of lengths (up to several thousand steps), values and gradients.

Whole sequences (no ``initial_state``, no ``return_last_state``) use ``algorithm``:

* ``"toeplitz"``: one dense ``T x T`` Toeplitz matmul per channel (:mod:`.ema_toeplitz`);
* ``"fft"``: FFT convolution along time (:mod:`.ema_fft`);
* ``"blocked_scan"``: blocks of ``scan_block`` steps, in-block Toeplitz matmuls plus a scan of the
  N-dimensional state across blocks (:mod:`.ema_blocked_scan`);
* ``"recurrence"``: the plain recurrence itself, run by the compiled CPU kernel
  (:mod:`.ema_recurrence`; untruncated EMA, float32/float64 CPU tensors, kernel installed);
* ``"auto"``: the compiled recurrence where it applies (about twice as fast as the blocked scan
  on the CPU, forward + backward: ``benchmarks/bench_ema.py``); otherwise Toeplitz up to 64
  steps, then the blocked scan from 256 steps or 2048 tokens per call, the FFT in between.

Streaming (``initial_state`` and/or ``return_last_state``, causal only) continues a sequence from
a saved state and hands back the state after the last input, so a prefill's last state feeds the
decoding steps. The state is what makes the continuation exact:

* untruncated: the ``B x D x N`` EMA state ``h``. One new token runs the recurrence (no FFT,
  no kernel); several run the blocked scan started from that state, which returns its last state;
* truncated to ``window = W`` taps: the previous ``W - 1`` inputs, ``B x D x (W - 1)``, oldest
  first. The new tokens are convolved together with them (one token: a ``W``-tap dot product),
  so a step costs the same at any position.

``algorithm`` only chooses among the whole-sequence methods; streaming calls are served as
described above (the truncated multi-token case uses ``algorithm`` on the window plus new tokens).
"""

from contextlib import nullcontext
from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from . import ema_recurrence as recurrence
from .ema_blocked_scan import EMARows, blocked_scan_ema
from .ema_fft import fft_conv
from .ema_kernel import ema_kernel
from .ema_layout import swap_time_and_channels
from .ema_toeplitz import toeplitz_conv_tbd

ALGORITHMS = ("auto", "toeplitz", "fft", "blocked_scan", "recurrence")
DEFAULT_SCAN_BLOCK = 64  # best or tied in benchmarks/bench_ema.py (block 32 / 64 / 128)
# Measured with benchmarks/bench_ema.py (CPU, 1 thread, forward + backward): one dense L x L
# matmul per channel is fastest up to 64 steps. Beyond, the FFT wins only for small calls (the
# blocked scan's fixed costs: padding the last block, the small state matmuls): with fewer than
# 2048 tokens per call and L < 256, e.g. D=512 N=16 L=128 x 2: FFT 12 ms, blocked scan 48 ms;
# L=80 x 24: 107 vs 247 ms; from L=384 (any batch) or 2048 tokens the blocked scan is ahead
# (L=384 x 2: 70 vs 115 ms; D=256 L=256 x 32: 155 vs 344 ms; L=2048 x 1: 150 vs 1271 ms), and its
# cost per token stays flat.
TOEPLITZ_MAX_LENGTH = 64
BLOCKED_SCAN_MIN_LENGTH = 256
BLOCKED_SCAN_MIN_TOKENS = 2048


def pick_algorithm(algorithm: str, length: int, bsz: int) -> str:
    """The whole-sequence algorithm that ``algorithm`` (one of :data:`ALGORITHMS`) means for ``length x bsz``
    where the compiled recurrence does not apply (see :func:`_whole_sequence`)."""
    if algorithm not in ALGORITHMS:
        raise ValueError(
            "algorithm (MultiHeadEMA.conv_algorithm) must be one of {}, got {!r}".format(ALGORITHMS, algorithm)
        )
    if algorithm != "auto":
        return algorithm
    if length <= TOEPLITZ_MAX_LENGTH:
        return "toeplitz"
    if length >= BLOCKED_SCAN_MIN_LENGTH or length * bsz >= BLOCKED_SCAN_MIN_TOKENS:
        return "blocked_scan"
    return "fft"


class _Coefficients:
    """``q``, ``p_beta``, ``gamma`` (``R x N``) and what is derived from them, memoised in ``memo``."""

    def __init__(self, q: Tensor, p_beta: Tensor, gamma: Tensor, memo: Optional[Dict[str, Tensor]]):
        self.q, self.p_beta, self.gamma = q, p_beta, gamma
        self.memo = {} if memo is None else memo

    @property
    def log_q(self) -> Tensor:
        if "log_q" not in self.memo:
            self.memo["log_q"] = torch.log(self.q)
        return self.memo["log_q"]

    def kernel(self, taps: int) -> Tensor:
        """``R x taps`` kernel; the longest one built is kept and sliced."""
        cached = self.memo.get("kernel")
        if cached is None or cached.size(-1) < taps:
            cached = ema_kernel(self.p_beta, self.log_q, self.gamma, taps)
            self.memo["kernel"] = cached
        return cached[:, :taps]

    def reversed_taps(self, window: int) -> Tensor:
        """``W x 1 x R`` contiguous: row ``W - 1 - m`` holds tap ``m`` (weighs the input ``m`` steps back)."""
        cached = self.memo.get("reversed_taps")
        if cached is None or cached.size(0) != window:
            cached = self.kernel(window).flip(-1).t().contiguous().unsqueeze(1)
            self.memo["reversed_taps"] = cached
        return cached


def _blocked_scan(x: Tensor, coefficients: _Coefficients, dim: int, window: Optional[int], bidirectional: bool, block: int,
                  omega: Optional[Tensor]) -> Tensor:
    """Whole-sequence blocked scan of ``T x B x D`` input (plus ``omega * x``); returns ``T x B x D``."""
    length = x.size(0)
    p_beta, log_q, gamma = coefficients.p_beta, coefficients.log_q, coefficients.gamma
    causal = EMARows(p_beta[:dim], log_q[:dim], gamma[:dim])
    anti_causal = EMARows(p_beta[dim:], log_q[dim:], gamma[dim:]) if bidirectional else None
    # omega joins the lag-0 tap of the in-block matrix: no pass of its own over the input
    out = blocked_scan_ema(x, block, causal, anti_causal, residual=omega)  # T x B x D
    if window is not None and window < length:
        # taps m >= W, removed: the same EMA with gamma * q^W, delayed (causal) or advanced
        # (anti-causal) by W steps
        tail_gamma = gamma * torch.exp(log_q * float(window))
        causal_tail = blocked_scan_ema(x, block, causal=causal._replace(gamma=tail_gamma[:dim]))
        out = out - F.pad(causal_tail[: length - window], (0, 0, 0, 0, window, 0))
        if bidirectional:
            anti_tail = blocked_scan_ema(x, block, anti_causal=anti_causal._replace(gamma=tail_gamma[dim:]))
            out = out - F.pad(anti_tail[window:], (0, 0, 0, 0, 0, window))
    return out


def _whole_sequence(x: Tensor, coefficients: _Coefficients, dim: int, window: Optional[int], bidirectional: bool,
                    algorithm: str, block: int, omega: Optional[Tensor] = None) -> Tensor:
    """Stateless EMA of a whole ``T x B x D`` sequence by the chosen algorithm (plus ``omega * x``)."""
    length = x.size(0)
    q, p_beta, gamma = coefficients.q, coefficients.p_beta, coefficients.gamma
    if algorithm in ("auto", "recurrence") and window is None and recurrence.applies(x, q, p_beta, gamma, omega):
        return recurrence.recurrence_ema(x, q, p_beta, gamma, bidirectional, omega)
    if algorithm == "recurrence":
        raise ValueError(
            "algorithm 'recurrence' needs the compiled kernel (installed: {}), an untruncated EMA (window: {}) and "
            "float32/float64 CPU tensors (x: {} on {}); choose another algorithm, e.g. 'auto'".format(
                recurrence.available(), window, x.dtype, x.device))
    chosen = pick_algorithm(algorithm, length, x.size(1))
    if chosen == "blocked_scan":
        return _blocked_scan(x, coefficients, dim, window, bidirectional, block, omega)
    kernel = coefficients.kernel(length if window is None else min(window, length))
    forward_kernel, backward_kernel = (kernel[:dim], kernel[dim:]) if bidirectional else (kernel, None)
    if chosen == "toeplitz":
        out = toeplitz_conv_tbd(x, forward_kernel, backward_kernel)
    else:
        out = swap_time_and_channels(fft_conv(swap_time_and_channels(x), forward_kernel, backward_kernel))
    return _add_residual(out, x, omega)


def _add_residual(out: Tensor, x: Tensor, omega: Optional[Tensor]) -> Tensor:
    """``omega * x + out`` (``out`` when omega is None), laid out Time x Batch x D like ``x``."""
    if omega is None:
        return out
    # the product first, so the sum is laid out like x even when out is a strided view; in place:
    # the product's backward does not need its output
    return (x * omega).add_(out)


def _stream(x: Tensor, coefficients: _Coefficients, dim: int, window: Optional[int], algorithm: str, block: int,
            initial_state: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """Causal EMA of ``T x B x D`` new inputs after ``initial_state``; returns (output, last state)."""
    length, bsz, _ = x.shape
    if window is not None:
        previous = initial_state if initial_state is not None else x.new_zeros(bsz, dim, window - 1)
        span = torch.cat([previous.permute(2, 0, 1), x], dim=0)  # (W - 1 + T) x B x D
        if length == 1:
            # y = sum_m k[m] x[t - m]: span row W - 1 - m holds x[t - m]
            # (an einsum here runs one tiny matmul per channel, with a copy each: ~10x slower)
            out = (span * coefficients.reversed_taps(window)).sum(0, keepdim=True)
        else:
            out = _whole_sequence(span, coefficients, dim, window, False, algorithm, block)[window - 1:]
        last_inputs = span[span.size(0) - (window - 1):]
        if length > 1:  # a copy, so that the saved state does not keep a long span alive
            last_inputs = last_inputs.clone()
        return out, last_inputs.permute(1, 2, 0)
    if length == 1:
        return recurrence_step(x, coefficients.q, coefficients.p_beta, coefficients.gamma, initial_state)
    start = None if initial_state is None else initial_state.transpose(0, 1)  # D x B x N
    causal = EMARows(coefficients.p_beta, coefficients.log_q, coefficients.gamma)
    out, last = blocked_scan_ema(x, block, causal, initial_state=start, return_last_state=True)
    return out, last.transpose(0, 1)


def recurrence_step(x: Tensor, q: Tensor, p_beta: Tensor, gamma: Tensor, state: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """One untruncated causal step, ``h = q h + p_beta x``, ``y = sum_n gamma h``: x ``1 x B x D``,
    coefficients ``D x N``, state ``B x D x N`` or None (start of a sequence). Returns the
    ``1 x B x D`` output and the new state. No argument checks: :func:`multi_head_ema` makes them
    (the EMA module calls this directly only with a saved state of the right shape)."""
    new_state = x[0].unsqueeze(-1) * p_beta
    if state is not None:
        new_state = new_state + q * state
    return (new_state * gamma).sum(-1).unsqueeze(0), new_state


def _check_arguments(x, q, p_beta, gamma, bidirectional, window, scan_block, initial_state, return_last_state, omega=None):
    if x.dim() != 3:
        raise ValueError("x must be Time x Batch x D, got shape {}".format(tuple(x.shape)))
    if not x.is_floating_point():
        raise TypeError("x must be a floating-point tensor, got dtype {}".format(x.dtype))
    rows = 2 * x.size(-1) if bidirectional else x.size(-1)
    for name, value in (("q", q), ("p_beta", p_beta), ("gamma", gamma)):
        if value.dim() != 2 or value.size(0) != rows or value.shape != q.shape:
            raise ValueError(
                "{} must be {} x N ({} rows for D = {}, bidirectional={}), got shape {}".format(
                    name, rows, rows, x.size(-1), bidirectional, tuple(value.shape)
                )
            )
    if omega is not None and tuple(omega.shape) != (x.size(-1),):
        raise ValueError("omega must have shape (D,) = {}, got shape {}".format((x.size(-1),), tuple(omega.shape)))
    if window is not None and (not isinstance(window, int) or window < 1):
        raise ValueError("window must be None or a positive int, got {!r}".format(window))
    if scan_block is not None and (not isinstance(scan_block, int) or scan_block < 1):
        raise ValueError("scan_block (MultiHeadEMA.scan_block) must be None or a positive int, got {!r}".format(scan_block))
    if bidirectional and (initial_state is not None or return_last_state):
        raise ValueError("initial_state and return_last_state need bidirectional=False (the anti-causal EMA has no state)")
    if initial_state is not None:
        expected = (x.size(1), x.size(-1), q.size(-1) if window is None else window - 1)
        if initial_state.dim() == 3 and initial_state.size(0) != x.size(1):
            raise ValueError(
                "initial_state (the saved incremental state) holds batch size {} but x has batch size {}: move it "
                "to the new batch with reorder_incremental_state, or start from a fresh incremental_state".format(initial_state.size(0), x.size(1))
            )
        if tuple(initial_state.shape) != expected:
            raise ValueError(
                "initial_state must be Batch x D x {} = {}, got shape {}".format(
                    "N" if window is None else "(window - 1)", expected, tuple(initial_state.shape)
                )
            )


def multi_head_ema(
    x: Tensor,
    q: Tensor,
    p_beta: Tensor,
    gamma: Tensor,
    *,
    bidirectional: bool = False,
    window: Optional[int] = None,
    algorithm: str = "auto",
    scan_block: Optional[int] = None,
    initial_state: Optional[Tensor] = None,
    return_last_state: bool = False,
    memo: Optional[Dict[str, Tensor]] = None,
    omega: Optional[Tensor] = None,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Mega's multi-dimensional damped EMA of ``x``, plus the ``omega * x`` residual when ``omega``
    is given (no activation).

    Args:
        x: ``T x B x D`` input, floating point, zero at padded positions; ``T = 0`` is allowed.
        q, p_beta, gamma: ``R x N`` coefficients: ``q = 1 - p * sigmoid(alpha)``,
            ``p_beta = p * beta``, ``gamma = gamma * sqrt(1/N)``; ``R = D``, or ``2 D`` when
            ``bidirectional`` (rows ``D..2D-1`` are the anti-causal EMA). In ``x``'s dtype.
        bidirectional: add the anti-causal EMA (lag 0 counted by both directions).
        window: keep only the first ``window`` kernel taps; None = all.
        algorithm: whole-sequence algorithm, one of :data:`ALGORITHMS` (see the module docstring).
        scan_block: block length of the blocked scan; None = :data:`DEFAULT_SCAN_BLOCK`.
        initial_state: causal only; the state before ``x`` (``B x D x N``, or the previous
            ``W - 1`` inputs ``B x D x (W - 1)`` with a window). None = start of a sequence.
        return_last_state: also return the state after ``x``, in the same layout.
            (Under ``torch.autocast`` the op still computes in ``x``'s dtype.)
        memo: optional dict kept by the caller for derived tensors (``log q``, kernel taps) of these
            exact coefficients; the caller must drop it when the coefficients change.
        omega: optional ``D`` residual weights, in ``x``'s dtype: the output is then
            ``EMA(x) + omega * x``. The blocked scan adds them to the lag-0 tap of its in-block
            matmul (no separate pass over the input and none over the gradient); the other paths
            add the product. The returned state never includes it.

    Returns:
        ``T x B x D`` output (possibly a strided view), and the last state when
        ``return_last_state``.
    """
    _check_arguments(x, q, p_beta, gamma, bidirectional, window, scan_block, initial_state, return_last_state, omega)
    pick_algorithm(algorithm, 1, 1)  # reject a bad name on every call, not only when it is used
    # mixed precision would run the matmuls in the half dtype and the custom backwards would then
    # mix dtypes: the EMA is computed in x's dtype, outside autocast
    outside_autocast = (
        torch.autocast(x.device.type, enabled=False) if torch.is_autocast_enabled(x.device.type) else nullcontext()
    )
    with outside_autocast:
        return _compute(x, q, p_beta, gamma, bidirectional, window, algorithm, scan_block, initial_state,
                        return_last_state, memo, omega)


def _compute(x, q, p_beta, gamma, bidirectional, window, algorithm, scan_block, initial_state, return_last_state, memo,
             omega=None):
    """:func:`multi_head_ema` after its argument checks."""
    length, bsz, dim = x.shape
    block = DEFAULT_SCAN_BLOCK if scan_block is None else scan_block
    coefficients = _Coefficients(q, p_beta, gamma, memo)
    if initial_state is not None:
        initial_state = initial_state.to(x.dtype)
    if length == 0:
        out = x.new_zeros(x.shape)
        if not return_last_state:
            return out
        if initial_state is None:
            initial_state = x.new_zeros(bsz, dim, q.size(-1) if window is None else window - 1)
        return out, initial_state
    if initial_state is None and not return_last_state:
        return _whole_sequence(x, coefficients, dim, window, bidirectional, algorithm, block, omega)
    out, last_state = _stream(x, coefficients, dim, window, algorithm, block, initial_state)
    out = _add_residual(out, x, omega)
    return (out, last_state) if return_last_state else out
