"""Convert CIFAR-10 (``cifar-10-python.tar.gz``, extracted) into the official LRA image layout.

As Mega's processed ``cifar10`` data: grey images (PIL's ``convert("L")`` luma, then the float32
``/255 * 255`` round trip truncated to int, as ``ToTensor().mul(255).int()`` gives), 1,024 pixels
per line; the 50,000 training images split 45,000 / 5,000 into train / valid by a random
permutation from ``torch.Generator().manual_seed(42)`` (the order ``torch.utils.data.random_split``
draws), the 10,000 test images as test. Input: ``cifar-10-batches-py/`` (``data_batch_1..5``,
``test_batch``: pickled dicts with ``data`` uint8 N x 3072 = R, G, B planes, and ``labels``).

    python convert_cifar10.py cifar-10-batches-py OUT
"""
import argparse
import pickle
from pathlib import Path

import numpy as np
import torch

from image_split_writer import write_image_split

TRAIN_BATCHES = ["data_batch_{}".format(i) for i in range(1, 6)]
VALID_FRACTION = 0.1
SPLIT_SEED = 42


def read_batches(folder: Path, names):
    """``(images N x 3072 uint8, labels (N,))`` of the pickled batches ``names``."""
    images, labels = [], []
    for name in names:
        path = folder / name
        if not path.exists():
            raise SystemExit("{} not found (expected the extracted cifar-10-batches-py/ folder)".format(path))
        with open(path, "rb") as handle:
            batch = pickle.load(handle, encoding="bytes")
        images.append(np.asarray(batch[b"data"], dtype=np.uint8))
        labels.extend(int(y) for y in batch[b"labels"])
    return np.concatenate(images), np.asarray(labels, dtype=np.int64)


def to_grey(images: np.ndarray) -> np.ndarray:
    """N x 3072 RGB planes -> N x 1024 grey levels, as Mega's preprocessing produced them."""
    planes = images.reshape(-1, 3, 1024).astype(np.int64)
    luma = (planes[:, 0] * 19595 + planes[:, 1] * 38470 + planes[:, 2] * 7471 + 0x8000) >> 16
    round_trip = torch.from_numpy(luma).to(torch.float32).div(255).mul(255).int()
    return round_trip.numpy()


def split_permutation(total: int, seed: int = SPLIT_SEED):
    """The permutation ``random_split`` draws for ``total`` items from ``manual_seed(seed)``."""
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed)).tolist()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cifar_dir", help="the extracted cifar-10-batches-py/ folder")
    parser.add_argument("out")
    args = parser.parse_args(argv)
    folder, out = Path(args.cifar_dir), Path(args.out)
    train_images, train_labels = read_batches(folder, TRAIN_BATCHES)
    test_images, test_labels = read_batches(folder, ["test_batch"])
    train_grey, test_grey = to_grey(train_images), to_grey(test_images)
    order = split_permutation(len(train_labels))
    train_size = int(len(order) * (1 - VALID_FRACTION))
    for split, indices in (("train", order[:train_size]), ("valid", order[train_size:])):
        write_image_split(out, split, ((train_grey[i], train_labels[i]) for i in indices))
    write_image_split(out, "test", zip(test_grey, test_labels))
    print("wrote {}: {} / {} / {} images".format(out, train_size, len(order) - train_size, len(test_labels)))


if __name__ == "__main__":
    main()
