"""``lra`` / ``sc_raw`` behaviour beyond the fixtures: chunking (official bug B1 and the real-input
length check), padding invariance across norms, attention functions and pooling, two documents per
row, the classifier head (B4), ``--use-p`` (B5), layerdrop (B6) and bad input."""
import argparse

import pytest
import torch

import mega_fairseq  # noqa: F401
from helpers import StubTask, max_diff, word_dictionary
from mega_fairseq.models.lra import LRAModel
from mega_fairseq.models.sc_raw import SCRawModel

TOLERANCE = 1e-5
VOCAB = 20


def text_task():
    return StubTask(word_dictionary(VOCAB, prefix="t"))


def settings(**overrides):
    values = dict(encoder_layers=2, encoder_embed_dim=8, encoder_hidden_dim=12, z_dim=4, n_dim=2, max_positions=64,
                  dropout=0.0, attention_dropout=0.0, act_dropout=0.0, classifier_out_dim=10, sentence_class_num=3,
                  activation_fn="silu", apply_bert_init=False, norm_type="layernorm")
    values.update(overrides)
    return argparse.Namespace(**values)


def build(task=None, model_cls=LRAModel, seed=0, **overrides):
    torch.manual_seed(seed)
    model = model_cls.build_model(settings(**overrides), task if task is not None else text_task())
    return model.eval()


def text_batch(lengths, seed=1, pad=1, eos=2, cls=None):
    generator = torch.Generator().manual_seed(seed)
    longest = max(lengths)
    tokens = torch.full((len(lengths), longest), pad, dtype=torch.long)
    for row, length in enumerate(lengths):
        tokens[row, :length] = torch.randint(4, VOCAB + 4, (length,), generator=generator)
        tokens[row, length - 1] = eos
        if cls is not None:
            tokens[row, 0] = cls
    return {"net_input": {"src_tokens": tokens, "src_lengths": torch.tensor(lengths)}}


def image_batch(batch, length, seed=2):
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.rand(batch, length, generator=generator) * 2 - 1
    return {"net_input": {"src_tokens": pixels, "src_lengths": torch.full((batch,), length)}}


def logits(model, sample):
    with torch.no_grad():
        return model(sample)["encoder_out"]


def rows_alone(model, sample):
    """Each row run alone without its padding."""
    tokens, lengths = sample["net_input"]["src_tokens"], sample["net_input"]["src_lengths"]
    return torch.cat([logits(model, {"net_input": {"src_tokens": tokens[i:i + 1, :n], "src_lengths": lengths[i:i + 1]}})
                      for i, n in enumerate(lengths.tolist())])


def test_text_batch_shorter_than_the_chunk_runs_as_one_chunk():
    """B1: officially an assertion. One chunk over the batch equals no chunking (the rotary bias has
    the same parameters for both)."""
    chunked = build(chunk_size=32, rel_pos_bias="rotary", attention_activation_fn="softmax")
    whole = build(chunk_size=-1, rel_pos_bias="rotary", attention_activation_fn="softmax")
    whole.load_state_dict(chunked.state_dict())
    sample = text_batch([11, 19, 6])
    assert max_diff(logits(chunked, sample), logits(whole, sample)) <= TOLERANCE


@pytest.mark.parametrize("pooling", ["mp", "cls"])
def test_chunked_text_is_padded_to_whole_chunks_and_padding_never_changes_a_row(pooling):
    model = build(chunk_size=4, sen_rep_type=pooling, attention_activation_fn="softmax")
    sample = text_batch([11, 19, 6, 7], cls=VOCAB + 3 if pooling == "cls" else None)
    states, _ = model.encoder(sample["net_input"]["src_tokens"], sample["net_input"]["src_lengths"])
    assert states[0].size(0) == 20  # 19 tokens -> 5 chunks of 4
    assert max_diff(logits(model, sample), rows_alone(model, sample)) <= TOLERANCE


@pytest.mark.parametrize("norm_type", ["layernorm", "scalenorm", "rmsnorm"])
@pytest.mark.parametrize("attention", ["softmax", "relu2", "laplace"])
@pytest.mark.parametrize("prenorm", [False, True])
def test_padding_never_changes_a_row_for_any_norm_and_attention(norm_type, attention, prenorm):
    model = build(norm_type=norm_type, attention_activation_fn=attention, encoder_normalize_before=prenorm,
                  rel_pos_bias="simple")
    sample = text_batch([9, 17, 5])
    assert max_diff(logits(model, sample), rows_alone(model, sample)) <= TOLERANCE


