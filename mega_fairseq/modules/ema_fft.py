"""FFT convolution for the Mega EMA, with a fast transform length.

The EMA output of a whole sequence is a long convolution of the input with a
per-channel kernel. Done by FFT, the transform must be at least as long as the
linear convolution (``L + K - 1`` for a length ``L`` input and a length ``K``
kernel) to avoid wrap-around. Instead of blindly using ``2 * L`` we pick the
smallest even 2/3/5-smooth length that is long enough: pocketfft (the CPU
backend of ``torch.fft``) is fastest on such sizes.

:func:`fft_conv` takes channel-first tensors, ``D x B x L`` (channel, batch, time), already in
the compute dtype.
"""

import functools
from typing import Optional

import torch
from torch import Tensor


@functools.lru_cache(maxsize=1024)
def fast_fft_length(min_length: int) -> int:
    """Smallest even ``n >= min_length`` of the form ``2**a * 3**b * 5**c`` (a >= 1)."""
    if min_length < 1:
        raise ValueError("min_length must be >= 1, got {}".format(min_length))
    best = None
    power5 = 1
    while True:
        power35 = power5
        while True:
            # smallest 2**a * power35 (a >= 1) that reaches min_length
            candidate = 2 * power35
            while candidate < min_length:
                candidate *= 2
            if best is None or candidate < best:
                best = candidate
            if power35 >= min_length:
                break
            power35 *= 3
        if power5 >= min_length:
            break
        power5 *= 5
    return best


def two_sided_kernel_buffer(forward_kernel: Tensor, backward_kernel: Tensor, n: int) -> Tensor:
    """Lay out a bidirectional EMA kernel for a circular convolution of size ``n``.

    Lag ``m >= 0`` (past and present inputs) goes to index ``m``, lag ``-m``
    (future inputs) to index ``n - m``. The lag-0 tap is counted by both
    directions, as in the official model.

    Args:
        forward_kernel: ``D x K`` causal kernel.
        backward_kernel: ``D x K`` anti-causal kernel (tap ``m`` weighs ``x[t + m]``).
        n: circular size, at least ``2 * K - 1``.

    Returns:
        ``D x n`` buffer.
    """
    dim, size = forward_kernel.shape
    if n < 2 * size - 1:
        raise ValueError("FFT size {} is too short for a two-sided kernel of length {}".format(n, size))
    gap = forward_kernel.new_zeros(dim, n - 2 * size + 1)
    return torch.cat(
        [
            forward_kernel[:, :1] + backward_kernel[:, :1],
            forward_kernel[:, 1:],
            gap,
            backward_kernel[:, 1:].flip(-1),
        ],
        dim=-1,
    )


def fft_conv(x: Tensor, forward_kernel: Tensor, backward_kernel: Optional[Tensor] = None) -> Tensor:
    """``y[t] = sum_m fwd[m] x[t - m] (+ sum_m bwd[m] x[t + m])`` by FFT along time.

    Args:
        x: ``D x B x L`` input (channel-first: transforming along a contiguous last dim is ~1.5x
            faster than along dim 0 of Time x Batch x D, layout copies included).
        forward_kernel: ``D x K`` causal kernel, ``K <= L``.
        backward_kernel: ``D x K`` anti-causal kernel (tap ``m`` weighs ``x[t + m]``), or None.

    Returns:
        ``D x B x L``.
    """
    length = x.size(-1)
    n = fast_fft_length(length + forward_kernel.size(-1) - 1)
    if backward_kernel is None:
        buffer = forward_kernel
    else:
        buffer = two_sided_kernel_buffer(forward_kernel, backward_kernel, n)
    x_f = torch.fft.rfft(x, n=n)
    k_f = torch.fft.rfft(buffer, n=n).unsqueeze(1)
    return torch.fft.irfft(x_f * k_f, n=n)[..., :length]
