"""``mega`` model behaviour the fixtures do not cover: padding invariance with chunking, beam
reordering, and clear errors on bad input."""
import argparse

import pytest
import torch

from helpers import StubTask, dictionary_from_spec, incremental_logits, load_fixture

PAD, EOS = 1, 2

#: tiny models decode step by step: extra threads only add contention on a shared machine
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_args(**overrides):
    values = dict(encoder_layers=2, decoder_layers=2, encoder_embed_dim=16, encoder_hidden_dim=24,
                  encoder_ffn_embed_dim=20, encoder_z_dim=8, encoder_n_dim=2, share_all_embeddings=True,
                  max_source_positions=40, max_target_positions=40, dropout=0.0)
    values.update(overrides)
    return argparse.Namespace(**values)


@pytest.fixture(scope="module")
def dictionary():
    return dictionary_from_spec(load_fixture("mega_model_tiny")["src_dictionary"])


def build(dictionary, seed=0, **overrides):
    from mega_fairseq.models.mega import MegaModel

    torch.manual_seed(seed)
    return MegaModel.build_model(tiny_args(**overrides), StubTask(dictionary)).double().eval()


def make_batch(lengths, tgt_lengths, vocab, seed=1):
    """Left-padded sources and right-padded ``[eos, ...]`` targets (fairseq's defaults)."""
    g = torch.Generator().manual_seed(seed)
    src = torch.full((len(lengths), max(lengths)), PAD)
    tgt = torch.full((len(lengths), max(tgt_lengths)), PAD)
    for b, (n, m) in enumerate(zip(lengths, tgt_lengths)):
        src[b, -n:] = torch.randint(4, vocab, (n,), generator=g)
        src[b, -1] = EOS
        tgt[b, :m] = torch.randint(4, vocab, (m,), generator=g)
        tgt[b, 0] = EOS
    return src, torch.tensor(lengths), tgt


@pytest.mark.parametrize("chunk", [-1, 3, 4])
def test_translation_of_a_sentence_does_not_depend_on_its_batch(dictionary, chunk):
    model = build(dictionary, encoder_chunk_size=chunk)
    src, src_lengths, tgt = make_batch([9, 5, 2, 7], [6, 8, 3, 5], len(dictionary))
    with torch.no_grad():
        batched, _ = model(src, src_lengths, tgt)
        for b in range(src.size(0)):
            n, m = int(src_lengths[b]), int(tgt[b].ne(PAD).sum())
            alone, _ = model(src[b:b + 1, -n:], src_lengths[b:b + 1], tgt[b:b + 1, :m])
            assert (batched[b, :m] - alone[0]).abs().max().item() < 1e-10, (chunk, b)


def test_decoding_after_a_beam_reorder_equals_decoding_the_reordered_batch(dictionary):
    model = build(dictionary, decoder_chunk_size=3)
    src, src_lengths, tgt = make_batch([6, 4, 5], [7, 7, 7], len(dictionary), seed=3)
    order = torch.tensor([2, 0, 0, 1])  # a permutation with a repeated row, like beam expansion
    with torch.no_grad():
        enc = model.encoder(src, src_lengths)
        state = {}
        incremental_logits(model, enc, tgt[:, :4], state)
        model.decoder.reorder_incremental_state_scripting(state, order)
        enc_reordered = model.encoder.reorder_encoder_out(enc, order)
        steps = []
        for t in range(4, tgt.size(1)):
            out, _ = model.decoder(tgt[order, : t + 1], encoder_out=enc_reordered, incremental_state=state)
            steps.append(out)
        continued = torch.cat(steps, dim=1)
        fresh, _ = model(src[order], src_lengths[order], tgt[order])
    assert (continued - fresh[:, 4:]).abs().max().item() < 1e-10


def test_source_longer_than_max_source_positions_is_a_clear_error(dictionary):
    model = build(dictionary)
    src, src_lengths, tgt = make_batch([41], [3], len(dictionary))
    with pytest.raises(ValueError, match="max_source_positions=40"):
        model(src, src_lengths, tgt)


def test_chunk_size_larger_than_the_positions_behaves_as_no_chunking(dictionary):
    model = build(dictionary, encoder_chunk_size=64)  # > max_source/target_positions (40)
    src, src_lengths, tgt = make_batch([40, 12], [40, 9], len(dictionary))
    with torch.no_grad():
        chunked, _ = model(src, src_lengths, tgt)
        for module in model.modules():
            if hasattr(module, "chunk_size"):
                module.chunk_size = -1
        unchunked, _ = model(src, src_lengths, tgt)
    assert torch.allclose(chunked, unchunked, atol=1e-12)


