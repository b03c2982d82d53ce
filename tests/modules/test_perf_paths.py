"""The fast paths added for training speed compute the same thing as the plain ones.

* dense Toeplitz EMA convolution (``ema_toeplitz``) against the FFT path, values and gradients;
* the Toeplitz builder's diagonal-sum backward (gradcheck);
* the simple relative bias built as a Toeplitz matrix against indexing the table;
* the CPU dropout: keep rate, scaling, gradient, and only in training mode.

Parity of whole modules with the official fixtures (which now run through these paths) is in
``test_ema_module.py`` (each EMA path also against the reference recurrence in
``test_ema_op.py``), ``test_parity.py`` and ``tests/models/test_model_parity.py``.
"""
import pytest
import torch

from mega_fairseq.modules.ema_fft import fft_conv
from mega_fairseq.modules.ema_toeplitz import toeplitz_conv_tbd
from mega_fairseq.modules.exponential_moving_average import MultiHeadEMA
from mega_fairseq.modules.fairseq_dropout import FairseqDropout, element_dropout
from mega_fairseq.modules.simple_relative_positional_bias import SimpleRelativePositionalBias
from mega_fairseq.modules.toeplitz_matrix import toeplitz_from_lags


def test_toeplitz_from_lags_layout_and_gradcheck():
    lags = torch.arange(7.0).unsqueeze(0)  # length 4, lags -3..3 stored at 0..6
    matrix = toeplitz_from_lags(lags)[0]
    for s in range(4):
        for t in range(4):
            assert matrix[s, t].item() == 3 + t - s
    lags = torch.randn(3, 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(toeplitz_from_lags, (lags,))
    with pytest.raises(ValueError, match="lags"):
        toeplitz_from_lags(torch.zeros(2, 4))


@pytest.mark.parametrize("taps", [9, 4, 1])
def test_toeplitz_conv_equals_fft(taps):
    torch.manual_seed(taps)
    x = torch.randn(9, 3, 5, dtype=torch.float64)  # Time x Batch x D
    forward, backward = torch.randn(5, taps, dtype=torch.float64), torch.randn(5, taps, dtype=torch.float64)
    x_channels = x.permute(2, 1, 0)  # fft_conv is channel-first: D x B x L
    assert (toeplitz_conv_tbd(x, forward) - fft_conv(x_channels, forward).permute(2, 1, 0)).abs().max() < 1e-12
    two_sided = fft_conv(x_channels, forward, backward).permute(2, 1, 0)
    assert (toeplitz_conv_tbd(x, forward, backward) - two_sided).abs().max() < 1e-12


@pytest.mark.parametrize("bidirectional", [False, True])
def test_toeplitz_conv_tbd_gradcheck(bidirectional):
    torch.manual_seed(1)
    x = torch.randn(6, 2, 3, dtype=torch.float64, requires_grad=True)
    forward = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    backward = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    if bidirectional:
        assert torch.autograd.gradcheck(lambda a, f, b: toeplitz_conv_tbd(a, f, b), (x, forward, backward))
    else:
        assert torch.autograd.gradcheck(lambda a, f: toeplitz_conv_tbd(a, f), (x, forward))


@pytest.mark.parametrize("bidirectional", [False, True])
def test_ema_toeplitz_training_gradients_equal_fft(bidirectional):
    torch.manual_seed(2)
    module = MultiHeadEMA(6, ndim=3, bidirectional=bidirectional, truncation=5).train()
    x = torch.randn(11, 4, 6)
    mask = torch.zeros(4, 11, dtype=torch.bool)
    mask[1, :3] = True
    mask[2, 8:] = True
    grads = {}
    for algorithm in ("toeplitz", "fft"):
        module.conv_algorithm = algorithm
        module.zero_grad()
        x_in = x.clone().requires_grad_(True)
        out = module(x_in, mask)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads[algorithm] = [out.detach(), x_in.grad] + [p.grad.clone() for p in module.parameters()]
    for fast, plain in zip(grads["toeplitz"], grads["fft"]):
        assert (fast - plain).abs().max() < 1e-5


def test_simple_bias_toeplitz_equals_indexing():
    torch.manual_seed(3)
    bias = SimpleRelativePositionalBias(12)
    for length in (1, 5, 12):
        weights = torch.randn(length, length)
        bias.zero_grad()
        (bias(length) * weights).sum().backward()
        fast_value, fast_grad = bias(length).detach(), bias.rel_pos_bias.grad.clone()
        bias.zero_grad()
        positions = torch.arange(length)
        plain = bias.for_positions(positions, positions)
        (plain * weights).sum().backward()
        assert torch.equal(fast_value, plain.detach())
        assert (fast_grad - bias.rel_pos_bias.grad).abs().max() < 1e-5


def test_cpu_dropout_keep_rate_scaling_and_gradient():
    torch.manual_seed(4)
    p = 0.3
    x = torch.ones(400, 500, requires_grad=True)
    out = element_dropout(x, p)
    dropped = out == 0
    assert abs(dropped.float().mean().item() - p) < 0.01
    assert torch.allclose(out[~dropped], torch.full_like(out[~dropped], 1.0 / (1.0 - p)))
    out.sum().backward()
    assert torch.equal(x.grad, out.detach())  # d out / d x is the scaled keep mask
    layer = FairseqDropout(p)
    y = torch.randn(10, 10)
    assert torch.equal(layer.eval()(y), y)
    assert not torch.equal(layer.train()(y), y)
    half = element_dropout(torch.ones(200, 200, dtype=torch.bfloat16), 0.5)
    assert half.dtype == torch.bfloat16 and abs((half == 0).float().mean().item() - 0.5) < 0.02


@pytest.mark.parametrize("max_buffer_elements", [1 << 20, 50, 1])
def test_sum_lag_diagonals_in_row_groups_equals_the_diagonal_sums(max_buffer_elements):
    """The diagonal sums (the Toeplitz builder's backward) are the same whether the sheared buffer
    holds all rows or a few at a time, and for a strided (sliced) input."""
    from mega_fairseq.modules.toeplitz_matrix import sum_lag_diagonals

    wide = torch.randn(5, 4, 6, dtype=torch.float64)
    grad = wide[..., :4]  # R x L x L, not contiguous
    expected = torch.stack([torch.diagonal(grad, offset=lag, dim1=1, dim2=2).sum(-1) for lag in range(-3, 4)], dim=1)
    assert (sum_lag_diagonals(grad, max_buffer_elements) - expected).abs().max().item() < 1e-12
