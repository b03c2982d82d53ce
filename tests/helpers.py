"""Helpers shared by the test suite (the one module tests import from; conftest only wires pytest).

- paths: ``REPO_ROOT``, ``FIXTURES_DIR``, ``REFERENCE_DIR`` (official fixtures), ``PLUGIN_DIR``;
- ``run_cli``: run a fairseq command-line tool as a user would; ``train_losses`` reads its log;
  ``free_port`` and ``finish_all`` for runs of several processes (distributed training);
- reference fixtures: ``load_fixture``, ``max_diff``, ``build_fixture_model`` and friends;
- tiny made-up corpora (no downloads), deterministic from a seed;
- ``kept_storages``: what autograd keeps for the backward, storage by storage.
"""
import argparse
import contextlib
import os
import random
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES_DIR = Path(__file__).resolve().parent / "fixtures"
REFERENCE_DIR = FIXTURES_DIR / "reference"
PLUGIN_DIR = REPO_ROOT / "mega_fairseq"
BIN_DIR = Path(sys.executable).parent


class CliError(AssertionError):
    pass


def run_cli(tool: str, *args, stdin: str = None, cwd=None, env_extra=None, timeout=600, check=True):
    """Run ``tool`` (e.g. ``fairseq-train``) from this interpreter's environment.

    Returns the CompletedProcess (text mode, stdout and stderr captured). On a non-zero exit it
    fails with the command line and the tail of both streams, unless ``check=False``.
    """
    exe = BIN_DIR / tool
    cmd: List[str] = [str(exe) if exe.exists() else tool, *[str(a) for a in args]]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    if env_extra:
        env.update(env_extra)
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise CliError(f"{' '.join(cmd)}\nexit {proc.returncode}\n--- stdout (tail)\n"
                       f"{proc.stdout[-4000:]}\n--- stderr (tail)\n{proc.stderr[-6000:]}")
    return proc


def train_losses(log: str) -> List[float]:
    """The ``loss=`` values of fairseq-train's ``train_inner`` lines, in order."""
    return [float(x) for x in re.findall(r"train_inner \|.* loss=([0-9.]+),", log)]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a distributed run's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def finish_all(processes: List[subprocess.Popen], timeout: float) -> List[str]:
    """Wait for each process (stdout piped, text mode) in turn; fail with its output's tail if one
    exits non-zero. Returns their outputs, in order."""
    logs = []
    for process in processes:
        out, _ = process.communicate(timeout=timeout)
        assert process.returncode == 0, out[-4000:]
        logs.append(out)
    return logs


def load_fixture(name: str):
    """The reference fixture ``REFERENCE_DIR/<name>.pt`` (config, state_dict, inputs, expected outputs)."""
    return torch.load(REFERENCE_DIR / "{}.pt".format(name), weights_only=True)


def max_diff(a, b) -> float:
    """Largest absolute difference of two tensors, computed in float64."""
    return (a.double() - b.double()).abs().max().item()


def perturbed(module, scale: float = 0.1, seed: int = 0):
    """``module`` with ``scale * N(0, 1)`` added to every parameter (deterministic per seed), so that
    parameters initialised to zero or a constant matter too; returns the module."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(scale * torch.randn(param.shape, generator=generator))
    return module


def tiny_layer_config(**overrides):
    """A small :class:`MegaLayerConfig` (D=16, z=8, h=24, n=4, FFN 32, chunk 8, no dropout, pre-norm,
    cross-attention over 64 positions); keyword arguments override fields."""
    from mega_fairseq.modules.mega_layer_config import MegaLayerConfig

    values = dict(embed_dim=16, zdim=8, hdim=24, ndim=4, ffn_hidden_dim=32, chunk_size=8, truncation=None,
                  max_positions=64, cross_max_positions=64, dropout=0.0, attention_dropout=0.0, hidden_dropout=0.0,
                  activation_dropout=0.0, feature_dropout=False, activation="silu", attention_activation="softmax",
                  norm_type="layernorm", prenorm=True, rel_pos_bias="simple")
    values.update(overrides)
    return MegaLayerConfig(**values)


def word_dictionary(num_words: int, prefix: str = "w", descending_counts: bool = False):
    """A fairseq Dictionary of the special symbols plus ``prefix0 .. prefix{num_words-1}`` (counts
    1000, 999, ... with ``descending_counts``, so the frequency order is the insertion order)."""
    from fairseq.data import Dictionary

    dictionary = Dictionary()
    for i in range(num_words):
        dictionary.add_symbol("{}{}".format(prefix, i), n=1000 - i if descending_counts else 1)
    return dictionary


def dictionary_from_spec(spec):
    """A fairseq Dictionary from a fixture's ``{symbols, counts, nspecial}`` spec."""
    from fairseq.data import Dictionary

    dictionary = Dictionary()
    for symbol, count in zip(spec["symbols"][spec["nspecial"]:], spec["counts"][spec["nspecial"]:]):
        dictionary.add_symbol(symbol, n=count)
    return dictionary


