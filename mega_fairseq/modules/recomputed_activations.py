"""Saved activations that the backward recomputes instead of keeping (selective recomputation).

Some tensors a Mega block's backward needs are cheap to make again from tensors that are kept
anyway: the normed input (from the block input and the norm's parameters), the queries and keys
(from the kept ``[z | r_pre]`` projection), the EMA's read-out table (from its ``R x N``
coefficients), the attention's output (from its input, update gate and the output gate's
pre-activation), which the feed-forward network would keep. Inside :func:`recompute_scope`, a tensor registered with :func:`recompute_on_backward`
is not kept by any operation that saves it (or a view of it) for the backward: the saved entry
holds only how to remake it, and the backward makes it once (the first time one of those entries
is read), shares it among them and drops it after the last.

This uses ``torch.autograd.graph.saved_tensors_hooks``. Hooks set outside the scope (e.g.
``torch.utils.checkpoint``, an activation-offloading or memory-counting hook) still receive every
tensor that is kept. Where torch cannot report the hooks set outside (before torch 2.0), the scope
does nothing and every tensor is kept.
"""

import contextlib
import contextvars
from typing import Callable, Dict, Optional

import torch
from torch import Tensor

from .fusion_guard import compiling, fused_autograd_applies

_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("mega_recompute_scope", default=None)


def _outer_hooks():
    """``(known, hooks)``: the saved-tensor hooks in effect outside (None when none), and whether
    torch can tell them (``known`` False: unknown, the scope must not replace them)."""
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    if top is None:
        return False, None
    try:
        return True, top(False)
    except (RuntimeError, TypeError):
        return False, None


class _Recipe:
    """How to remake one registered tensor (of ``dtype`` on ``device``); holds the remade tensor
    while saved entries still need it."""

    __slots__ = ("make", "dtype", "device", "uses", "value")

    def __init__(self, make: Callable[[], Tensor], tensor: Tensor):
        self.make = make
        self.dtype, self.device = tensor.dtype, tensor.device
        self.uses = 0
        self.value: Optional[Tensor] = None

    def take(self) -> Tensor:
        value = self.value
        if value is None:
            with torch.no_grad():
                value = self.make()
        self.uses -= 1
        self.value = value if self.uses > 0 else None
        return value


class _Remade:
    """A saved entry of a registered tensor: its recipe and the view the operation saved."""

    __slots__ = ("recipe", "size", "stride", "offset")

    def __init__(self, recipe: _Recipe, tensor: Tensor):
        self.recipe = recipe
        self.size, self.stride, self.offset = tensor.size(), tensor.stride(), tensor.storage_offset()


class _Passed:
    """A saved entry of any other tensor, packed by the hooks set outside the scope."""

    __slots__ = ("packed",)

    def __init__(self, packed):
        self.packed = packed


class _Scope:
    def __init__(self, outer):
        self.outer = outer
        self.recipes: Dict[int, _Recipe] = {}
        self.alive = []  # registered tensors stay alive while the scope is open (no address reuse)

    def register(self, tensor: Tensor, make: Callable[[], Tensor]):
        if tensor.storage_offset() != 0 or not tensor.is_contiguous():
            return  # a view into a larger storage: kept as it is
        self.recipes[tensor.untyped_storage().data_ptr()] = _Recipe(make, tensor)
        self.alive.append(tensor)

    def pack(self, tensor: Tensor):
        recipe = self.recipes.get(tensor.untyped_storage().data_ptr())
        if recipe is not None and (tensor.dtype, tensor.device) == (recipe.dtype, recipe.device):
            recipe.uses += 1
            return _Remade(recipe, tensor)
        if self.outer is not None:
            return _Passed(self.outer[0](tensor))
        return _Passed(tensor.detach())

    def unpack(self, entry) -> Tensor:
        if isinstance(entry, _Remade):
            return entry.recipe.take().as_strided(entry.size, entry.stride, entry.offset)
        if self.outer is not None:
            return self.outer[1](entry.packed)
        return entry.packed


@contextlib.contextmanager
def recompute_scope(enabled: bool = True):
    """Within this block, tensors registered with :func:`recompute_on_backward` are not kept for
    the backward (scopes opened inside it add to it). Does nothing when ``enabled`` is False,
    gradients are off, or torch cannot report the saved-tensor hooks already set. Not for code
    that torch.compile traces (a compiled graph chooses what it keeps itself): callers check
    :func:`compiling` first."""
    if _ACTIVE.get() is not None:  # inside a scope already (e.g. the block's around its attention)
        yield
        return
    known, outer = _outer_hooks() if enabled and torch.is_grad_enabled() else (False, None)
    if not known:
        yield
        return
    scope = _Scope(outer)
    token = _ACTIVE.set(scope)
    try:
        with torch.autograd.graph.saved_tensors_hooks(scope.pack, scope.unpack):
            yield
    finally:
        _ACTIVE.reset(token)
        scope.alive.clear()


def recompute_on_backward(tensor: Tensor, make: Callable[[], Tensor]) -> Tensor:
    """Inside an open :func:`recompute_scope`: do not keep ``tensor`` for the backward (when it is
    contiguous and starts its storage; a view into a larger storage is kept); ``make()`` (run
    without gradients) remakes it, bit for bit, from tensors kept anyway. Elsewhere nothing
    happens. Returns ``tensor``."""
    if compiling():
        return tensor
    scope = _ACTIVE.get()
    if scope is not None:
        scope.register(tensor, make)
    return tensor


def recompute_applies(x: Tensor, attention) -> bool:
    """Whether a block around ``attention`` (a Mega attention module, input ``x``) opens a
    :func:`recompute_scope`: training with gradients, no autocast, one dtype, not under torch.compile."""
    return not compiling() and fused_autograd_applies(x, attention.v_proj.weight)
