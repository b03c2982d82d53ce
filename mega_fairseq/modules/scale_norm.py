"""ScaleNorm: divide by the root mean square over one dimension, times one learned scalar."""

import torch
import torch.nn as nn
from torch import Tensor


class ScaleNorm(nn.Module):
    """``x * scalar / sqrt(mean(x^2, dim) + eps)``.

    Args:
        dim: the dimension normalised over (``-1``: channels).
        eps: added to the mean square before the square root.
        affine: learn the scalar (state_dict name ``scalar``, shape ``(1,)``), else use 1.
    """

    def __init__(self, dim: int, eps: float = 1e-6, affine: bool = True):
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.affine = affine
        if affine:
            self.scalar = nn.Parameter(torch.ones(1))
        else:
            self.register_parameter("scalar", None)

    def reset_parameters(self):
        if self.scalar is not None:
            nn.init.ones_(self.scalar)

    def forward(self, x: Tensor) -> Tensor:
        """x: any shape; returns the same shape."""
        inv_rms = torch.rsqrt(torch.mean(torch.square(x), dim=self.dim, keepdim=True) + self.eps)
        if self.scalar is not None:
            x = x * self.scalar
        return x * inv_rms

    def extra_repr(self) -> str:
        return "dim={}, eps={}, affine={}".format(self.dim, self.eps, self.affine)
