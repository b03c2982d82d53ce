"""NaN or inf at padded positions never reaches a real position (issue 9, item 7).

A pad key gets an attention weight of exactly 0, but ``0 * NaN`` is NaN, and a NaN key turns its
whole score row into NaN: the layers must zero padded keys and values, not only mask weights.
Each test fills the pads once with ordinary numbers and once with NaN/inf and compares the real
positions (values and the gradient reaching the real inputs).
"""

import pytest
import torch

from mega_fairseq.modules import GatedCrossAttention, MovingAverageGatedAttention

D, Z, H, N = 8, 4, 12, 2
ACTIVATIONS = ["softmax", "relu2", "laplace"]


def randomize(module, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            scale = 0.1 if "norm" in name else max(1, param.shape[-1]) ** -0.5
            param.copy_((1.0 if "norm" in name else 0.0) + scale * torch.randn(param.shape, generator=gen))
    return module


def causal_mask(length, chunk_size, attention_activation):
    n = chunk_size if 0 < chunk_size < length else length
    if attention_activation == "softmax":
        return torch.triu(torch.full((n, n), float("-inf")), 1)
    return torch.tril(torch.ones(n, n))


def poisoned(x, padding_mask):
    """x with NaN, +inf and -inf cycling over the padded positions (padding_mask: Batch x Time)."""
    bad = x.clone()
    time_batch = padding_mask.t()
    values = torch.tensor([float("nan"), float("inf"), float("-inf")])
    count = int(time_batch.sum())
    bad[time_batch] = values.repeat(count // 3 + 1)[:count].unsqueeze(-1).expand(count, x.size(-1))
    return bad


def forward_and_input_grad(module, x, **kwargs):
    x = x.clone().requires_grad_(True)
    out, _ = module(x, **kwargs)
    weights = torch.linspace(-1, 1, out.numel()).view_as(out)
    real = ~kwargs["padding_mask"].t().unsqueeze(-1)
    # only real outputs count, as a loss that ignores padded targets
    (out * weights).masked_fill(~real, 0.0).sum().backward()
    return out.detach(), x.grad


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("chunk_size", [-1, 4])
@pytest.mark.parametrize("attention_activation", ACTIVATIONS)
def test_nan_at_pads_does_not_reach_real_positions(bidirectional, chunk_size, attention_activation):
    torch.manual_seed(0)
    length = 10
    module = randomize(MovingAverageGatedAttention(
        D, Z, H, N, bidirectional=bidirectional, chunk_size=chunk_size,
        attention_activation=attention_activation, max_positions=16,
    )).train()
    # row 0: left pads, row 1: right pads, row 2: none
    padding_mask = torch.zeros(3, length, dtype=torch.bool)
    padding_mask[0, :3] = True
    padding_mask[1, 7:] = True
    x = torch.randn(length, 3, D)
    attn_mask = None if bidirectional else causal_mask(length, chunk_size, attention_activation)
    kwargs = dict(padding_mask=padding_mask, attn_mask=attn_mask)
    clean_out, clean_grad = forward_and_input_grad(module, x, **kwargs)
    bad_out, bad_grad = forward_and_input_grad(module, poisoned(x, padding_mask), **kwargs)
    real = ~padding_mask.t()
    assert torch.isfinite(bad_out[real]).all()
    assert (bad_out[real] - clean_out[real]).abs().max().item() < 1e-6
    assert torch.isfinite(bad_grad[real]).all()
    assert (bad_grad[real] - clean_grad[real]).abs().max().item() < 1e-6
    assert all(torch.isfinite(p.grad).all() for p in module.parameters() if p.grad is not None)


@pytest.mark.parametrize("chunk_size", [-1, 3])
def test_nan_at_pads_does_not_reach_later_decoding_steps(chunk_size):
    """Incremental decoding: a NaN fed at a left-pad step must not reach the cached keys/values."""
    torch.manual_seed(1)
    length = 7
    module = randomize(MovingAverageGatedAttention(D, Z, H, N, chunk_size=chunk_size, max_positions=16)).eval()
    padding_mask = torch.zeros(2, length, dtype=torch.bool)
    padding_mask[0, :2] = True
    x = torch.randn(length, 2, D)
    outputs = {}
    for name, inputs in (("clean", x), ("poisoned", poisoned(x, padding_mask))):
        state, steps = {}, []
        with torch.no_grad():
            for t in range(length):
                steps.append(module(inputs[t : t + 1], padding_mask=padding_mask[:, t : t + 1],
                                    incremental_state=state)[0])
        outputs[name] = torch.cat(steps)
    real = ~padding_mask.t()
    assert torch.isfinite(outputs["poisoned"][real]).all()
    assert (outputs["poisoned"][real] - outputs["clean"][real]).abs().max().item() < 1e-6


@pytest.mark.parametrize("attention_activation", ACTIVATIONS)
def test_nan_in_padded_encoder_states_does_not_reach_cross_attention(attention_activation):
    torch.manual_seed(2)
    module = randomize(GatedCrossAttention(D, Z, attention_activation=attention_activation, max_positions=16))
    module.train()
    src_len = 6
    key_padding_mask = torch.zeros(2, src_len, dtype=torch.bool)
    key_padding_mask[0, :2] = True
    key_padding_mask[1, 5:] = True
    query = torch.randn(4, 2, D)
    source = torch.randn(src_len, 2, D)
    results = {}
    for name, src in (("clean", source), ("poisoned", poisoned(source, key_padding_mask))):
        src = src.clone().requires_grad_(True)
        out, _ = module(query, src, src, key_padding_mask=key_padding_mask)
        out.sum().backward()
        results[name] = (out.detach(), src.grad)
    assert torch.isfinite(results["poisoned"][0]).all()
    assert (results["poisoned"][0] - results["clean"][0]).abs().max().item() < 1e-6
    real = ~key_padding_mask.t()
    assert (results["poisoned"][1][real] - results["clean"][1][real]).abs().max().item() < 1e-6
