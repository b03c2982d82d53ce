"""examples/lra data scripts on stand-in data made here, each read back by its task."""
import argparse
import math
import pickle
import struct
import subprocess
import sys
import wave
import zlib

import numpy as np
import pytest
import torch

from helpers import REPO_ROOT

from mega_fairseq.tasks.lra_image import LRAImageTask
from mega_fairseq.tasks.lra_text import LRATextTask
from mega_fairseq.tasks.speech_commands import SpeechCommandsTask

SCRIPTS = REPO_ROOT / "examples" / "lra"


def run_script(name, *args):
    result = subprocess.run([sys.executable, str(SCRIPTS / name), *[str(a) for a in args]],
                            capture_output=True, text=True, cwd=str(SCRIPTS), timeout=600)
    assert result.returncode == 0, "{} failed:\n{}\n{}".format(name, result.stdout[-2000:], result.stderr[-4000:])
    return result.stdout


def load_task(task_class, data, split, **settings):
    parser = argparse.ArgumentParser()
    task_class.add_args(parser)
    args = parser.parse_args([str(data)])
    for key, value in dict(dict(seed=1, dataset_impl=None, max_positions=4096, sen_rep_type="mp"), **settings).items():
        setattr(args, key, value)
    task = task_class.setup_task(args)
    dataset = task.load_dataset(split)
    return task, dataset, dataset.collater([dataset[i] for i in range(len(dataset))])


def test_make_listops_writes_the_processed_layout_the_task_reads(tmp_path):
    out = run_script("make_listops.py", tmp_path / "listops", "--train", 60, "--valid", 10, "--test", 10,
                     "--min-length", 8, "--max-length", 40, "--seed", 5)
    assert "80 expressions" in out
    task, dataset, batch = load_task(LRATextTask, tmp_path / "listops", "valid")
    raw_inputs = (tmp_path / "listops" / "raw" / "valid.input").read_text().splitlines()
    raw_labels = (tmp_path / "listops" / "raw" / "valid.label").read_text().split()
    assert len(dataset) == 10 and batch["net_input"]["src_lengths"].max() <= 41
    for row, (text, label) in enumerate(zip(raw_inputs, raw_labels)):
        length = int(batch["net_input"]["src_lengths"][row])
        assert task.source_dictionary.string(batch["net_input"]["src_tokens"][row, :length - 1]) == text
        assert task.class_names[int(batch["target"][row])] == label


def test_listops_release_converter_strips_parentheses(tmp_path):
    release = tmp_path / "listops-1000"
    release.mkdir()
    rows = {"train": [("( ( [MAX 2 ) 9 ] )", 9), ("( [MIN 3 ( [SM 4 5 ] ) ] )", 3), ("[MED 1 2 3 ]", 2)],
            "val": [("( [MIN 7 1 ] )", 1)], "test": [("( [SM 9 9 1 ] )", 9)]}
    for split, examples in rows.items():
        (release / "basic_{}.tsv".format(split)).write_text(
            "Source\tTarget\n" + "".join("{}\t{}\n".format(s, t) for s, t in examples))
    run_script("convert_listops_release.py", release, tmp_path / "out")
    assert (tmp_path / "out" / "raw" / "train.input").read_text().splitlines() == [
        "[MAX 2 9 ]", "[MIN 3 [SM 4 5 ] ]", "[MED 1 2 3 ]"]
    task, _, batch = load_task(LRATextTask, tmp_path / "out", "test")
    assert task.source_dictionary.string(batch["net_input"]["src_tokens"][0, :-1]) == "[SM 9 9 1 ]"
    assert task.class_names[int(batch["target"][0])] == "9"


def test_imdb_converter_writes_bytes_and_uses_test_as_valid(tmp_path):
    for split in ("train", "test"):
        for label, text in (("pos", "Good!"), ("neg", "Dull\nand long ÿ")):
            folder = tmp_path / "aclImdb" / split / label
            folder.mkdir(parents=True)
            (folder / "0_1.txt").write_text(text + " " + split, encoding="utf-8")
    run_script("convert_imdb.py", tmp_path / "aclImdb", tmp_path / "out", "--max-length", 12)
    lines = (tmp_path / "out" / "raw" / "train.input").read_text().splitlines()
    assert lines[0] == " ".join(str(b) for b in "Dull and lon".encode("utf-8"))  # neg first, newline -> space, 12 bytes
    assert (tmp_path / "out" / "raw" / "train.label").read_text().split() == ["0", "1"]
    assert (tmp_path / "out" / "raw" / "valid.input").read_text() == (tmp_path / "out" / "raw" / "test.input").read_text()
    _, _, batch = load_task(LRATextTask, tmp_path / "out", "valid")
    assert batch["net_input"]["src_lengths"].tolist() == [13, 11]  # 12 bytes + eos; "Good! test" + eos


