"""Saved activations remade in the backward (``recomputed_activations``) instead of kept.

* a registered tensor is not kept by the operations that save it (or views of it), is made once
  for all of them, and the gradients are those of plain autograd;
* saved-tensor hooks set outside the scope still receive every kept tensor (and checkpointing
  around the layer still works);
* without gradients, or where torch cannot report the outer hooks, nothing changes;
* the Mega self-attention gives bit-identical outputs and gradients with and without the scope,
  for every norm type (batch norms are not remade: their forward updates running statistics),
  pre- and post-norm, causal and bidirectional.
"""
import contextlib

import pytest
import torch
import torch.utils.checkpoint

from mega_fairseq.modules import recomputed_activations
from mega_fairseq.modules.mega_decoder_layer import MegaDecoderLayer
from mega_fairseq.modules.mega_encoder_layer import MegaEncoderLayer
from mega_fairseq.modules.mega_layer_config import MegaLayerConfig
from mega_fairseq.modules.moving_average_gated_attention import MovingAverageGatedAttention
from mega_fairseq.modules.recomputed_activations import recompute_on_backward, recompute_scope

from helpers import kept_storages


@contextlib.contextmanager
def scope_unavailable():
    """Inside, a recompute scope sees outer hooks it cannot query and does nothing (everything kept)."""
    original = recomputed_activations._outer_hooks
    recomputed_activations._outer_hooks = lambda: (False, None)
    try:
        yield
    finally:
        recomputed_activations._outer_hooks = original


def toy_run(use_scope, made=None):
    """``loss = sum(e^T w2) + sum(e @ w1) + sum(sin(e) * w2)`` with ``e = 2 x + 1`` registered (three
    operations save e); ``made`` counts the remakes."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    w1 = torch.randn(5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(6, 5, generator=gen, dtype=torch.float64, requires_grad=True)

    def make():
        if made is not None:
            made.append(1)
        return x.detach() * 2 + 1

    with kept_storages() as kept, recompute_scope(enabled=use_scope):
        e = recompute_on_backward(x * 2 + 1, make)
        loss = e.t().matmul(w2).sum() + (e @ w1).sum() + torch.sin(e).mul(w2).sum()
    loss.backward()
    return e.untyped_storage().data_ptr(), kept, [loss.detach(), x.grad, w1.grad, w2.grad]


def test_a_registered_tensor_is_not_kept_and_is_made_once():
    made = []
    storage, kept, grads = toy_run(True, made)
    assert storage not in kept  # the outer (counting) hook never saw e
    assert len(made) == 1  # three operations saved e; it was made once for all of them
    _, kept_plain, expected = toy_run(False)
    for got, want in zip(grads, expected):
        assert torch.equal(got, want)


def test_outer_hooks_receive_the_kept_tensors():
    storage, kept, _ = toy_run(True)
    _, kept_plain, _ = toy_run(False)
    assert kept and len(kept) == len(kept_plain) - 1  # all but e


def test_nothing_changes_without_gradients_or_when_outer_hooks_are_unknown(monkeypatch):
    with torch.no_grad(), recompute_scope():
        x = torch.randn(3)
        assert recompute_on_backward(x, lambda: x) is x
        assert recomputed_activations._ACTIVE.get() is None
    monkeypatch.setattr(recomputed_activations, "_outer_hooks", lambda: (False, None))
    storage, kept, _ = toy_run(True)
    assert storage in kept


def layer_run(layer, x, scope, checkpoint=False):
    layer.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    mask = None if layer.bidirectional else torch.triu(torch.full((4, 4), float("-inf")), 1).double()
    with contextlib.nullcontext() if scope else scope_unavailable():
        if checkpoint:
            out = torch.utils.checkpoint.checkpoint(lambda t: layer(t, attn_mask=mask)[0], x, use_reentrant=False)
        else:
            out, _ = layer(x, attn_mask=mask)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    return [out.detach(), x.grad] + [p.grad.clone() for p in layer.parameters()]


@pytest.mark.parametrize("norm_type", ["layernorm", "rmsnorm", "scalenorm", "batchnorm"])
@pytest.mark.parametrize("prenorm", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_layer_is_bit_identical_with_and_without_the_scope(norm_type, prenorm, bidirectional):
    torch.manual_seed(2)
    layer = MovingAverageGatedAttention(8, 4, 12, 2, chunk_size=4, bidirectional=bidirectional, norm_type=norm_type,
                                        prenorm=prenorm, max_positions=64).double().train()
    with torch.no_grad():
        layer.gamma.normal_()
        layer.beta.normal_()
    layer.move.conv_algorithm = "blocked_scan"
    x = torch.randn(150, 2, 8, dtype=torch.float64)  # several EMA blocks
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    with_scope = layer_run(layer, x, scope=True)
    layer.load_state_dict(state)  # batch norm running statistics as before
    without = layer_run(layer, x, scope=False)
    for got, expected in zip(with_scope, without):
        assert torch.equal(got, expected)


def test_layer_under_checkpointing_keeps_its_gradients():
    torch.manual_seed(3)
    layer = MovingAverageGatedAttention(8, 4, 12, 2, chunk_size=4, max_positions=64).double().train()
    x = torch.randn(40, 2, 8, dtype=torch.float64)
    for got, expected in zip(layer_run(layer, x, True, checkpoint=True), layer_run(layer, x, False)):
        assert (got - expected).abs().max().item() < 1e-12


def block_config(**overrides):
    values = dict(embed_dim=8, zdim=4, hdim=12, ndim=2, ffn_hidden_dim=10, chunk_size=4, truncation=None,
                  max_positions=64, cross_max_positions=None, dropout=0.0, attention_dropout=0.0, hidden_dropout=0.0,
                  activation_dropout=0.0, feature_dropout=False, activation="silu", attention_activation="softmax",
                  norm_type="layernorm", prenorm=True, rel_pos_bias="simple")
    values.update(overrides)
    return MegaLayerConfig(**values)


def block_run(block, x, scope):
    """Output and gradients of a block (decoder blocks causal), and the bytes of each storage kept."""
    block.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    with contextlib.nullcontext() if scope else scope_unavailable(), kept_storages(block.parameters()) as kept:
        if isinstance(block, MegaDecoderLayer):
            mask = torch.triu(torch.full((4, 4), float("-inf"), dtype=x.dtype), 1)
            out = block(x, attn_mask=mask)[0]
        else:
            out = block(x, None)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    return [out.detach(), x.grad] + [p.grad.clone() for p in block.parameters()], kept


@pytest.mark.parametrize("kind", ["decoder", "encoder"])
@pytest.mark.parametrize("prenorm", [True, False])
def test_block_remakes_the_attention_output_and_stays_bit_identical(kind, prenorm):
    """A block opens the scope around both sub-layers: the attention's output (which the
    feed-forward network's norm, or the post-norm, would keep) is remade too, D floats a token."""
    torch.manual_seed(4)
    cls = MegaDecoderLayer if kind == "decoder" else MegaEncoderLayer
    block = cls(block_config(prenorm=prenorm)).double().train()
    x = torch.randn(40, 2, 8, dtype=torch.float64)
    with_scope, kept_with = block_run(block, x, True)
    without, kept_without = block_run(block, x, False)
    for got, expected in zip(with_scope, without):
        assert torch.equal(got, expected)
    # float64 values a token (40 x 2 tokens), in units of D = 8
    saved_floats_per_token = (sum(kept_without.values()) - sum(kept_with.values())) / 8 / 80 / 8
    # normed input (pre-norm only), attention output, q and k (2 x 4 = one D)
    assert saved_floats_per_token >= (3 if prenorm else 2) - 0.1
