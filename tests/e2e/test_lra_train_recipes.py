"""The official LRA / SC-Raw commands (examples/lra/train.sh) run on stock fairseq 0.12.2 with --user-dir,
fairseq-validate reads their checkpoints, and a checkpoint of another task is refused in one line."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import REPO_ROOT, run_cli

SCRIPTS = REPO_ROOT / "examples" / "lra"
TINY = ["--encoder-layers", "1", "--encoder-embed-dim", "8", "--encoder-hidden-dim", "16", "--z-dim", "4",
        "--n-dim", "2", "--batch-size", "4", "--max-sentences-valid", "4", "--max-update", "2",
        "--total-num-update", "2", "--warmup-updates", "1", "--log-interval", "1", "--no-save-optimizer-state"]


def train(recipe, data, save, *extra, chunk=None):
    env = dict(os.environ, CPU="1", PYTHON=sys.executable, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if chunk is not None:
        env["CHUNK"] = str(chunk)
    result = subprocess.run(["bash", str(SCRIPTS / "train.sh"), recipe, str(data), str(save), *TINY, *extra],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, "train.sh {} failed:\n{}\n{}".format(recipe, result.stdout[-3000:], result.stderr[-5000:])
    assert (Path(save) / "checkpoint_best.pt").exists()
    return result.stdout + result.stderr


def listops_data(root):
    run = subprocess.run([sys.executable, str(SCRIPTS / "make_listops.py"), str(root), "--train", "300", "--valid", "8",
                          "--test", "8", "--min-length", "6", "--max-length", "30"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return root


def two_document_data(root):
    raw = root / "raw"
    raw.mkdir(parents=True)
    rng = np.random.RandomState(0)
    for split, count in (("train", 16), ("valid", 4), ("test", 4)):
        for suffix in ("input", "input1"):
            (raw / "{}.{}".format(split, suffix)).write_text(
                "".join(" ".join(str(v) for v in rng.randint(32, 60, size=rng.randint(5, 20))) + "\n" for _ in range(count)))
        (raw / (split + ".label")).write_text("".join("{}\n".format(i % 2) for i in range(count)))
    sys.path.insert(0, str(SCRIPTS))
    from fairseq_binarize import binarize

    return binarize(raw, root)


def image_data(root, pixels, classes):
    rng = np.random.RandomState(1)
    for folder in ("input", "label"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for split, count in (("train", 12), ("valid", 4), ("test", 4)):
        (root / "input" / (split + ".src")).write_text(
            "".join(" ".join(map(str, rng.randint(0, 256, size=pixels))) + "\n" for _ in range(count)))
        (root / "label" / (split + ".label")).write_text("".join("{}\n".format(i % classes) for i in range(count)))
    return root


def speech_data(root, length=2000):
    folder = root / "processed_data" / "raw"
    folder.mkdir(parents=True)
    generator = torch.Generator().manual_seed(2)
    for split, count in (("train", 8), ("val", 4), ("test", 4)):
        torch.save(torch.randn(count, 1, length, generator=generator), folder / "{}_X.pt".format(split))
        torch.save(torch.arange(count) % 10, folder / "{}_y.pt".format(split))
    return root


def validate(data, checkpoint, task, *extra, check=True):
    return run_cli("fairseq-validate", str(data), "--user-dir", str(REPO_ROOT / "mega_fairseq"), "--task", task,
                   "--path", str(checkpoint), "--valid-subset", "test", "--batch-size", "4", "--cpu", *extra, check=check)


def last_error(stderr):
    return [line for line in stderr.splitlines() if line.strip()][-1]


def accuracy_line(output):
    return [line for line in output.splitlines() if "valid on 'test' subset" in line][-1]


def test_listops_recipe_trains_validates_and_refuses_a_foreign_checkpoint(tmp_path):
    data = listops_data(tmp_path / "listops")
    log = train("listops", data, tmp_path / "ckpt")
    assert "class ids follow label-bin/dict.txt order" in log
    result = validate(data, tmp_path / "ckpt" / "checkpoint_best.pt", "lra-text")
    assert "accuracy" in accuracy_line(result.stdout + result.stderr)
    images = image_data(tmp_path / "images", 16, 2)
    refused = validate(images, tmp_path / "ckpt" / "checkpoint_best.pt", "lra-image", check=False)
    assert refused.returncode != 0
    assert last_error(refused.stderr).startswith("ValueError: --input-type text does not fit --task lra-image")
    refused = validate(images, tmp_path / "ckpt" / "checkpoint_best.pt", "lra-text", check=False)
    assert refused.returncode != 0
    assert last_error(refused.stderr).startswith("ValueError: ") and "src-bin/dict.txt not found" in refused.stderr
    assert "looks like image data" in last_error(refused.stderr)
    refused = validate(data, tmp_path / "ckpt" / "checkpoint_best.pt", "speech_commands", check=False)
    assert "--task speech_commands takes a model of type 'sc_raw'" in last_error(refused.stderr) or \
        "processed_data/raw not found" in last_error(refused.stderr)


@pytest.mark.parametrize("recipe", ["imdb", "aan"])
def test_text_recipes(tmp_path, recipe):
    data = two_document_data(tmp_path / "data")
    if recipe == "imdb":
        for split in ("train", "valid", "test"):
            for ext in ("bin", "idx"):
                (data / "src1-bin" / "{}.{}".format(split, ext)).unlink()
    # aan at the tiny width too: its classifier takes 2 x the width given on the command line
    log = train(recipe, data, tmp_path / "ckpt", "--sentence-class-num", "2")
    assert "valid on 'valid' subset" in log and "accuracy" in log


@pytest.mark.parametrize("recipe,pixels,chunk", [("cifar10", 64, 16), ("pathfinder", 64, None), ("path-x", 256, 64)])
def test_image_recipes(tmp_path, recipe, pixels, chunk):
    classes = 10 if recipe == "cifar10" else 2
    data = image_data(tmp_path / "data", pixels, classes)
    log = train(recipe, data, tmp_path / "ckpt", chunk=chunk)
    assert "valid on 'valid' subset" in log and "accuracy" in log
    if recipe == "cifar10":  # one image checkpoint through fairseq-validate (the others validate while training)
        result = validate(data, tmp_path / "ckpt" / "checkpoint_best.pt", "lra-image")
        assert "accuracy" in accuracy_line(result.stdout + result.stderr)


def test_image_chunk_that_does_not_divide_the_length_stops_training_with_the_flag_named(tmp_path):
    data = image_data(tmp_path / "data", 24, 2)
    env = dict(os.environ, CPU="1", PYTHON=sys.executable, OMP_NUM_THREADS="1", CHUNK="16")
    result = subprocess.run(["bash", str(SCRIPTS / "train.sh"), "pathfinder", str(data), str(tmp_path / "ckpt"), *TINY],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode != 0
    assert "--chunk-size 16 does not divide the sequence length 24" in result.stderr


@pytest.mark.parametrize("recipe", ["sc-base"])  # sc-big: the same recipe at another width
def test_speech_recipes(tmp_path, recipe):
    data = speech_data(tmp_path / "data")
    log = train(recipe, data, tmp_path / "ckpt", "--batch-size", "2")
    assert "valid on 'valid' subset" in log and "accuracy" in log
    if recipe == "sc-base":
        result = validate(data, tmp_path / "ckpt" / "checkpoint_best.pt", "speech_commands")
        assert "accuracy" in accuracy_line(result.stdout + result.stderr)


def test_demo_script_runs_end_to_end_at_tiny_size(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1", DEMO_UPDATES="10", DEMO_TRAIN="400",
               DEMO_MAX_LENGTH="30")
    result = subprocess.run(["bash", str(SCRIPTS / "demo.sh"), str(tmp_path / "demo")], capture_output=True, text=True,
                            env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = [line for line in result.stdout.splitlines() if "test accuracy" in line]
    assert len(summary) == 1 and "vs  majority class" in summary[0] and "(1000 test expressions)" in summary[0]
    assert (tmp_path / "demo" / "checkpoints" / "checkpoint_best.pt").exists()
