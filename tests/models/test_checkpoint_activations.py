"""``--checkpoint-activations``: the Mega blocks recompute their activations in the backward.

Same loss and same gradients (bit for bit up to float round-off, dropout included: the RNG state
is restored for the recomputation) for ``mega`` and ``mega_lm``; the blocks really run twice per
training step; incremental decoding and autograd-free forwards run them once and are unchanged.
The memory it saves is measured by ``benchmarks/bench_lm.py --checkpoint-activations``.
"""
import argparse

import pytest
import torch

from helpers import StubTask, incremental_logits, kept_storages, max_diff, word_dictionary

PAD, EOS = 1, 2
VOCAB_WORDS = 30


@pytest.fixture(scope="module")
def dictionary():
    return word_dictionary(VOCAB_WORDS, descending_counts=True)


def translation_model(dictionary, checkpoint_activations, **overrides):
    from mega_fairseq.models.mega import MegaModel

    args = argparse.Namespace(encoder_layers=2, decoder_layers=2, encoder_embed_dim=16, encoder_hidden_dim=24,
                              encoder_ffn_embed_dim=20, encoder_z_dim=8, encoder_n_dim=2, encoder_chunk_size=4,
                              share_all_embeddings=True, max_source_positions=40, max_target_positions=40,
                              dropout=0.2, attention_dropout=0.1, hidden_dropout=0.1, activation_dropout=0.1,
                              checkpoint_activations=checkpoint_activations)
    vars(args).update(overrides)
    torch.manual_seed(0)
    return MegaModel.build_model(args, StubTask(dictionary)).double()


def language_model(dictionary, checkpoint_activations, **overrides):
    from mega_fairseq.models.mega_lm import MegaLanguageModel

    args = argparse.Namespace(decoder_layers=2, decoder_embed_dim=16, decoder_hidden_dim=24, decoder_z_dim=8,
                              decoder_n_dim=4, decoder_ffn_embed_dim=20, decoder_chunk_size=4, dropout=0.2,
                              attention_dropout=0.1, hidden_dropout=0.1, tokens_per_sample=64,
                              checkpoint_activations=checkpoint_activations)
    vars(args).update(overrides)
    torch.manual_seed(0)
    return MegaLanguageModel.build_model(args, StubTask(dictionary)).double()


def batch(bsz=3, src_len=11, tgt_len=9, seed=1):
    generator = torch.Generator().manual_seed(seed)
    src = torch.randint(4, 4 + VOCAB_WORDS, (bsz, src_len), generator=generator)
    src[0, :3] = PAD  # left padding, as fairseq batches sources
    tgt = torch.randint(4, 4 + VOCAB_WORDS, (bsz, tgt_len), generator=generator)
    tgt[:, 0] = EOS
    tgt[1, -2:] = PAD
    return src, torch.full((bsz,), src_len), tgt


def loss_and_grads(model, run):
    """Training-mode loss (dropout on, fixed seed) and the gradient of every parameter."""
    model.train()
    model.zero_grad()
    torch.manual_seed(123)
    logits = run(model)
    loss = logits.log_softmax(-1).mean()
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def count_block_calls(model):
    """A list that grows by one per block forward (pre-hooks: a recomputation may stop early)."""
    calls = []
    for name, module in model.named_modules():
        if name.endswith(tuple("layers.{}".format(i) for i in range(8))):
            module.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("kind", ["translation", "language_model"])
def test_checkpointed_training_step_gives_the_same_loss_and_gradients(dictionary, kind):
    src, src_lengths, tgt = batch()
    if kind == "translation":
        plain, checkpointed = (translation_model(dictionary, flag) for flag in (False, True))
        def run(model):
            return model(src, src_lengths, tgt)[0]
        num_blocks = 4
    else:
        plain, checkpointed = (language_model(dictionary, flag) for flag in (False, True))
        def run(model):
            return model(tgt)[0]
        num_blocks = 2
    checkpointed.load_state_dict(plain.state_dict())
    calls = count_block_calls(checkpointed)

    loss, grads = loss_and_grads(plain, run)
    loss_ckpt, grads_ckpt = loss_and_grads(checkpointed, run)
    # every block ran once in the forward and once more (recomputation) in the backward
    assert len(calls) == 2 * num_blocks
    assert max_diff(loss, loss_ckpt) <= 1e-12
    assert grads.keys() == grads_ckpt.keys() and len(grads) > 10
    for name in grads:
        assert max_diff(grads[name], grads_ckpt[name]) <= 1e-10, name


