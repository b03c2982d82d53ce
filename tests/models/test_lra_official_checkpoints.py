"""Official-format checkpoints (an argparse ``args`` namespace plus the official ``state_dict``, as the
published ``mega.lra`` / ``mega.sc`` zips hold) load through ``checkpoint_utils.load_model_ensemble_and_task``
and ``fairseq-validate`` with no overrides and give the official numbers: text (ListOps), image
(Pathfinder-style pixels), retrieval (AAN: two documents per row) and Speech Commands (``sc_raw``).

The checkpoints are written here from the reference fixtures' configs and state dicts; the data
folders from the fixtures' tiny datasets (the text split holds exactly the fixture batch's rows).
"""
import argparse
import math
import re
import shutil

import pytest
import torch
import torch.nn.functional as F
from fairseq import checkpoint_utils
from fairseq.data import indexed_dataset

import mega_fairseq
from helpers import REFERENCE_DIR, load_fixture, max_diff, run_cli

TOLERANCE = 1e-5
#: the rows of the text fixture's batch, in batch order (valid split rows)
TEXT_ROWS = [2, 1, 4, 0]
#: the second documents of the retrieval rows (valid split rows, one per first document)
SECOND_DOCUMENT_ROWS = [0, 2, 1, 4]
SUBSET = "valid4"


def write_official_checkpoint(path, config: dict, state_dict) -> None:
    """A checkpoint laid out as the official fairseq-0.9 trainer saved it."""
    state = {
        "args": argparse.Namespace(**config),
        "model": state_dict,
        "optimizer_history": [{"criterion_name": "LRACrossEntropyCriterion", "optimizer_name": "Adam",
                               "lr_scheduler_state": {"best": 50.0}, "num_updates": 1000}],
        "extra_state": {"epoch": 3, "val_loss": 1.0},
        "last_optimizer_state": None,
    }
    torch.save(state, str(path))


def copy_rows(source_prefix, target_prefix, rows) -> None:
    """Write ``rows`` of the binarized dataset ``source_prefix`` (mmap) as ``target_prefix``."""
    source = indexed_dataset.MMapIndexedDataset(str(source_prefix))
    builder = indexed_dataset.MMapIndexedDatasetBuilder(str(target_prefix) + ".bin", dtype=source[0].numpy().dtype.type)
    for row in rows:
        builder.add_item(source[row])
    builder.finalize(str(target_prefix) + ".idx")


def text_data(folder, with_second_document=False):
    """The fixture's text data with a split ``valid4`` = the fixture batch's rows (plus src1-bin)."""
    reference = REFERENCE_DIR / "lra" / "data-text"
    for sub in ("src-bin", "label-bin"):
        (folder / sub).mkdir(parents=True)
        shutil.copy(reference / sub / "dict.txt", folder / sub / "dict.txt")
        copy_rows(reference / sub / "valid", folder / sub / SUBSET, TEXT_ROWS)
    if with_second_document:
        (folder / "src1-bin").mkdir()
        copy_rows(reference / "src-bin" / "valid", folder / "src1-bin" / SUBSET, SECOND_DOCUMENT_ROWS)
    return folder


def speech_data(folder, fixture):
    """The image fixture's pixel rows as waveforms in the official processed Speech Commands layout."""
    raw = folder / "processed_data" / "raw"
    raw.mkdir(parents=True)
    torch.save(fixture["inputs"]["net_input"]["src_tokens"].unsqueeze(1).clone(), raw / "test_X.pt")
    torch.save(fixture["inputs"]["target"].clone(), raw / "test_y.pt")
    return folder


def retrieval_weights(fixture):
    """The text fixture's weights with a classifier that reads two documents (2D inputs)."""
    state_dict = dict(fixture["state_dict"])
    generator = torch.Generator().manual_seed(5)
    out_dim, dim = state_dict["classifier.0.0.weight"].shape
    state_dict["classifier.0.0.weight"] = torch.randn(out_dim, 2 * dim, generator=generator) / math.sqrt(2 * dim)
    return state_dict


