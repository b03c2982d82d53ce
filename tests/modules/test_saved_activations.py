"""What the Mega self-attention keeps for its backward, and the paths that keep more.

Training memory is mostly what autograd keeps between the forward and the backward. The layer's
fused functions (``GateProjection``, ``GatedAttentionProjection``, ``GatedOutput`` and the EMA's
block functions in ``ema_blocked_scan``) keep, per token, only the input, the EMA
pre-activation, the update gate, ``[z | r_pre]``, one chunk row of attention weights,
``v_pre`` and the output gate's pre-activation (the normed input, q and k are remade in the
backward: ``recomputed_activations``); nothing whose size depends on the EMA's block
length or grows with the number of blocks beyond the block states. These tests count the bytes
of every tensor saved during a forward (each storage once) with ``saved_tensors_hooks``, at two
lengths, and bound the growth per token; the pre-redesign layer (and any one of the fused
functions replaced by plain autograd) keeps more and fails.

The fused functions apply only where they are exact (no dropout on the projected EMA output, a
plain ``nn.Linear`` without hooks, no autocast, one dtype); the other cases take plain autograd
ops, checked here to give the same outputs and gradients.
"""
import pytest
import torch

from mega_fairseq.modules.moving_average_gated_attention import MovingAverageGatedAttention

from helpers import kept_storages

D, Z, H, N, CHUNK = 16, 8, 32, 4, 8


def saved_bytes(layer, length, bsz=2, bidirectional=False):
    """Bytes of the distinct storages autograd keeps for one training forward (parameters excluded)."""
    x = torch.randn(length, bsz, D, requires_grad=True)
    mask = None if bidirectional else torch.triu(torch.full((CHUNK, CHUNK), float("-inf")), 1)
    with kept_storages(exclude=layer.parameters()) as kept:
        out, _ = layer(x, attn_mask=mask)
    out.sum().backward()  # the graph is complete and usable
    return sum(kept.values())


def floats_per_token(bidirectional=False):
    torch.manual_seed(0)
    layer = MovingAverageGatedAttention(D, Z, H, N, chunk_size=CHUNK, bidirectional=bidirectional,
                                        max_positions=4096).train()
    layer.move.conv_algorithm = "blocked_scan"
    short, long = 512, 2048
    growth = saved_bytes(layer, long, bidirectional=bidirectional) - saved_bytes(layer, short, bidirectional=bidirectional)
    return growth / 4 / (2 * (long - short))


@pytest.mark.parametrize("bidirectional", [False, True])
def test_layer_keeps_only_what_its_backward_needs(bidirectional):
    """Per token: x (and the norm's mean and 1/std), the EMA pre-activation, u, [z | r_pre], a row
    of chunk weights, v_pre and the output's pre-activation, plus the EMA's block states (the
    block-end states and the states carried into each block: D x N each per block of 64, per
    direction). The normed input, q and k are remade in the backward (recomputed_activations).

    The layer before the fused projection functions kept also mx, the whole mx_proj output
    (2D + Z + H), the gated product (H), the EMA's channel-first copy (D) and v_proj's copy of its
    input (D): 168 floats a token more here; before the recompute scope, norm(x), q and k: 32 more."""
    directions = 2 if bidirectional else 1
    expected = 4 * D + 2 + (Z + H) + CHUNK + H
    block_states = 2 * directions * D * N / 64
    got = floats_per_token(bidirectional)
    assert got <= expected + block_states, (got, expected + block_states)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_layer_keeps_nothing_of_the_ema_block_size(bidirectional):
    """Beyond what grows with the length, the layer keeps only small things (the chunk's positional
    bias, the EMA's D x N coefficients): no D x N x C table of the EMA's decay powers (how a carried
    state enters a block), which autograd through exp and the read-out product would keep twice."""
    torch.manual_seed(0)
    layer = MovingAverageGatedAttention(D, Z, H, N, chunk_size=CHUNK, bidirectional=bidirectional,
                                        max_positions=4096).train()
    layer.move.conv_algorithm = "blocked_scan"
    short, long = 512, 2048
    first, second = saved_bytes(layer, short, bidirectional=bidirectional), saved_bytes(layer, long, bidirectional=bidirectional)
    fixed = first - (second - first) / (long - short) * short
    powers_table = D * N * 64 * 4  # bytes of one D x N x C float32 table, C = 64
    assert fixed < powers_table / 2, (fixed, powers_table)


def training_run(layer, x, hook_calls=None):
    layer.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    mask = torch.triu(torch.full((CHUNK, CHUNK), float("-inf")), 1)
    out, _ = layer(x, attn_mask=mask)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    return [out.detach(), x.grad] + [p.grad.clone() for p in layer.parameters()]


def pair(**kwargs):
    torch.manual_seed(1)
    fused = MovingAverageGatedAttention(D, Z, H, N, chunk_size=CHUNK, max_positions=64).double().train()
    with torch.no_grad():
        fused.gamma.normal_()
        fused.beta.normal_()
    other = MovingAverageGatedAttention(D, Z, H, N, chunk_size=CHUNK, max_positions=64, **kwargs).double().train()
    other.load_state_dict(fused.state_dict())
    return fused, other


def assert_same(first, second, tolerance):
    for got, expected in zip(first, second):
        assert (got - expected).abs().max().item() < tolerance


def test_active_dropout_on_the_ema_output_takes_the_plain_projection_and_agrees():
    fused, plain = pair(dropout=1e-12)
    assert plain.dropout.is_active() and not fused.dropout.is_active()
    x = torch.randn(20, 3, D, dtype=torch.float64)
    assert_same(training_run(fused, x), training_run(plain, x), 1e-9)


@pytest.mark.parametrize("module", ["v_proj", "mx_proj", "h_proj"])
def test_a_hooked_projection_is_called_and_gives_the_same_result(module):
    """A forward hook on mx_proj / h_proj (e.g. an adapter or a quantization observer) must run:
    the layer then calls the module itself instead of reading its weight."""
    fused, hooked = pair()
    calls = []
    getattr(hooked, module).register_forward_hook(lambda mod, inputs, output: calls.append(output.shape))
    x = torch.randn(136, 2, D, dtype=torch.float64)  # long enough for v_proj's strided path
    assert_same(training_run(fused, x), training_run(hooked, x), 1e-12)
    assert calls, "the forward hook of {} was not called".format(module)
