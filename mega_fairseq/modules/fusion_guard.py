"""When a fused autograd function of the Mega layers may stand in for the plain modules and ops.

The fused functions (gate projection, gated attention projection, batch-first ``v_proj``, the
feed-forward block's ``fc1(norm(x))``) read a module's parameters instead of calling it, and
compute their backward in the inputs' one dtype. They may run only when that is exact:
:func:`plain_module` (the module is exactly the expected class and carries no forward hooks, so
calling it would do nothing more) and :func:`fused_autograd_applies` (a gradient is needed, no
autocast, one dtype). Otherwise the caller runs the modules and plain ops.
"""

from typing import Optional

import torch
from torch import Tensor, nn


def has_forward_hooks(module: nn.Module) -> bool:
    """``module`` itself carries forward or forward-pre hooks (calling it would run more than its forward)."""
    return bool(module._forward_hooks or module._forward_pre_hooks)


def plain_module(module: nn.Module, expected: type) -> bool:
    """``module`` is exactly ``expected`` (not a subclass) and has no forward (pre-)hooks."""
    return type(module) is expected and not has_forward_hooks(module)


def fused_autograd_applies(*tensors: Optional[Tensor]) -> bool:
    """A gradient is needed for one of ``tensors`` (None entries skipped), autocast is off on their
    device and they share one dtype."""
    present = [t for t in tensors if t is not None]
    if not torch.is_grad_enabled() or not any(t.requires_grad for t in present):
        return False
    return not torch.is_autocast_enabled(present[0].device.type) and len({t.dtype for t in present}) == 1


def compiling() -> bool:
    """Whether torch.compile is tracing the caller (never on torch versions without it)."""
    compiler = getattr(torch, "compiler", None)
    return compiler is not None and compiler.is_compiling()
