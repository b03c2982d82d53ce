"""VariantBlockDataset: language-model training blocks of ``chunk_size x m`` tokens, m redrawn per epoch.

Mega LM training (official ``--variant-block-multiple-min/max``) cuts the token stream into
blocks whose length is a whole number of attention chunks: each block draws its own multiple
``m`` uniformly from ``[multiple_min, multiple_max]``. The draws depend only on ``seed`` and the
epoch, so a run is reproducible and every epoch sees a different segmentation.

Items follow fairseq's ``TokenBlockDataset(include_targets=True)``: ``(source, target,
past_target)`` 1-D LongTensors, where ``target`` is the block, ``source`` the block shifted right
by one token (an ``eos`` in front when the block starts a sentence) and ``past_target`` shifted by
two, so the dataset plugs into :class:`fairseq.data.MonolingualDataset`.
"""
from typing import List, Tuple

import numpy as np
import torch
from fairseq.data import FairseqDataset

BREAK_MODES = ("none", "complete", "complete_doc")


class VariantBlockDataset(FairseqDataset):
    """Blocks of ``chunk_size * m`` tokens (``m`` per block) over the sentences of ``dataset``.

    Args:
        dataset: indexable of 1-D LongTensors (one sentence each, usually ending in eos).
        sizes: length of each sentence.
        chunk_size: block unit in tokens (the model's attention chunk).
        multiple_min, multiple_max: range of the per-block multiple ``m`` (inclusive).
        pad, eos: dictionary indices.
        break_mode: ``none`` (fill blocks exactly, crossing sentences), ``complete`` (whole
            sentences only; a sentence longer than the block becomes a block of its own) or
            ``complete_doc`` (as ``complete``, never crossing a document boundary: a sentence of
            ``document_sep_len`` tokens, i.e. an empty line, which is dropped).
        seed: the run's seed; the multiples of epoch ``e`` are drawn from ``(seed, e)``.
        epoch: the epoch whose segmentation is built first.
    """

    def __init__(self, dataset, sizes, chunk_size: int, multiple_min: int, multiple_max: int, pad: int, eos: int,
                 break_mode: str = "none", seed: int = 1, document_sep_len: int = 1, epoch: int = 1):
        super().__init__()
        if chunk_size is None or int(chunk_size) <= 0:
            raise ValueError("chunk_size={} must be a positive number of tokens".format(chunk_size))
        if not 1 <= int(multiple_min) <= int(multiple_max):
            raise ValueError(
                "variant block multiples must satisfy 1 <= min <= max, got min={} max={}".format(multiple_min, multiple_max))
        if break_mode not in BREAK_MODES:
            raise ValueError("break_mode={!r} is not supported with variable blocks; allowed values: {}".format(
                break_mode, ", ".join(BREAK_MODES)))
        self.dataset = dataset
        self.sentence_sizes = np.asarray(sizes, dtype=np.int64)
        if len(self.sentence_sizes) != len(dataset):
            raise ValueError("sizes has {} entries but dataset has {} sentences".format(len(self.sentence_sizes), len(dataset)))
        if self.sentence_sizes.sum() == 0:
            raise ValueError("the dataset holds no tokens: cannot build language-model blocks")
        self.chunk_size = int(chunk_size)
        self.multiple_min, self.multiple_max = int(multiple_min), int(multiple_max)
        self.pad, self.eos = pad, eos
        self.break_mode = break_mode
        self.seed = int(seed)
        self.document_sep_len = document_sep_len
        # offsets[i] = position of sentence i in the concatenated token stream
        self.offsets = np.concatenate([[0], np.cumsum(self.sentence_sizes)])
        self.epoch = None
        self.set_epoch(epoch)

    # --------------------------------------------------------------- segmentation

    def _block_lengths(self, epoch: int):
        """Endless generator of block lengths for ``epoch`` (deterministic in seed and epoch)."""
        rng = np.random.RandomState([self.seed % (2 ** 32), int(epoch), 5])
        while True:
            for m in rng.randint(self.multiple_min, self.multiple_max + 1, size=1024):
                yield int(m) * self.chunk_size

    def _segment(self, epoch: int) -> np.ndarray:
        """(num_blocks, 2) array of [start, end) token offsets into the concatenated stream."""
        lengths = self._block_lengths(epoch)
        total = int(self.offsets[-1])
        if self.break_mode == "none":
            bounds: List[Tuple[int, int]] = []
            start = 0
            while start < total:
                end = min(start + next(lengths), total)
                bounds.append((start, end))
                start = end
            return np.asarray(bounds, dtype=np.int64).reshape(-1, 2)
        return self._segment_sentences(lengths)

    def _segment_sentences(self, lengths) -> np.ndarray:
        bounds: List[Tuple[int, int]] = []
        block_start, block_len, target = None, 0, next(lengths)
        for i, size in enumerate(self.sentence_sizes.tolist()):
            doc_break = self.break_mode == "complete_doc" and size == self.document_sep_len
            if block_start is not None and (doc_break or block_len + size > target):
                bounds.append((block_start, block_start + block_len))
                block_start, block_len, target = None, 0, next(lengths)
            if doc_break or size == 0:
                continue
            if block_start is None:
                block_start = int(self.offsets[i])
            block_len += size
        if block_start is not None:
            bounds.append((block_start, block_start + block_len))
        if not bounds:
            raise ValueError("the dataset holds no tokens outside document separators: no blocks to build")
        return np.asarray(bounds, dtype=np.int64).reshape(-1, 2)

    def set_epoch(self, epoch: int) -> None:
        """Rebuild the blocks for ``epoch`` (a no-op when already built for it)."""
        if epoch == self.epoch:
            return
        self.epoch = epoch
        self.slices = self._segment(epoch)
        self.sizes = self.slices[:, 1] - self.slices[:, 0]

    @property
    def can_reuse_epoch_itr_across_epochs(self) -> bool:
        return False  # the blocks (and so the batches) change every epoch

    # -------------------------------------------------------------------- items

    def _tokens(self, start: int, end: int) -> torch.Tensor:
        """Tokens ``[start, end)`` of the concatenated stream (empty when end <= start)."""
        if end <= start:
            return torch.empty(0, dtype=torch.long)
        first = int(np.searchsorted(self.offsets, start, side="right")) - 1
        last = int(np.searchsorted(self.offsets, end - 1, side="right")) - 1
        buffer = torch.cat([torch.as_tensor(self.dataset[i]).long() for i in range(first, last + 1)])
        offset = int(self.offsets[first])
        return buffer[start - offset:end - offset]

    def _starts_sentence(self, position: int) -> bool:
        index = int(np.searchsorted(self.offsets, position, side="right")) - 1
        return int(self.offsets[index]) == position

    def __getitem__(self, index: int):
        start, end = (int(v) for v in self.slices[index])
        target = self._tokens(start, end)
        eos, pad = target.new([self.eos]), target.new([self.pad])
        if self._starts_sentence(start):
            source = torch.cat([eos, self._tokens(start, end - 1)])
            past_target = torch.cat([pad, eos, self._tokens(start, end - 2)])
        elif self._starts_sentence(start - 1):
            source = self._tokens(start - 1, end - 1)
            past_target = torch.cat([eos, self._tokens(start - 1, end - 2)])
        else:
            source = self._tokens(start - 1, end - 1)
            past_target = self._tokens(start - 2, end - 2)
        return source, target, past_target[: len(target)]

    def __len__(self) -> int:
        return len(self.slices)

    def num_tokens(self, index: int) -> int:
        return int(self.sizes[index])

    def size(self, index: int) -> int:
        return int(self.sizes[index])

    @property
    def supports_prefetch(self) -> bool:
        return False
