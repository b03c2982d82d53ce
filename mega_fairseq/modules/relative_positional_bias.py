"""Choose a relative positional bias by name (``simple`` or ``rotary``)."""

import torch.nn as nn

from .rotary_relative_positional_bias import RotaryRelativePositionalBias
from .simple_relative_positional_bias import SimpleRelativePositionalBias

REL_POS_BIAS_TYPES = ("simple", "rotary")


def build_relative_positional_bias(rel_pos_bias: str, zdim: int, max_positions: int) -> nn.Module:
    """The bias module called ``rel_pos_bias`` for keys of width ``zdim`` and ``max_positions`` positions.

    Raises:
        ValueError: naming ``rel_pos_bias`` and the allowed values.
    """
    if rel_pos_bias == "simple":
        return SimpleRelativePositionalBias(max_positions)
    if rel_pos_bias == "rotary":
        return RotaryRelativePositionalBias(zdim, max_positions)
    raise ValueError(
        "rel_pos_bias={!r} is not supported; allowed values: {}".format(rel_pos_bias, ", ".join(REL_POS_BIAS_TYPES))
    )


__all__ = ["SimpleRelativePositionalBias", "RotaryRelativePositionalBias", "build_relative_positional_bias"]