class StubTask:
    """The two attributes ``MegaModel.build_model`` reads from a translation task."""

    def __init__(self, source_dictionary, target_dictionary=None):
        self.source_dictionary = source_dictionary
        self.target_dictionary = target_dictionary if target_dictionary is not None else source_dictionary


def fixture_task(fixture) -> StubTask:
    src = dictionary_from_spec(fixture["src_dictionary"])
    tgt = src if fixture["tgt_dictionary"] is None else dictionary_from_spec(fixture["tgt_dictionary"])
    return StubTask(src, tgt)


def build_fixture_model(fixture):
    """The plugin's MegaModel from the fixture's official config, with the official weights."""
    from mega_fairseq.models.mega import MegaModel

    model = MegaModel.build_model(argparse.Namespace(**fixture["config"]), fixture_task(fixture))
    model.load_state_dict(fixture["state_dict"], strict=True)
    dtype = fixture["state_dict"]["encoder.embed_tokens.weight"].dtype
    return model.to(dtype).eval()


def incremental_logits(model, encoder_out, prev_output_tokens, incremental_state=None):
    """Logits of one-token steps in the fairseq generator convention (the whole prefix each time)."""
    state = {} if incremental_state is None else incremental_state
    steps = []
    for t in range(prev_output_tokens.size(1)):
        logits, _ = model.decoder(prev_output_tokens[:, : t + 1], encoder_out=encoder_out, incremental_state=state)
        steps.append(logits)
    return torch.cat(steps, dim=1)


# ---------------------------------------------------------------- tiny corpora
SOURCE_WORDS = ["red", "blue", "green", "cat", "dog", "bird", "runs", "sleeps", "eats", "big", "small"]
# a fixed word-by-word "translation" so the pair is learnable
TARGET_OF: Dict[str, str] = {w: w.upper()[::-1] for w in SOURCE_WORDS}


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(SOURCE_WORDS) for _ in range(rng.randint(3, 8)))


def write_translation_corpus(out_dir: Path, seed: int = 1, sizes=(("train", 200), ("valid", 20), ("test", 10))):
    """Write ``{split}.src`` / ``{split}.tgt`` line-aligned files; returns ``out_dir``."""
    rng = random.Random(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, count in sizes:
        src_lines = [_sentence(rng) for _ in range(count)]
        (out_dir / f"{split}.src").write_text("".join(s + "\n" for s in src_lines))
        (out_dir / f"{split}.tgt").write_text(
            "".join(" ".join(TARGET_OF[w] for w in s.split()) + "\n" for s in src_lines))
    return out_dir


def write_lm_corpus(out_dir: Path, seed: int = 2, sizes=(("train", 300), ("valid", 30), ("test", 30))):
    """Write ``{split}.txt`` files of short sentences, one per line; returns ``out_dir``."""
    rng = random.Random(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, count in sizes:
        (out_dir / f"{split}.txt").write_text("".join(_sentence(rng) + "\n" for _ in range(count)))
    return out_dir


@contextlib.contextmanager
def kept_storages(exclude=()):
    """Inside the block, every storage autograd keeps for the backward is recorded once in the yielded
    dict, data pointer -> bytes; storages of the ``exclude`` tensors (e.g. parameters) are left out.
    The tensors themselves pass through unchanged."""
    excluded = {t.untyped_storage().data_ptr() for t in exclude}
    kept = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in excluded:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor.detach()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield kept
