"""Tiny made-up corpora for the stack tests (no downloads): deterministic from a seed."""
import random
from pathlib import Path
from typing import Dict

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
