"""examples/language_model: the WikiText-103 and enwik8 recipe scripts on small stand-in data.

prepare.sh -> train.sh (official defaults + tiny overrides) -> evaluate.sh (official streamed
evaluation), each through bash as a user runs them.
"""
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO_ROOT

REPO = REPO_ROOT
EXAMPLES = REPO / "examples" / "language_model"
WORDS = "the cat dog sat on a mat and ran to big small red house of in".split()
TINY = ["--decoder-layers", "1", "--decoder-embed-dim", "16", "--decoder-hidden-dim", "24",
        "--decoder-ffn-embed-dim", "24", "--decoder-z-dim", "8", "--decoder-n-dim", "4", "--decoder-chunk-size", "16",
        "--max-tokens", "256", "--max-update", "2", "--warmup-updates", "1", "--total-num-update", "2",
        "--log-interval", "1", "--save-interval-updates", "0"]


def run_script(name, *args, env_extra=None):
    env = dict(os.environ, PYTHON=sys.executable, CPU="1", WORKERS="1", OMP_NUM_THREADS="1")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]
    env.update(env_extra or {})
    proc = subprocess.run(["bash", str(EXAMPLES / name), *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, "{} failed\n{}\n{}".format(name, proc.stdout[-3000:], proc.stderr[-3000:])
    return proc.stdout + proc.stderr


def stand_in_wikitext(folder: Path):
    rng = random.Random(0)
    folder.mkdir()
    for split, lines in (("train", 300), ("valid", 40), ("test", 40)):
        text = "".join(" = Heading = \n" if i % 20 == 0 else
                       " " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 20))) + " \n"
                       for i in range(lines))
        (folder / "wiki.{}.tokens".format(split)).write_text(text)


def stand_in_enwik8(folder: Path):
    rng = random.Random(1)
    folder.mkdir()
    pages = ["<page><title>{}</title> {} &amp; \u00e9</page>".format(
        " ".join(rng.choice(WORDS) for _ in range(3)), " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 15))))
        for _ in range(400)]
    (folder / "enwik8").write_bytes(("\n".join(pages) + "\n").encode())


@pytest.mark.parametrize("recipe", ["wikitext-103", "enwik8"])
def test_recipe_scripts_prepare_train_and_evaluate(recipe, tmp_path):
    raw = tmp_path / "raw"
    if recipe == "wikitext-103":
        stand_in_wikitext(raw)
        extra = ["--adaptive-input-cutoff", "10", "--adaptive-softmax-cutoff", "10"]  # the stand-in vocabulary is tiny
    else:
        stand_in_enwik8(raw)
        extra = []
    log = run_script("prepare.sh", recipe, raw, tmp_path / "prep", env_extra={"VALID_BYTES": "3000", "TEST_BYTES": "3000"})
    data = tmp_path / "prep" / "data-bin"
    assert (data / "dict.txt").exists(), log[-2000:]

    log = run_script("train.sh", recipe, data, tmp_path / "ckpt", *TINY, *extra)
    assert "num_updates=2" in log, log[-3000:]
    # the official defaults reached fairseq (the extra arguments only shrink the model)
    arch = "mega_lm_adaptive_big" if recipe == "wikitext-103" else "mega_lm_enwik8_base"
    assert "'_name': '{}'".format(arch) in log and "'rel_pos_bias': rotary" in log
    assert "training blocks: 2..{} x 16 tokens".format(6 if recipe == "wikitext-103" else 4) in log

    log = run_script("evaluate.sh", recipe, data, tmp_path / "ckpt" / "checkpoint_last.pt",
                     env_extra={"TEST_CHUNK": "32", "CHUNK_NUMS": "2"})
    match = re.search(r"Loss \(base 2\): ([\d.]+), Perplexity: ([\d.]+)", log)
    assert match, log[-3000:]
    assert "streaming evaluation: pieces of 64 tokens" in log
    if recipe == "enwik8":  # one token per byte (+ one </s> per split that ends inside a line)
        evaluated = int(re.search(r"Evaluated ([\d,]+) tokens", log).group(1).replace(",", ""))
        assert evaluated in (3000, 3001)


def run_evaluate(data, checkpoint, **env):
    proc = subprocess.run(["bash", str(EXAMPLES / "evaluate.sh"), "enwik8", str(data), str(checkpoint)],
                          capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHON=sys.executable, CPU="1", OMP_NUM_THREADS="1",
                                   PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"], **env))
    return proc


def test_evaluate_keeps_the_trained_chunk_and_refuses_another_one_for_the_simple_relative_bias(tmp_path):
    raw = tmp_path / "raw"
    stand_in_enwik8(raw)
    run_script("prepare.sh", "enwik8", raw, tmp_path / "prep", env_extra={"VALID_BYTES": "3000", "TEST_BYTES": "3000"})
    data = tmp_path / "prep" / "data-bin"
    run_script("train.sh", "enwik8", data, tmp_path / "ckpt", *TINY, "--rel-pos-bias", "simple")
    checkpoint = tmp_path / "ckpt" / "checkpoint_last.pt"
    # default: the chunk the model was trained with (16), not the official 4096
    default = run_evaluate(data, checkpoint)
    assert default.returncode == 0, default.stderr[-3000:]
    assert "[evaluate] attention chunk 16 (trained with 16, simple relative bias)" in default.stderr
    assert "streaming evaluation: pieces of 48 tokens" in default.stdout + default.stderr
    assert re.search(r"Loss \(base 2\): ([\d.]+)", default.stdout + default.stderr)
    # another chunk cannot load the simple bias (2 x chunk - 1 weights): one clear line instead of a size mismatch
    other = run_evaluate(data, checkpoint, TEST_CHUNK="32")
    assert other.returncode == 2
    assert ("TEST_CHUNK=32 differs from the attention chunk the model was trained with (16)" in other.stderr
            and "Allowed: TEST_CHUNK=16 (or unset), or a model trained with --rel-pos-bias rotary" in other.stderr)
    assert "size mismatch" not in other.stderr


def test_prepare_text_mode_binarizes_a_plain_text_file_byte_by_byte(tmp_path):
    rng = random.Random(2)
    text = "".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) + " caf\u00e9.\n" for _ in range(150))
    source = tmp_path / "my_book.txt"
    source.write_bytes(text.encode()[:4000])
    log = run_script("prepare.sh", "text", source, tmp_path / "prep")
    # 5% + 5% held out by default, announced before the slow steps
    assert "the last 200 + 200 bytes are valid + test" in log
    assert "[prepare] my_book.txt train: 3600 bytes" in log and "[prepare] my_book.txt test: 200 bytes" in log
    assert "with 1 workers" in log and "[prepare] done:" in log
    symbols = [line.split()[0] for line in (tmp_path / "prep" / "data-bin" / "dict.txt").read_text().splitlines()]
    assert "195" in symbols and "169" in symbols  # the two UTF-8 bytes of the e with an accent
    assert (tmp_path / "prep" / "data-bin" / "test.bin").stat().st_size > 0


def test_prepare_rejects_unknown_recipe_and_missing_files(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable)
    bad = subprocess.run(["bash", str(EXAMPLES / "prepare.sh"), "ptb", tmp_path, tmp_path / "o"], capture_output=True,
                         text=True, env=env)
    assert bad.returncode != 0 and "allowed: wikitext-103, enwik8" in bad.stderr
    missing = subprocess.run(["bash", str(EXAMPLES / "prepare.sh"), "enwik8", tmp_path, tmp_path / "o"],
                             capture_output=True, text=True, env=env)
    assert missing.returncode != 0 and "enwik8 not found" in missing.stderr
