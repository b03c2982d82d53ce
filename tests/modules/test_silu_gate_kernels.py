"""The compiled element-wise gate kernel (``silu_gate_kernels``) against float64 references.

* every function, kernel and torch fallback, equals its float64 definition to float32 rounding,
  on strided operands (the blocks' transposed layouts), large and tiny inputs, with and without
  its optional outputs; NaN stays NaN and +inf stays inf, as in torch's silu;
* float64 and other inputs the kernel does not take run the fallback;
* the fused gate functions and a whole float32 layer give the same values and gradients with and
  without the kernel;
* the kernel itself refuses operands it cannot read.
"""

import types

import pytest
import torch
import torch.nn.functional as F

from mega_fairseq.modules import silu_gate_kernels as kernels
from mega_fairseq.modules.moving_average_gated_attention import MovingAverageGatedAttention

needs_kernel = pytest.mark.skipif(not kernels.available(), reason="the gate kernel is not built")


def test_kernel_is_installed():
    """``make install`` builds it (tools/install.sh); a broken build must not pass unnoticed."""
    assert kernels.available()


@pytest.fixture(params=["kernel", "fallback"])
def path(request, monkeypatch):
    if request.param == "kernel" and not kernels.available():
        pytest.skip("the gate kernel is not built")
    if request.param == "fallback":
        monkeypatch.setattr(kernels, "_kernel", None)
    return request.param


def operand(seed, scale=4.0, transposed=True):
    """A 3 x 5 x 37 float32 operand; ``transposed``: a view of a 5 x 3 x 37 tensor (the blocks'
    Sequences x Tokens x H views of Time x Batch x H tensors)."""
    gen = torch.Generator().manual_seed(seed)
    values = torch.randn(5, 3, 37, generator=gen) * scale
    values[0, 0, :6] = torch.tensor([0.0, -0.0, 60.0, -60.0, 100.0, -100.0])  # large, past the clamp of exp
    return values.transpose(0, 1) if transposed else values.transpose(0, 1).contiguous()


def outputs(count, like):
    return [torch.full_like(like, float("nan")).transpose(0, 1).contiguous().transpose(0, 1) for _ in range(count)]


def assert_float32_close(got, expected):
    """Within float32 rounding of the float64 value (a few ulps, relative to the operands' scale)."""
    scale = expected.abs() + 1.0
    assert ((got.double() - expected).abs() / scale).max().item() < 2e-6


def silu64(x):
    return F.silu(x.double())


def silu_slope64(x):
    s = torch.sigmoid(x.double())
    return s * (1 + x.double() * (1 - s))


@pytest.mark.parametrize("transposed", [True, False])
def test_silu_and_slope(path, transposed):
    x = operand(0, transposed=transposed)
    out, slope = outputs(2, x)
    assert kernels.silu_into(x, out) is out
    assert_float32_close(out, silu64(x))
    out, slope = outputs(2, x)
    assert kernels.silu_with_slope(x, out, slope) is out
    assert_float32_close(out, silu64(x))
    assert_float32_close(slope, silu_slope64(x))


@pytest.mark.parametrize("transposed", [True, False])
def test_silu_and_slope_with_a_bias(path, transposed):
    """``silu(x + bias)`` and its slope, the bias a vector over the last dimension."""
    x = operand(0, transposed=transposed)
    bias = torch.linspace(-3, 3, x.size(-1))
    shifted = x.double() + bias.double()
    out, slope = outputs(2, x)
    assert kernels.silu_into(x, out, bias) is out
    assert_float32_close(out, F.silu(shifted))
    out, slope = outputs(2, x)
    assert kernels.silu_with_slope(x, out, slope, bias) is out
    assert_float32_close(out, F.silu(shifted))
    assert_float32_close(slope, silu_slope64(shifted))
    # a bias the kernel does not take (not contiguous) runs the fallback, same values
    out, slope = outputs(2, x)
    kernels.silu_with_slope(x, out, slope, torch.linspace(-3, 3, 2 * x.size(-1))[::2])
    assert_float32_close(out, F.silu(x.double() + torch.linspace(-3, 3, 2 * x.size(-1))[::2].double()))


def test_mul_silu(path):
    a, r = operand(1), operand(2)
    expected = a.double() * silu64(r)
    result = a.clone()
    assert kernels.mul_silu_(result, r, outputs(1, a)[0]) is result
    assert_float32_close(result, expected)


