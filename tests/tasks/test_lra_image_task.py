"""The lra-image task and its pixel dataset: official batch (fixture data), B3, bad input."""
import argparse

import pytest
import torch

from helpers import REFERENCE_DIR, load_fixture
from mega_fairseq.data.pixel_sequence_dataset import PixelSequenceDataset
from mega_fairseq.tasks.lra_image import LRAImageTask

DATA_IMAGE = REFERENCE_DIR / "lra" / "data-image"


def task_args(data, *extra, **settings):
    parser = argparse.ArgumentParser()
    LRAImageTask.add_args(parser)
    args = parser.parse_args([str(data), *extra])
    defaults = dict(seed=1, max_positions=1024, input_type="image", chunk_size=-1, sentence_class_num=2)
    defaults.update(settings)
    for key, value in defaults.items():
        setattr(args, key, value)
    return args


def write_image_data(root, images, labels, split="train"):
    """``images``: lists of ints (or raw text lines); writes input/<split>.src and label/<split>.label."""
    (root / "input").mkdir(parents=True, exist_ok=True)
    (root / "label").mkdir(parents=True, exist_ok=True)
    lines = [row if isinstance(row, str) else " ".join(str(p) for p in row) for row in images]
    (root / "input" / (split + ".src")).write_text("".join(line + "\n" for line in lines))
    (root / "label" / (split + ".label")).write_text("".join("{}\n".format(y) for y in labels))
    return root


def random_images(count, length, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, length), generator=generator).tolist()


def test_fixture_batch_is_reproduced_from_the_official_data():
    fixture = load_fixture("lra/lra_image_public")
    task = LRAImageTask.setup_task(argparse.Namespace(**dict(fixture["config"], data=str(DATA_IMAGE))))
    dataset = task.load_dataset("test")
    batch = dataset.collater([dataset[i] for i in [3, 1, 0, 2]])
    expected = fixture["inputs"]
    assert batch["net_input"]["src_tokens"].dtype == torch.float32
    assert torch.equal(batch["net_input"]["src_tokens"], expected["net_input"]["src_tokens"])
    assert torch.equal(batch["net_input"]["src_lengths"], expected["net_input"]["src_lengths"])
    assert torch.equal(batch["target"], expected["target"]) and batch["target"].shape == (4,)
    assert (batch["ntokens"], batch["nsentences"]) == (expected["ntokens"], expected["nsentences"]) == (64, 4)
    assert task.source_dictionary is None and task.target_dictionary is None


def test_pixel_normalization_is_applied(tmp_path):
    data = write_image_data(tmp_path, [[0, 255, 51, 102]], [1])
    task = LRAImageTask.setup_task(task_args(data, "--pixel-normalization", "0.48", "0.24"))
    dataset = task.load_dataset("train")
    item = dataset.collater([dataset[0]])["net_input"]["src_tokens"][0]
    expected = (torch.tensor([0, 255, 51, 102]) / 255 - 0.48) / 0.24
    assert torch.allclose(item, expected, atol=1e-6)
    with pytest.raises(ValueError, match=r"--pixel-normalization takes exactly 2 values"):
        LRAImageTask.setup_task(task_args(data, "--pixel-normalization", "0.5"))


def test_size_is_a_method_and_sizes_are_pixel_counts(tmp_path):
    path = write_image_data(tmp_path, [[1, 2, 3], [4, 5, 6, 7, 8]], [0, 1]) / "input" / "train.src"
    dataset = PixelSequenceDataset(str(path))
    assert dataset.size(0) == 3 and dataset.size(1) == 5  # B3: the official size was an int attribute
    assert dataset.sizes.tolist() == [3, 5] and dataset.num_tokens(1) == 5 and len(dataset) == 2
    assert dataset[1].shape == (5,)


def test_batch_of_images_of_different_lengths_is_refused(tmp_path):
    path = write_image_data(tmp_path, [[1, 2, 3], [4, 5, 6, 7]], [0, 1]) / "input" / "train.src"
    dataset = PixelSequenceDataset(str(path))
    with pytest.raises(ValueError, match=r"a batch holds images of different lengths \[3, 4\]"):
        dataset.collater([dataset[0], dataset[1]])
    task = LRAImageTask.setup_task(task_args(tmp_path))
    with pytest.raises(ValueError, match=r"images have different lengths \(3 ... 4\)"):
        task.load_dataset("train")


def test_pixel_line_with_a_non_integer_names_the_file_and_line(tmp_path):
    data = write_image_data(tmp_path, ["1 2 3", "4 5.5 6"], [0, 1])
    task = LRAImageTask.setup_task(task_args(data))
    with pytest.raises(ValueError, match=r"train.src line 2: pixel '5.5' is not a non-negative integer"):
        task.load_dataset("train")


def test_chunk_that_does_not_divide_the_length_is_refused(tmp_path):
    data = write_image_data(tmp_path, random_images(2, 12), [0, 1])
    with pytest.raises(ValueError, match=r"--chunk-size 8 does not divide the sequence length 12"):
        LRAImageTask.setup_task(task_args(data, chunk_size=8)).load_dataset("train")
    for chunk in (-1, 4, 12, 16):
        assert len(LRAImageTask.setup_task(task_args(data, chunk_size=chunk)).load_dataset("train")) == 2


def test_images_are_truncated_to_max_positions_before_the_chunk_check(tmp_path):
    data = write_image_data(tmp_path, random_images(2, 20), [0, 1])
    dataset = LRAImageTask.setup_task(task_args(data, max_positions=16, chunk_size=8)).load_dataset("train")
    assert dataset.collater([dataset[0], dataset[1]])["net_input"]["src_tokens"].shape == (2, 16)


def test_empty_split_missing_input_and_labels_out_of_range_are_refused(tmp_path):
    data = write_image_data(tmp_path, [], [], split="valid")
    write_image_data(tmp_path, random_images(2, 4), [0, 3])
    task = LRAImageTask.setup_task(task_args(data))
    with pytest.raises(ValueError, match=r"split 'valid' is empty"):
        task.load_dataset("valid")
    with pytest.raises(ValueError, match=r"class ids range over 0..3, but the model predicts 2 classes"):
        task.load_dataset("train")
    with pytest.raises(ValueError, match=r"input/test.src not found: --task lra-image reads input/<split>.src"):
        task.load_dataset("test")
    with pytest.raises(ValueError, match=r"input not found: .* looks like text data"):
        LRAImageTask.setup_task(task_args(REFERENCE_DIR / "lra" / "data-text"))


def test_wrong_input_type_and_a_text_checkpoint_are_refused():
    with pytest.raises(ValueError, match=r"--input-type text does not fit --task lra-image .* use --input-type image"):
        LRAImageTask.setup_task(task_args(DATA_IMAGE, input_type="text"))
    task = LRAImageTask.setup_task(task_args(DATA_IMAGE, input_type=None))
    text_model = argparse.Namespace(**dict(load_fixture("lra/lra_text_public")["config"]))
    with pytest.raises(ValueError, match=r"needs a model with --input-type image, but the model \(or checkpoint\) "
                                         r"has --input-type text"):
        task.build_model(text_model)
