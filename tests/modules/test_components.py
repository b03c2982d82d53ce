"""Small building blocks: norms, relative positional biases, dropout, activations.

Expected values are written out from the published formulas, independently of the code.
"""

import math

import pytest
import torch

from mega_fairseq.modules import (
    FairseqDropout,
    FairseqFeatureDropout,
    RMSNorm,
    RotaryRelativePositionalBias,
    ScaleNorm,
    SequenceNorm,
    SimpleRelativePositionalBias,
    get_activation_fn,
)


def test_scale_and_rms_norm_formulas():
    x = torch.randn(5, 3, 6)
    rms = torch.sqrt((x ** 2).mean(-1, keepdim=True) + 1e-5)
    scale = ScaleNorm(dim=-1, eps=1e-5)
    with torch.no_grad():
        scale.scalar.fill_(1.7)
    assert torch.allclose(scale(x), 1.7 * x / rms, atol=1e-6)
    rms_norm = RMSNorm(6, eps=1e-5)
    with torch.no_grad():
        rms_norm.weight.copy_(torch.arange(6.0))
    assert torch.allclose(rms_norm(x), torch.arange(6.0) * x / rms, atol=1e-6)
    assert RMSNorm(6, affine=False).weight is None and ScaleNorm(-1, affine=False).scalar is None


@pytest.mark.parametrize(
    "norm_type,param_names",
    [
        ("layernorm", {"norm.weight", "norm.bias"}),
        ("scalenorm", {"norm.scalar"}),
        ("rmsnorm", {"norm.weight"}),
        ("batchnorm", {"norm.weight", "norm.bias"}),
    ],
)
def test_sequence_norm_types(norm_type, param_names):
    norm = SequenceNorm(norm_type, 6)
    assert {name for name, _ in norm.named_parameters()} == param_names
    x = torch.randn(7, 3, 6) * 3 + 1
    out = norm.train()(x)
    assert out.shape == x.shape
    if norm_type == "layernorm":
        assert torch.allclose(out.mean(-1), torch.zeros(7, 3), atol=1e-5)
    if norm_type == "batchnorm":
        # per channel over time and batch
        assert torch.allclose(out.mean(dim=(0, 1)), torch.zeros(6), atol=1e-5)


def test_simple_bias_indexes_relative_distance():
    bias = SimpleRelativePositionalBias(5)
    with torch.no_grad():
        bias.rel_pos_bias.copy_(torch.arange(9.0))
    table = bias(4)
    # entry [i, j] is parameter M - 1 + (j - i)
    expected = torch.tensor([[4 + j - i for j in range(4)] for i in range(4)], dtype=torch.float)
    assert torch.equal(table, expected)
    offset = bias.for_positions(torch.tensor([2, 3]), torch.arange(4))
    assert torch.equal(offset, expected[2:])


@pytest.mark.parametrize("kind", ["simple", "rotary"])
@pytest.mark.parametrize("first,num_queries,num_keys", [(0, 1, 1), (3, 1, 4), (6, 1, 7), (7, 1, 8), (2, 3, 5), (0, 4, 4)])
def test_bias_of_a_decoding_step_equals_the_positions_form(kind, first, num_queries, num_keys):
    """``for_step`` (one query: a view of the simple table's row) equals ``for_positions``."""
    torch.manual_seed(0)
    bias = SimpleRelativePositionalBias(8) if kind == "simple" else RotaryRelativePositionalBias(6, 8)
    step = bias.for_step(first, num_queries, num_keys)
    expected = bias.for_positions(torch.arange(first, first + num_queries), torch.arange(num_keys), num_keys)
    assert step.shape == (num_queries, num_keys)
    assert torch.equal(step, expected)


def test_rotary_bias_formula_and_relativity():
    dim, max_positions = 6, 8
    bias = RotaryRelativePositionalBias(dim, max_positions)
    alpha, beta = bias.alpha.detach()[0], bias.beta.detach()[0]
    half = dim // 2

    def rotated(vector, position):
        out = torch.empty(dim)
        for k in range(half):
            angle = position * 10000 ** (-k / half)
            c, s = math.cos(angle), math.sin(angle)
            out[k] = vector[k] * c - vector[k + half] * s
            out[k + half] = vector[k + half] * c + vector[k] * s
        return out

    length = 5
    expected = torch.tensor(
        [[float(rotated(alpha, i) @ rotated(beta, j)) for j in range(length)] for i in range(length)]
    )
    with torch.no_grad():
        table = bias(length)
        assert torch.allclose(table, expected, atol=1e-6)
        # depends only on j - i; the tables grow beyond max_positions
        long = bias(12)
        assert long.shape == (12, 12)
        assert torch.allclose(long[7:, 7:], long[:5, :5], atol=1e-5)
    assert set(bias.state_dict()) == {"alpha", "beta", "_float_tensor"}


def test_feature_dropout_drops_whole_channels():
    torch.manual_seed(0)
    dropout = FairseqFeatureDropout(0.5).train()
    x = torch.ones(6, 4, 10)
    out = dropout(x)
    # time-first: each (batch, channel) is either dropped at every step or scaled by 2
    assert torch.equal(out, out[:1].expand_as(out))
    assert set(out.unique().tolist()) <= {0.0, 2.0} and (out == 0).any()
    batch_first = dropout(torch.ones(4, 6, 10), batch_first=True)
    assert torch.equal(batch_first, batch_first[:, :1].expand_as(batch_first))
    assert torch.equal(dropout.eval()(x), x)
    dropout.make_generation_fast_("m", retain_dropout=True)
    assert (dropout(x) == 0).any()


def test_element_dropout():
    torch.manual_seed(0)
    dropout = FairseqDropout(0.5).train()
    out = dropout(torch.ones(50, 50))
    assert set(out.unique().tolist()) == {0.0, 2.0}
    assert torch.equal(FairseqDropout(0.5).eval()(torch.ones(3)), torch.ones(3))


def test_activations():
    x = torch.linspace(-3, 3, 13)
    assert torch.allclose(get_activation_fn("silu")(x), x * torch.sigmoid(x))
    assert torch.allclose(get_activation_fn("relu2")(x), torch.clamp(x, min=0) ** 2)
    mu, sigma = math.sqrt(0.5), math.sqrt(1 / (4 * math.pi))
    expected = 0.5 * (1 + torch.erf((x - mu) / (sigma * math.sqrt(2))))
    assert torch.allclose(get_activation_fn("laplace")(x), expected, atol=1e-5)
    assert torch.allclose(get_activation_fn("relu")(x), torch.relu(x))
    assert torch.allclose(get_activation_fn("gelu")(x), torch.nn.functional.gelu(x), atol=1e-6)
