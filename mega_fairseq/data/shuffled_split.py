"""The last step of every LRA / Speech Commands split: one nested dataset, shuffled per seed."""
from typing import Dict

import numpy as np
from fairseq.data import NestedDictionaryDataset, SortDataset, data_utils


def shuffled_split(items: Dict, sizes: np.ndarray, args) -> NestedDictionaryDataset:
    """``items`` (``net_input``, ``target``, ...) as one dataset of ``sizes``, in a seeded random
    order unless ``args.no_shuffle`` (the official tasks' behaviour)."""
    dataset = NestedDictionaryDataset(items, sizes=[sizes])
    if getattr(args, "no_shuffle", False):
        return dataset
    with data_utils.numpy_seed(args.seed):
        order = np.random.permutation(len(dataset))
    return SortDataset(dataset, sort_order=[order])
