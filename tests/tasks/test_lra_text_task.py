"""The lra-text task: official batches (fixture data), class ids in label-dictionary order, bad input."""
import argparse
import logging
from pathlib import Path

import pytest
import torch
from fairseq.data import Dictionary
from fairseq.data.indexed_dataset import MMapIndexedDatasetBuilder, best_fitting_int_dtype

from helpers import REFERENCE_DIR, load_fixture
from mega_fairseq.tasks.lra_text import LRATextTask

DATA_TEXT = REFERENCE_DIR / "lra" / "data-text"


def task_args(data, *extra, **settings):
    """The task's own argparse defaults, plus the model/common settings it reads."""
    parser = argparse.ArgumentParser()
    LRATextTask.add_args(parser)
    args = parser.parse_args([str(data), *extra])
    defaults = dict(seed=1, dataset_impl=None, max_positions=2002, sen_rep_type="mp", input_type="text")
    defaults.update(settings)
    for key, value in defaults.items():
        setattr(args, key, value)
    return args


def binarize(lines, dictionary, prefix: Path):
    """Write ``lines`` (whitespace tokens) as an mmap indexed dataset, eos appended (as fairseq-preprocess)."""
    builder = MMapIndexedDatasetBuilder(str(prefix) + ".bin", dtype=best_fitting_int_dtype(len(dictionary)))
    for line in lines:
        builder.add_item(dictionary.encode_line(line, add_if_not_exist=False, append_eos=True).long())
    builder.finalize(str(prefix) + ".idx")


def write_text_data(root: Path, splits, label_symbols=None, src1=False):
    """A tiny lra-text folder; ``splits`` = {split: [(text, label), ...]}; dicts from the train split."""
    src_dict, label_dict = Dictionary(), Dictionary()
    for text, label in splits["train"]:
        for token in text.split():
            src_dict.add_symbol(token)
        label_dict.add_symbol(label)
    for symbol in label_symbols or []:
        label_dict.add_symbol(symbol)
    for name in ("src-bin", "label-bin") + (("src1-bin",) if src1 else ()):
        (root / name).mkdir(parents=True, exist_ok=True)
    src_dict.save(str(root / "src-bin" / "dict.txt"))
    label_dict.save(str(root / "label-bin" / "dict.txt"))
    for split, rows in splits.items():
        binarize([text for text, _ in rows], src_dict, root / "src-bin" / split)
        binarize([label for _, label in rows], label_dict, root / "label-bin" / split)
        if src1:
            binarize([" ".join(reversed(text.split())) for text, _ in rows], src_dict, root / "src1-bin" / split)
    return root


ROWS = {"train": [("a b c", "x"), ("b c", "y"), ("c a b a", "x")],
        "valid": [("a b", "y"), ("c c c c c c", "x")]}


def test_fixture_batch_is_reproduced_from_the_official_data():
    fixture = load_fixture("lra/lra_text_public")
    config = dict(fixture["config"], data=str(DATA_TEXT))
    task = LRATextTask.setup_task(argparse.Namespace(**config))
    dataset = task.load_dataset("valid")
    batch = dataset.collater([dataset[i] for i in [2, 1, 4, 0]])
    expected = fixture["inputs"]
    assert torch.equal(batch["net_input"]["src_tokens"], expected["net_input"]["src_tokens"])
    assert torch.equal(batch["net_input"]["src_lengths"], expected["net_input"]["src_lengths"])
    assert torch.equal(batch["target"], expected["target"]) and batch["target"].shape == (4, 1)
    assert (batch["ntokens"], batch["nsentences"]) == (expected["ntokens"], expected["nsentences"]) == (43, 4)
    assert task.source_dictionary.symbols == fixture["dictionary"]["symbols"]
    assert task.label_dictionary.symbols == fixture["label_dictionary"]["symbols"]
    assert task.cls_idx == 24 and task.target_dictionary is task.source_dictionary
    assert task.args.tokens_per_sample == config["max_positions"] == task.max_positions()


def test_class_ids_follow_label_dictionary_order_and_are_logged(caplog):
    with caplog.at_level(logging.INFO):
        task = LRATextTask.setup_task(task_args(DATA_TEXT))
    assert task.class_names == {0: "2", 1: "0", 2: "1"}
    assert "class ids follow label-bin/dict.txt order: 0='2', 1='0', 2='1'" in caplog.text
    dataset = task.load_dataset("valid")
    raw_labels = (DATA_TEXT / "raw" / "valid.label").read_text().split()
    assert [task.class_names[int(dataset[i]["target"])] for i in range(len(dataset))] == raw_labels


def test_label_missing_from_the_label_dictionary_is_an_error_at_load_time(tmp_path):
    rows = dict(ROWS, valid=[("a b", "y"), ("c c", "z")])  # "z" never occurs in train
    task = LRATextTask.setup_task(task_args(write_text_data(tmp_path, rows)))
    task.load_dataset("train")
    with pytest.raises(ValueError, match=r"label-bin/valid: row 1 holds a label that is not in label-bin/dict.txt"):
        task.load_dataset("valid")


