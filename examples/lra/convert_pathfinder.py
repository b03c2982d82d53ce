"""Convert Pathfinder / Path-X images (LRA release) into the official LRA image layout.

Input: ``lra_release/pathfinder{32,64,128,256}/`` with ``curv_contour_length_14/`` (the "hard"
difficulty Mega uses): ``metadata/<n>.npy`` are text files whose lines read
``<image dir> <file name> ... <label>`` (label in the 4th field), the PNGs lie at
``curv_contour_length_14/<image dir>/<file name>``. As Mega's processed data: metadata files in
numeric order, grey levels, split 80 / 10 / 10 into train / valid / test by a random permutation from
``torch.Generator().manual_seed(42)`` (the order ``torch.utils.data.random_split`` draws).
Pathfinder-32 gives 1,024 pixels per line, Path-X (128) 16,384.

    python convert_pathfinder.py lra_release/pathfinder32 OUT [--difficulty curv_contour_length_14]
"""
import argparse
from pathlib import Path

import torch

from image_split_writer import write_image_split
from png_grey import read_png_grey

SPLIT_SEED = 42
HELD_OUT_FRACTION = 0.1


def read_metadata(root: Path, difficulty: str):
    """``[(relative image path, label), ...]`` in the order of the metadata files and their lines."""
    folder = root / difficulty / "metadata"
    files = sorted(folder.glob("*.npy"), key=lambda path: int(path.stem))
    if not files:
        raise SystemExit("no metadata/*.npy under {} (expected lra_release/pathfinderN/{}/metadata/)".format(
            folder, difficulty))
    samples = []
    for path in files:
        for line_number, line in enumerate(path.read_text().splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 4 or not fields[3].isdigit():
                raise SystemExit("{} line {}: expected '<dir> <file> <...> <label>'".format(path, line_number))
            samples.append((Path(difficulty) / fields[0] / fields[1], int(fields[3])))
    return samples


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pathfinder_dir", help="lra_release/pathfinder32 (or 64, 128, 256)")
    parser.add_argument("out")
    parser.add_argument("--difficulty", default="curv_contour_length_14",
                        help="curv_baseline, curv_contour_length_9 or curv_contour_length_14 (Mega's)")
    args = parser.parse_args(argv)
    root, out = Path(args.pathfinder_dir), Path(args.out)
    samples = read_metadata(root, args.difficulty)
    held_out = int(len(samples) * HELD_OUT_FRACTION)
    order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()
    train_size = len(samples) - 2 * held_out
    splits = (("train", order[:train_size]), ("valid", order[train_size:train_size + held_out]),
              ("test", order[train_size + held_out:]))

    def images(indices):
        for i in indices:
            path, label = samples[i]
            yield read_png_grey(str(root / path))[2], label

    counts = [write_image_split(out, split, images(indices)) for split, indices in splits]
    print("wrote {}: {} / {} / {} images".format(out, *counts))


if __name__ == "__main__":
    main()