@pytest.mark.parametrize("with_gated", [True, False])
@pytest.mark.parametrize("with_grad_r", [True, False])
def test_reset_gate_backward(path, with_gated, with_grad_r):
    attended, grad, r = operand(3), operand(4), operand(5)
    gated, grad_r, scratch = outputs(3, attended)
    expected_grad = grad.double() * silu64(r)
    expected_grad_r = grad.double() * attended.double() * silu_slope64(r)
    expected_gated = attended.double() * silu64(r)
    grad_in = grad.clone()
    result = kernels.reset_gate_backward(attended.clone(), grad_in, r, gated if with_gated else None,
                                         grad_r if with_grad_r else None, scratch)
    assert result is grad_in
    assert_float32_close(result, expected_grad)
    if with_gated:
        assert_float32_close(gated, expected_gated)
    else:
        assert gated.isnan().all()
    if with_grad_r:
        assert_float32_close(grad_r, expected_grad_r)
    else:
        assert grad_r.isnan().all()


def test_gated_output(path):
    residual, pre, u = operand(6), operand(7), torch.rand(3, 5, 37)
    out = outputs(1, residual)[0]
    assert kernels.gated_output_into(residual, pre, u, out) is out
    assert_float32_close(out, residual.double() + u.double() * (silu64(pre) - residual.double()))


@pytest.mark.parametrize("with_residual", [True, False])
@pytest.mark.parametrize("with_u", [True, False])
def test_gated_output_backward(path, with_residual, with_u):
    grad, residual, pre, u = operand(8), operand(9), operand(10), torch.rand(3, 5, 37)
    grad_pre, grad_residual, grad_u, scratch = outputs(4, grad)
    kernels.gated_output_backward(grad, residual, pre, u, grad_pre, grad_residual if with_residual else None,
                                  grad_u if with_u else None, scratch)
    g, u64 = grad.double(), u.double()
    assert_float32_close(grad_pre, g * u64 * silu_slope64(pre))
    if with_residual:
        assert_float32_close(grad_residual, g * (1 - u64))
    else:
        assert grad_residual.isnan().all()
    if with_u:
        assert_float32_close(grad_u, g * (silu64(pre) - residual.double()))
    else:
        assert grad_u.isnan().all()


def test_query_key(path):
    """q, k = silu(z_pre) * gamma[i] + beta[i], written through strided views (as the Batch x Time q and
    k of a Time x Batch block)."""
    z_pre = operand(17)
    gen = torch.Generator().manual_seed(18)
    gamma, beta = torch.randn(2, 37, generator=gen), torch.randn(2, 37, generator=gen)
    q, k = outputs(2, z_pre)
    kernels.query_key_into(z_pre, gamma, beta, q, k)
    z, g64, b64 = silu64(z_pre), gamma.double(), beta.double()
    assert_float32_close(q, z * g64[0] + b64[0])
    assert_float32_close(k, z * g64[1] + b64[1])


@pytest.mark.parametrize("with_sums", [True, False])
def test_query_key_backward(path, with_sums):
    """grad_z_pre and the column sums (gamma's and beta's gradients) of q, k = silu(z_pre) * gamma + beta."""
    grad_q, grad_k, z_pre = operand(13, scale=1.0), operand(14, scale=1.0), operand(15)
    gamma = torch.randn(2, 37, generator=torch.Generator().manual_seed(16))
    grad_z_pre = outputs(1, z_pre)[0]
    sums = kernels.query_key_backward(grad_q, grad_k, z_pre, gamma, grad_z_pre, with_sums)
    g_q, g_k, g64 = grad_q.double(), grad_k.double(), gamma.double()
    assert_float32_close(grad_z_pre, (g_q * g64[0] + g_k * g64[1]) * silu_slope64(z_pre))
    if not with_sums:
        assert sums is None
        return
    z = silu64(z_pre)
    expected = torch.stack([(g_q * z).sum((0, 1)), (g_k * z).sum((0, 1)), g_q.sum((0, 1)), g_k.sum((0, 1))])
    assert sums.dtype == torch.float64 and sums.shape == (4, 37)
    assert ((sums - expected).abs() / (expected.abs() + 1.0)).max().item() < 2e-6


def test_nan_and_inf_come_out_as_in_torch(path):
    special = torch.tensor([float("nan"), float("inf"), 0.0, 1.0]).view(1, 1, 4)
    out, slope = outputs(2, special)
    kernels.silu_with_slope(special, out, slope)
    assert out[0, 0, 0].isnan() and out[0, 0, 1].item() == float("inf")
    assert slope[0, 0, 0].isnan()
    a = torch.ones(1, 1, 4)
    kernels.mul_silu_(a, special, outputs(1, special)[0])
    assert a[0, 0, 0].isnan() and a[0, 0, 1].item() == float("inf")