def retrieval_logits(fixture, state_dict):
    """Expected logits: the classifier on the official representations of (second, first) document."""
    rep_of_row = dict(zip(TEXT_ROWS, fixture["outputs"]["sentence_rep"]))
    first = torch.stack([rep_of_row[r] for r in TEXT_ROWS])
    second = torch.stack([rep_of_row[r] for r in SECOND_DOCUMENT_ROWS])
    hidden = F.gelu(F.linear(torch.cat([second, first], -1), state_dict["classifier.0.0.weight"],
                             state_dict["classifier.0.0.bias"]))
    return F.linear(hidden, state_dict["sentence_projection_layer.weight"])


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """name -> (checkpoint path, split, expected logits in the split's row order, targets)."""
    root = tmp_path_factory.mktemp("official")
    text, image = load_fixture("lra/lra_text_public"), load_fixture("lra/lra_image_public")
    made = {}

    config = dict(text["config"], data=str(text_data(root / "text")))
    write_official_checkpoint(root / "text.pt", config, text["state_dict"])
    made["text"] = (root / "text.pt", SUBSET, text["outputs"]["logits"], text["inputs"]["target"].view(-1))

    weights = retrieval_weights(text)
    config = dict(text["config"], arch="mega_lra_aan", norm_type="rmsnorm", classifier_in_dim=24,
                  data=str(text_data(root / "aan", with_second_document=True)))
    write_official_checkpoint(root / "aan.pt", config, weights)
    made["retrieval"] = (root / "aan.pt", SUBSET, retrieval_logits(text, weights), text["inputs"]["target"].view(-1))

    # the test split is the fixture batch (rows 3, 1, 0, 2): expected in file order 0..3
    order = torch.tensor([3, 1, 0, 2]).argsort()
    config = dict(image["config"], data=str(REFERENCE_DIR / "lra" / "data-image"))
    write_official_checkpoint(root / "image.pt", config, image["state_dict"])
    made["image"] = (root / "image.pt", "test", image["outputs"]["logits"][order], image["inputs"]["target"][order])

    config = {k: v for k, v in image["config"].items() if k not in ("input_type", "pixel_normalization")}
    config.update(arch="mega_sc_raw", task="speech_commands", sc_all_classes=False, sc_dropped_rate=0.0,
                  mfcc=False, data=str(speech_data(root / "sc", image)))
    write_official_checkpoint(root / "sc.pt", config, image["state_dict"])
    made["speech"] = (root / "sc.pt", "test", image["outputs"]["logits"], image["inputs"]["target"])
    return made


def official_numbers(logits, targets):
    """(loss in bits per row, accuracy in %) as lra_cross_entropy with --sentence-avg reports them."""
    loss = F.cross_entropy(logits.float(), targets, reduction="sum").item() / len(targets) / math.log(2)
    accuracy = 100.0 * (logits.argmax(-1) == targets).float().mean().item()
    return loss, accuracy


@pytest.mark.parametrize("name", ["text", "retrieval", "image", "speech"])
def test_official_checkpoint_loads_and_gives_the_official_logits(checkpoints, name):
    path, split, expected, targets = checkpoints[name]
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(path)])
    model = models[0].eval()
    assert type(model).__name__ == ("SCRawModel" if name == "speech" else "LRAModel")
    task.load_dataset(split)
    dataset = task.dataset(split)
    rows = sorted(range(len(dataset)), key=lambda i: dataset[i]["id"])
    batch = dataset.collater([dataset[i] for i in rows])
    with torch.no_grad():
        logits = model(batch)["encoder_out"]
    assert ("net_input1" in batch) == (name == "retrieval")
    assert torch.equal(batch["target"].view(-1), targets)
    assert max_diff(logits, expected) <= TOLERANCE


def test_retrieval_model_refuses_a_batch_with_one_document(checkpoints):
    models, _, _ = checkpoint_utils.load_model_ensemble_and_task([str(checkpoints["retrieval"][0])])
    fixture = load_fixture("lra/lra_text_public")
    with pytest.raises(ValueError, match="net_input1"):
        models[0](fixture["inputs"])


