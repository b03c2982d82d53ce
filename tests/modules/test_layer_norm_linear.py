"""``layer_norm_linear`` (the pre-norm feed-forward block's ``fc1(norm(x))``) equals the two modules.

float64 gradcheck of :class:`LayerNormLinear` with and without the norm's affine parameters and
the linear bias; the whole feed-forward block gives the same outputs and gradients with the fused
function as with the modules called one after the other, keeps the normed input no longer, and a
hooked norm or fc1 takes the modules (the hook runs).
"""
import pytest
import torch

from mega_fairseq.modules import layer_norm_linear as fused
from mega_fairseq.modules.layer_norm_linear import LayerNormLinear
from mega_fairseq.modules.normalized_feedforward_network import NormalizedFeedForwardNetwork


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("with_bias", [True, False])
def test_gradcheck_and_values(affine, with_bias):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 2, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    norm = torch.nn.LayerNorm(5, elementwise_affine=affine).double()
    if affine:
        with torch.no_grad():
            norm.weight.normal_(generator=gen)
            norm.bias.normal_(generator=gen)
    linear = torch.nn.Linear(5, 3, bias=with_bias).double()
    out = LayerNormLinear.apply(x, norm.weight, norm.bias, norm.eps, linear.weight, linear.bias)
    assert (out - linear(norm(x))).abs().max().item() < 1e-13
    leaves = [x, linear.weight] + ([norm.weight, norm.bias] if affine else []) + ([linear.bias] if with_bias else [])

    def run(*tensors):
        named = dict(zip(["x", "w"] + (["nw", "nb"] if affine else []) + (["b"] if with_bias else []), tensors))
        return LayerNormLinear.apply(named["x"], named.get("nw"), named.get("nb"), norm.eps, named["w"], named.get("b"))

    assert torch.autograd.gradcheck(run, leaves)


def block_run(block, x):
    block.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    out = block(x)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    return [out.detach(), x.grad] + [p.grad.clone() for p in block.parameters()]


def test_feed_forward_block_equals_the_modules_and_keeps_less(monkeypatch):
    torch.manual_seed(0)
    block = NormalizedFeedForwardNetwork(8, 12, norm_type="layernorm", prenorm=True).double().train()
    x = torch.randn(6, 3, 8, dtype=torch.float64)
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
        block(x.clone().requires_grad_(True))
    with_fusion = block_run(block, x)
    monkeypatch.setattr(fused.LayerNormLinear, "apply", lambda x, nw, nb, eps, w, b: torch.nn.functional.linear(
        torch.nn.functional.layer_norm(x, (x.size(-1),), nw, nb, eps), w, b))
    kept_plain = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept_plain.append(t) or t, lambda t: t):
        block(x.clone().requires_grad_(True))
    for got, expected in zip(with_fusion, block_run(block, x)):
        assert (got - expected).abs().max().item() < 1e-12

    def model_width_storages(tensors):
        return {t.untyped_storage().data_ptr() for t in tensors if t.untyped_storage().nbytes() == 6 * 3 * 8 * 8}

    assert len(model_width_storages(kept)) == 1 and len(model_width_storages(kept_plain)) == 2  # x (and norm(x))


@pytest.mark.parametrize("hooked", ["norm", "fc1"])
def test_hooked_module_is_called(hooked):
    torch.manual_seed(1)
    block = NormalizedFeedForwardNetwork(8, 12, norm_type="layernorm", prenorm=True).double().train()
    reference = block_run(block, x := torch.randn(5, 2, 8, dtype=torch.float64))
    calls = []
    module = block.norm.norm if hooked == "norm" else block.fc1
    module.register_forward_hook(lambda mod, inputs, output: calls.append(1))
    for got, expected in zip(block_run(block, x), reference):
        assert (got - expected).abs().max().item() < 1e-12
    assert calls