@needs_kernel
def test_inputs_the_kernel_does_not_take_run_the_fallback(monkeypatch):
    """float64 or a last dimension that is not contiguous: torch ops, same values."""
    real, calls = kernels._kernel, []

    def recording(name):
        def call(*args):
            calls.append(name)
            return getattr(real, name)(*args)
        return call

    names = ("silu", "silu_with_slope", "mul_silu_", "reset_gate_backward", "gated_output", "gated_output_backward")
    monkeypatch.setattr(kernels, "_kernel", types.SimpleNamespace(**{name: recording(name) for name in names}))
    x64 = operand(11).double()
    out = torch.empty_like(x64)
    kernels.silu_into(x64, out)
    assert (out - F.silu(x64)).abs().max().item() < 1e-15
    strided = torch.randn(3, 5, 74)[..., ::2]
    out = torch.empty(3, 5, 37)
    kernels.silu_into(strided, out)
    assert (out - F.silu(strided)).abs().max().item() < 1e-6
    kernels.silu_into(operand(12), torch.empty(3, 5, 37))
    assert calls == ["silu"]  # only the float32 call with a contiguous last dimension reached the kernel


@needs_kernel
def test_kernel_refuses_operands_it_cannot_read():
    x = torch.randn(2, 3, 4)
    with pytest.raises(RuntimeError, match="float32 CPU tensor of shape"):
        kernels._kernel.silu(x, torch.empty(2, 3, 5))
    with pytest.raises(RuntimeError, match="contiguous last dimension"):
        kernels._kernel.silu(x, torch.empty(2, 3, 8)[..., ::2])
    with pytest.raises(RuntimeError, match="float32"):
        kernels._kernel.silu(x.double(), x.double())
    with pytest.raises(RuntimeError, match="the bias must be a contiguous float32 CPU vector of 4 elements"):
        kernels._kernel.silu(x, torch.empty_like(x), torch.zeros(5))
    with pytest.raises(RuntimeError, match=r"gamma must be a contiguous float32 CPU tensor of shape \(2, 4\)"):
        kernels._kernel.query_key_backward(x, x, x, torch.zeros(3, 4), torch.empty_like(x))
    with pytest.raises(RuntimeError, match=r"query_key: beta must be a contiguous float32 CPU tensor of shape \(2, 4\)"):
        kernels._kernel.query_key(x, torch.zeros(2, 4), torch.zeros(2, 5), torch.empty_like(x), torch.empty_like(x))
    with pytest.raises(RuntimeError, match=r"sums must be a contiguous float64 CPU tensor of shape \(4, 4\)"):
        kernels._kernel.query_key_backward(x, x, x, torch.zeros(2, 4), torch.empty_like(x), torch.zeros(4, 4))


@needs_kernel
@pytest.mark.parametrize("chunk_size", [-1, 16])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_float32_layer_with_and_without_the_kernel(monkeypatch, chunk_size, bidirectional):
    """A whole float32 layer, padded, in blocks of several tokens: outputs and every gradient with
    the kernel are as close to the float64 layer's as those of the torch fallback."""
    from mega_fairseq.modules import fused_gates

    monkeypatch.setattr(fused_gates, "CPU_BLOCK_TOKENS", 24)
    torch.manual_seed(4)
    layer = MovingAverageGatedAttention(16, 8, 24, 4, chunk_size=chunk_size, bidirectional=bidirectional,
                                        max_positions=64).train()
    with torch.no_grad():
        layer.gamma.normal_()
        layer.beta.normal_()
    x = torch.randn(40, 3, 16)
    padding_mask = torch.zeros(3, 40, dtype=torch.bool)
    padding_mask[2, :5] = True
    out_weights = torch.randn(40, 3, 16)

    def gradients(dtype):
        layer.to(dtype).zero_grad(set_to_none=True)
        x_in = x.to(dtype, copy=True).requires_grad_(True)
        out, _ = layer(x_in, padding_mask=padding_mask)
        (out * out_weights.to(dtype)).sum().backward()
        return [out.detach(), x_in.grad] + [p.grad.clone() for p in layer.parameters()]

    reference = gradients(torch.float64)
    with_kernel = gradients(torch.float32)
    monkeypatch.setattr(kernels, "_kernel", None)
    without = gradients(torch.float32)
    for got, fallback, expected in zip(with_kernel, without, reference):
        # a floor for gradients that cancel to ~0 (beta[1]: softmax ignores a shift of every key score)
        scale = max(expected.abs().max().item(), 1e-4)
        error, fallback_error = [(t.double() - expected).abs().max().item() / scale for t in (got, fallback)]
        assert error < max(3 * fallback_error, 1e-6), (error, fallback_error)
