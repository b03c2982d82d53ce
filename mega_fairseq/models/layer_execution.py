"""How a Mega model runs its blocks: opt-in ``torch.compile`` and activation checkpointing.

Three settings, shared by ``mega`` (translation) and ``mega_lm`` (both configs inherit
:class:`LayerExecutionSettings`); none changes the parameters, the state dict or the numbers:

* ``--compile-layers``: each encoder/decoder block is compiled in place with ``torch.compile``
  (``nn.Module.compile``: parameter names unchanged, checkpoints interchangeable). Element-wise
  work is then fused (C++ on CPU, Triton on GPU). The first batches of each new shape pay the
  compilation; ``tests/modules/test_compile_layers.py`` checks the blocks compile without graph
  breaks and equal eager.
* ``--checkpoint-activations`` (fairseq's flag name): during training each block's activations
  are recomputed in the backward instead of stored (``torch.utils.checkpoint``, non-reentrant,
  RNG state restored so dropout masks repeat): peak memory holds one block's activations plus
  each block's input. Incremental decoding and autograd-free forwards are unaffected.
* ``--keep-activations``: the blocks keep the tensors they otherwise remake in the backward (the
  normed inputs, queries and keys, the attention output: ``modules/recomputed_activations.py``),
  for a few percent of speed at small widths against more training memory.
"""
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn
from fairseq.dataclass import FairseqDataclass
from torch.utils.checkpoint import checkpoint


@dataclass
class LayerExecutionSettings(FairseqDataclass):
    """The execution switches of a Mega model's blocks (all default off)."""

    compile_layers: bool = field(
        default=False, metadata={"help": "compile each Mega block with torch.compile (same numbers; the first "
                                         "batch of each new shape compiles)"}
    )
    checkpoint_activations: bool = field(
        default=False, metadata={"help": "recompute each Mega block's activations in the backward instead of "
                                         "storing them (less training memory, ~1/3 more compute)"}
    )
    keep_activations: bool = field(
        default=False, metadata={"help": "keep the tensors the Mega blocks otherwise remake in the backward "
                                         "(normed inputs, queries and keys, the attention output): a few percent "
                                         "faster at small widths, more training memory"}
    )


def keep_block_activations(layers: nn.ModuleList) -> None:
    """``--keep-activations``: the blocks of ``layers`` keep what they would remake in the backward
    (they and their attention open no recompute scope, see ``modules/recomputed_activations.py``)."""
    for module in layers.modules():
        if hasattr(module, "recompute_activations"):
            module.recompute_activations = False


def compile_blocks(layers: nn.ModuleList) -> None:
    """Compile every block of ``layers`` in place (``nn.Module.compile``; parameter names unchanged)."""
    for layer in layers:
        layer.compile()


def run_block(layer: Callable, checkpointed: bool, *args, **kwargs):
    """``layer(*args, **kwargs)``, under activation checkpointing when ``checkpointed`` and autograd records.

    Checkpointing only applies when gradients are being recorded (training); the caller passes
    ``checkpointed=False`` for incremental decoding (its cache updates must happen exactly once).
    """
    if checkpointed and torch.is_grad_enabled():
        return checkpoint(layer, *args, use_reentrant=False, **kwargs)
    return layer(*args, **kwargs)