def test_cls_pooling_prepends_cls_and_truncation_keeps_it(tmp_path):
    task = LRATextTask.setup_task(task_args(write_text_data(tmp_path, ROWS), sen_rep_type="cls", max_positions=4))
    dataset = task.load_dataset("valid", combine=False, epoch=1)
    batch = dataset.collater([dataset[0], dataset[1]])
    tokens = batch["net_input"]["src_tokens"]
    assert tokens[:, 0].tolist() == [task.cls_idx] * 2
    assert batch["net_input"]["src_lengths"].tolist() == [4, 4]  # CLS a b eos; CLS c c c (cut)
    assert tokens[0, -1] == task.source_dictionary.eos()


def test_right_padding_and_second_document(tmp_path):
    task = LRATextTask.setup_task(task_args(write_text_data(tmp_path, ROWS, src1=True)))
    dataset = task.load_dataset("valid")
    batch = dataset.collater([dataset[0], dataset[1]])
    pad = task.source_dictionary.pad()
    assert batch["net_input"]["src_lengths"].tolist() == [3, 7]
    assert batch["net_input"]["src_tokens"][0, 3:].eq(pad).all() and batch["net_input"]["src_tokens"].shape == (2, 7)
    assert torch.equal(batch["net_input1"]["src_lengths"], batch["net_input"]["src_lengths"])
    first = task.source_dictionary.string(batch["net_input1"]["src_tokens"][0, :2])
    assert first == "b a"


def test_shuffle_follows_the_seed_and_no_shuffle_keeps_file_order(tmp_path):
    data = write_text_data(tmp_path, dict(ROWS, train=ROWS["train"] * 5))
    orders = []
    for seed in (1, 1, 2):
        task = LRATextTask.setup_task(task_args(data, seed=seed))
        orders.append(task.load_dataset("train").ordered_indices().tolist())
    assert orders[0] == orders[1] != orders[2]
    task = LRATextTask.setup_task(task_args(data, "--no-shuffle"))
    assert list(task.load_dataset("train").ordered_indices()) == list(range(15))


@pytest.mark.parametrize("missing", ["label-bin", "src-bin"])
def test_data_folder_missing_a_binarized_folder_is_refused(tmp_path, missing):
    data = write_text_data(tmp_path, ROWS)
    (data / missing / "dict.txt").unlink()
    with pytest.raises(ValueError, match=r"{}/dict.txt not found: --task lra-text reads src-bin/ and label-bin/".format(missing)):
        LRATextTask.setup_task(task_args(data))


def test_image_folder_given_to_the_text_task_names_the_right_task():
    with pytest.raises(ValueError, match=r"looks like image data \(input/: --task lra-image --input-type image\)"):
        LRATextTask.setup_task(task_args(REFERENCE_DIR / "lra" / "data-image"))


def test_wrong_input_type_is_refused():
    with pytest.raises(ValueError, match=r"--input-type image does not fit --task lra-text .* use --input-type text"):
        LRATextTask.setup_task(task_args(DATA_TEXT, input_type="image"))


def test_empty_and_missing_splits_are_refused(tmp_path):
    task = LRATextTask.setup_task(task_args(write_text_data(tmp_path, dict(ROWS, test=[]))))
    with pytest.raises(ValueError, match=r"split 'test' is empty: .*src-bin/test holds no rows"):
        task.load_dataset("test")
    with pytest.raises(ValueError, match=r"split 'dev' not found"):
        task.load_dataset("dev")


def test_num_classes_regression_target_and_dead_official_options_are_checked():
    with pytest.raises(ValueError, match=r"--num-classes 5 does not match the 3 labels"):
        LRATextTask.setup_task(task_args(DATA_TEXT, "--num-classes", "5"))
    assert len(LRATextTask.setup_task(task_args(DATA_TEXT, "--num-classes", "3")).class_names) == 3
    with pytest.raises(ValueError, match=r"--regression-target is not supported"):
        LRATextTask.setup_task(task_args(DATA_TEXT, "--regression-target"))
    with pytest.raises(ValueError, match=r"--init-token is not supported by --task lra-text"):
        LRATextTask.setup_task(task_args(DATA_TEXT, "--init-token", "0"))


def test_a_model_of_another_task_is_refused_before_it_is_built():
    import mega_fairseq  # noqa: F401  (registers the translation archs)

    task = LRATextTask.setup_task(task_args(DATA_TEXT))
    translation_args = argparse.Namespace(arch="mega_wmt_en_de", _name="mega_wmt_en_de")
    with pytest.raises(ValueError, match=r"--task lra-text takes a model of type 'lra' .* --arch mega_wmt_en_de "
                                         r"\(model 'mega'\): it was made for another task"):
        task.build_model(translation_args)


def test_shorten_method_random_crop_keeps_max_positions_tokens_of_the_row(tmp_path):
    rows = dict(ROWS, valid=[("a b c a b c a b c", "x")])
    data = write_text_data(tmp_path, rows)
    full = LRATextTask.setup_task(task_args(data, max_positions=100)).load_dataset("valid")[0]["net_input.src_tokens"]
    cropped = set()
    for seed in range(1, 8):
        task = LRATextTask.setup_task(task_args(data, "--shorten-method", "random_crop", max_positions=4, seed=seed))
        dataset = task.load_dataset("valid")
        dataset.set_epoch(1)
        item = dataset[0]["net_input.src_tokens"]
        assert len(item) == 4
        start = next(i for i in range(len(full) - 3) if torch.equal(full[i:i + 4], item))
        cropped.add(start)
    assert len(cropped) > 1  # not always the head, unlike truncation
