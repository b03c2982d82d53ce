"""An empty binarized split is reported by the mega_language_modeling task in its own words."""
import pytest
import torch
from fairseq.data import Dictionary, indexed_dataset

from mega_fairseq.tasks.mega_language_modeling import MegaLanguageModelingConfig, MegaLanguageModelingTask


def write_split(data_dir, split, sentences):
    dictionary = Dictionary()
    for word in "a b c".split():
        dictionary.add_symbol(word)
    dictionary.save(str(data_dir / "dict.txt"))
    builder = indexed_dataset.make_builder(str(data_dir / "{}.bin".format(split)), impl="mmap",
                                           vocab_size=len(dictionary))
    for sentence in sentences:
        builder.add_item(torch.IntTensor([dictionary.index(w) for w in sentence.split()] + [dictionary.eos()]))
    builder.finalize(str(data_dir / "{}.idx".format(split)))


def test_an_empty_split_says_it_holds_no_tokens_instead_of_failing_to_mmap(tmp_path):
    write_split(tmp_path, "valid", [])
    assert (tmp_path / "valid.bin").stat().st_size == 0  # what fairseq-preprocess writes for an empty file
    task = MegaLanguageModelingTask.setup_task(MegaLanguageModelingConfig(data=str(tmp_path), dataset_impl="mmap", seed=1))
    with pytest.raises(ValueError, match=r"split 'valid' \(.*valid\) holds no tokens"):
        task.load_dataset("valid")


def test_a_non_empty_split_still_loads(tmp_path):
    write_split(tmp_path, "valid", ["a b c", "c b"])
    task = MegaLanguageModelingTask.setup_task(MegaLanguageModelingConfig(data=str(tmp_path), dataset_impl="mmap", seed=1))
    task.load_dataset("valid")
    assert int(task.datasets["valid"].sizes.sum()) == 7
