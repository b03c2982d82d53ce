"""RMSNorm: divide each channel vector by its root mean square, times a learned per-channel weight."""

import torch
import torch.nn as nn
from torch import Tensor


class RMSNorm(nn.Module):
    """``x * weight / sqrt(mean(x^2 over channels) + eps)``.

    Args:
        number_features: channel count C (last dimension of the input).
        eps: added to the mean square before the square root.
        affine: learn ``weight`` (shape ``(C,)``), else use 1.
    """

    def __init__(self, number_features: int, eps: float = 1e-6, affine: bool = True):
        super().__init__()
        self.num_features = number_features
        self.eps = eps
        self.affine = affine
        if affine:
            self.weight = nn.Parameter(torch.ones(number_features))
        else:
            self.register_parameter("weight", None)

    def reset_parameters(self):
        if self.weight is not None:
            nn.init.ones_(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        """x: ``(..., C)``; returns the same shape."""
        inv_rms = torch.rsqrt(torch.mean(torch.square(x), dim=-1, keepdim=True) + self.eps)
        if self.weight is not None:
            x = x * self.weight
        return x * inv_rms

    def extra_repr(self) -> str:
        return "{}, eps={}, affine={}".format(self.num_features, self.eps, self.affine)
