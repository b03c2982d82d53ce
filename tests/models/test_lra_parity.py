"""``lra`` against the official fixtures: logits, pooled representation, encoder states, train-mode
batch norm, per-row (unpadded) runs and the ``lra_cross_entropy`` criterion, built from the stored
``config`` (an argparse namespace, as official checkpoints hold) and loaded with ``strict=True``."""
import argparse
import math

import pytest
import torch
from fairseq import metrics

import mega_fairseq  # noqa: F401  (registers the models and the criterion)
from helpers import StubTask, dictionary_from_spec, load_fixture, max_diff
from mega_fairseq.criterions.lra_cross_entropy import LRACrossEntropyCriterion
from mega_fairseq.models.lra import LRAModel

TOLERANCE = 1e-5
MODEL_FIXTURES = ["lra_text_public", "lra_image_public", "lra_text_public_f64", "lra_image_public_f64"]


def fixture_task(fixture) -> StubTask:
    """The task attributes the model reads: the text fixtures' dictionary (None for pixels)."""
    spec = fixture["dictionary"]
    return StubTask(dictionary_from_spec(spec) if spec else None)


def build_official(fixture, train=False):
    model = LRAModel.build_model(argparse.Namespace(**fixture["config"]), fixture_task(fixture))
    if fixture.get("kind_name", "").endswith("_f64"):
        model = model.double()
    model.load_state_dict(fixture["state_dict"], strict=True)
    return model.train(train)


def load(name):
    fixture = load_fixture("lra/" + name)
    fixture["kind_name"] = name
    return fixture


@pytest.mark.parametrize("name", MODEL_FIXTURES)
def test_eval_outputs_match_the_official_model(name):
    fixture = load(name)
    model = build_official(fixture)
    expected = fixture["outputs"]
    net_input = fixture["inputs"]["net_input"]
    with torch.no_grad():
        logits = model(fixture["inputs"])["encoder_out"]
        states, rep = model.encoder(net_input["src_tokens"], net_input["src_lengths"])
        hidden = model.classifier_hidden(rep)
        lprobs = model.get_normalized_probs({"encoder_out": logits}, log_probs=True)
    assert logits.shape == expected["logits"].shape
    assert max_diff(logits, expected["logits"]) <= TOLERANCE
    assert max_diff(rep, expected["sentence_rep"]) <= TOLERANCE
    assert max_diff(states[0], expected["encoder_out"]) <= TOLERANCE
    assert max_diff(hidden, expected["classifier_hidden"]) <= TOLERANCE
    assert lprobs.dtype == torch.float32
    assert max_diff(lprobs, expected["lprobs"]) <= TOLERANCE


@pytest.mark.parametrize("name", ["lra_image_public", "lra_image_public_f64"])
def test_train_mode_batchnorm_logits_and_running_statistics(name):
    fixture = load(name)
    model = build_official(fixture, train=True)
    with torch.no_grad():
        logits = model(fixture["inputs"])["encoder_out"]
    assert max_diff(logits, fixture["extra"]["train_mode_logits"]) <= TOLERANCE
    state = model.state_dict()
    stats = fixture["extra"]["train_mode_running_stats_after_one_step"]
    assert len(stats) == 12  # running_mean, running_var, num_batches_tracked of 4 norms
    for key, value in stats.items():
        assert max_diff(state[key], value) <= TOLERANCE, key


@pytest.mark.parametrize("name", ["lra_text_public", "lra_text_public_f64"])
def test_each_row_alone_gives_the_official_per_row_result(name):
    fixture = load(name)
    model = build_official(fixture)
    for row in fixture["per_row"]:
        with torch.no_grad():
            logits = model({"net_input": row["net_input"]})["encoder_out"]
            _, rep = model.encoder(row["net_input"]["src_tokens"], row["net_input"]["src_lengths"])
        assert max_diff(logits, row["logits"]) <= TOLERANCE
        assert max_diff(rep, row["sentence_rep"]) <= TOLERANCE


def reduced(criterion, logging_outputs):
    with metrics.aggregate() as aggregator:
        criterion.reduce_metrics(logging_outputs)
    smoothed = aggregator.get_smoothed_values()
    return smoothed, aggregator


@pytest.mark.parametrize("sentence_avg", [True, False])
def test_criterion_matches_the_official_values(sentence_avg):
    fixture = load_fixture("lra/lra_criterion_public")
    model = build_official(fixture)
    expected = fixture["criterion"]["sentence_avg_{}".format(str(sentence_avg).lower())]
    criterion = LRACrossEntropyCriterion(None, sentence_avg)
    with torch.no_grad():
        loss, sample_size, logging_output = criterion(model, fixture["inputs"])
    assert abs(loss.item() - expected["loss"].item()) <= TOLERANCE
    assert sample_size == expected["sample_size"]
    assert int(logging_output["ncorrects"]) == int(expected["logging_output"]["ncorrects"])
    for key in ("ntokens", "nsentences", "sample_size"):
        assert logging_output[key] == expected["logging_output"][key]
    smoothed, aggregator = reduced(criterion, [logging_output])
    assert smoothed["loss"] == expected["reduced_loss_bits"]
    assert smoothed["accuracy"] == expected["reduced_accuracy_percent"]
    assert abs(aggregator["loss"].avg - expected["reduced_loss_bits_unrounded"]) <= TOLERANCE
    assert abs(loss.item() / sample_size / math.log(2) - expected["reduced_loss_bits_unrounded"]) <= TOLERANCE


@pytest.mark.parametrize("sentence_avg", [True, False])
def test_criterion_pools_sums_over_batches_before_dividing(sentence_avg):
    fixture = load_fixture("lra/lra_criterion_public")
    model = build_official(fixture)
    expected = fixture["criterion"]["two_shards_sentence_avg_{}".format(str(sentence_avg).lower())]
    criterion = LRACrossEntropyCriterion(None, sentence_avg)
    logging_outputs = []
    for shard, official in zip(fixture["shard_inputs"], expected["logging_outputs"]):
        with torch.no_grad():
            _, _, logging_output = criterion(model, shard)
        assert abs(float(logging_output["loss"]) - float(official["loss"])) <= TOLERANCE
        assert logging_output["sample_size"] == official["sample_size"]
        logging_outputs.append(logging_output)
    smoothed, aggregator = reduced(criterion, logging_outputs)
    assert smoothed["loss"] == expected["reduced_loss_bits"]
    assert smoothed["accuracy"] == expected["reduced_accuracy_percent"]
    assert abs(aggregator["loss"].avg - expected["reduced_loss_bits_unrounded"]) <= TOLERANCE


def test_image_fixture_criterion():
    fixture = load("lra_image_public")
    model = build_official(fixture)
    criterion = LRACrossEntropyCriterion(None, True)
    with torch.no_grad():
        loss, sample_size, logging_output = criterion(model, fixture["inputs"])
    expected = fixture["criterion"]
    assert abs(loss.item() - expected["loss_sum_nats"].item()) <= TOLERANCE
    assert int(logging_output["ncorrects"]) == expected["ncorrects"]
    smoothed, _ = reduced(criterion, [logging_output])
    assert smoothed["loss"] == expected["reduced_loss_bits_per_sentence"]
    assert smoothed["accuracy"] == expected["reduced_accuracy_percent"]


def test_criterion_refuses_class_ids_the_model_does_not_predict():
    fixture = load("lra_image_public")
    model = build_official(fixture)
    sample = dict(fixture["inputs"], target=torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="--sentence-class-num"):
        LRACrossEntropyCriterion(None, True)(model, sample)
