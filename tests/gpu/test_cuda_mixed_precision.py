"""Mixed precision on CUDA with torch.autocast: float16 (with a gradient scaler) and bfloat16
training of a tiny ``mega_lm`` stay finite, end within a stated tolerance of float32's loss, and
run the EMA in float32.

The corpus is made up and learnable (each sequence steps through the vocabulary with a fixed
stride from a random start). After ``UPDATES`` Adam updates the mean loss of the last five
updates in half precision must be within ``LOSS_TOLERANCE`` (relative) of float32's, and float32
must have learned (its loss well below the uniform ``log V``).
"""
import argparse
import math

import pytest
import torch

import mega_fairseq.modules.exponential_moving_average as ema_module
from gpu.cuda_support import DEVICE, GPU_MARKS, exact_float32_matmuls  # noqa: F401
from helpers import StubTask, word_dictionary

pytestmark = GPU_MARKS
VOCAB_WORDS, STRIDE = 24, 5
UPDATES, BATCH, LENGTH = 20, 8, 32
LOSS_TOLERANCE = 0.1  # relative, on the mean loss of the last five updates


def dictionary():
    return word_dictionary(VOCAB_WORDS, descending_counts=True)


def language_model():
    from mega_fairseq.models.mega_lm import MegaLanguageModel

    args = argparse.Namespace(decoder_layers=2, decoder_embed_dim=32, decoder_hidden_dim=48, decoder_z_dim=16,
                              decoder_n_dim=4, decoder_ffn_embed_dim=48, decoder_chunk_size=8, dropout=0.0,
                              tokens_per_sample=LENGTH, truncation_length=None, normalize_before=True)
    torch.manual_seed(0)
    return MegaLanguageModel.build_model(args, StubTask(dictionary()))


def batches(seed=1):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(UPDATES):
        start = torch.randint(0, VOCAB_WORDS, (BATCH, 1), generator=generator)
        steps = torch.arange(LENGTH + 1).unsqueeze(0) * STRIDE
        yield 4 + (start + steps) % VOCAB_WORDS  # B x (LENGTH + 1) token ids


def train(autocast_dtype=None):
    """Per-update losses of ``UPDATES`` Adam steps, float32 or under autocast to ``autocast_dtype``."""
    model = language_model().to(DEVICE).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    scaler = torch.amp.GradScaler(DEVICE.type, enabled=autocast_dtype == torch.float16)
    losses = []
    for tokens in batches():
        tokens = tokens.to(DEVICE)
        optimizer.zero_grad()
        with torch.autocast(DEVICE.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            logits = model(tokens[:, :-1])[0]
        loss = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), tokens[:, 1:])
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        losses.append(loss.item())
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast keeps float32 master weights
    return losses


@pytest.fixture(scope="module")
def float32_losses():
    losses = train()
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-5:]) / 5 < 0.5 * math.log(VOCAB_WORDS), losses  # it learned
    return losses


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_autocast_training_is_finite_and_ends_near_float32(float32_losses, dtype):
    losses = train(dtype)
    assert all(math.isfinite(x) for x in losses), losses
    final, final32 = sum(losses[-5:]) / 5, sum(float32_losses[-5:]) / 5
    assert abs(final - final32) <= LOSS_TOLERANCE * final32 + 0.02, (losses, float32_losses)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_ema_runs_in_float32_under_autocast(monkeypatch, dtype):
    seen = []
    original = ema_module.multi_head_ema

    def recording(x, q, p_beta, gamma, **kwargs):
        seen.append((x.dtype, q.dtype, p_beta.dtype, gamma.dtype))
        out = original(x, q, p_beta, gamma, **kwargs)
        seen.append(((out[0] if isinstance(out, tuple) else out).dtype,))
        return out

    monkeypatch.setattr(ema_module, "multi_head_ema", recording)
    model = language_model().to(DEVICE).train()
    tokens = next(batches()).to(DEVICE)
    with torch.autocast(DEVICE.type, dtype=dtype):
        logits = model(tokens)[0]
    logits.float().sum().backward()
    assert len(seen) == 2 * 2  # two layers, inputs and output each
    assert all(d == torch.float32 for entry in seen for d in entry), seen
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
