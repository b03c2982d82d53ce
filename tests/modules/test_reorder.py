"""reorder_incremental_state: decoding after a reorder equals decoding the reordered batch from scratch.

Covers the self-attention (MEGA + EMA) cache and the cross-attention cache (bug 9: every cached
tensor is reordered, also when the batch size does not change), for permutations and beam
expansion, with chunking and right-padded decoder input.
"""

import argparse

import pytest
import torch

from mega_fairseq.modules import MegaDecoderLayer

D, Z, H, N = 8, 4, 12, 2
TOL = 1e-5


def make_layer(chunk_size, attention_activation):
    args = argparse.Namespace(
        decoder_embed_dim=D,
        decoder_z_dim=Z,
        decoder_hidden_dim=H,
        decoder_n_dim=N,
        decoder_ffn_embed_dim=10,
        decoder_chunk_size=chunk_size,
        attention_activation_fn=attention_activation,
        max_source_positions=32,
        max_target_positions=32,
    )
    torch.manual_seed(0)
    layer = MegaDecoderLayer(args)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, param in layer.named_parameters():
            if "norm" not in name:
                param.copy_(torch.randn(param.shape, generator=gen) / max(1, param.shape[-1]) ** 0.5)
    return layer.eval()


def reorder(layer, state, new_order):
    """What fairseq's FairseqIncrementalDecoder.reorder_incremental_state does."""
    for module in layer.modules():
        if hasattr(module, "reorder_incremental_state"):
            module.reorder_incremental_state(state, new_order)


def run_steps(layer, state, x, enc, enc_mask, dec_mask, start, stop):
    outs = []
    for t in range(start, stop):
        mask = dec_mask[:, t : t + 1] if dec_mask is not None else None
        out, _, _ = layer(x[t : t + 1], enc, enc_mask, state, decoder_padding_mask=mask)
        outs.append(out)
    return torch.cat(outs)


@pytest.mark.parametrize("chunk_size,attention_activation", [(-1, "softmax"), (3, "laplace"), (4, "relu2")])
@pytest.mark.parametrize("new_order", [[2, 0, 1], [1, 2, 0], [0, 0, 1, 1, 2, 2], [2, 2, 2, 0]])
def test_decoding_after_reorder_equals_from_scratch(chunk_size, attention_activation, new_order):
    layer = make_layer(chunk_size, attention_activation)
    tgt_len, src_len, bsz, split = 9, 6, 3, 5
    torch.manual_seed(3)
    x = torch.randn(tgt_len, bsz, D)
    enc = torch.randn(src_len, bsz, D)
    enc_mask = torch.arange(src_len).unsqueeze(0) < torch.tensor([0, 2, 3]).unsqueeze(1)
    dec_mask = torch.arange(tgt_len).unsqueeze(0) >= torch.tensor([9, 3, 7]).unsqueeze(1)
    order = torch.tensor(new_order)

    with torch.no_grad():
        state = {}
        run_steps(layer, state, x, enc, enc_mask, dec_mask, 0, split)
        reorder(layer, state, order)
        continued = run_steps(
            layer, state, x[:, order], enc[:, order], enc_mask[order], dec_mask[order], split, tgt_len
        )
        scratch_state = {}
        scratch = run_steps(
            layer, scratch_state, x[:, order], enc[:, order], enc_mask[order], dec_mask[order], 0, tgt_len
        )
    assert (continued - scratch[split:]).abs().max().item() <= TOL


def test_cross_attention_cache_reordered_when_batch_size_unchanged():
    """Bug 9: static keys/values must follow a same-size permutation."""
    layer = make_layer(-1, "softmax")
    enc = torch.randn(5, 3, D)
    x = torch.randn(1, 3, D)
    with torch.no_grad():
        state = {}
        layer(x, enc, None, state)
        before = dict(layer.cross_attn._get_input_buffer(state))
        order = torch.tensor([2, 0, 1])
        reorder(layer, state, order)
        after = layer.cross_attn._get_input_buffer(state)
    for name in ("prev_key", "prev_value"):
        assert torch.equal(after[name], before[name][order])