def test_image_length_the_chunk_does_not_divide_is_a_clear_error():
    model = build(task=StubTask(None), chunk_size=5, norm_type="batchnorm")
    with pytest.raises(ValueError, match=r"--chunk-size 5 does not divide the sequence length 16"):
        logits(model, image_batch(2, 16))


def test_image_shorter_than_the_chunk_is_one_chunk():
    chunked = build(task=StubTask(None), chunk_size=32, rel_pos_bias="rotary", norm_type="batchnorm")
    whole = build(task=StubTask(None), chunk_size=-1, rel_pos_bias="rotary", norm_type="batchnorm")
    whole.load_state_dict(chunked.state_dict())
    sample = image_batch(3, 16)
    assert max_diff(logits(chunked, sample), logits(whole, sample)) <= TOLERANCE


def test_speech_model_checks_the_chunk_like_images():
    model = build(task=StubTask(None), model_cls=SCRawModel, chunk_size=6, max_positions=64)
    assert logits(model, image_batch(2, 18)).shape == (2, 3)
    with pytest.raises(ValueError, match=r"--chunk-size 6 does not divide the sequence length 20"):
        logits(model, image_batch(2, 20))


def test_input_type_comes_from_the_task_and_wrong_input_is_refused():
    text_model, image_model = build(), build(task=StubTask(None))
    assert text_model.encoder.encoder.input_type == "text" and image_model.encoder.encoder.input_type == "image"
    with pytest.raises(TypeError, match="--input-type image"):
        logits(text_model, image_batch(2, 8))
    with pytest.raises(TypeError, match="--input-type text"):
        logits(image_model, text_batch([3, 4]))
    with pytest.raises(ValueError, match="--input-type text needs a task with a source dictionary"):
        build(task=StubTask(None), input_type="text")
    with pytest.raises(ValueError, match="allowed values: image"):
        build(task=StubTask(None), model_cls=SCRawModel, input_type="text")


def test_two_documents_per_row_concatenate_the_second_before_the_first():
    model = build(classifier_in_dim=16)
    first, second = text_batch([5, 9], seed=3), text_batch([7, 4], seed=4)
    sample = dict(first, net_input1=second["net_input"])
    with torch.no_grad():
        rep_first = model.encoder(**first["net_input"])[1]
        rep_second = model.encoder(**second["net_input"])[1]
        expected = model.sentence_projection_layer(model.classifier_hidden(torch.cat([rep_second, rep_first], -1)))
    assert max_diff(logits(model, sample), expected) <= TOLERANCE
    with pytest.raises(ValueError, match="net_input1"):
        logits(model, first)
    with pytest.raises(ValueError, match="net_input1"):
        logits(build(), sample)


def test_classifier_in_dim_must_be_one_or_two_representations():
    with pytest.raises(ValueError, match="classifier_in_dim=12 must be --encoder-embed-dim"):
        build(classifier_in_dim=12)


def test_zero_classifier_layers_projects_the_representation_directly():
    """B4: officially a shape error."""
    model = build(classifier_layers=0)
    sample = text_batch([5, 8])
    with torch.no_grad():
        rep = model.encoder(**sample["net_input"])[1]
    assert len(model.classifier) == 0
    assert max_diff(logits(model, sample), model.sentence_projection_layer(rep)) <= TOLERANCE


def test_deeper_classifier_stacks_hidden_layers():
    model = build(classifier_layers=3)
    assert [layer[0].in_features for layer in model.classifier] == [8, 10, 10]
    assert logits(model, text_batch([5, 8])).shape == (2, 3)


def test_use_p_is_refused_clearly():
    """B5: officially an indexing error deep in the model."""
    with pytest.raises(ValueError, match="--use-p is not supported"):
        build(use_p=True)


def count_layer_calls(model, sample, runs):
    calls = []
    handles = [layer.register_forward_hook(lambda *_: calls.append(1)) for layer in model.encoder.encoder.layers]
    for _ in range(runs):
        with torch.no_grad():
            model(sample)
    for handle in handles:
        handle.remove()
    return len(calls)