def test_aan_converter_writes_two_documents(tmp_path):
    tsv = tmp_path / "tsv_data"
    tsv.mkdir()
    for name in ("train", "eval", "test"):
        (tsv / "new_aan_pairs.{}.tsv".format(name)).write_text(
            "1.0\tp1\tp2\tabc\txy\n0\tp3\tp4\tq\trstu\n")
    run_script("convert_aan.py", tsv, tmp_path / "out")
    task, _, batch = load_task(LRATextTask, tmp_path / "out", "valid")
    assert batch["net_input"]["src_lengths"].tolist() == [4, 2]
    assert batch["net_input1"]["src_lengths"].tolist() == [3, 5]
    assert task.source_dictionary.string(batch["net_input1"]["src_tokens"][0, :2]) == "120 121"  # "xy"
    assert [task.class_names[int(t)] for t in batch["target"]] == ["1", "0"]


def test_cifar10_converter_grey_levels_and_split(tmp_path):
    rng = np.random.RandomState(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = {}
    for name in ["data_batch_{}".format(i) for i in range(1, 6)] + ["test_batch"]:
        data = rng.randint(0, 256, size=(4, 3072)).astype(np.uint8)
        labels = rng.randint(0, 10, size=4).tolist()
        batches[name] = (data, labels)
        with open(folder / name, "wb") as handle:
            pickle.dump({b"data": data, b"labels": labels}, handle)
    run_script("convert_cifar10.py", folder, tmp_path / "out")
    train_all = np.concatenate([batches["data_batch_{}".format(i)][0] for i in range(1, 6)])
    labels_all = sum((batches["data_batch_{}".format(i)][1] for i in range(1, 6)), [])
    order = torch.randperm(20, generator=torch.Generator().manual_seed(42)).tolist()
    task, dataset, batch = load_task(LRAImageTask, tmp_path / "out", "valid", chunk_size=1024, sentence_class_num=10)
    assert len(dataset) == 2 and batch["net_input"]["src_tokens"].shape == (2, 1024)
    pixels = np.loadtxt(tmp_path / "out" / "input" / "valid.src", dtype=np.int64)
    for row, index in enumerate(order[18:]):
        r, g, b = (train_all[index].reshape(3, 1024).astype(np.float64))
        luma = 0.299 * r + 0.587 * g + 0.114 * b
        assert np.abs(pixels[row] - luma).max() <= 1.0
        assert batch["target"][row] == labels_all[index]
    assert len(load_task(LRAImageTask, tmp_path / "out", "train", sentence_class_num=10)[1]) == 18


def png_bytes(width, height, pixels, colour=0):
    """An 8-bit PNG whose rows cycle through the five filter types (to exercise the reader)."""
    channels = {0: 1, 2: 3}[colour]
    raw = bytearray()
    stride = width * channels
    previous = bytearray(stride)
    for y in range(height):
        row = bytearray(pixels[y * stride:(y + 1) * stride])
        kind = y % 5
        out = bytearray()
        for i in range(stride):
            left = row[i - channels] if i >= channels else 0
            up, up_left = previous[i], previous[i - channels] if i >= channels else 0
            estimate = left + up - up_left
            paeth = min((abs(estimate - left), 0, left), (abs(estimate - up), 1, up), (abs(estimate - up_left), 2, up_left))[2]
            predictor = [0, left, up, (left + up) // 2, paeth][kind]
            out.append((row[i] - predictor) & 0xFF)
        raw += bytes([kind]) + out
        previous = row

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(raw))) + chunk(b"IEND", b"")