def test_truncation_length_zero_means_no_truncation(dictionary):
    zero = build(dictionary, truncation_length=0)
    none = build(dictionary, truncation_length=None)
    none.load_state_dict(zero.state_dict())
    src, src_lengths, tgt = make_batch([8, 3], [6, 4], len(dictionary))
    zero.train()  # must train: the official bidirectional EMA crashes with truncation 0
    loss = zero(src, src_lengths, tgt)[0].sum()
    loss.backward()
    zero.eval()
    with torch.no_grad():
        assert torch.allclose(zero(src, src_lengths, tgt)[0], none(src, src_lengths, tgt)[0], atol=1e-12)


def test_a_dictionary_that_does_not_match_the_checkpoint_is_a_clear_error(dictionary):
    fixture = load_fixture("mega_model_tiny")
    bigger = dictionary_from_spec(fixture["src_dictionary"])
    bigger.add_symbol("extra")
    from mega_fairseq.models.mega import MegaModel

    model = MegaModel.build_model(argparse.Namespace(**fixture["config"]), StubTask(bigger))
    with pytest.raises(ValueError, match="does not match the checkpoint"):
        model.load_state_dict(fixture["state_dict"])


@pytest.mark.parametrize("overrides, message", [
    ({"attention_activation_fn": "tanh"}, "attention_activation_fn='tanh' is not supported; allowed values"),
    ({"normalization_type": "groupnorm"}, "normalization_type='groupnorm' is not supported"),
    ({"encoder_chunk_size": -5}, "encoder_chunk_size=-5 is not supported"),
    ({"decoder_chunk_size": -7}, "decoder_chunk_size=-7 is not supported"),
    ({"encoder_z_dim": 0}, "encoder_z_dim=0 must be a positive integer"),
    ({"decoder_embed_dim": 32}, "share-all-embeddings requires --encoder-embed-dim"),
])
def test_bad_settings_are_clear_errors(dictionary, overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        build(dictionary, **overrides)


def test_shared_embeddings_need_a_joined_dictionary(dictionary):
    from mega_fairseq.models.mega import MegaModel

    other = dictionary_from_spec(load_fixture("mega_model_tiny")["src_dictionary"])
    other.add_symbol("zz")
    with pytest.raises(ValueError, match="joined dictionary"):
        MegaModel.build_model(tiny_args(), StubTask(dictionary, other))


def test_separate_dictionaries_without_sharing(dictionary):
    from mega_fairseq.models.mega import MegaModel

    other = dictionary_from_spec(load_fixture("mega_model_tiny")["src_dictionary"])
    other.add_symbol("zz")
    model = MegaModel.build_model(tiny_args(share_all_embeddings=False), StubTask(dictionary, other))
    assert model.decoder.output_projection.weight.shape[0] == len(other)
    assert model.decoder.output_projection.weight is not model.decoder.embed_tokens.weight
    src, src_lengths, tgt = make_batch([5], [4], len(dictionary))
    assert model(src, src_lengths, tgt)[0].shape == (1, 4, len(other))


def test_truncation_beyond_max_positions_is_dropped_without_changing_outputs(dictionary):
    model = build(dictionary, truncation_length=1024)  # max positions are 40
    emas = [module for module in model.modules() if hasattr(module, "truncation") and hasattr(module, "window")]
    assert emas and all(ema.window is None for ema in emas)
    src, src_lengths, tgt = make_batch([30, 8], [40, 11], len(dictionary))
    with torch.no_grad():
        dropped, _ = model(src, src_lengths, tgt)
        for ema in emas:
            ema.truncation = 1024
            ema._clear_cache()
        kept, _ = model(src, src_lengths, tgt)
    assert torch.allclose(dropped, kept, atol=1e-12)


def test_effective_truncation_is_kept_and_exact_when_decoding(dictionary):
    model = build(dictionary, truncation_length=5)
    assert model.decoder.layers[0].mega_layer.move.window == 5
    assert model.encoder.layers[0].mega_layer.move.window == 5
    src, src_lengths, tgt = make_batch([9, 4], [12, 7], len(dictionary))
    with torch.no_grad():
        full, _ = model(src, src_lengths, tgt)
        enc = model.encoder(src, src_lengths)
        inc = incremental_logits(model, enc, tgt)
    real = tgt.ne(PAD)
    assert (full[real] - inc[real]).abs().max().item() < 1e-10