@pytest.mark.e2e
@pytest.mark.parametrize("name", ["text", "retrieval", "image", "speech"])
def test_fairseq_validate_reports_the_official_loss_and_accuracy(checkpoints, name):
    path, split, expected, targets = checkpoints[name]
    args = checkpoint_utils.load_checkpoint_to_cpu(str(path))["args"]
    # the official README's command: data folder and task, the checkpoint, the split
    proc = run_cli("fairseq-validate", args.data, "--task", args.task, "--user-dir", mega_fairseq.USER_DIR,
                   "--path", path, "--valid-subset", split, "--batch-size", "2", "--num-workers", "0")
    log = proc.stdout + proc.stderr
    match = re.search(r"on '{}' subset \| loss ([0-9.]+) \| accuracy ([0-9.]+)".format(split), log)
    assert match, log[-3000:]
    loss, accuracy = official_numbers(expected, targets)
    assert abs(float(match.group(1)) - loss) <= 1e-3
    assert abs(float(match.group(2)) - accuracy) <= 1e-3


@pytest.mark.e2e
def test_fairseq_validate_refuses_a_checkpoint_of_another_task(checkpoints, tmp_path):
    path = checkpoints["image"][0]
    sc_data = checkpoints["speech"][0].parent / "sc"
    proc = run_cli("fairseq-validate", sc_data, "--task", "speech_commands", "--user-dir", mega_fairseq.USER_DIR,
                   "--path", path, "--valid-subset", "test", "--batch-size", "2", check=False)
    assert proc.returncode != 0
    assert "ValueError: --task speech_commands takes a model of type 'sc_raw'" in proc.stderr


def hub_for(checkpoints, name, model_cls=None):
    from mega_fairseq.models.lra import LRAModel

    path = checkpoints[name][0]
    data = checkpoint_utils.load_checkpoint_to_cpu(str(path))["args"].data
    return (model_cls or LRAModel).from_pretrained(str(path.parent), path.name, data)


def check_prediction(prediction, logits_row):
    probabilities = torch.softmax(logits_row.float(), -1)
    assert max_diff(prediction["probabilities"], probabilities) <= TOLERANCE
    assert prediction["class_id"] == int(probabilities.argmax())


def test_hub_predicts_a_token_sequence(checkpoints):
    hub = hub_for(checkpoints, "text")
    fixture = load_fixture("lra/lra_text_public")
    raw = (REFERENCE_DIR / "lra" / "data-text" / "raw" / "valid.input").read_text().splitlines()
    for batch_row, file_row in enumerate(TEXT_ROWS):
        prediction = hub.predict(raw[file_row])
        check_prediction(prediction, fixture["outputs"]["logits"][batch_row])
        # class ids follow the label dictionary (2, 0, 1): the label is the string of that line
        assert prediction["label"] == ["2", "0", "1"][prediction["class_id"]]
    ids = fixture["per_row"][0]["net_input"]["src_tokens"][0]
    check_prediction(hub.predict(ids.tolist()), fixture["outputs"]["logits"][0])


def test_hub_predicts_a_pair_of_documents(checkpoints):
    hub = hub_for(checkpoints, "retrieval")
    raw = (REFERENCE_DIR / "lra" / "data-text" / "raw" / "valid.input").read_text().splitlines()
    _, _, expected, _ = checkpoints["retrieval"]
    prediction = hub.predict(raw[TEXT_ROWS[1]], second_document=raw[SECOND_DOCUMENT_ROWS[1]])
    check_prediction(prediction, expected[1])


def test_hub_predicts_a_pixel_sequence(checkpoints):
    hub = hub_for(checkpoints, "image")
    fixture = load_fixture("lra/lra_image_public")
    lines = (REFERENCE_DIR / "lra" / "data-image" / "input" / "test.src").read_text().splitlines()
    for batch_row, file_row in enumerate([3, 1, 0, 2]):
        pixels = [int(p) for p in lines[file_row].split()]
        prediction = hub.predict(pixels)
        check_prediction(prediction, fixture["outputs"]["logits"][batch_row])
        assert prediction["label"] == prediction["class_id"]


def test_hub_predicts_a_waveform(checkpoints):
    from mega_fairseq.models.sc_raw import SCRawModel

    hub = hub_for(checkpoints, "speech", SCRawModel)
    fixture = load_fixture("lra/lra_image_public")
    waves = fixture["inputs"]["net_input"]["src_tokens"]
    for row in range(len(waves)):
        check_prediction(hub.predict(waves[row]), fixture["outputs"]["logits"][row])
    with pytest.raises(ValueError, match="one non-empty sequence"):
        hub.predict(waves)
