"""Large gradient buffers of the layer's backward, reused from one training step to the next.

:class:`~.fused_gates.GatedAttentionProjection` hands two Batch x Time x H gradients (``v_pre``'s
and ``r_pre``'s) to the projections before it, and each of them is dead as soon as that one
consumer has read it. At H = 1024 and 8,192 tokens each is 32 MiB. glibc maps a buffer that
large on its own (or grows and trims the top of its heap for it), so every step's buffer is fresh
memory that the kernel hands over page by page, zero-filled: about 16,000 page faults a step and
1 to 3 % of the layer's forward + backward (``d=512, h=1024``, 1 thread, measured interleaved).
:class:`ReusedBuffers` keeps a few such buffers and hands one out again once nothing but the pool
refers to its memory, so later steps (and the layers below, whose backward runs after) write into
memory already mapped.

A buffer is reused only when the pool is the only owner of its storage (the storage's reference
count, compared with the count it had when the pool made it): a gradient that a hook or anything
else still holds is never overwritten; the pool then makes another one. Where torch cannot report
that count (``torch._C._storage_Use_Count`` or ``Tensor.untyped_storage`` missing: torch before
2.0), on devices other than the CPU and for small buffers, the pool allocates as ``torch.empty``
does and keeps nothing. The pool holds at most :data:`MAX_BUFFERS` buffers; they stay allocated
between steps (like a caching allocator: about two buffers of the largest size the step asked
for); :meth:`ReusedBuffers.clear` lets them go.
"""

import math
import threading
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

#: from this many bytes a buffer is pooled (glibc maps requests of 32 MiB and more on their own at
#: any setting of its dynamic threshold; heap-sized ones below are usually reused by malloc itself)
MIN_POOLED_BYTES = 16 * 2 ** 20
#: the most buffers the pool keeps (the layer's backward needs two at a time)
MAX_BUFFERS = 4

# the reference count of a storage (torch >= 2.0: also the ``untyped_storage`` it is read through)
_use_count = getattr(torch._C, "_storage_Use_Count", None) if hasattr(torch.Tensor, "untyped_storage") else None


def _storage_references(flat: Tensor) -> int:
    return _use_count(flat.untyped_storage()._cdata)


class ReusedBuffers:
    """A small pool of flat CPU buffers, each handed out again when nothing else refers to it."""

    def __init__(self, max_buffers: int = MAX_BUFFERS, min_bytes: int = MIN_POOLED_BYTES):
        self.max_buffers = max_buffers
        self.min_bytes = min_bytes
        # (flat buffer, the reference count of its storage when only the pool held it)
        self._buffers: List[Tuple[Tensor, int]] = []
        self._lock = threading.Lock()

    def empty(self, shape: Sequence[int], like: Tensor) -> Tensor:
        """An uninitialised contiguous tensor of ``shape`` with ``like``'s dtype and device."""
        numel = math.prod(shape)
        if not self._pools(numel, like):
            return like.new_empty(shape)
        with self._lock:
            flat = self._take_free(numel, like.dtype)
            if flat is not None:
                return flat[:numel].view(shape)
            flat = like.new_empty(numel)
            self._buffers.append((flat, _storage_references(flat)))
            handed_out = flat.view(shape)  # in use from here on: the eviction keeps it
            self._evict()
            return handed_out

    def _pools(self, numel: int, like: Tensor) -> bool:
        return _use_count is not None and like.device.type == "cpu" and numel * like.element_size() >= self.min_bytes

    def _free(self, entry: Tuple[Tensor, int]) -> bool:
        flat, alone = entry
        return _storage_references(flat) == alone

    def _take_free(self, numel: int, dtype: torch.dtype) -> Optional[Tensor]:
        """The smallest free buffer of ``dtype`` that holds ``numel`` elements and is at most twice that."""
        fits = [entry for entry in self._buffers
                if entry[0].dtype == dtype and numel <= entry[0].numel() <= 2 * numel and self._free(entry)]
        return min(fits, key=lambda entry: entry[0].numel())[0] if fits else None

    def _evict(self):
        """Drop free buffers, smallest first, while more than ``max_buffers`` are kept."""
        for entry in sorted(self._buffers, key=lambda entry: entry[0].numel()):
            if len(self._buffers) <= self.max_buffers:
                return
            if self._free(entry):
                self._buffers = [kept for kept in self._buffers if kept is not entry]

    def clear(self):
        """Forget every buffer (those still in use stay alive with their users)."""
        with self._lock:
            self._buffers.clear()


#: the pool of :class:`~.fused_gates.GatedAttentionProjection`'s backward, shared by every layer
BACKWARD_GRADIENTS = ReusedBuffers()
