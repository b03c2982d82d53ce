"""Multi-dimensional damped exponential moving average (the "EMA" of Mega).

Per channel ``d`` and each of ``N`` EMA dimensions ``n``::

    p = sigmoid(delta),  q = 1 - p * sigmoid(alpha)
    h[t] = q * h[t - 1] + p * beta * x[t]
    y[t] = silu(sum_n gamma * sqrt(1/N) * h[t, n] + omega * x[t])

The computation is the functional op :func:`~.ema_op.multi_head_ema` (whole sequences by a dense
Toeplitz matmul, FFT or blocked scan; decoding steps that carry the state), defined by the plain
recurrence :func:`~.ema_reference.ema_reference`. The bidirectional variant adds an anti-causal
EMA with a second set of parameters; the lag-0 tap is counted by both directions.

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

from .ema_kernel import ema_kernel
from .ema_op import multi_head_ema, recurrence_step
from .fusion_guard import compiling

IncrementalState = Dict[str, Dict[str, Optional[Tensor]]]

_CACHE_ENTRIES = 4


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
    (default: on the CPU the compiled recurrence of :mod:`.ema_recurrence` when it
    is installed and the EMA is untruncated; otherwise dense Toeplitz matmul up to
    64 steps, then FFT or blocked scan), ``"recurrence"``, ``"toeplitz"``, ``"fft"``
    or ``"blocked_scan"``; ``scan_block`` is the block length of the blocked scan
    (``None`` = 64). Decoding steps always run the
    recurrence (one token) or the blocked scan from the saved state
    (see :mod:`.ema_op`).
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
        self.scan_block: Optional[int] = None
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
        if compiling():
            return False  # a compiled graph computes the coefficients itself (no data-pointer checks)
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
    def _coefficients(self, dtype: torch.dtype) -> Tuple[Tensor, Tensor, Tensor, Optional[dict]]:
        """``(q, p * beta, gamma * sqrt(1/N), memo)``: each ``kD x N`` in ``dtype``; ``memo`` is the op's
        store of derived tensors (``log q``, kernel taps), kept with the coefficients in eval mode, else None."""

        def build():
            p = torch.sigmoid(self.delta.to(dtype)).squeeze(-1)
            q = 1.0 - p * torch.sigmoid(self.alpha.to(dtype)).squeeze(-1)
            p_beta = p * self.beta.to(dtype).squeeze(-1)
            return q, p_beta, self.gamma.to(dtype) * self.scale, ({} if self._cache_allowed() else None)

        return self._cached(("coefficients", dtype, self.delta.device), build)

    def coeffs(self) -> Tuple[Tensor, Tensor]:
        """Official API: ``(p, q)``, each ``kD x N x 1``."""
        p = torch.sigmoid(self.delta)
        return p, 1.0 - p * torch.sigmoid(self.alpha)

    def kernel(self, length: int) -> Tensor:
        """Official API: EMA kernel ``kD x K`` with ``K = min(truncation, length)``."""
        compute_dtype = torch.float64 if self.gamma.dtype == torch.float64 else torch.float32
        q, p_beta, gamma, _ = self._coefficients(compute_dtype)
        size = length if self.window is None else min(self.window, length)
        return ema_kernel(p_beta, torch.log(q), gamma, size)

    @property
    def chunk_block(self):
        raise AttributeError("MultiHeadEMA.chunk_block was renamed scan_block (the blocked scan's block length)")

    @chunk_block.setter
    def chunk_block(self, value):
        raise AttributeError("MultiHeadEMA.chunk_block was renamed scan_block (the blocked scan's block length)")

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        x: Tensor,
        padding_mask: Optional[Tensor] = None,
        incremental_state: Optional[IncrementalState] = None,
        *,
        activate: bool = True,
    ) -> Tensor:
        """Apply the EMA sub-layer.

        Args:
            x: ``T x B x D`` floating-point input; ``T = 0`` gives an empty output.
            padding_mask: optional ``B x T`` bool mask, True at pads (pads are
                zeroed before the EMA). In incremental mode a wider mask
                (covering earlier steps too) is accepted; its last ``T``
                columns are used.
            incremental_state: fairseq incremental state (causal EMA only);
                ``x`` then holds the new tokens, one or several. Saved under
                ``"ema_state"``: ``prev_state`` (``B x D x N``) without truncation,
                ``prev_inputs`` (the last ``W - 1`` inputs, ``B x D x (W-1)``)
                with truncation ``W``.
            activate: False returns ``EMA(x) + omega * x`` without the silu, in the compute
                dtype (float32, or float64 for float64 input), for a caller that fuses the silu
                into what follows (the gate projection of the Mega self-attention).

        Returns:
            ``T x B x D``: ``silu(EMA(x) + omega * x)`` in the dtype of ``x``.
        """
        if x.dim() != 3 or x.size(-1) != self.embed_dim:
            raise ValueError(
                "x must be Time x Batch x Channel with {} channels (embed_dim), got shape {}".format(
                    self.embed_dim, tuple(x.shape)
                )
            )
        if not x.is_floating_point():
            raise TypeError("x must be a floating-point tensor (float16/bfloat16/float32/float64), got dtype {}".format(x.dtype))
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

        q, p_beta, gamma, memo = self._coefficients(compute_dtype)
        options = dict(
            bidirectional=self.bidirectional, window=self.window, algorithm=self.conv_algorithm,
            scan_block=self.scan_block, memo=memo,
        )
        omega = self.omega.to(compute_dtype)
        if incremental_state is None and x_conv is x_compute:
            # the op adds omega * x itself (the blocked scan inside its in-block matmul); with
            # padding the residual reads the unmasked input, as in the official code, so it is
            # added below instead
            out = multi_head_ema(x_conv, q, p_beta, gamma, omega=omega, **options)
            return out if not activate else F.silu(out).to(x.dtype)
        if incremental_state is None:
            ema = multi_head_ema(x_conv, q, p_beta, gamma, **options)
        else:
            buffer = self._get_input_buffer(incremental_state)
            if self._plain_step(x_conv, buffer.get("prev_state"), compute_dtype):
                # one token, no window, a saved state that fits: the recurrence alone (the op's
                # checks and dispatch cost about a fifth of this step)
                ema, buffer["prev_state"] = recurrence_step(x_conv, q, p_beta, gamma, buffer.get("prev_state"))
            else:
                key = "prev_state" if self.window is None else "prev_inputs"
                # a saved state of another batch size is refused by the op, naming both sizes
                ema, buffer[key] = multi_head_ema(
                    x_conv, q, p_beta, gamma, initial_state=buffer.get(key), return_last_state=True, **options
                )
            self._set_input_buffer(incremental_state, buffer)
        # residual first, so the sum (and everything after it) is laid out Time x Batch x D;
        # in place: the product's backward does not need its output
        out = (x_compute * omega).add_(ema)
        if not activate:
            return out
        return F.silu(out).to(x.dtype)

    def _plain_step(self, x: Tensor, state: Optional[Tensor], dtype: torch.dtype) -> bool:
        """Whether a decoding call is one token of an untruncated EMA whose saved state (if any) is
        ``B x D x N`` in ``dtype``; other calls go through :func:`multi_head_ema` and its checks."""
        if x.size(0) != 1 or self.window is not None:
            return False
        return state is None or (state.shape == (x.size(1), self.embed_dim, self.ndim) and state.dtype == dtype)

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
