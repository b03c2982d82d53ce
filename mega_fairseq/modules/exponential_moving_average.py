"""Multi-dimensional damped exponential moving average (the "EMA" of Mega).

Per channel ``d`` and each of ``N`` EMA dimensions ``n``::

    p = sigmoid(delta),  q = 1 - p * sigmoid(alpha)
    h[t] = q * h[t - 1] + p * beta * x[t]
    y[t] = silu(sum_n gamma * sqrt(1/N) * h[t, n] + omega * x[t])

A whole sequence is a causal convolution with the kernel
``k[m] = sum_n gamma sqrt(1/N) p beta q^m``, evaluated as one dense Toeplitz
matmul for short sequences, else by FFT or by a blocked scan, whichever is
faster for the length. The bidirectional variant adds an
anti-causal convolution with a second set of parameters; the lag-0 tap is
counted by both directions. Decoding steps use the recurrence.

``truncation = W > 0`` keeps only the first ``W`` kernel taps. Incremental
decoding is then exact too: the module keeps the last ``W - 1`` inputs and
evaluates the windowed sum (cost independent of the position). ``None`` or a
value ``<= 0`` means no truncation.

Parameter names, shapes and initialisation follow the official Mega code so
official checkpoints load unchanged.
"""

import math
from collections import OrderedDict
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fairseq.incremental_decoding_utils import with_incremental_state

from .ema_chunked_scan import chunked_causal_ema, ema_kernel, geometric_powers
from .ema_fft import fft_bidirectional_conv, fft_causal_conv
from .ema_toeplitz import toeplitz_conv, toeplitz_conv_tbd

IncrementalState = Dict[str, Dict[str, Optional[Tensor]]]

CONV_ALGORITHMS = ("auto", "toeplitz", "fft", "chunked")
# Measured with benchmarks/bench_ema.py (CPU, D=256, N=16, forward + backward): the
# FFT path wins only for small calls (fixed cost of the batched small matmuls); with
# 8192 tokens per call the blocked scan is ~2x faster at L=32, ~4x at 2048 and
# ~10x at 8192-16384, and its cost per token stays flat. Block 64 was best or tied.
_CHUNKED_MIN_LENGTH = 96
# Up to this length one dense L x L Toeplitz matmul per channel beats both (no FFT, no scan,
# no doubled rows for the bidirectional EMA); measured with benchmarks/bench_ema.py.
_TOEPLITZ_MAX_LENGTH = 64
_CHUNKED_MIN_TOKENS = 2048
_DEFAULT_BLOCK = 64
_CACHE_ENTRIES = 16


