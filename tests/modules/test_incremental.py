"""Incremental decoding equals the full forward, in every configuration (float32, <= 1e-5).

Covered: chunked attention (aligned and misaligned lengths, EMA state across chunks), softmax /
relu2 / laplace, simple and rotary bias, right-padded decoder input (padding remembered across
steps), truncated causal EMA, multi-token steps (prefill, then one at a time, at any offset,
crossing chunk boundaries), and the decoder layer with cross-attention.
"""

import argparse

import pytest
import torch

from mega_fairseq.modules import MegaDecoderLayer, MovingAverageGatedAttention

TOL = 1e-5
D, Z, H, N = 8, 4, 12, 2


def causal_mask(length, chunk_size, attention_activation):
    """The mask the official decoder passes to the full forward."""
    n = chunk_size if 0 < chunk_size < length else length
    if attention_activation == "softmax":
        return torch.triu(torch.full((n, n), float("-inf")), 1)
    return torch.tril(torch.ones(n, n))


def randomize(module, seed):
    """Redraw every parameter so that each one matters (zero-initialised biases included)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith("move.delta") or name.endswith("move.alpha"):
                param.copy_(torch.randn(param.shape, generator=gen))
            elif name.endswith("norm.weight") or name.endswith("norm.scalar"):
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=gen))
            else:
                param.copy_(torch.randn(param.shape, generator=gen) / max(1, param.shape[-1]) ** 0.5)
    return module.eval()


def mega(chunk_size=-1, attention_activation="softmax", rel_pos_bias="simple", truncation=None, prenorm=True, seed=0):
    torch.manual_seed(seed)
    module = MovingAverageGatedAttention(
        embed_dim=D,
        zdim=Z,
        hdim=H,
        ndim=N,
        attention_activation=attention_activation,
        bidirectional=False,
        chunk_size=chunk_size,
        truncation=truncation,
        rel_pos_bias=rel_pos_bias,
        prenorm=prenorm,
        max_positions=64,
    )
    return randomize(module, seed)


def right_padding(lengths, total):
    return torch.arange(total).unsqueeze(0) >= torch.tensor(lengths).unsqueeze(1)


def decode(module, x, schedule, padding_mask=None):
    """Feed ``x`` (T x B x D) in steps of the sizes in ``schedule`` (cycled), return T x B x D."""
    state, outputs, t, i = {}, [], 0, 0
    while t < x.size(0):
        size = min(schedule[i % len(schedule)], x.size(0) - t)
        step_mask = padding_mask[:, t : t + size] if padding_mask is not None else None
        out, _ = module(x[t : t + size], padding_mask=step_mask, incremental_state=state)
        outputs.append(out)
        t, i = t + size, i + 1
    return torch.cat(outputs)


# (chunk_size, attention_activation, rel_pos_bias, truncation, padded, schedule);
# padded: False, True (right padding, the fairseq default for targets) or "left"
CONFIGS = [
    (-1, "softmax", "simple", None, False, [1]),
    (-1, "relu2", "simple", None, False, [1]),
    (-1, "laplace", "rotary", None, False, [1]),
    (4, "softmax", "simple", None, False, [1]),
    (4, "relu2", "rotary", None, False, [1]),
    (4, "laplace", "simple", None, False, [1]),
    (3, "softmax", "rotary", None, False, [1]),
    (-1, "softmax", "simple", None, True, [1]),
    (-1, "relu2", "simple", None, True, [1]),
    (4, "softmax", "simple", None, True, [1]),
    (4, "laplace", "rotary", None, True, [1]),
    (-1, "softmax", "simple", 3, False, [1]),
    (4, "relu2", "simple", 5, True, [1]),
    (-1, "softmax", "simple", None, False, [5, 1]),
    (4, "softmax", "simple", None, False, [4, 1]),
    (4, "softmax", "rotary", None, False, [3, 1]),
    (4, "relu2", "simple", None, True, [6, 1]),
    (4, "laplace", "simple", None, False, [2, 3, 1, 5]),
    (4, "softmax", "simple", None, True, [3, 2, 7, 1]),
    (3, "relu2", "rotary", 4, True, [2, 5, 1]),
    (5, "softmax", "rotary", None, False, [13]),
    (-1, "softmax", "simple", None, "left", [1]),
    (4, "relu2", "rotary", None, "left", [3, 1]),
    (3, "laplace", "simple", 4, "left", [2, 5, 1]),
]


def config_id(config):
    chunk, act, bias, trunc, padded, schedule = config
    return "chunk{}-{}-{}-trunc{}-{}-steps{}".format(
        chunk, act, bias, trunc, {False: "nopad", True: "rpad", "left": "lpad"}[padded], "_".join(map(str, schedule))
    )


@pytest.mark.parametrize("config", CONFIGS, ids=[config_id(c) for c in CONFIGS])
def test_mega_attention_incremental_equals_full(config):
    chunk, act, bias, trunc, padded, schedule = config
    module = mega(chunk, act, bias, trunc, seed=len(config_id(config)))
    length, bsz = 13, 3
    torch.manual_seed(1)
    x = torch.randn(length, bsz, D)
    padding_mask = None
    if padded == "left":
        padding_mask = torch.arange(length).unsqueeze(0) < torch.tensor([0, 5, 9]).unsqueeze(1)
    elif padded:
        padding_mask = right_padding([13, 9, 5], length)
    if padding_mask is not None:
        # the decoder zeroes embeddings at pad positions; keep the test honest with non-zero pads
        x[padding_mask.transpose(0, 1)] = torch.randn(int(padding_mask.sum()), D)
    with torch.no_grad():
        full, _ = module(x, padding_mask=padding_mask, attn_mask=causal_mask(length, chunk, act))
        incremental = decode(module, x, schedule, padding_mask)
    assert torch.isfinite(full).all() and torch.isfinite(incremental).all()
    assert (incremental - full).abs().max().item() <= TOL


def test_chunk_cache_is_reset_at_boundaries():
    """Keys/values are kept only for the current chunk, so per-step work is O(chunk)."""
    module = mega(chunk_size=4)
    x = torch.randn(10, 2, D)
    state = {}
    with torch.no_grad():
        for t in range(10):
            module(x[t : t + 1], incremental_state=state)
            cached = module._get_input_buffer(state).get("prev_key")
            expected_len = (t + 1) % 4
            assert (cached.size(1) if cached is not None else 0) == expected_len


def decoder_layer(attention_activation="softmax", rel_pos_bias="simple", chunk_size=-1, prenorm=False):
    args = argparse.Namespace(
        decoder_embed_dim=D,
        decoder_z_dim=Z,
        decoder_hidden_dim=H,
        decoder_n_dim=N,
        decoder_ffn_embed_dim=10,
        decoder_chunk_size=chunk_size,
        attention_activation_fn=attention_activation,
        rel_pos_bias=rel_pos_bias,
        normalize_before=prenorm,
        max_source_positions=32,
        max_target_positions=32,
    )
    torch.manual_seed(0)
    return randomize(MegaDecoderLayer(args), seed=3)


@pytest.mark.parametrize(
    "attention_activation,rel_pos_bias,chunk_size,schedule",
    [
        ("softmax", "simple", -1, [1]),
        ("laplace", "rotary", 4, [1]),
        ("relu2", "simple", 3, [4, 1]),
        ("softmax", "rotary", 4, [2, 3, 1]),
    ],
)
def test_decoder_layer_incremental_equals_full(attention_activation, rel_pos_bias, chunk_size, schedule):
    layer = decoder_layer(attention_activation, rel_pos_bias, chunk_size, prenorm=chunk_size > 0)
    tgt_len, src_len, bsz = 11, 7, 3
    torch.manual_seed(2)
    x = torch.randn(tgt_len, bsz, D)
    enc = torch.randn(src_len, bsz, D)
    enc_mask = torch.arange(src_len).unsqueeze(0) < torch.tensor([0, 2, 4]).unsqueeze(1)  # left padded
    dec_mask = right_padding([11, 8, 6], tgt_len)
    with torch.no_grad():
        mask = causal_mask(tgt_len, chunk_size, attention_activation)
        full, full_attn, _ = layer(x, enc, enc_mask, None, attn_mask=mask, decoder_padding_mask=dec_mask, need_attn=True)
        state, outs, attns, t, i = {}, [], [], 0, 0
        while t < tgt_len:
            size = min(schedule[i % len(schedule)], tgt_len - t)
            out, attn, _ = layer(
                x[t : t + size], enc, enc_mask, state, decoder_padding_mask=dec_mask[:, t : t + size], need_attn=True
            )
            outs.append(out)
            attns.append(attn)
            t, i = t + size, i + 1
    assert (torch.cat(outs) - full).abs().max().item() <= TOL
    assert (torch.cat(attns, dim=1) - full_attn).abs().max().item() <= TOL
