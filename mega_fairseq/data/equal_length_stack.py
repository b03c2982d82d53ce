"""Collate unpadded real-valued sequences (pixels, waveforms) by stacking them.

The official image and speech tasks have no padding: every sequence of a batch must have the same
length. A batch that breaks this rule is refused with a one-line error instead of the opaque
``default_collate`` stack error.
"""
from typing import List

import torch


def stack_equal_length(samples: List[torch.Tensor], what: str) -> torch.Tensor:
    """Stack ``B`` tensors of shape ``(L,)`` into ``B x L``.

    Args:
        samples: the sequences of one batch (each ``(L,)``, real-valued).
        what: what the sequences are ("image", "waveform"), for the error message.

    Raises:
        ValueError: when the sequences differ in length (there is no padding for these inputs).
    """
    lengths = sorted({int(s.size(0)) for s in samples})
    if len(lengths) > 1:
        raise ValueError(
            "a batch holds {}s of different lengths {}: {} inputs are not padded, so every {} of a "
            "dataset must have the same length (check the data files)".format(
                what, lengths, what, what))
    return torch.stack(samples, dim=0)