def test_encoder_layerdrop_skips_layers_in_training_only():
    """B6: officially the option was accepted and ignored."""
    model = build(encoder_layerdrop=0.5, encoder_layers=4)
    sample = text_batch([5, 8])
    torch.manual_seed(3)
    assert count_layer_calls(model.train(), sample, 10) < 40
    assert count_layer_calls(model.eval(), sample, 2) == 8
    with pytest.raises(ValueError, match="--encoder-layerdrop"):
        build(encoder_layerdrop=1.0)


@pytest.mark.parametrize("norm_type", ["batchnorm", "syncbatchnorm"])
def test_batch_norms_run_in_training_and_inference_on_cpu(norm_type):
    model = build(task=StubTask(None), norm_type=norm_type, chunk_size=4, encoder_normalize_before=True)
    sample = dict(image_batch(3, 16), target=torch.tensor([0, 1, 2]))
    model.train()
    loss = torch.nn.functional.cross_entropy(model(sample)["encoder_out"], sample["target"])
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert logits(model.eval(), sample).shape == (3, 3)


def test_normalized_embedding_and_feature_dropout_build_and_run():
    model = build(normalize_embedding=True, feature_dropout=True, dropout=0.3)
    assert model.encoder.encoder.embed_norm is not None
    sample = text_batch([5, 8])
    first, second = logits(model, sample), logits(model, sample)
    assert torch.equal(first, second)  # no dropout at inference
    with pytest.raises(ValueError, match="--normalize-embedding and --encoder-normalize-before"):
        build(normalize_embedding=True, encoder_normalize_before=True)


def test_truncated_ema_changes_long_inputs_only():
    full = build(task=StubTask(None), truncation_length=None)
    cut = build(task=StubTask(None), truncation_length=4)
    cut.load_state_dict(full.state_dict())
    short, long = image_batch(2, 4), image_batch(2, 32)
    assert max_diff(logits(full, short), logits(cut, short)) <= TOLERANCE
    assert max_diff(logits(full, long), logits(cut, long)) > 1e-4


def test_official_parameter_names():
    model = build(encoder_normalize_before=True, rel_pos_bias="rotary")
    names = set(model.state_dict())
    for name in ("encoder.encoder.embed_tokens.embed.weight", "encoder.encoder.layers.1.mega_layer.move.alpha",
                 "encoder.encoder.layers.0.nffn.fc1.weight", "encoder.encoder.final_norm.norm.weight",
                 "encoder.encoder.layers.0.mega_layer.rel_pos_bias._float_tensor",
                 "classifier.0.0.weight", "sentence_projection_layer.weight"):
        assert name in names, name
    assert "sentence_projection_layer.bias" not in names
    image = build(task=StubTask(None))
    assert {"encoder.encoder.embed_tokens.weight", "encoder.encoder.embed_tokens.bias"} <= set(image.state_dict())


def test_a_checkpoint_of_another_dictionary_is_a_clear_error():
    model = build()
    state = model.state_dict()
    state["encoder.encoder.embed_tokens.embed.weight"] = torch.zeros(VOCAB + 10, 8)
    with pytest.raises(ValueError, match="does not match the checkpoint"):
        model.load_state_dict(state)


def test_inner_encoder_returns_every_layer_unless_last_state_only():
    model = build(encoder_layers=3, encoder_normalize_before=True)
    sample = text_batch([5, 8])["net_input"]
    with torch.no_grad():
        states, rep = model.encoder.encoder(sample["src_tokens"], sample["src_lengths"])
        last, rep_last = model.encoder.encoder(sample["src_tokens"], sample["src_lengths"], last_state_only=True)
    assert len(states) == 4 and len(last) == 1  # embeddings + 3 layer outputs (before the final norm)
    assert torch.equal(rep, rep_last)
    final = model.encoder.encoder.final_norm(states[-1]) * (sample["src_tokens"] != 1).t().unsqueeze(-1)
    assert max_diff(final, last[0]) <= TOLERANCE
    assert last[0][5:, 0].abs().max() == 0  # pads zeroed in the final states
