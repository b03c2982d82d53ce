"""ClassifierTokenEmbedding: the token embedding of the sequence classifiers (``embed.weight``)."""

import torch.nn as nn
from torch import Tensor


class ClassifierTokenEmbedding(nn.Module):
    """Token ids -> vectors through ``self.embed`` (an ``nn.Embedding``, official parameter name
    ``embed.weight``), initialised N(0, embedding_dim^-1/2) over the whole table.

    As officially, the pad row is drawn like every other row (it is not zero). The encoders zero
    the embeddings at pad positions, so the pad row never reaches a result.

    Args:
        num_embeddings: vocabulary size V.
        embedding_dim: output width D.
        padding_idx: index of the pad symbol.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int):
        super().__init__()
        self.embedding_dim = embedding_dim
        self.padding_idx = padding_idx
        self.embed = nn.Embedding(num_embeddings, embedding_dim, padding_idx=padding_idx)
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.normal_(self.embed.weight, mean=0.0, std=self.embedding_dim ** -0.5)

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens: Batch x Time int64; returns Batch x Time x D."""
        return self.embed(tokens)