@with_incremental_state
class MultiHeadEMA(nn.Module):
    """Mega's multi-dimensional damped EMA.

    Args:
        embed_dim: channels ``D``.
        ndim: EMA dimensions ``N`` per channel.
        bidirectional: add an anti-causal EMA (encoder use; no incremental mode).
        truncation: keep only the first ``truncation`` kernel taps; ``None`` or
            ``<= 0`` disables truncation.

    Attribute ``conv_algorithm`` picks the whole-sequence path: ``"auto"``
    (default: dense Toeplitz matmul up to 64 steps, then FFT or blocked scan),
    ``"toeplitz"``, ``"fft"`` or ``"chunked"``. ``chunk_block`` is the block
    length of the blocked scan (``None`` = automatic).
    """

    def __init__(self, embed_dim, ndim=2, bidirectional=False, truncation=None):
        super().__init__()
        if not isinstance(embed_dim, int) or embed_dim < 1:
            raise ValueError("embed_dim must be a positive int, got {!r}".format(embed_dim))
        if not isinstance(ndim, int) or ndim < 1:
            raise ValueError("ndim must be a positive int, got {!r}".format(ndim))
        if truncation is not None and not isinstance(truncation, int):
            raise ValueError("truncation must be None or an int (<= 0 means none), got {!r}".format(truncation))

        self.embed_dim = embed_dim
        self.ndim = ndim
        self.bidirectional = bidirectional
        self.truncation = truncation
        self.scale = math.sqrt(1.0 / ndim)

        kernel_dim = 2 * embed_dim if bidirectional else embed_dim
        self.delta = nn.Parameter(torch.Tensor(kernel_dim, ndim, 1))
        self.alpha = nn.Parameter(torch.Tensor(kernel_dim, ndim, 1))
        self.beta = nn.Parameter(torch.Tensor(kernel_dim, ndim, 1))
        self.gamma = nn.Parameter(torch.Tensor(kernel_dim, ndim))
        self.omega = nn.Parameter(torch.Tensor(embed_dim))
        self.reset_parameters()

        self.conv_algorithm = "auto"
        self.chunk_block: Optional[int] = None
        self._cache: "OrderedDict[tuple, Tensor]" = OrderedDict()
        self._cache_signature: Optional[tuple] = None
        self.onnx_trace = False
        self.tpu = False

    # ------------------------------------------------------------------ setup
    def reset_parameters(self):
        """Official init: delta, alpha ~ N(0, 0.2); beta ~ N(+-1, 0.02) alternating; gamma, omega ~ N(0, 1)."""
        with torch.no_grad():
            nn.init.normal_(self.delta, mean=0.0, std=0.2)
            nn.init.normal_(self.alpha, mean=0.0, std=0.2)
            signs = torch.ones(self.ndim, 1)
            signs[1::2] = -1.0
            self.beta.normal_(mean=0.0, std=0.02).add_(signs)
            nn.init.normal_(self.gamma, mean=0.0, std=1.0)
            nn.init.normal_(self.omega, mean=0.0, std=1.0)
        self._clear_cache()

    def prepare_for_onnx_export_(self):
        self.onnx_trace = True

    def prepare_for_tpu_(self, **kwargs):
        self.tpu = True

    @property
    def window(self) -> Optional[int]:
        """Number of kernel taps kept, or ``None`` when not truncated."""
        if self.truncation is None or self.truncation <= 0:
            return None
        return self.truncation

    # ------------------------------------------------------------ kernel cache
    def _clear_cache(self):
        self._cache = OrderedDict()
        self._cache_signature = None

    def train(self, mode: bool = True):
        self._clear_cache()
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        self._clear_cache()
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self._clear_cache()
        super()._load_from_state_dict(*args, **kwargs)

    def _cache_allowed(self) -> bool:
        if self.training:
            return False
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
            return False  # the result must stay differentiable
        return True

    def _cached(self, key: tuple, build):
        """Return ``build()``, memoised in eval mode; keyed on every parameter's storage and version."""
        if not self._cache_allowed():
            return build()
        signature = tuple(
            (p.data_ptr(), p._version, p.dtype, p.device) for p in (self.delta, self.alpha, self.beta, self.gamma)
        )
        if signature != self._cache_signature:
            self._cache = OrderedDict()
            self._cache_signature = signature
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        with torch.no_grad():
            value = build()
        self._cache[key] = value
        while len(self._cache) > _CACHE_ENTRIES:
            self._cache.popitem(last=False)
        return value

    # ----------------------------------------------------------- coefficients
    def _coefficients(self, dtype: torch.dtype) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(q, p * beta, log q, gamma * sqrt(1/N))``, each ``kD x N``, in ``dtype``."""

        def build():
            p = torch.sigmoid(self.delta.to(dtype)).squeeze(-1)
            q = 1.0 - p * torch.sigmoid(self.alpha.to(dtype)).squeeze(-1)
            p_beta = p * self.beta.to(dtype).squeeze(-1)
            return q, p_beta, torch.log(q), self.gamma.to(dtype) * self.scale

        return self._cached(("coefficients", dtype, self.delta.device), build)

    def coeffs(self) -> Tuple[Tensor, Tensor]:
        """Official API: ``(p, q)``, each ``kD x N x 1``."""
        p = torch.sigmoid(self.delta)
        return p, 1.0 - p * torch.sigmoid(self.alpha)

    def _kernel(self, length: int, dtype: torch.dtype) -> Tensor:
        """Truncated kernel, ``kD x min(window, length)``, cached by prefix in eval mode."""
        size = length if self.window is None else min(self.window, length)

        def build(size_to_build):
            _, p_beta, log_q, c = self._coefficients(dtype)
            return ema_kernel(p_beta, log_q, c, size_to_build)

        if not self._cache_allowed():
            return build(size)
        key = ("kernel", dtype, self.delta.device)
        cached = self._cached(key, lambda: build(size))
        if cached.size(-1) < size:
            self._cache.pop(key)
            cached = self._cached(key, lambda: build(size))
        return cached[:, :size]

    def kernel(self, length: int) -> Tensor:
        """Official API: EMA kernel ``kD x K`` with ``K = min(truncation, length)``."""
        compute_dtype = torch.float64 if self.gamma.dtype == torch.float64 else torch.float32
        return self._kernel(length, compute_dtype)

    # ------------------------------------------------------- whole sequences
    def _pick_algorithm(self, length: int, bsz: int) -> str:
        if self.conv_algorithm not in CONV_ALGORITHMS:
            raise ValueError(
                "conv_algorithm must be one of {}, got {!r}".format(CONV_ALGORITHMS, self.conv_algorithm)
            )
        if self.conv_algorithm != "auto":
            return self.conv_algorithm
        if length <= _TOEPLITZ_MAX_LENGTH:
            return "toeplitz"
        if length >= _CHUNKED_MIN_LENGTH or length * bsz >= _CHUNKED_MIN_TOKENS:
            return "chunked"
        return "fft"

    def _block_length(self) -> int:
        return _DEFAULT_BLOCK if self.chunk_block is None else self.chunk_block

    def _convolve(self, x: Tensor) -> Tensor:
        """EMA convolution of a whole sequence (no residual, no activation).

        Args:
            x: ``D x B x L`` input in the compute dtype, zero at padded positions.

        Returns:
            ``D x B x L``.
        """
        length = x.size(-1)
        algorithm = self._pick_algorithm(length, x.size(1))
        if algorithm == "toeplitz":
            kernel = self._kernel(length, x.dtype)
            if self.bidirectional:
                return toeplitz_conv(x, kernel[: self.embed_dim], kernel[self.embed_dim:])
            return toeplitz_conv(x, kernel)
        if algorithm == "fft":
            kernel = self._kernel(length, x.dtype)
            if self.bidirectional:
                return fft_bidirectional_conv(x, kernel[: self.embed_dim], kernel[self.embed_dim:])
            return fft_causal_conv(x, kernel)

        # blocked scan: the anti-causal half is the causal EMA of the time-reversed input
        rows = torch.cat([x, x.flip(-1)], dim=0) if self.bidirectional else x
        q, p_beta, log_q, c = self._coefficients(x.dtype)
        window = self.window
        truncated = window is not None and window < length
        if truncated:
            # taps m >= W, removed: the same EMA with gamma * q^W, delayed by W steps
            rows = torch.cat([rows, rows], dim=0)
            c = torch.cat([c, c * torch.exp(log_q * float(window))], dim=0)
            p_beta, log_q = p_beta.repeat(2, 1), log_q.repeat(2, 1)
        out = chunked_causal_ema(rows, p_beta, log_q, c, self._block_length())
        if truncated:
            kept, tail = out.chunk(2, dim=0)
            out = kept - F.pad(tail[..., : length - window], (window, 0))
        if self.bidirectional:
            forward_part, backward_part = out.chunk(2, dim=0)
            out = forward_part + backward_part.flip(-1)
        return out

    # ------------------------------------------------------ incremental steps
    def _step(self, x: Tensor, incremental_state: IncrementalState) -> Tensor:
        """Causal EMA of new tokens given the saved state.

        Args:
            x: ``S x B x D`` new inputs (compute dtype, zero at pads).

        Returns:
            ``S x B x D``; updates the ``"ema_state"`` buffer: ``prev_state``
            (``B x D x N``) without truncation, ``prev_inputs`` (the last
            ``W - 1`` inputs, ``B x D x (W-1)``) with truncation ``W``.
        """
        buffer = self._get_input_buffer(incremental_state)
        steps = x.size(0)
        window = self.window
        if window is not None:
            out = self._windowed_step(x, buffer, window)
        elif steps == 1:
            # plain recurrence, no FFT: h = q h + p beta x ; y = sum_n c h
            q, p_beta, _, c = self._coefficients(x.dtype)
            new_state = x[0].unsqueeze(-1) * p_beta
            state = buffer.get("prev_state")
            if state is not None:
                new_state = new_state + q * state.to(x.dtype)
            buffer["prev_state"] = new_state
            out = (new_state * c).sum(-1).unsqueeze(0)
        else:
            out = self._multi_token_step(x, buffer)
        self._set_input_buffer(incremental_state, buffer)
        return out

    def _multi_token_step(self, x: Tensor, buffer: Dict[str, Optional[Tensor]]) -> Tensor:
        """Several new tokens (``S x B x D``): whole-block EMA plus the read-out of the carried state."""
        _, p_beta, log_q, c = self._coefficients(x.dtype)
        steps = x.size(0)
        x_channels = x.permute(2, 1, 0)  # D x B x S
        out = self._convolve(x_channels)
        to_end = p_beta.unsqueeze(-1) * geometric_powers(log_q, 0, steps).flip(-1)
        new_state = torch.einsum("dbs,dns->bdn", x_channels, to_end)
        state = buffer.get("prev_state")
        if state is not None:
            state = state.to(x.dtype)
            read_out = c.unsqueeze(-1) * geometric_powers(log_q, 1, steps)
            out = out + torch.einsum("bdn,dns->dbs", state, read_out)
            new_state = new_state + torch.exp(log_q * float(steps)) * state
        buffer["prev_state"] = new_state
        return out.permute(2, 1, 0)

    def _windowed_step(self, x: Tensor, buffer: Dict[str, Optional[Tensor]], window: int) -> Tensor:
        """Exact truncated EMA of ``S x B x D`` new tokens from the last ``W - 1`` inputs."""
        x_bdt = x.permute(1, 2, 0)  # B x D x S
        previous = buffer.get("prev_inputs")
        if previous is None:
            previous = x_bdt.new_zeros(x_bdt.size(0), x_bdt.size(1), window - 1)
        span = torch.cat([previous.to(x.dtype), x_bdt], dim=-1)  # B x D x (W - 1 + S)
        buffer["prev_inputs"] = span[..., span.size(-1) - (window - 1):]
        if x.size(0) == 1:
            kernel = self._kernel(window, x.dtype)  # D x W
            return (span * kernel.flip(-1)).sum(-1).unsqueeze(0)
        out = self._convolve(span.permute(1, 0, 2))[..., window - 1:]  # D x B x S
        return out.permute(2, 1, 0)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        x: Tensor,
        padding_mask: Optional[Tensor] = None,
        incremental_state: Optional[IncrementalState] = None,
    ) -> Tensor:
        """Apply the EMA sub-layer.

        Args:
            x: ``T x B x D`` input.
            padding_mask: optional ``B x T`` bool mask, True at pads (pads are
                zeroed before the EMA). In incremental mode a wider mask
                (covering earlier steps too) is accepted; its last ``T``
                columns are used.
            incremental_state: fairseq incremental state (causal EMA only);
                ``x`` then holds the new tokens, one or several.

        Returns:
            ``T x B x D``: ``silu(EMA(x) + omega * x)`` in the dtype of ``x``.
        """
        if x.dim() != 3 or x.size(-1) != self.embed_dim:
            raise ValueError(
                "x must be Time x Batch x Channel with {} channels (embed_dim), got shape {}".format(
                    self.embed_dim, tuple(x.shape)
                )
            )
        if incremental_state is not None and self.bidirectional:
            raise ValueError(
                "incremental_state must be None for a bidirectional MultiHeadEMA: "
                "incremental decoding needs bidirectional=False"
            )
        seq_len, bsz, _ = x.shape
        compute_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        x_compute = x.to(compute_dtype)
        x_conv = x_compute
        if padding_mask is not None:
            padding_mask = self._check_padding_mask(padding_mask, seq_len, bsz, incremental_state is not None)
            # masked_fill (not a product) so that NaN/inf at pads cannot leak into the convolution
            x_conv = x_compute.masked_fill(padding_mask.t().unsqueeze(-1), 0.0)

        if incremental_state is not None:
            ema = self._step(x_conv, incremental_state)
        elif self._pick_algorithm(seq_len, bsz) == "toeplitz":
            kernel = self._kernel(seq_len, x_conv.dtype)
            if self.bidirectional:
                ema = toeplitz_conv_tbd(x_conv, kernel[: self.embed_dim], kernel[self.embed_dim:])
            else:
                ema = toeplitz_conv_tbd(x_conv, kernel)
        else:
            ema = self._convolve(x_conv.permute(2, 1, 0)).permute(2, 1, 0)  # via D x B x T
        # residual first, so the sum (and everything after it) is laid out Time x Batch x D;
        # in place: the product's backward does not need its output
        out = (x_compute * self.omega.to(compute_dtype)).add_(ema)
        return F.silu(out).to(x.dtype)

    @staticmethod
    def _check_padding_mask(padding_mask: Tensor, seq_len: int, bsz: int, incremental: bool) -> Tensor:
        width_ok = padding_mask.dim() == 2 and (
            padding_mask.size(1) == seq_len or (incremental and padding_mask.size(1) > seq_len)
        )
        if not width_ok or padding_mask.size(0) != bsz:
            raise ValueError(
                "padding_mask must be Batch x Time = ({}, {}), got shape {}".format(bsz, seq_len, tuple(padding_mask.shape))
            )
        return padding_mask[:, padding_mask.size(1) - seq_len:].to(torch.bool)

    # ------------------------------------------------------ incremental state
    def _get_input_buffer(self, incremental_state: Optional[IncrementalState]) -> Dict[str, Optional[Tensor]]:
        result = self.get_incremental_state(incremental_state, "ema_state")
        if result is not None:
            return result
        return {}

    def _set_input_buffer(self, incremental_state: IncrementalState, buffer: Dict[str, Optional[Tensor]]):
        return self.set_incremental_state(incremental_state, "ema_state", buffer)

    @torch.jit.export
    def reorder_incremental_state(self, incremental_state: IncrementalState, new_order: Tensor):
        """Select batch rows ``new_order`` (any permutation or beam expansion) of every saved tensor."""
        buffer = self._get_input_buffer(incremental_state)
        if buffer:
            for name, value in buffer.items():
                if value is not None:
                    buffer[name] = value.index_select(0, new_order.to(value.device))
            incremental_state = self._set_input_buffer(incremental_state, buffer)
        return incremental_state

    def extra_repr(self) -> str:
        return "edim={}, ndim={}, bidirectional={}, truncation={}".format(
            self.embed_dim, self.ndim, self.bidirectional, self.truncation
        )
