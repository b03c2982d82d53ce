"""``PixelSequenceDataset``: images stored as text, one image per line of integer pixels.

Format of ``<data>/input/<split>.src`` (official LRA image layout): each line holds the whitespace
separated grey levels ``0..255`` of one flattened image (1,024 for CIFAR-10 / Pathfinder-32,
16,384 for Path-X). An item is the float tensor ``(p / 255 - mean) / std`` of shape ``(L,)`` in
torch's default dtype, as the official dataset computes it.

Unlike the official class, ``size(index)`` is a method (B3: the official ``self.size = len(...)``
shadowed it), lines are read lazily from a memory map (Path-X files are large), and a line that is
not all integers is refused when the dataset is opened, naming the file and the line.
"""
import re
from typing import Sequence

import numpy as np
import torch
from fairseq.data import FairseqDataset

from mega_fairseq.data.equal_length_stack import stack_equal_length

_ONLY_INTEGERS = re.compile(rb"[0-9\s]*")
_TOKEN = re.compile(rb"\S+")


class PixelSequenceDataset(FairseqDataset):
    """Pixel lines of ``path`` as normalised float sequences (each item: ``(L,)``; batch: ``B x L``).

    Args:
        path: the ``.src`` file (one image per line).
        normalization: ``(mean, std)`` applied after dividing by 255.

    Raises:
        ValueError: a bad ``normalization``, or a line holding anything but non-negative integers.
    """

    def __init__(self, path: str, normalization: Sequence[float] = (0.5, 0.5)):
        super().__init__()
        if normalization is None or len(normalization) != 2:
            raise ValueError("--pixel-normalization takes exactly 2 values (mean std), got {!r}".format(
                None if normalization is None else list(normalization)))
        self.path = str(path)
        self.mean, self.std = float(normalization[0]), float(normalization[1])
        if self.std == 0:
            raise ValueError("--pixel-normalization std must not be 0")
        starts, ends, sizes = [], [], []
        offset = 0
        with open(self.path, "rb") as handle:
            for line_number, line in enumerate(handle, start=1):
                if not _ONLY_INTEGERS.fullmatch(line):
                    bad = next(t for t in _TOKEN.findall(line) if not t.isdigit())
                    raise ValueError("{} line {}: pixel {!r} is not a non-negative integer (each line holds "
                                     "the integer grey levels 0..255 of one image)".format(
                                         self.path, line_number, bad.decode("utf-8", "replace")))
                starts.append(offset)
                ends.append(offset + len(line))
                sizes.append(len(line.split()))
                offset += len(line)
        self._starts = np.asarray(starts, dtype=np.int64)
        self._ends = np.asarray(ends, dtype=np.int64)
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self._bytes = None  # opened lazily (and per worker process) as a read-only memory map

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_bytes"] = None
        return state

    def _line(self, index: int) -> bytes:
        if self._bytes is None:
            self._bytes = np.memmap(self.path, dtype=np.uint8, mode="r")
        return self._bytes[self._starts[index]:self._ends[index]].tobytes()

    def __getitem__(self, index: int) -> torch.Tensor:
        pixels = np.array(self._line(index).split(), dtype=np.int64)
        item = torch.from_numpy(pixels).to(torch.get_default_dtype())
        return item.div(255).sub(self.mean).div(self.std)

    def __len__(self) -> int:
        return len(self.sizes)

    def size(self, index: int) -> int:
        """Number of pixels of image ``index``."""
        return int(self.sizes[index])

    def num_tokens(self, index: int) -> int:
        return int(self.sizes[index])

    def collater(self, samples):
        """``B`` items ``(L,)`` -> ``B x L``; images of different lengths are refused."""
        return stack_equal_length(samples, "image")

    @property
    def supports_prefetch(self):
        return False
