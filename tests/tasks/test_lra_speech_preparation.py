"""examples/lra/prepare_speech_commands.py in-process: class order, all-classes padding, stratified split."""
import sys
import wave

import numpy as np
import pytest
import torch

from helpers import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "examples" / "lra"))
import prepare_speech_commands as prep  # noqa: E402


def write_wav(path, samples, rate=16000, width=2):
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as clip:
        clip.setnchannels(1)
        clip.setsampwidth(width)
        clip.setframerate(rate)
        clip.writeframes(np.asarray(samples, dtype="<i2").tobytes())


def test_official_class_orders():
    assert prep.SUBSET_CLASSES == ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
    assert len(prep.ALL_CLASSES) == len(set(prep.ALL_CLASSES)) == 35
    assert prep.ALL_CLASSES[:3] == ["bed", "cat", "down"] and set(prep.SUBSET_CLASSES) <= set(prep.ALL_CLASSES)


def test_read_wav_scales_int16_and_refuses_other_formats(tmp_path):
    write_wav(tmp_path / "a.wav", [0, 16384, -32768, 32767])
    assert prep.read_wav(tmp_path / "a.wav").tolist() == [0.0, 0.5, -1.0, 32767 / 32768]
    write_wav(tmp_path / "b.wav", [0, 1], rate=8000)
    with pytest.raises(SystemExit, match=r"expected 16000 Hz, got 8000"):
        prep.read_wav(tmp_path / "b.wav")


def test_short_clips_are_dropped_for_the_subset_and_padded_for_all_classes(tmp_path):
    for word in prep.ALL_CLASSES:
        write_wav(tmp_path / word / "full.wav", np.full(16000, 100))
        write_wav(tmp_path / word / "short.wav", np.full(8000, 200))
    subset = prep.collect_clips(tmp_path, prep.SUBSET_CLASSES, pad_short=False)
    assert [(name, label) for name, label, _ in subset[:2]] == [("yes/full.wav", 0), ("no/full.wav", 1)]
    everything = prep.collect_clips(tmp_path, prep.ALL_CLASSES, pad_short=True)
    assert len(everything) == 70
    short = dict((name, samples) for name, _, samples in everything)["bed/short.wav"]
    assert short.shape == (16000,) and short[:8000].max() == short[:8000].min() == 200 / 32768 and not short[8000:].any()


def test_random_split_is_stratified_and_seeded():
    clips = [("c{}/{}".format(label, i), label, None) for label in range(3) for i in range(20)]
    parts = prep.split_random(clips, seed=0)
    for name, share in (("train", 14), ("val", 3), ("test", 3)):
        labels = [clips[i][1] for i in parts[name]]
        assert [labels.count(label) for label in range(3)] == [share] * 3
    assert sorted(sum(parts.values(), [])) == list(range(60))
    assert prep.split_random(clips, 0) == parts != prep.split_random(clips, 1)


def test_normalise_uses_training_statistics_per_time_step():
    train = torch.tensor([[[1.0, 10.0]], [[3.0, 30.0]]])
    other = torch.tensor([[[2.0, 20.0]]])
    out = prep.normalise({"train": (train, None), "val": (other, None)})
    std = torch.tensor([1.0, 10.0]) * 2 ** 0.5  # unbiased std of (1, 3) and (10, 30)
    assert torch.allclose(out["val"][0], torch.zeros(1, 1, 2))
    assert torch.allclose(out["train"][0][0, 0], torch.tensor([-1.0, -10.0]) / (std + 1e-5))
