"""``batch_first_linear`` (v_proj of the Mega self-attention) equals ``F.linear`` of the transposed input.

Values and float64 gradients (gradcheck) on both weight-gradient branches (per-sequence GEMMs up to
8 sequences, one GEMM over a copy beyond), with and without bias; short sequences and no-grad calls
take ``F.linear`` itself; and the function keeps the input, not a Batch x Time copy of it.
"""
import pytest
import torch
import torch.nn.functional as F

from mega_fairseq.modules import batch_first_linear as module
from mega_fairseq.modules.batch_first_linear import BatchFirstLinear, batch_first_linear


@pytest.mark.parametrize("bsz", [3, 10])
@pytest.mark.parametrize("with_bias", [True, False])
def test_values_and_gradcheck(bsz, with_bias):
    gen = torch.Generator().manual_seed(bsz)
    x = torch.randn(6, bsz, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(5, generator=gen, dtype=torch.float64, requires_grad=True) if with_bias else None
    got = BatchFirstLinear.apply(x, weight, bias)
    assert got.shape == (bsz, 6, 5) and got.is_contiguous()
    assert (got - F.linear(x.transpose(0, 1), weight, bias)).abs().max().item() < 1e-13
    inputs = (x, weight) + ((bias,) if with_bias else ())
    assert torch.autograd.gradcheck(lambda *t: BatchFirstLinear.apply(t[0], t[1], t[2] if with_bias else None), inputs)


def test_dispatch_and_what_is_kept(monkeypatch):
    monkeypatch.setattr(module, "MIN_SEQUENCE_LENGTH", 4)
    x = torch.randn(6, 2, 4, requires_grad=True)
    weight = torch.randn(5, 4, requires_grad=True)
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
        out = batch_first_linear(x, weight, None)
    assert out.grad_fn.name().startswith("BatchFirstLinear")
    assert any(t.data_ptr() == x.data_ptr() for t in kept) and all(t.shape != (2, 6, 4) for t in kept)
    assert batch_first_linear(x[:3], weight, None).grad_fn.name() != out.grad_fn.name()  # short: F.linear
    with torch.no_grad():
        assert batch_first_linear(x, weight, None).grad_fn is None
