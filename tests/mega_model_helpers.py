"""Build the ``mega`` model of a reference fixture (official config + state_dict) for the tests."""
import argparse

import torch
from fairseq.data import Dictionary

from conftest import REFERENCE_DIR


def load_fixture(name: str):
    return torch.load(REFERENCE_DIR / "{}.pt".format(name), weights_only=True)


def dictionary_from_spec(spec) -> Dictionary:
    dictionary = Dictionary()
    for symbol, count in zip(spec["symbols"][spec["nspecial"]:], spec["counts"][spec["nspecial"]:]):
        dictionary.add_symbol(symbol, n=count)
    return dictionary


class StubTask:
    """The two attributes ``MegaModel.build_model`` reads from a translation task."""

    def __init__(self, source_dictionary, target_dictionary=None):
        self.source_dictionary = source_dictionary
        self.target_dictionary = target_dictionary if target_dictionary is not None else source_dictionary


def fixture_task(fixture) -> StubTask:
    src = dictionary_from_spec(fixture["src_dictionary"])
    tgt = src if fixture["tgt_dictionary"] is None else dictionary_from_spec(fixture["tgt_dictionary"])
    return StubTask(src, tgt)


def build_fixture_model(fixture):
    """The plugin's MegaModel from the fixture's official config, with the official weights."""
    from mega_fairseq.models.mega import MegaModel

    model = MegaModel.build_model(argparse.Namespace(**fixture["config"]), fixture_task(fixture))
    model.load_state_dict(fixture["state_dict"], strict=True)
    dtype = fixture["state_dict"]["encoder.embed_tokens.weight"].dtype
    return model.to(dtype).eval()


def incremental_logits(model, encoder_out, prev_output_tokens, incremental_state=None):
    """Logits of one-token steps in the fairseq generator convention (the whole prefix each time)."""
    state = {} if incremental_state is None else incremental_state
    steps = []
    for t in range(prev_output_tokens.size(1)):
        logits, _ = model.decoder(prev_output_tokens[:, : t + 1], encoder_out=encoder_out, incremental_state=state)
        steps.append(logits)
    return torch.cat(steps, dim=1)
