"""Padding and chunking: any length, no NaN, padding-invariant cross-attention, real-key normaliser.

NaN or inf at padded positions never reaches a real position (issue 9, item 7): a pad key gets an
attention weight of exactly 0, but ``0 * NaN`` is NaN and a NaN key turns its whole score row into
NaN. Those tests fill the pads once with ordinary numbers and once with NaN/inf and compare the
real positions (values, the gradient reaching the real inputs, finite weight gradients).
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
            if "norm" in name:
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=gen))
            else:
                param.copy_(torch.randn(param.shape, generator=gen) / max(1, param.shape[-1]) ** 0.5)
    return module.eval()


def mega(bidirectional, chunk_size=-1, attention_activation="softmax", rel_pos_bias="simple"):
    module = MovingAverageGatedAttention(
        D, Z, H, N, bidirectional=bidirectional, chunk_size=chunk_size, attention_activation=attention_activation,
        rel_pos_bias=rel_pos_bias, max_positions=64,
    )
    return randomize(module)


def causal_mask(length, chunk_size, attention_activation):
    n = chunk_size if 0 < chunk_size < length else length
    if attention_activation == "softmax":
        return torch.triu(torch.full((n, n), float("-inf")), 1)
    return torch.tril(torch.ones(n, n))


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("attention_activation", ACTIVATIONS)
def test_any_length_equals_padding_to_chunk_multiple(bidirectional, attention_activation):
    """A misaligned length gives what the official model wrappers compute by padding to a multiple."""
    chunk = 4
    module = mega(bidirectional, chunk, attention_activation)
    for length in range(1, 3 * chunk + 2):
        x = torch.randn(length, 2, D)
        mask = None if bidirectional else causal_mask(length, chunk, attention_activation)
        with torch.no_grad():
            out, _ = module(x, attn_mask=mask)
        assert out.shape == x.shape
        padded_len = -(-length // chunk) * chunk if length > chunk else length
        if padded_len == length:
            continue
        x_padded = torch.cat([x, torch.randn(padded_len - length, 2, D)])
        pad = torch.arange(padded_len).unsqueeze(0).expand(2, -1) >= length
        mask = None if bidirectional else causal_mask(padded_len, chunk, attention_activation)
        with torch.no_grad():
            reference, _ = module(x_padded, padding_mask=pad, attn_mask=mask)
        assert (out - reference[:length]).abs().max().item() < 1e-5


def left_padding(pads, total):
    return torch.arange(total).unsqueeze(0) < torch.tensor(pads).unsqueeze(1)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("chunk_size", [-1, 4])
@pytest.mark.parametrize("attention_activation", ACTIVATIONS)
def test_no_nan_with_left_padding_full_rows_and_full_chunks(bidirectional, chunk_size, attention_activation):
    length = 12
    module = mega(bidirectional, chunk_size, attention_activation)
    module.train()  # dropout is 0; train mode exercises the uncached EMA kernel path too
    # row 0: no padding; row 1: left padding covering a whole chunk and more; row 2: all padding
    padding_mask = left_padding([0, 6, length], length)
    x = torch.randn(length, 3, D, requires_grad=True)
    mask = None if bidirectional else causal_mask(length, chunk_size, attention_activation)
    out, _ = module(x, padding_mask=padding_mask, attn_mask=mask)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in module.parameters() if p.grad is not None)
    # a fully padded neighbour does not change the other rows
    with torch.no_grad():
        alone, _ = module(x[:, :1], padding_mask=padding_mask[:1], attn_mask=mask)
    assert (out[:, :1] - alone).abs().max().item() < 1e-5


@pytest.mark.parametrize("attention_activation", ACTIVATIONS)
@pytest.mark.parametrize("rel_pos_bias", ["simple", "rotary"])
def test_causal_left_padding_matches_unpadded_row(attention_activation, rel_pos_bias):
    """Unchunked causal attention ignores left pads: real positions equal the unpadded row.

    This needs pad keys fully masked and the element-wise normaliser to count only real keys.
    """
    module = mega(False, -1, attention_activation, rel_pos_bias)
    length, pads = 10, 4
    x = torch.randn(length, 1, D)
    padding_mask = left_padding([pads], length)
    with torch.no_grad():
        padded, _ = module(x, padding_mask=padding_mask, attn_mask=causal_mask(length, -1, attention_activation))
        real = x[pads:]
        unpadded, _ = module(real, attn_mask=causal_mask(length - pads, -1, attention_activation))
    assert torch.isfinite(padded).all()
    assert (padded[pads:] - unpadded).abs().max().item() < 1e-5


def cross_attention(attention_activation, rel_pos_bias):
    module = GatedCrossAttention(
        D, Z, attention_activation=attention_activation, rel_pos_bias=rel_pos_bias, max_positions=32, prenorm=False
    )
    return randomize(module, seed=5)


@pytest.mark.parametrize("attention_activation", ACTIVATIONS)
@pytest.mark.parametrize("rel_pos_bias", ["simple", "rotary"])
def test_cross_attention_is_padding_invariant(attention_activation, rel_pos_bias):
    """A left-padded (or right-padded) source row gives the same output as the row alone."""
    module = cross_attention(attention_activation, rel_pos_bias)
    tgt_len, src_real, total = 6, 5, 9
    query = torch.randn(tgt_len, 1, D)
    source = torch.randn(src_real, 1, D)
    filler = torch.randn(total - src_real, 1, D)
    with torch.no_grad():
        alone, alone_w = module(query, source, source, need_weights=True)
        for layout in ("left", "right"):
            if layout == "left":
                src = torch.cat([filler, source])
                mask = left_padding([total - src_real], total)
                real = slice(total - src_real, total)
            else:
                src = torch.cat([source, filler])
                mask = torch.arange(total).unsqueeze(0) >= src_real
                real = slice(0, src_real)
            out, weights = module(query, src, src, key_padding_mask=mask, need_weights=True)
            assert (out - alone).abs().max().item() < 1e-5, layout
            assert (weights[:, :, real] - alone_w).abs().max().item() < 1e-5, layout
            assert weights[:, :, mask[0]].abs().max().item() == 0.0


def test_cross_attention_no_nan_for_fully_padded_source():
    module = cross_attention("softmax", "simple")
    query = torch.randn(3, 2, D)
    src = torch.randn(4, 2, D)
    mask = torch.tensor([[False, False, True, True], [True, True, True, True]])
    with torch.no_grad():
        out, _ = module(query, src, src, key_padding_mask=mask)
    assert torch.isfinite(out).all()


# ------------------------------------------------------------ NaN/inf at padded positions
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
    module = mega(bidirectional, chunk_size, attention_activation).train()
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
    module = mega(False, chunk_size)
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
    module = cross_attention(attention_activation, "simple").train()
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
