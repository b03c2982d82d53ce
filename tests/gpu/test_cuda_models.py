"""Both models on CUDA: float32 equal to the CPU (loss and every gradient, <= 1e-5 relative),
incremental decoding equal to the full forward, beam search giving the CPU's hypotheses."""
import argparse
import copy

import pytest
import torch
from fairseq.sequence_generator import SequenceGenerator

from gpu.cuda_support import (DEVICE, FLOAT32_RELATIVE_TOLERANCE, GPU_MARKS, exact_float32_matmuls,  # noqa: F401
                              relative_error, to_device)
from helpers import StubTask, incremental_logits, perturbed, word_dictionary

pytestmark = GPU_MARKS
PAD, EOS, VOCAB_WORDS = 1, 2, 30


@pytest.fixture(scope="module")
def dictionary():
    return word_dictionary(VOCAB_WORDS, descending_counts=True)


def spread(model, seed=0):
    """Move the parameters off their init (larger logit gaps: beam search without near-ties)."""
    return perturbed(model, scale=0.3, seed=seed)


def translation_model(dictionary, chunk_size=4):
    from mega_fairseq.models.mega import MegaModel

    args = argparse.Namespace(encoder_layers=2, decoder_layers=2, encoder_embed_dim=16, encoder_hidden_dim=24,
                              encoder_ffn_embed_dim=20, encoder_z_dim=8, encoder_n_dim=2,
                              encoder_chunk_size=chunk_size, share_all_embeddings=True, max_source_positions=40,
                              max_target_positions=40, dropout=0.0, normalize_before=True)
    torch.manual_seed(0)
    return spread(MegaModel.build_model(args, StubTask(dictionary)))


def language_model(dictionary):
    from mega_fairseq.models.mega_lm import MegaLanguageModel

    args = argparse.Namespace(decoder_layers=2, decoder_embed_dim=16, decoder_hidden_dim=24, decoder_z_dim=8,
                              decoder_n_dim=4, decoder_ffn_embed_dim=20, decoder_chunk_size=4, dropout=0.0,
                              tokens_per_sample=64, truncation_length=6)
    torch.manual_seed(0)
    return spread(MegaLanguageModel.build_model(args, StubTask(dictionary)))


def batch(bsz=3, src_len=11, tgt_len=9, seed=1):
    generator = torch.Generator().manual_seed(seed)
    src = torch.randint(4, 4 + VOCAB_WORDS, (bsz, src_len), generator=generator)
    src[0, :3] = PAD
    src[:, -1] = EOS
    tgt = torch.randint(4, 4 + VOCAB_WORDS, (bsz, tgt_len), generator=generator)
    tgt[:, 0] = EOS
    tgt[1, -2:] = PAD
    return src, torch.tensor([src_len - 3, src_len, src_len]), tgt


def loss_and_grads(model, run):
    model.train()
    model.zero_grad()
    logits = run(model)
    loss = logits.float().log_softmax(-1).mean()
    loss.backward()
    return loss, {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind", ["translation", "language_model"])
def test_model_training_step_float32_on_device_equals_cpu(dictionary, kind):
    src, src_lengths, tgt = batch()
    if kind == "translation":
        model = translation_model(dictionary)
        def run(m):
            device = next(m.parameters()).device
            return m(src.to(device), src_lengths.to(device), tgt.to(device))[0]
    else:
        model = language_model(dictionary)
        def run(m):
            return m(tgt.to(next(m.parameters()).device))[0]
    cpu_loss, cpu_grads = loss_and_grads(model, run)
    loss, grads = loss_and_grads(copy.deepcopy(model).to(DEVICE), run)
    assert loss.device.type == DEVICE.type
    assert relative_error(loss, cpu_loss) <= FLOAT32_RELATIVE_TOLERANCE
    assert grads.keys() == cpu_grads.keys()
    for name in grads:
        assert relative_error(grads[name], cpu_grads[name]) <= FLOAT32_RELATIVE_TOLERANCE, name


@pytest.mark.parametrize("kind", ["translation", "language_model"])
def test_model_incremental_decoding_on_device_equals_full_forward(dictionary, kind):
    src, src_lengths, tgt = (t.to(DEVICE) for t in batch())
    with torch.no_grad():
        if kind == "translation":
            model = translation_model(dictionary).to(DEVICE).eval()
            full = model(src, src_lengths, tgt)[0]
            steps = incremental_logits(model, model.encoder(src, src_lengths), tgt)
        else:
            model = language_model(dictionary).to(DEVICE).eval()
            full = model(tgt)[0]
            steps = incremental_logits(model, None, tgt)
    keep = tgt.ne(PAD).unsqueeze(-1)
    assert steps.device.type == DEVICE.type
    assert relative_error(steps * keep, full * keep) <= FLOAT32_RELATIVE_TOLERANCE


def test_beam_search_on_device_gives_the_cpu_hypotheses(dictionary):
    src, src_lengths, _ = batch(bsz=4, src_len=9, seed=3)
    model = translation_model(dictionary).eval()
    sample = {"net_input": {"src_tokens": src, "src_lengths": src_lengths}}

    def generate(m, device):
        generator = SequenceGenerator([m], dictionary, beam_size=4, max_len_b=12)
        with torch.no_grad():
            return generator.generate([m], to_device(sample, device))

    cpu_hypos = generate(model, torch.device("cpu"))
    hypos = generate(copy.deepcopy(model).to(DEVICE), DEVICE)
    assert len(hypos) == len(cpu_hypos) == 4
    for sentence, cpu_sentence in zip(hypos, cpu_hypos):
        assert len(sentence) == len(cpu_sentence) == 4
        for hypo, cpu_hypo in zip(sentence, cpu_sentence):
            assert hypo["tokens"].cpu().tolist() == cpu_hypo["tokens"].tolist()
            assert abs(float(hypo["score"]) - float(cpu_hypo["score"])) <= 1e-4
