"""mega_lm behaviour beyond the fixture: chunked incremental decoding, streaming, beam reordering,
adaptive input/softmax with tied weights, reported max positions, bad input.

The reference for every comparison is the model's own full forward, which the parity tests tie
to the official outputs.
"""
import argparse

import pytest
import torch
from fairseq.data import Dictionary

from mega_fairseq.models.mega_lm import MegaLanguageModel
from mega_fairseq.models.mega_settings import UNBOUNDED_POSITIONS

from helpers import StubTask, word_dictionary

TOLERANCE = 1e-5
VOCAB_WORDS = 40


def tiny_task() -> StubTask:
    return StubTask(word_dictionary(VOCAB_WORDS, descending_counts=True))


def tiny_model(seed=0, **overrides) -> MegaLanguageModel:
    settings = dict(decoder_layers=2, decoder_embed_dim=16, decoder_hidden_dim=24, decoder_z_dim=8,
                    decoder_n_dim=4, decoder_ffn_embed_dim=20, decoder_chunk_size=4, dropout=0.0,
                    tokens_per_sample=64, truncation_length=None)
    settings.update(overrides)
    torch.manual_seed(seed)
    model = MegaLanguageModel.build_model(argparse.Namespace(**settings), tiny_task())
    with torch.no_grad():  # move every parameter away from its (often zero or constant) init
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.double().eval()


