"""float16 and bfloat16 on CPU: forward and backward of every Mega module close to float32.

Each module is built and randomised in float32, then copied to the half dtype; the same inputs
(cast) run forward and backward (a fixed weighted sum of the output). Compared with float32:

* output and input gradients: ``max |half - float32| / max |float32|``;
* parameter gradients: the largest difference over all parameters relative to the largest
  float32 parameter gradient (a parameter whose gradient is ~0, e.g. a key bias under softmax,
  has no meaningful relative error of its own).

Stated tolerances (measured worst cases in brackets): float16 ``1e-2`` (3e-3), bfloat16
``5e-2`` (3e-2, layer-norm input gradients); the parameter gradients of the 2,048-token case,
sums over every token accumulated in the half dtype, ``3e-2`` / ``0.2`` (7e-3 / 0.12). Every value must be finite, including a 3,000-step EMA whose decay powers ``q^m``
underflow (fast-decaying channels: ``q ~ 1e-3``) next to channels that barely decay
(``q ~ 0.9999``), and a 2,048-token chunked attention on inputs of scale 10 (embedding scale
``sqrt(D)``). The EMA computes in float32 whatever the input dtype, so half inputs only round
its input and output.
"""
import copy

import pytest
import torch

from mega_fairseq.modules import (GatedCrossAttention, MegaDecoderLayer, MegaEncoderLayer, MovingAverageGatedAttention,
                                  MultiHeadEMA, NormalizedFeedForwardNetwork, SequenceNorm)
from helpers import perturbed, tiny_layer_config

D, Z, H, N, CHUNK = 16, 8, 24, 4, 8


def layer_config(**overrides):
    return tiny_layer_config(**dict(dict(embed_dim=D, zdim=Z, hdim=H, ndim=N, chunk_size=CHUNK), **overrides))


T, B = 24, 2
TOLERANCE = {torch.float16: 1e-2, torch.bfloat16: 5e-2}
HALF_DTYPES = [torch.float16, torch.bfloat16]
#: parameter gradients of the 2,048-token case (sums over every token, accumulated in the half dtype)
LONG_PARAM_GRAD_TOLERANCE = {torch.float16: 3e-2, torch.bfloat16: 0.2}


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    reference = reference.double()
    return ((value.double() - reference).abs().max() / reference.abs().max().clamp_min(1e-30)).item()


