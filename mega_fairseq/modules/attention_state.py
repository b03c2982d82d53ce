"""The cached key/value state that both Mega attention layers keep between decoding steps."""
from typing import Dict, Optional

import torch
from torch import Tensor

IncrementalState = Dict[str, Dict[str, Optional[Tensor]]]


class CachedAttentionState:
    """Mixin for a ``@with_incremental_state`` module: its buffer (a dict of tensors such as
    ``prev_key`` B x ctx x z, ``prev_value``, ``prev_key_padding_mask``) lives under the official
    key ``"attn_state"``, and beam search reorders every cached tensor, batch dimension first."""

    def _get_input_buffer(self, incremental_state: Optional[IncrementalState]) -> Dict[str, Optional[Tensor]]:
        result = self.get_incremental_state(incremental_state, "attn_state")
        return result if result is not None else {}

    def _set_input_buffer(self, incremental_state: IncrementalState, buffer: Dict[str, Optional[Tensor]]):
        return self.set_incremental_state(incremental_state, "attn_state", buffer)

    @torch.jit.export
    def reorder_incremental_state(self, incremental_state: IncrementalState, new_order: Tensor):
        """Select batch rows ``new_order`` (a permutation or a beam expansion) of every cached tensor."""
        buffer = self._get_input_buffer(incremental_state)
        for name, value in list(buffer.items()):
            if isinstance(value, Tensor):
                buffer[name] = value.index_select(0, new_order)
        if buffer:
            self._set_input_buffer(incremental_state, buffer)
        return incremental_state
