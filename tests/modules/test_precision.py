"""Half precision (outputs in the input dtype, bf16 works on CPU) and float64 gradcheck."""

import argparse

import pytest
import torch
from torch.func import functional_call

from mega_fairseq.modules import GatedCrossAttention, MegaDecoderLayer, MegaEncoderLayer, MovingAverageGatedAttention

D, Z, H, N = 8, 4, 12, 2


def causal_mask(length, chunk_size, attention_activation, dtype=torch.float32):
    n = chunk_size if 0 < chunk_size < length else length
    if attention_activation == "softmax":
        return torch.triu(torch.full((n, n), float("-inf"), dtype=dtype), 1)
    return torch.tril(torch.ones(n, n, dtype=dtype))


def randomized(module, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if "norm" not in name:
                param.copy_(torch.randn(param.shape, generator=gen) / max(1, param.shape[-1]) ** 0.5)
    return module.eval()


@pytest.mark.parametrize("chunk_size", [-1, 4])
@pytest.mark.parametrize("attention_activation", ["softmax", "laplace"])
def test_mega_attention_bfloat16_forward_and_incremental(chunk_size, attention_activation):
    module = randomized(MovingAverageGatedAttention(D, Z, H, N, chunk_size=chunk_size, attention_activation=attention_activation))
    x = torch.randn(10, 2, D)
    padding_mask = torch.arange(10).unsqueeze(0) >= torch.tensor([[10], [7]])
    with torch.no_grad():
        reference, _ = module(x, padding_mask=padding_mask, attn_mask=causal_mask(10, chunk_size, attention_activation))
        half = module.to(torch.bfloat16)
        out, weights = half(
            x.bfloat16(), padding_mask=padding_mask, attn_mask=causal_mask(10, chunk_size, attention_activation), need_weights=True
        )
        state, steps = {}, []
        for t in range(10):
            step, _ = half(x[t : t + 1].bfloat16(), padding_mask=padding_mask[:, t : t + 1], incremental_state=state)
            steps.append(step)
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(out.float()).all() and torch.isfinite(weights.float()).all()
    assert (out.float() - reference).abs().max().item() < 0.1
    incremental = torch.cat(steps)
    assert incremental.dtype == torch.bfloat16
    assert (incremental.float() - reference).abs().max().item() < 0.1


def layer_args():
    return argparse.Namespace(
        encoder_embed_dim=D, encoder_z_dim=Z, encoder_hidden_dim=H, encoder_n_dim=N, encoder_ffn_embed_dim=10,
        decoder_embed_dim=D, decoder_z_dim=Z, decoder_hidden_dim=H, decoder_n_dim=N, decoder_ffn_embed_dim=10,
        max_source_positions=16, max_target_positions=16, encoder_chunk_size=4, decoder_chunk_size=4,
    )


def test_layers_bfloat16_forward():
    encoder = randomized(MegaEncoderLayer(layer_args())).to(torch.bfloat16)
    decoder = randomized(MegaDecoderLayer(layer_args())).to(torch.bfloat16)
    src = torch.randn(7, 2, D, dtype=torch.bfloat16)
    src_mask = torch.tensor([[False] * 7, [True] * 3 + [False] * 4])
    tgt = torch.randn(6, 2, D, dtype=torch.bfloat16)
    with torch.no_grad():
        enc = encoder(src, src_mask)
        out, attn, _ = decoder(tgt, enc, src_mask, None, attn_mask=causal_mask(6, 4, "softmax"), need_attn=True)
    assert enc.dtype == torch.bfloat16 and out.dtype == torch.bfloat16
    assert torch.isfinite(enc.float()).all() and torch.isfinite(out.float()).all()
    assert attn.shape == (2, 6, 7)


def test_cross_attention_output_dtype_follows_query():
    module = randomized(GatedCrossAttention(D, Z)).to(torch.bfloat16)
    query = torch.randn(3, 2, D, dtype=torch.bfloat16)
    src = torch.randn(5, 2, D, dtype=torch.bfloat16)
    with torch.no_grad():
        out, _ = module(query, src, src)
    assert out.dtype == torch.bfloat16


@pytest.mark.parametrize(
    "chunk_size,attention_activation,rel_pos_bias,bidirectional",
    [(-1, "softmax", "simple", False), (3, "laplace", "rotary", False), (3, "relu2", "simple", True)],
)
def test_mega_attention_gradcheck_float64(chunk_size, attention_activation, rel_pos_bias, bidirectional):
    torch.manual_seed(0)
    module = MovingAverageGatedAttention(
        4, 2, 4, 2, chunk_size=chunk_size, attention_activation=attention_activation,
        rel_pos_bias=rel_pos_bias, bidirectional=bidirectional, max_positions=8,
    )
    module = randomized(module).double()
    length = 5
    x = torch.randn(length, 2, 4, dtype=torch.float64, requires_grad=True)
    padding_mask = torch.tensor([[False] * length, [True] + [False] * (length - 1)])
    mask = None if bidirectional else causal_mask(length, chunk_size, attention_activation, torch.float64)
    names = ["gamma", "beta", "mx_proj.weight", "v_proj.weight", "move.alpha", "rel_pos_bias." + (
        "rel_pos_bias" if rel_pos_bias == "simple" else "alpha")]
    params = dict(module.named_parameters())
    inputs = tuple(params[name].detach().clone().requires_grad_(True) for name in names)

    def run(x, *values):
        overrides = dict(zip(names, values))
        out, _ = functional_call(module, overrides, (x,), {"padding_mask": padding_mask, "attn_mask": mask})
        return out

    assert torch.autograd.gradcheck(run, (x,) + inputs, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)
