"""torch.compile of the Mega layers: one graph (``fullgraph=True``), same numbers as eager.

Covered: ``MovingAverageGatedAttention`` (causal chunked, the EMA's Toeplitz path; bidirectional,
the blocked-scan path), ``MegaEncoderLayer`` and ``MegaDecoderLayer`` (with cross-attention)
training forward and backward (outputs and every gradient within 1e-5 of eager), and the
one-token decoding step (output and the carried state). Compiling is slow on a small CPU: the
decoding-step case of the decoder layer runs with the unit tests, the others are marked ``e2e``. The unit tests compile with the
``aot_eager`` backend: it traces forward and backward exactly as inductor does (any graph break
fails ``fullgraph=True``) without code generation, so they stay quick; the real inductor (C++ on
CPU) runs in the ``e2e`` test at the end and from the command line (``--compile-layers``).

A graph break (``fullgraph=True`` raises) or a numeric difference fails.
"""
import copy

import pytest
import torch

from helpers import max_diff, perturbed as randomized, tiny_layer_config
from mega_fairseq.modules import MegaDecoderLayer, MegaEncoderLayer, MovingAverageGatedAttention

TOLERANCE = 1e-5
#: compiling costs ~10 s per case on 2 busy cores: only the decoder layer's decoding step stays in
#: the quick unit run (make test-fast); the rest run with the e2e tests (make test)
SLOW = pytest.mark.e2e
D, Z, H, N, CHUNK = 16, 8, 24, 4, 8


def layer_config(**overrides):
    return tiny_layer_config(**dict(dict(embed_dim=D, zdim=Z, hdim=H, ndim=N, chunk_size=CHUNK), **overrides))


def causal_mask(length: int) -> torch.Tensor:
    frame = CHUNK if CHUNK < length else length
    return torch.triu(torch.full((frame, frame), float("-inf")), 1)


def compile_fullgraph(module, backend="aot_eager"):
    """``torch.compile(module, fullgraph=True)``: any graph break raises."""
    torch._dynamo.reset()
    return torch.compile(module, fullgraph=True, backend=backend)


def first(output):
    return output[0] if isinstance(output, tuple) else output


def training_step(module, run, inputs):
    """Output and gradients (inputs first, then parameters by name) of ``sum(out * weights)``."""
    module.zero_grad()
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = first(run(*inputs))
    weights = torch.linspace(-1.0, 1.0, out.numel()).view_as(out)
    (out * weights).sum().backward()
    grads = [t.grad for t in inputs] + [p.grad for _, p in sorted(module.named_parameters()) if p.grad is not None]
    return out.detach(), grads


def assert_compiled_training_equals_eager(module, inputs, **kwargs):
    module.train()
    eager_out, eager_grads = training_step(module, lambda *x: module(*x, **kwargs), inputs)
    compiled = compile_fullgraph(module)
    out, grads = training_step(module, lambda *x: compiled(*x, **kwargs), inputs)
    assert max_diff(out, eager_out) <= TOLERANCE
    assert len(grads) == len(eager_grads) > len(inputs)
    for grad, eager_grad in zip(grads, eager_grads):
        assert max_diff(grad, eager_grad) <= TOLERANCE


def tensors_of(state):
    """Every tensor of a fairseq incremental state, in a fixed order."""
    return [value for key in sorted(state) for _, value in sorted(state[key].items()) if torch.is_tensor(value)]


def assert_compiled_step_equals_eager(module, prefill, step, backend="aot_eager"):
    """One decoding step after an eager prefill: the compiled step's output and new state equal eager's."""
    module.eval()
    with torch.no_grad():
        state = {}
        prefill(module, state)
        eager_state, compiled_state = copy.deepcopy(state), copy.deepcopy(state)
        eager_out = first(step(module, eager_state))
        out = first(step(compile_fullgraph(module, backend), compiled_state))
    assert max_diff(out, eager_out) <= TOLERANCE
    assert len(tensors_of(compiled_state)) == len(tensors_of(eager_state)) > 0
    for value, eager_value in zip(tensors_of(compiled_state), tensors_of(eager_state)):
        assert value.shape == eager_value.shape and max_diff(value, eager_value) <= TOLERANCE


