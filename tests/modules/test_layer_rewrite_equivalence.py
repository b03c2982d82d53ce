"""The copy-free, fused ``MovingAverageGatedAttention`` computes what the layer computed before.

The layer as it was at ``BEFORE_REWRITE`` (read with ``git show`` by the benchmark's loader, the
way ``benchmarks/bench_layers.py --baseline-rev`` measures it) and the current one get the same
weights and inputs: outputs, input gradients and every parameter gradient must agree, with
padding, chunks of any fill, causal and bidirectional, every attention activation. Skipped
where the git history is not available (e.g. an sdist).
"""
import subprocess
import sys

import pytest
import torch

from helpers import REPO_ROOT
from mega_fairseq.modules.moving_average_gated_attention import MovingAverageGatedAttention

BEFORE_REWRITE = "c5153e8"


def _history_available() -> bool:
    try:
        return subprocess.run(["git", "-C", str(REPO_ROOT), "cat-file", "-e", BEFORE_REWRITE + "^{commit}"],
                              capture_output=True).returncode == 0
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _history_available(), reason="git history with the pre-rewrite layer needed")


@pytest.fixture(scope="module")
def old_layer_class():
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        from bench_layers import load_baseline_layer_class
    finally:
        sys.path.pop(0)
    return load_baseline_layer_class(BEFORE_REWRITE)


def causal_mask(length, chunk_size, attention_activation):
    n = chunk_size if 0 < chunk_size < length else length
    if attention_activation == "softmax":
        return torch.triu(torch.full((n, n), float("-inf")), 1)
    return torch.tril(torch.ones(n, n))


def run(layer, x, padding_mask, attn_mask, out_weights):
    layer.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    out, weights = layer(x, padding_mask=padding_mask, attn_mask=attn_mask, need_weights=True)
    (out * out_weights).sum().backward()
    return [out.detach(), weights.detach(), x.grad] + [p.grad for p in layer.parameters()]


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("chunk_size", [-1, 4])
@pytest.mark.parametrize("attention_activation", ["softmax", "relu2", "laplace"])
def test_current_layer_equals_the_layer_before_the_rewrite(old_layer_class, bidirectional, chunk_size,
                                                           attention_activation):
    torch.manual_seed(0)
    kwargs = dict(bidirectional=bidirectional, chunk_size=chunk_size, attention_activation=attention_activation,
                  max_positions=16)
    new = MovingAverageGatedAttention(8, 4, 12, 2, **kwargs).double().train()
    with torch.no_grad():
        new.gamma.normal_()
        new.beta.normal_()
    old = old_layer_class(8, 4, 12, 2, **kwargs).double().train()
    old.load_state_dict(new.state_dict())
    length = 10  # not a multiple of the chunk: the last chunk is padded internally
    x = torch.randn(length, 3, 8, dtype=torch.float64)
    padding_mask = torch.zeros(3, length, dtype=torch.bool)
    padding_mask[1, :3] = True
    attn_mask = None if bidirectional else causal_mask(length, chunk_size, attention_activation)
    out_weights = torch.randn(length, 3, 8, dtype=torch.float64)
    for got, expected in zip(run(new, x, padding_mask, attn_mask, out_weights),
                             run(old, x, padding_mask, attn_mask, out_weights)):
        assert got.shape == expected.shape
        assert (got - expected).abs().max().item() < 1e-12
