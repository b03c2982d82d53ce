"""Element and feature dropout with the calling convention the Mega layers use.

fairseq 0.12.2's ``FairseqDropout`` has no ``batch_first`` argument and there is no feature
dropout at all, so both are provided here:

* :class:`FairseqDropout` zeroes single elements;
* :class:`FairseqFeatureDropout` zeroes whole feature channels: one keep/drop decision per
  (batch element, channel), shared by every time step.

Both are active in training mode, or at inference once ``make_generation_fast_`` was asked to
retain dropout (fairseq's ``--retain-dropout``).
"""

import logging
from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

logger = logging.getLogger(__name__)


class _DropoutBase(nn.Module):
    def __init__(self, p: float, module_name: Optional[str] = None):
        super().__init__()
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError("dropout p={} is out of range; allowed values: 0 <= p <= 1".format(p))
        self.p = float(p)
        self.module_name = module_name
        self.apply_during_inference = False

    def is_active(self) -> bool:
        """Whether a call drops anything now (p > 0, and training or retained at inference)."""
        return self.p > 0.0 and (self.training or self.apply_during_inference)

    def make_generation_fast_(
        self,
        name: str,
        retain_dropout: bool = False,
        retain_dropout_modules: Optional[List[str]] = None,
        **kwargs
    ):
        """Keep dropout on at inference when fairseq's ``--retain-dropout`` asks for it."""
        if not retain_dropout:
            return
        if retain_dropout_modules is not None and self.module_name is None:
            logger.warning("cannot retain dropout for module %s: module_name was not set", name)
        elif retain_dropout_modules is None or self.module_name in retain_dropout_modules:
            logger.info("retaining dropout at inference for module %s", name)
            self.apply_during_inference = True

    def extra_repr(self) -> str:
        return "p={}".format(self.p)


def element_dropout(x: Tensor, p: float, inplace: bool = False) -> Tensor:
    """Zero each element with probability ``p`` and scale the rest by ``1 / (1 - p)``.

    On CPU the keep mask is drawn as ``uniform[0, 1) >= p``, about twice as fast as the
    ``bernoulli_`` that ``F.dropout`` uses there (the same distribution, another random stream).
    Other devices use ``F.dropout``.
    """
    if x.device.type != "cpu" or p <= 0.0 or p >= 1.0 or not x.is_floating_point():
        return F.dropout(x, p=p, training=True, inplace=inplace)
    noise_dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    keep = torch.rand(x.shape, dtype=noise_dtype, device=x.device).ge_(p).div_(1.0 - p).to(x.dtype)
    return x.mul_(keep) if inplace else x * keep


class FairseqDropout(_DropoutBase):
    """Element-wise dropout; ``batch_first`` is accepted for interface symmetry and ignored."""

    def forward(self, x: Tensor, batch_first: bool = False, inplace: bool = False) -> Tensor:
        if not self.is_active():
            return x
        return element_dropout(x, self.p, inplace=inplace)


class FairseqFeatureDropout(_DropoutBase):
    """Channel dropout: drops feature ``d`` of batch element ``b`` at every time step.

    Shapes: ``x`` is Time x Batch x Channel, or Batch x Time x Channel when ``batch_first``.
    Extra leading dimensions in the batch-first case (e.g. Batch x Chunks x Time x Channel)
    are treated as batch dimensions.
    """

    def forward(self, x: Tensor, batch_first: bool = False, inplace: bool = False) -> Tensor:
        if not self.is_active():
            return x
        if x.dim() < 3:
            raise ValueError(
                "feature dropout expects x with at least 3 dimensions (Time x Batch x Channel), "
                "got shape {}".format(tuple(x.shape))
            )
        time_dim = -2 if batch_first else 0
        mask_shape = list(x.shape)
        mask_shape[time_dim] = 1
        keep = 1.0 - self.p
        mask = x.new_empty(mask_shape).bernoulli_(keep)
        if keep > 0:
            mask = mask.div_(keep)
        if inplace:
            return x.mul_(mask)
        return x * mask