def random_tokens(bsz, length, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(4, 4 + VOCAB_WORDS, (bsz, length), generator=generator)


@pytest.mark.parametrize("activation,prenorm", [("softmax", False), ("softmax", True), ("laplace", True)])
def test_incremental_prefix_decoding_equals_full_forward_across_chunks(activation, prenorm):
    model = tiny_model(attention_activation_fn=activation, normalize_before=prenorm)
    tokens = random_tokens(3, 13)
    with torch.no_grad():
        full = model(tokens)[0]
        state, steps = {}, []
        # one token at a time, then a jump of several tokens (prefix grows by 3)
        for end in list(range(1, 8)) + [10, 13]:
            steps.append(model.decoder(tokens[:, :end], incremental_state=state)[0])
    incremental = torch.cat(steps, dim=1)
    assert incremental.shape == full.shape
    assert (incremental - full).abs().max().item() < TOLERANCE


@pytest.mark.parametrize("piece", [1, 3, 4, 8, 12])
def test_streamed_forward_equals_full_forward(piece):
    model = tiny_model()
    tokens = random_tokens(2, 23)
    tokens[1, 17:] = model.decoder.padding_idx  # right padding, as in LM batches
    with torch.no_grad():
        full = model(tokens)[0]
        model.decoder.stream_size = piece
        streamed = model(tokens)[0]
    real = tokens.ne(model.decoder.padding_idx)
    assert (streamed - full)[real].abs().max().item() < TOLERANCE


def test_streaming_is_off_while_training_gradients():
    model = tiny_model()
    model.decoder.stream_size = 4
    calls = []
    original = model.decoder._stream
    model.decoder._stream = lambda tokens, *encoder: calls.append(tokens) or original(tokens, *encoder)
    model(random_tokens(1, 9))[0].sum().backward()
    assert not calls
    with torch.no_grad():
        model(random_tokens(1, 9))
    assert len(calls) == 1


def test_reorder_then_decode_equals_decoding_reordered_batch_from_scratch():
    model = tiny_model()
    tokens = random_tokens(3, 11)
    new_order = torch.tensor([2, 0, 0, 1])  # permutation plus a beam-style duplicate
    with torch.no_grad():
        state = {}
        for end in range(1, 7):
            model.decoder(tokens[:, :end], incremental_state=state)
        model.decoder.reorder_incremental_state_scripting(state, new_order)
        reordered = tokens.index_select(0, new_order)
        after = torch.cat([model.decoder(reordered[:, :end], incremental_state=state)[0] for end in range(7, 12)], 1)
        full = model(reordered)[0][:, 6:]
    assert (after - full).abs().max().item() < TOLERANCE


def test_stale_prefix_under_incremental_state_is_rejected():
    model = tiny_model()
    tokens = random_tokens(1, 5)
    state = {}
    with torch.no_grad():
        model.decoder(tokens[:, :3], incremental_state=state)
        with pytest.raises(ValueError, match="whole prefix"):
            model.decoder(tokens[:, :3], incremental_state=state)


def test_short_blocks_misaligned_lengths_and_single_tokens():
    """Blocks shorter than a chunk, lengths not a multiple of it and 1-token inputs all work."""
    model = tiny_model(decoder_chunk_size=5)
    tokens = random_tokens(2, 12)
    with torch.no_grad():
        full = model(tokens)[0]
        for length in (1, 3, 5, 7, 12):
            prefix = model(tokens[:, :length])[0]
            assert torch.isfinite(prefix).all()
            assert (prefix - full[:, :length]).abs().max().item() < TOLERANCE


def test_max_positions_is_unbounded_only_with_chunking():
    assert tiny_model(decoder_chunk_size=4).max_positions() == UNBOUNDED_POSITIONS
    unchunked = tiny_model(decoder_chunk_size=-1, max_target_positions=48, tokens_per_sample=48)
    assert unchunked.max_positions() == 48


def test_tokens_per_sample_beyond_max_target_positions_without_chunks_is_rejected():
    with pytest.raises(ValueError, match="tokens_per_sample=64 is larger than max_target_positions=32"):
        tiny_model(decoder_chunk_size=-1, max_target_positions=32, tokens_per_sample=64)
    # with chunking any length works, so the same lengths are accepted
    assert tiny_model(decoder_chunk_size=4, max_target_positions=32, tokens_per_sample=64) is not None


ADAPTIVE = dict(adaptive_input=True, adaptive_input_cutoff="10,30", adaptive_softmax_cutoff="10,30",
                adaptive_input_factor=2, adaptive_softmax_factor=2, tie_adaptive_weights=True,
                tie_adaptive_proj=True, adaptive_softmax_dropout=0.0)


def test_adaptive_input_and_softmax_share_weights_and_projections():
    model = tiny_model(**ADAPTIVE)
    softmax, embed = model.decoder.adaptive_softmax, model.decoder.embed_tokens
    assert softmax.head.word_proj.weight is embed.embeddings[0][0].weight
    for band, tail in enumerate(softmax.tail, start=1):
        assert tail[-1].weight is embed.embeddings[band][0].weight  # tied words
        assert tail[0].weight is embed.embeddings[band][1].weight  # tied projection
    tokens = random_tokens(2, 9)
    with torch.no_grad():
        out = model(tokens)
        lprobs = model.get_normalized_probs(out, log_probs=True)
    assert out[0].shape == (2, 9, 16)  # features: the adaptive softmax is applied by the criterion
    assert lprobs.shape == (2, 9, len(model.decoder.dictionary))
    assert torch.allclose(lprobs.exp().sum(-1), torch.ones(2, 9, dtype=lprobs.dtype), atol=1e-6)


@pytest.mark.parametrize("overrides,message", [
    (dict(tie_adaptive_weights=True), "adaptive_input must be True"),
    (dict(ADAPTIVE, adaptive_softmax_cutoff="10,20"), "adaptive_input_cutoff must equal adaptive_softmax_cutoff"),
    (dict(ADAPTIVE, adaptive_input_cutoff="10,90", adaptive_softmax_cutoff="10,90"), "must not exceed the vocabulary"),
    (dict(attention_activation_fn="sigmoid"), "attention_activation_fn='sigmoid' is not supported"),
    (dict(normalize_before=True, normalize_embedding=True), "cannot be combined"),
])
def test_bad_settings_give_clear_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_model(**overrides)


def test_shared_input_output_embedding():
    model = tiny_model(share_decoder_input_output_embed=True)
    assert model.decoder.output_projection.weight is model.decoder.embed_tokens.weight


@pytest.mark.parametrize("chunk", [-7, -2])
def test_negative_chunk_sizes_other_than_minus_one_are_refused_like_the_encoders(chunk):
    """Issue 9: --decoder-chunk-size -7 was silently taken as -1 by mega_lm (the encoder refused -5)."""
    with pytest.raises(ValueError, match=r"decoder_chunk_size={} is not supported; allowed values: -1 or 0".format(chunk)):
        tiny_model(decoder_chunk_size=chunk)


def test_zero_chunk_size_means_no_chunking():
    assert tiny_model(decoder_chunk_size=0).decoder.chunk_size == -1


def test_a_checkpoint_of_another_dictionary_size_gets_the_clear_message():
    """Issue 9: PyTorch's raw 'size mismatch' before; now the message translation gives."""
    state = tiny_model().state_dict()
    other = MegaLanguageModel.build_model(argparse.Namespace(
        decoder_layers=2, decoder_embed_dim=16, decoder_hidden_dim=24, decoder_z_dim=8, decoder_n_dim=4,
        decoder_ffn_embed_dim=20, decoder_chunk_size=4, tokens_per_sample=64), StubTask(Dictionary()))
    with pytest.raises(ValueError, match=r"has \d+ rows but the target dictionary has 4 symbols.*does not match"):
        other.load_state_dict(state)