def test_pathfinder_converter_reads_pngs_and_splits_80_10_10(tmp_path):
    root = tmp_path / "pathfinder8" / "curv_contour_length_14"
    (root / "metadata").mkdir(parents=True)
    (root / "imgs" / "0").mkdir(parents=True)
    rng = np.random.RandomState(1)
    images, lines = [], {0: [], 1: []}
    for i in range(20):
        pixels = rng.randint(0, 256, size=64).tolist()
        images.append(pixels)
        (root / "imgs" / "0" / "sample_{}.png".format(i)).write_bytes(png_bytes(8, 8, pixels))
        lines[i // 10].append("imgs/0 sample_{}.png 0 {} 14 2".format(i, i % 2))
    for number, rows in lines.items():  # file "1.npy" holds the second half
        (root / "metadata" / "{}.npy".format(number)).write_text("\n".join(rows) + "\n")
    run_script("convert_pathfinder.py", tmp_path / "pathfinder8", tmp_path / "out")
    order = torch.randperm(20, generator=torch.Generator().manual_seed(42)).tolist()
    for split, indices in (("train", order[:16]), ("valid", order[16:18]), ("test", order[18:])):
        written = (tmp_path / "out" / "input" / (split + ".src")).read_text().splitlines()
        assert [list(map(int, line.split())) for line in written] == [images[i] for i in indices]
        assert (tmp_path / "out" / "label" / (split + ".label")).read_text().split() == [str(i % 2) for i in indices]
    _, _, batch = load_task(LRAImageTask, tmp_path / "out", "test", chunk_size=16, sentence_class_num=2)
    assert batch["net_input"]["src_tokens"].shape == (2, 64)


def test_png_reader_turns_rgb_into_luma(tmp_path):
    sys.path.insert(0, str(SCRIPTS))
    from png_grey import read_png_grey

    rgb = [255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30]
    (tmp_path / "c.png").write_bytes(png_bytes(2, 2, rgb, colour=2))
    width, height, grey = read_png_grey(str(tmp_path / "c.png"))
    assert (width, height) == (2, 2) and grey == [76, 150, 29, 18]
    (tmp_path / "bad.png").write_bytes(b"GIF89a")
    with pytest.raises(ValueError, match=r"is not a PNG file"):
        read_png_grey(str(tmp_path / "bad.png"))


def write_wav(path, samples, rate=16000):
    with wave.open(str(path), "wb") as clip:
        clip.setnchannels(1)
        clip.setsampwidth(2)
        clip.setframerate(rate)
        clip.writeframes(np.asarray(samples, dtype="<i2").tobytes())


def test_speech_commands_preparation_from_tones(tmp_path):
    root = tmp_path / "speech_commands_v0.02"
    words = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
    valid, test = [], []
    t = np.arange(16000) / 16000
    for class_id, word in enumerate(words):
        (root / word).mkdir(parents=True)
        for k in range(4):
            tone = (8000 * np.sin(2 * math.pi * (200 + 50 * class_id + 7 * k) * t + 0.4 * k + 0.1 * class_id)).astype(np.int16)
            name = "spk{}_nohash_0.wav".format(k)
            write_wav(root / word / name, tone)
            (valid if k == 1 else test if k == 2 else []).append("{}/{}".format(word, name))
        write_wav(root / word / "short_nohash_0.wav", np.zeros(12000, dtype=np.int16))  # dropped: not 1 s
    (root / "validation_list.txt").write_text("\n".join(valid) + "\n")
    (root / "testing_list.txt").write_text("\n".join(test) + "\n")
    run_script("prepare_speech_commands.py", root, tmp_path / "data")
    folder = tmp_path / "data" / "processed_data" / "raw"
    train_x = torch.load(folder / "train_X.pt", weights_only=True)
    assert train_x.shape == (20, 1, 16000) and train_x.dtype == torch.float32
    assert train_x.mean(0).abs().max() < 1e-4 and (train_x.std(0) - 1).abs().max() < 2e-2  # std + 1e-5
    task, dataset, batch = load_task(SpeechCommandsTask, tmp_path / "data", "valid", chunk_size=1000,
                                     sentence_class_num=10, max_positions=16000)
    assert batch["net_input"]["src_tokens"].shape == (10, 16000)
    assert sorted(batch["target"].tolist()) == list(range(10))
    # the validation clip of class c is the tone of frequency 200 + 50c + 7 (before normalisation)
    raw = torch.load(folder / "val_X.pt", weights_only=True)
    assert torch.equal(batch["net_input"]["src_tokens"], raw[:, 0])
