"""SequenceNorm: one interface over the normalisations a Mega layer can use."""

import torch.nn as nn
from torch import Tensor

from .root_mean_square_norm import RMSNorm
from .scale_norm import ScaleNorm

NORM_TYPES = ("layernorm", "scalenorm", "rmsnorm", "batchnorm", "syncbatchnorm")


class SequenceNorm(nn.Module):
    """Normalise a Time x Batch x Channel sequence with the chosen method.

    The wrapped module is stored as ``self.norm`` so parameter names are ``norm.weight``,
    ``norm.bias`` (layernorm, batchnorm), ``norm.weight`` (rmsnorm) or ``norm.scalar``
    (scalenorm). Batch norms normalise each channel over time and batch (pads included).

    Args:
        norm_type: one of ``layernorm``, ``scalenorm``, ``rmsnorm``, ``batchnorm``,
            ``syncbatchnorm``.
        embedding_dim: channel count C.
        eps: numerical floor passed to the wrapped norm.
        affine: learn the norm's scale (and shift where it has one).
        export: passed to fairseq's LayerNorm (forces the plain PyTorch implementation).
    """

    def __init__(self, norm_type: str, embedding_dim: int, eps: float = 1e-5, affine: bool = True, export: bool = False):
        super().__init__()
        self.norm_type = norm_type
        if norm_type == "layernorm":
            from fairseq.modules import LayerNorm

            self.norm = LayerNorm(embedding_dim, eps=eps, elementwise_affine=affine, export=export)
        elif norm_type == "scalenorm":
            self.norm = ScaleNorm(dim=-1, eps=eps, affine=affine)
        elif norm_type == "rmsnorm":
            self.norm = RMSNorm(embedding_dim, eps=eps, affine=affine)
        elif norm_type == "batchnorm":
            self.norm = nn.BatchNorm1d(embedding_dim, eps=eps, affine=affine)
        elif norm_type == "syncbatchnorm":
            self.norm = nn.SyncBatchNorm(embedding_dim, eps=eps, affine=affine)
        else:
            raise ValueError(
                "norm_type={!r} is not supported; allowed values: {}".format(norm_type, ", ".join(NORM_TYPES))
            )

    def forward(self, x: Tensor) -> Tensor:
        """x: Time x Batch x Channel; returns the same shape."""
        if isinstance(self.norm, nn.modules.batchnorm._BatchNorm):
            if x.dim() != 3:
                raise ValueError(
                    "x must be Time x Batch x Channel for norm_type={!r}, got shape {}".format(
                        self.norm_type, tuple(x.shape)
                    )
                )
            # T x B x C -> B x C x T, the layout BatchNorm1d expects, and back.
            return self.norm(x.permute(1, 2, 0)).permute(2, 0, 1)
        return self.norm(x)
