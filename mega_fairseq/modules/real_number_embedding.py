"""RealNumberEmbedding: embeds each real-valued input step (a pixel, an audio sample) as a vector."""

import torch
import torch.nn as nn
from torch import Tensor


class RealNumberEmbedding(nn.Module):
    """``x -> x * weight + bias`` per time step: a learned line through the embedding space.

    Parameter names and initialisation follow the official code: ``weight`` ~ N(0, 1) and ``bias``
    ~ N(0, 0.1), both of size ``embedding_dim``.

    Args:
        embedding_dim: output width D.
    """

    def __init__(self, embedding_dim: int):
        super().__init__()
        if int(embedding_dim) <= 0:
            raise ValueError("embedding_dim={} must be a positive integer".format(embedding_dim))
        self.embedding_dim = int(embedding_dim)
        self.weight = nn.Parameter(torch.empty(self.embedding_dim))
        self.bias = nn.Parameter(torch.empty(self.embedding_dim))
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.normal_(self.weight, mean=0.0, std=1.0)
        nn.init.normal_(self.bias, mean=0.0, std=0.1)

    def forward(self, x: Tensor) -> Tensor:
        """x: Batch x Time real values (float); returns Batch x Time x D in the parameters' dtype."""
        if not torch.is_floating_point(x):
            raise TypeError("RealNumberEmbedding takes real-valued input (pixels, waveforms), got dtype {}; token "
                            "ids need --input-type text".format(x.dtype))
        return x.to(self.weight.dtype).unsqueeze(-1) * self.weight + self.bias