@SLOW
def test_causal_chunked_attention_training_compiles_as_one_graph():
    torch.manual_seed(0)
    module = randomized(MovingAverageGatedAttention(D, Z, H, N, chunk_size=CHUNK, dropout=0.1, hidden_dropout=0.1))
    module.dropout.p = module.hidden_dropout.p = 0.0  # the dropout ops stay in the graph; no randomness
    padding_mask = torch.zeros(2, 20, dtype=torch.bool)
    padding_mask[1, 14:] = True
    assert_compiled_training_equals_eager(module, [torch.randn(20, 2, D)], padding_mask=padding_mask,
                                          attn_mask=causal_mask(20))


@SLOW
def test_bidirectional_blocked_scan_attention_training_compiles_as_one_graph():
    torch.manual_seed(1)
    module = randomized(MovingAverageGatedAttention(D, Z, H, N, chunk_size=CHUNK, bidirectional=True))
    module.move.conv_algorithm = "blocked_scan"
    assert_compiled_training_equals_eager(module, [torch.randn(40, 2, D)])


@SLOW
def test_encoder_layer_training_compiles_as_one_graph():
    torch.manual_seed(2)
    layer = randomized(MegaEncoderLayer(layer_config(rel_pos_bias="rotary")))
    padding_mask = torch.zeros(2, 12, dtype=torch.bool)
    padding_mask[0, 9:] = True
    assert_compiled_training_equals_eager(layer, [torch.randn(12, 2, D)], encoder_padding_mask=padding_mask)


@SLOW
def test_decoder_layer_with_cross_attention_training_compiles_as_one_graph():
    torch.manual_seed(3)
    layer = randomized(MegaDecoderLayer(layer_config(truncation=6)))
    assert_compiled_training_equals_eager(layer, [torch.randn(20, 2, D), torch.randn(11, 2, D)],
                                          attn_mask=causal_mask(20))


@SLOW
def test_attention_one_token_decoding_step_compiles_as_one_graph():
    torch.manual_seed(4)
    module = randomized(MovingAverageGatedAttention(D, Z, H, N, chunk_size=CHUNK))
    x = torch.randn(6, 2, D)
    assert_compiled_step_equals_eager(module, lambda m, state: m(x[:5], incremental_state=state),
                                      lambda m, state: m(x[5:], incremental_state=state))


def test_decoder_layer_one_token_decoding_step_compiles_as_one_graph():
    torch.manual_seed(5)
    layer = randomized(MegaDecoderLayer(layer_config()))
    x, encoder_out = torch.randn(6, 2, D), torch.randn(9, 2, D)
    assert_compiled_step_equals_eager(layer, lambda m, state: m(x[:5], encoder_out, None, state),
                                      lambda m, state: m(x[5:], encoder_out, None, state))


@pytest.mark.e2e
def test_decoder_layer_compiled_by_inductor_equals_eager():
    """The real backend (C++ code generation on CPU): training step and a decoding step (slow: ~1 min)."""
    torch.manual_seed(6)
    layer = randomized(MegaDecoderLayer(layer_config(cross_max_positions=None)))
    layer.train()
    inputs = [torch.randn(16, 2, D)]
    eager_out, eager_grads = training_step(layer, lambda x: layer(x, attn_mask=causal_mask(16)), inputs)
    compiled = compile_fullgraph(layer, backend="inductor")
    out, grads = training_step(layer, lambda x: compiled(x, attn_mask=causal_mask(16)), inputs)
    assert max_diff(out, eager_out) <= TOLERANCE
    for grad, eager_grad in zip(grads, eager_grads):
        assert max_diff(grad, eager_grad) <= TOLERANCE
    x = torch.randn(6, 2, D)
    assert_compiled_step_equals_eager(layer, lambda m, state: m(x[:5], None, None, state),
                                      lambda m, state: m(x[5:], None, None, state), backend="inductor")