def test_checkpointing_does_not_touch_incremental_decoding_or_inference(dictionary):
    src, src_lengths, tgt = batch()
    plain, checkpointed = (translation_model(dictionary, flag) for flag in (False, True))
    checkpointed.load_state_dict(plain.state_dict())
    plain.eval()
    checkpointed.eval()
    calls = count_block_calls(checkpointed)
    with torch.no_grad():
        full = plain(src, src_lengths, tgt)[0]
        full_ckpt = checkpointed(src, src_lengths, tgt)[0]
        assert len(calls) == 4  # autograd off: no recomputation
        encoder_out = checkpointed.encoder(src, src_lengths)
        steps = incremental_logits(checkpointed, encoder_out, tgt)
    # with autograd on, incremental steps must not be checkpointed either (the caches update once)
    state = {}
    for t in range(tgt.size(1)):
        checkpointed.decoder(tgt[:, : t + 1], encoder_out=encoder_out, incremental_state=state)
    assert max_diff(full, full_ckpt) == 0.0
    keep = tgt.ne(PAD).unsqueeze(-1)
    assert max_diff(steps * keep, full * keep) <= 1e-10
    assert len(calls) == 4 + 2 + 2 * tgt.size(1) * 2  # prefill encoder + two decodes of 9 steps x 2 blocks


#: no dropout and pre-norm blocks: the settings under which the blocks remake tensors in the backward
EXACT_PATHS = dict(dropout=0.0, attention_dropout=0.0, hidden_dropout=0.0, activation_dropout=0.0, normalize_before=True)


def kept_bytes(model, run):
    """Bytes of the distinct storages autograd keeps for one training forward (parameters excluded)."""
    model.train()
    with kept_storages(exclude=model.parameters()) as kept:
        run(model)
    return sum(kept.values())


@pytest.mark.parametrize("kind", ["translation", "language_model"])
def test_keep_activations_keeps_more_and_gives_the_same_numbers(dictionary, kind):
    """``--keep-activations`` switches off the blocks' selective recomputation: same loss and
    gradients, more kept for the backward; the setting defaults to off (recomputation on)."""
    src, src_lengths, tgt = batch()
    build = translation_model if kind == "translation" else language_model
    if kind == "translation":
        def run(model):
            return model(src, src_lengths, tgt)[0]
    else:
        def run(model):
            return model(tgt)[0]
    default, keeping = build(dictionary, False, **EXACT_PATHS), build(dictionary, False, **EXACT_PATHS)
    keeping.load_state_dict(default.state_dict())
    from mega_fairseq.models.layer_execution import keep_block_activations

    keep_block_activations(keeping.decoder.layers)
    if kind == "translation":
        keep_block_activations(keeping.encoder.layers)
    flags = [m.recompute_activations for m in keeping.modules() if hasattr(m, "recompute_activations")]
    assert flags and not any(flags)
    assert all(m.recompute_activations for m in default.modules() if hasattr(m, "recompute_activations"))
    loss, grads = loss_and_grads(default, run)
    loss_kept, grads_kept = loss_and_grads(keeping, run)
    assert torch.equal(loss, loss_kept)
    for name, grad in grads.items():
        assert torch.equal(grad, grads_kept[name]), name
    assert kept_bytes(keeping, run) > kept_bytes(default, run)


def test_keep_activations_is_a_model_setting(dictionary):
    from mega_fairseq.models.mega_lm import MegaLanguageModel

    args = argparse.Namespace(decoder_layers=1, decoder_embed_dim=16, decoder_hidden_dim=24, decoder_z_dim=8,
                              decoder_n_dim=4, decoder_ffn_embed_dim=20, decoder_chunk_size=4, tokens_per_sample=64,
                              keep_activations=True)
    model = MegaLanguageModel.build_model(args, StubTask(dictionary))
    assert not any(m.recompute_activations for m in model.modules() if hasattr(m, "recompute_activations"))