def randomized(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    return perturbed(module, seed=seed).train()


def forward_backward(module, call, inputs, dtype):
    """Output, input gradients and parameter gradients (all float32 copies) of one step in ``dtype``."""
    module.zero_grad()
    xs = [t.detach().to(dtype).requires_grad_(True) for t in inputs]
    out = call(module, *xs)
    assert out.dtype == dtype
    weights = torch.linspace(-1.0, 1.0, out.numel()).view_as(out).to(dtype)
    (out * weights).sum().backward()
    param_grads = {name: p.grad.float() for name, p in module.named_parameters() if p.grad is not None}
    return out.detach().float(), [x.grad.float() for x in xs], param_grads


def assert_half_matches_float32(module, call, inputs, dtype, param_tolerance=None):
    reference = forward_backward(module, call, inputs, torch.float32)
    half = forward_backward(copy.deepcopy(module).to(dtype), call, inputs, dtype)
    (out32, input_grads32, param_grads32), (out, input_grads, param_grads) = reference, half
    tolerance = TOLERANCE[dtype]
    assert torch.isfinite(out).all()
    assert relative_error(out, out32) <= tolerance
    for grad, grad32 in zip(input_grads, input_grads32):
        assert torch.isfinite(grad).all() and relative_error(grad, grad32) <= tolerance
    assert param_grads.keys() == param_grads32.keys() and len(param_grads) > 0
    assert all(torch.isfinite(g).all() for g in param_grads.values())
    largest = max(g.abs().max().item() for g in param_grads32.values())
    worst = max((param_grads[k] - param_grads32[k]).abs().max().item() for k in param_grads32)
    assert worst / largest <= (param_tolerance or tolerance), max(param_grads32, key=lambda k: (param_grads[k] - param_grads32[k]).abs().max())


def inputs(*shapes, scale=1.0, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(shape, generator=generator) for shape in shapes]


def causal_mask(dtype, frame=CHUNK):
    return torch.triu(torch.full((frame, frame), float("-inf")), 1).to(dtype)


CASES = {
    "ema": (lambda: MultiHeadEMA(D, N), lambda m, x: m(x), [(T, B, D)]),
    "ema_bidirectional_truncated": (lambda: MultiHeadEMA(D, N, bidirectional=True, truncation=10), lambda m, x: m(x),
                                    [(T, B, D)]),
    "attention_causal_chunked": (lambda: MovingAverageGatedAttention(D, Z, H, N, chunk_size=CHUNK),
                                 lambda m, x: m(x, attn_mask=causal_mask(x.dtype))[0], [(T, B, D)]),
    "attention_bidirectional": (lambda: MovingAverageGatedAttention(D, Z, H, N, bidirectional=True),
                                lambda m, x: m(x)[0], [(T, B, D)]),
    "attention_laplace_rotary": (lambda: MovingAverageGatedAttention(D, Z, H, N, chunk_size=CHUNK, rel_pos_bias="rotary",
                                                                     attention_activation="laplace"),
                                 lambda m, x: m(x)[0], [(T, B, D)]),
    "cross_attention": (lambda: GatedCrossAttention(D, Z, N), lambda m, q, kv: m(q, kv, kv)[0], [(T, B, D), (10, B, D)]),
    "feed_forward": (lambda: NormalizedFeedForwardNetwork(D, 32), lambda m, x: m(x), [(T, B, D)]),
    "encoder_layer": (lambda: MegaEncoderLayer(layer_config()), lambda m, x: m(x, None), [(T, B, D)]),
    "decoder_layer": (lambda: MegaDecoderLayer(layer_config(truncation=6)),
                      lambda m, x, enc: m(x, enc, attn_mask=causal_mask(x.dtype))[0], [(T, B, D), (10, B, D)]),
}
CASES.update({
    "norm_" + norm: (lambda norm=norm: SequenceNorm(norm, D), lambda m, x: m(x), [(T, B, D)])
    for norm in ("layernorm", "scalenorm", "rmsnorm", "batchnorm")
})


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=["float16", "bfloat16"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_module_in_half_precision_matches_float32(case, dtype):
    build, call, shapes = CASES[case]
    torch.manual_seed(0)
    assert_half_matches_float32(randomized(build()), call, inputs(*shapes), dtype)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=["float16", "bfloat16"])
def test_long_ema_with_underflowing_powers_stays_finite_and_close(dtype):
    torch.manual_seed(0)
    ema = randomized(MultiHeadEMA(D, N))
    with torch.no_grad():  # half the channels forget at once (q ~ 1e-3), half almost never (q ~ 0.9999)
        ema.delta[: D // 2].fill_(7.0)
        ema.alpha[: D // 2].fill_(7.0)
        ema.delta[D // 2:].fill_(-9.0)
        ema.alpha[D // 2:].fill_(0.0)
    q = 1 - torch.sigmoid(ema.delta) * torch.sigmoid(ema.alpha)
    assert q.min() < 2e-3 and q.max() > 0.9999
    assert float(q.min().detach()) ** 3000 == 0.0  # q^m underflows (in float16 already from m = 2)
    assert_half_matches_float32(ema, lambda m, x: m(x), inputs((3000, 1, D)), dtype)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=["float16", "bfloat16"])
def test_long_chunked_attention_on_realistic_scale_inputs(dtype):
    torch.manual_seed(0)
    module = randomized(MovingAverageGatedAttention(D, Z, H, N, chunk_size=128))
    # parameter gradients sum 2,048 tokens' contributions in the half dtype: bfloat16's 8-bit
    # mantissa leaves ~12% on the layer-norm bias (7e-3 measured for float16); autocast keeps
    # parameters and their gradients in float32 instead (tests/gpu)
    assert_half_matches_float32(module, lambda m, x: m(x, attn_mask=causal_mask(x.dtype, 128))[0],
                                inputs((2048, 1, D), scale=10.0), dtype,
                                param_tolerance=LONG_PARAM_GRAD_TOLERANCE[dtype])


@pytest.mark.parametrize("case", sorted(CASES))
def test_autocast_bfloat16_training_step_matches_float32(case):
    """torch.autocast on CPU (what fairseq --amp and GPU mixed precision use): float32 parameters, bf16 matmuls."""
    build, call, shapes = CASES[case]
    torch.manual_seed(0)
    module = randomized(build())
    xs = inputs(*shapes)
    out32, input_grads32, param_grads32 = forward_backward(module, call, xs, torch.float32)
    module.zero_grad()
    leaves = [x.detach().clone().requires_grad_(True) for x in xs]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = call(module, *leaves)
    weights = torch.linspace(-1.0, 1.0, out.numel()).view_as(out)
    (out.float() * weights).sum().backward()
    assert relative_error(out.float(), out32) <= TOLERANCE[torch.bfloat16]
    for leaf, grad32 in zip(leaves, input_grads32):
        assert relative_error(leaf.grad, grad32) <= TOLERANCE[torch.bfloat16]
    for name, param in module.named_parameters():
        assert param.grad.dtype == torch.float32 and torch.isfinite(param.grad).all(), name
