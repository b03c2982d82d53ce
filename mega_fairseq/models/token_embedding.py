"""The token embedding every Mega model builds (encoder, decoder and LM inputs)."""
from typing import Optional

import torch.nn as nn
from fairseq import utils


def build_embedding(dictionary, embed_dim: int, path: Optional[str] = None) -> nn.Embedding:
    """Embedding ``len(dictionary) x embed_dim``, N(0, embed_dim^-1/2) with a zero pad row (the
    official initialisation); rows of the tokens found in the text file ``path`` are loaded from it."""
    embedding = nn.Embedding(len(dictionary), embed_dim, padding_idx=dictionary.pad())
    nn.init.normal_(embedding.weight, mean=0.0, std=embed_dim ** -0.5)
    nn.init.zeros_(embedding.weight[dictionary.pad()])
    if path:
        utils.load_embedding(utils.parse_embedding(path), dictionary, embedding)
    return embedding


def check_dictionary_matches(state_dict, key: str, dictionary, what: str) -> None:
    """Raise a clear ValueError when ``state_dict[key]`` (an embedding) has another row count than
    ``dictionary`` has symbols: the data's ``what`` dictionary is not the one the checkpoint used."""
    if key in state_dict and state_dict[key].size(0) != len(dictionary):
        raise ValueError(
            "the checkpoint's {} has {} rows but the {} dictionary has {} symbols: the dictionary "
            "(dict.*.txt in the data directory) does not match the checkpoint; use the dictionary the model "
            "was trained with".format(key, state_dict[key].size(0), what, len(dictionary)))
