"""Training and evaluation blocks of the mega_language_modeling task (no subprocesses)."""
import numpy as np
import pytest
import torch

from mega_fairseq.data import VariantBlockDataset
from mega_fairseq.tasks.mega_language_modeling import parse_valid_block

PAD, EOS = 1, 2


def sentences(lengths, seed=0):
    """Sentences of the given lengths; tokens >= 4 then a final eos (as fairseq-preprocess writes)."""
    rng = np.random.RandomState(seed)
    out = []
    for n in lengths:
        body = torch.as_tensor(rng.randint(4, 50, size=max(n - 1, 0)), dtype=torch.long)
        out.append(torch.cat([body, torch.tensor([EOS])]) if n > 0 else torch.empty(0, dtype=torch.long))
    return out


def blocks(data, chunk=4, low=1, high=3, mode="none", seed=7, epoch=1):
    return VariantBlockDataset(data, [len(s) for s in data], chunk, low, high, pad=PAD, eos=EOS,
                               break_mode=mode, seed=seed, epoch=epoch)


LENGTHS = [5, 1, 9, 3, 12, 1, 7, 4, 6, 2, 10, 8]


def test_none_mode_blocks_are_chunk_multiples_and_cover_the_stream_once():
    data = sentences(LENGTHS)
    dataset = blocks(data, chunk=4, low=2, high=5)
    stream = torch.cat(data)
    assert (dataset.sizes[:-1] % 4 == 0).all()
    assert set((dataset.sizes[:-1] // 4).tolist()) <= {2, 3, 4, 5}
    assert torch.equal(torch.cat([dataset[i][1] for i in range(len(dataset))]), stream)


def test_source_is_the_target_shifted_right_by_one():
    data = sentences(LENGTHS)
    dataset = blocks(data)
    stream = torch.cat(data)
    for i in range(len(dataset)):
        source, target, past = dataset[i]
        start = int(dataset.slices[i][0])
        assert len(source) == len(target) == len(past)
        expected_first = EOS if start == 0 or dataset._starts_sentence(start) else stream[start - 1]
        assert int(source[0]) == int(expected_first)
        assert torch.equal(source[1:], target[:-1])


def test_multiples_are_deterministic_in_seed_and_epoch_and_change_across_epochs():
    data = sentences(LENGTHS * 5)
    first = blocks(data, seed=3, epoch=1).sizes.copy()
    assert np.array_equal(blocks(data, seed=3, epoch=1).sizes, first)
    other_epoch = blocks(data, seed=3, epoch=1)
    other_epoch.set_epoch(2)
    assert not np.array_equal(other_epoch.sizes, first)
    other_epoch.set_epoch(1)  # back to epoch 1: the same segmentation again
    assert np.array_equal(other_epoch.sizes, first)
    assert not np.array_equal(blocks(data, seed=4, epoch=1).sizes, first)
    assert not other_epoch.can_reuse_epoch_itr_across_epochs


@pytest.mark.parametrize("mode", ["complete", "complete_doc"])
def test_complete_modes_keep_sentences_whole(mode):
    data = sentences(LENGTHS)
    dataset = blocks(data, chunk=4, low=1, high=3, mode=mode)
    sentence_starts = set(dataset.offsets[:-1].tolist())
    sentence_ends = set(dataset.offsets[1:].tolist())
    for start, end in dataset.slices.tolist():
        assert start in sentence_starts and end in sentence_ends
    separators = sum(1 for n in LENGTHS if n == 1) if mode == "complete_doc" else 0
    assert int(dataset.sizes.sum()) == sum(LENGTHS) - separators


def test_complete_doc_never_crosses_a_document_separator():
    data = sentences(LENGTHS)
    dataset = blocks(data, chunk=8, low=3, high=3, mode="complete_doc")
    separator_positions = [int(dataset.offsets[i]) for i, n in enumerate(LENGTHS) if n == 1]
    for start, end in dataset.slices.tolist():
        assert not any(start <= p < end for p in separator_positions)


def test_one_token_documents_and_blocks_shorter_than_a_chunk():
    dataset = blocks(sentences([1]), chunk=16, low=1, high=1, mode="none")
    assert dataset.sizes.tolist() == [1]
    source, target, _ = dataset[0]
    assert source.tolist() == [EOS] and target.tolist() == [EOS]


@pytest.mark.parametrize("kwargs,message", [
    (dict(chunk=0), "chunk_size=0 must be a positive"),
    (dict(low=3, high=2), "1 <= min <= max"),
    (dict(mode="eos"), "break_mode='eos' is not supported"),
])
def test_bad_block_settings_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        blocks(sentences(LENGTHS), **kwargs)


def test_empty_data_is_rejected():
    with pytest.raises(ValueError, match="no tokens"):
        blocks(sentences([0, 0]))


def test_valid_block_parsing():
    assert parse_valid_block("size:500", 10_000) == 500
    assert parse_valid_block("splits:3", 10_000) == 3334
    assert parse_valid_block("splits:50", 7) == 1
    for bad in ("size:0", "blocks:3", "splits", "size:x"):
        with pytest.raises(ValueError, match="--valid-block"):
            parse_valid_block(bad, 100)
