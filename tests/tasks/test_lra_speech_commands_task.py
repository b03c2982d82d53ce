"""The speech_commands task: official processed layout, batches, bad input."""
import argparse

import pytest
import torch

from mega_fairseq.tasks.speech_commands import SpeechCommandsTask, processed_folder_name


def task_args(data, *extra, **settings):
    parser = argparse.ArgumentParser()
    SpeechCommandsTask.add_args(parser)
    args = parser.parse_args([str(data), *extra])
    defaults = dict(seed=1, max_positions=16000, chunk_size=4, sentence_class_num=10)
    defaults.update(settings)
    for key, value in defaults.items():
        setattr(args, key, value)
    return args


def write_processed(root, folder="raw", sizes=(("train", 6), ("val", 3), ("test", 2)), length=16, classes=10):
    generator = torch.Generator().manual_seed(0)
    path = root / "processed_data" / folder
    path.mkdir(parents=True)
    saved = {}
    for split, count in sizes:
        waves = torch.randn(count, 1, length, generator=generator)
        labels = torch.randint(0, classes, (count,), generator=generator)
        torch.save(waves, path / "{}_X.pt".format(split))
        torch.save(labels, path / "{}_y.pt".format(split))
        saved[split] = (waves, labels)
    return saved


def test_batches_hold_waveforms_lengths_and_targets(tmp_path):
    saved = write_processed(tmp_path)
    task = SpeechCommandsTask.setup_task(task_args(tmp_path))
    dataset = task.load_dataset("valid")  # reads val_*.pt
    batch = dataset.collater([dataset[2], dataset[0]])
    waves, labels = saved["val"]
    assert torch.equal(batch["net_input"]["src_tokens"], waves[[2, 0], 0])
    assert batch["net_input"]["src_lengths"].tolist() == [16, 16]
    assert torch.equal(batch["target"], labels[[2, 0]]) and batch["target"].shape == (2,)
    assert (batch["ntokens"], batch["nsentences"]) == (32, 2)
    assert task.source_dictionary is None and task.max_positions() == 16000


def test_processed_folder_names_follow_the_official_options(tmp_path):
    assert processed_folder_name(0.0, False) == "raw"
    assert processed_folder_name(0.5, True) == "raw_dropped0.5_all_classes"
    saved = write_processed(tmp_path, folder="raw_all_classes", classes=35)
    task = SpeechCommandsTask.setup_task(task_args(tmp_path, "--sc-all-classes", sentence_class_num=35))
    assert len(task.load_dataset("train")) == len(saved["train"][1])


def test_missing_data_names_the_preparation_script(tmp_path):
    with pytest.raises(ValueError, match=r"processed_data/raw not found: .*examples/lra/prepare_speech_commands.py"):
        SpeechCommandsTask.setup_task(task_args(tmp_path))


def test_bad_options_and_splits_are_refused(tmp_path):
    write_processed(tmp_path, sizes=(("train", 2), ("val", 0), ("test", 1)))
    with pytest.raises(ValueError, match=r"--mfcc is not supported"):
        SpeechCommandsTask.setup_task(task_args(tmp_path, "--mfcc"))
    task = SpeechCommandsTask.setup_task(task_args(tmp_path))
    with pytest.raises(ValueError, match=r"split 'valid' is empty"):
        task.load_dataset("valid")
    with pytest.raises(ValueError, match=r"split 'dev' is not a Speech Commands split"):
        task.load_dataset("dev")


def test_chunk_that_does_not_divide_the_waveform_is_refused(tmp_path):
    write_processed(tmp_path, length=18)
    with pytest.raises(ValueError, match=r"--chunk-size 4 does not divide the sequence length 18"):
        SpeechCommandsTask.setup_task(task_args(tmp_path)).load_dataset("train")
    assert len(SpeechCommandsTask.setup_task(task_args(tmp_path, chunk_size=6)).load_dataset("train")) == 6


def test_labels_beyond_the_class_count_are_refused(tmp_path):
    write_processed(tmp_path, classes=10)
    task = SpeechCommandsTask.setup_task(task_args(tmp_path, sentence_class_num=2))
    with pytest.raises(ValueError, match=r"class ids range over .* but the model predicts 2 classes"):
        task.load_dataset("train")


def test_a_text_model_is_refused():
    import mega_fairseq  # noqa: F401

    task = SpeechCommandsTask(argparse.Namespace(data="unused", sc_dropped_rate=0.0, sc_all_classes=False))
    with pytest.raises(ValueError, match=r"--task speech_commands takes a model of type 'sc_raw'"):
        task.build_model(argparse.Namespace(arch="mega_wmt_en_de"))
