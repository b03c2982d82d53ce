"""``SiluLinear`` (the feed-forward block's ``fc2(silu(fc1 x))`` that keeps only ``fc1 x``) has
exact gradients, and the block gives what plain autograd ops give (values and every gradient)."""
import torch

from mega_fairseq.modules.normalized_feedforward_network import NormalizedFeedForwardNetwork
from mega_fairseq.modules.silu_linear import SiluLinear


def test_silu_linear_gradcheck_and_ffn_equals_plain_autograd():
    gen = torch.Generator().manual_seed(5)
    pre = torch.randn(4, 2, 6, generator=gen, dtype=torch.float64).requires_grad_(True)
    weight = torch.randn(3, 6, generator=gen, dtype=torch.float64).requires_grad_(True)
    bias = torch.randn(3, generator=gen, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(SiluLinear.apply, (pre, weight, bias))
    assert torch.autograd.gradcheck(SiluLinear.apply, (pre, weight, None))

    # the feed-forward block: fused (hidden dropout off) against plain ops (hidden dropout 1e-12)
    torch.manual_seed(6)
    fused = NormalizedFeedForwardNetwork(8, 16).double().train()
    plain = NormalizedFeedForwardNetwork(8, 16, hidden_dropout=1e-12).double().train()
    plain.load_state_dict(fused.state_dict())
    x = torch.randn(5, 3, 8, dtype=torch.float64)
    results = []
    for block in (fused, plain):
        x_in = x.clone().requires_grad_(True)
        out = block(x_in)
        out.backward(torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out))
        results.append([out.detach(), x_in.grad] + [p.grad for p in block.parameters()])
    for got, expected in zip(*results):
        assert (got - expected).abs().max().item() < 1e-9
