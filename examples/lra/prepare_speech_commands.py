"""Prepare Speech Commands v0.02 for SC-Raw (``--task speech_commands``) without torchaudio.

Input: the extracted ``speech_commands_v0.02.tar.gz`` (``<word>/<clip>.wav``, 16 kHz 16-bit mono,
plus ``validation_list.txt`` and ``testing_list.txt``). WAVs are read with the standard library
``wave`` module (the official code called ``torchaudio.load`` without importing it: B8).

As the official preparation:
* classes: the 10-word subset ``yes no up down left right on off stop go`` (class ids in that
  order), or with ``--all-classes`` the 35 words in the official order;
* samples are ``int16 / 2**15``; for the subset, clips that are not exactly 16,000 samples long are
  dropped; with ``--all-classes`` shorter clips are zero-padded to 16,000;
* every time step is normalised with the mean and (unbiased) std of that time step over the
  training split: ``(x - mean) / (std + 1e-5)``.

Split: ``--split lists`` (default) uses the dataset's own ``validation_list.txt`` /
``testing_list.txt`` (reproducible; the official ``--all-classes`` path does this). The official
10-class data used a random stratified 70/15/15 split of unordered directory listings, which cannot
be reproduced; ``--split random`` makes a seeded stratified 70/15/15 split of the sorted clips.

Output (the official processed layout)::

    OUT/processed_data/raw[_all_classes]/{train,val,test}_X.pt   float32 N x 1 x 16000
    OUT/processed_data/raw[_all_classes]/{train,val,test}_y.pt   int64 (N,)

    python prepare_speech_commands.py SPEECH_COMMANDS_DIR OUT [--all-classes] [--split lists|random]
"""
import argparse
import wave
from pathlib import Path

import numpy as np
import torch

SUBSET_CLASSES = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
ALL_CLASSES = ["bed", "cat", "down", "five", "forward", "go", "house", "left", "marvin", "no", "on", "right",
               "sheila", "tree", "up", "visual", "yes", "backward", "bird", "dog", "eight", "follow", "four",
               "happy", "learn", "nine", "off", "one", "seven", "six", "stop", "three", "two", "wow", "zero"]
SAMPLE_RATE = 16000
CLIP_LENGTH = 16000
SPLIT_FILES = ("train", "val", "test")


def read_wav(path: Path) -> np.ndarray:
    """The samples of a 16-bit mono WAV as float32 in [-1, 1) (``int16 / 2**15``)."""
    with wave.open(str(path), "rb") as clip:
        if clip.getsampwidth() != 2 or clip.getnchannels() != 1:
            raise SystemExit("{}: expected 16-bit mono PCM, got {} bytes x {} channels".format(
                path, clip.getsampwidth(), clip.getnchannels()))
        if clip.getframerate() != SAMPLE_RATE:
            raise SystemExit("{}: expected {} Hz, got {}".format(path, SAMPLE_RATE, clip.getframerate()))
        frames = clip.readframes(clip.getnframes())
    return np.frombuffer(frames, dtype="<i2").astype(np.float32) / 2 ** 15


def read_list(path: Path):
    if not path.exists():
        raise SystemExit("{} not found (it comes with speech_commands_v0.02)".format(path))
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def collect_clips(root: Path, classes, pad_short: bool):
    """``[(relative path, class id, samples (16000,)), ...]``; short clips dropped or zero-padded."""
    clips = []
    for class_id, word in enumerate(classes):
        folder = root / word
        files = sorted(folder.glob("*.wav"))
        if not files:
            raise SystemExit("no WAV files in {} (expected the extracted speech_commands_v0.02/)".format(folder))
        for path in files:
            samples = read_wav(path)
            if len(samples) != CLIP_LENGTH:
                if not pad_short or len(samples) > CLIP_LENGTH:
                    continue
                samples = np.pad(samples, (0, CLIP_LENGTH - len(samples)))
            clips.append(("{}/{}".format(word, path.name), class_id, samples))
    return clips


def split_by_lists(root: Path, clips):
    """Split indices by the dataset's validation_list.txt / testing_list.txt."""
    valid, test = read_list(root / "validation_list.txt"), read_list(root / "testing_list.txt")
    parts = {"train": [], "val": [], "test": []}
    for index, (name, _, _) in enumerate(clips):
        parts["val" if name in valid else "test" if name in test else "train"].append(index)
    return parts


def split_random(clips, seed: int):
    """A seeded split, stratified by class: 70 / 15 / 15 % of each class."""
    rng = np.random.RandomState(seed)
    parts = {"train": [], "val": [], "test": []}
    labels = np.array([label for _, label, _ in clips])
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_train = int(round(0.7 * len(members)))
        n_val = int(round(0.15 * len(members)))
        parts["train"] += members[:n_train].tolist()
        parts["val"] += members[n_train:n_train + n_val].tolist()
        parts["test"] += members[n_train + n_val:].tolist()
    return {name: sorted(indices) for name, indices in parts.items()}


def normalise(splits):
    """Per-time-step standardisation with training statistics: ``(x - mean_t) / (std_t + 1e-5)``."""
    train = splits["train"][0]
    mean, std = train.mean(dim=0, keepdim=True), train.std(dim=0, keepdim=True)
    return {name: ((x - mean) / (std + 1e-5), y) for name, (x, y) in splits.items()}


def prepare(root: Path, out: Path, all_classes: bool = False, split: str = "lists", seed: int = 0) -> Path:
    """Write the processed tensors; returns their folder."""
    clips = collect_clips(root, ALL_CLASSES if all_classes else SUBSET_CLASSES, pad_short=all_classes)
    parts = split_by_lists(root, clips) if split == "lists" else split_random(clips, seed)
    for name in SPLIT_FILES:
        if not parts[name]:
            raise SystemExit("the {} split is empty: check {} (and the split lists)".format(name, root))
    tensors = {}
    for name in SPLIT_FILES:
        waves = torch.from_numpy(np.stack([clips[i][2] for i in parts[name]])).unsqueeze(1)
        labels = torch.tensor([clips[i][1] for i in parts[name]], dtype=torch.long)
        tensors[name] = (waves, labels)
    tensors = normalise(tensors)
    folder = out / "processed_data" / ("raw_all_classes" if all_classes else "raw")
    folder.mkdir(parents=True, exist_ok=True)
    for name, (waves, labels) in tensors.items():
        torch.save(waves.contiguous(), folder / "{}_X.pt".format(name))
        torch.save(labels, folder / "{}_y.pt".format(name))
    return folder


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("speech_commands_dir", help="the extracted speech_commands_v0.02/ folder")
    parser.add_argument("out", help="data folder for --task speech_commands")
    parser.add_argument("--all-classes", action="store_true", help="all 35 words (--sc-all-classes)")
    parser.add_argument("--split", choices=["lists", "random"], default="lists")
    parser.add_argument("--seed", type=int, default=0, help="seed of --split random")
    args = parser.parse_args(argv)
    folder = prepare(Path(args.speech_commands_dir), Path(args.out), args.all_classes, args.split, args.seed)
    sizes = {name: torch.load(folder / "{}_y.pt".format(name), weights_only=True).numel() for name in SPLIT_FILES}
    print("wrote {}: train {train}, val {val}, test {test} clips".format(folder, **sizes))


if __name__ == "__main__":
    main()
