"""Normalized feed-forward network: the position-wise MLP block of a Mega layer."""

import torch.nn as nn
from torch import Tensor

from .activations import get_activation_fn, silu
from .fairseq_dropout import FairseqDropout, FairseqFeatureDropout
from .layer_norm_linear import fusable_layer_norm, layer_norm_linear
from .sequence_norm import SequenceNorm
from .silu_linear import silu_linear


class NormalizedFeedForwardNetwork(nn.Module):
    """``x + dropout(fc2(hidden_dropout(act(fc1(x)))))`` with a norm before (prenorm) or after.

    Args:
        embed_dim: channel count D of input and output.
        ffn_hidden_dim: hidden width F.
        dropout: dropout on the block output.
        hidden_dropout: dropout on the hidden activations (fairseq's ``activation_dropout``).
        activation: hidden activation name (see :func:`get_activation_fn`).
        norm_type: see :class:`SequenceNorm`.
        prenorm: normalise the input (True) or the output (False).
        norm_affine: learn the norm's scale/shift.
        feature_dropout: drop whole channels instead of single elements.
        export: passed to the norm.
    """

    def __init__(
        self,
        embed_dim,
        ffn_hidden_dim,
        dropout=0.0,
        hidden_dropout=0.0,
        activation="silu",
        norm_type="layernorm",
        prenorm=True,
        norm_affine=True,
        feature_dropout=False,
        export=False,
    ):
        super().__init__()
        self.embedding_dim = embed_dim
        self.hidden_dim = ffn_hidden_dim
        self.act_fn = activation
        self.activation = get_activation_fn(activation)

        dropout_class = FairseqFeatureDropout if feature_dropout else FairseqDropout
        self.dropout = dropout_class(dropout, module_name=self.__class__.__name__)
        self.hidden_dropout = dropout_class(hidden_dropout, module_name=self.__class__.__name__)

        self.prenorm = prenorm
        self.norm = SequenceNorm(norm_type, embed_dim, affine=norm_affine, export=export)

        self.fc1 = nn.Linear(embed_dim, ffn_hidden_dim)
        self.fc2 = nn.Linear(ffn_hidden_dim, embed_dim)
        self.reset_parameters()

    def reset_parameters(self):
        for linear in (self.fc1, self.fc2):
            nn.init.normal_(linear.weight, mean=0.0, std=0.02)
            nn.init.zeros_(linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        """x: Time x Batch x D; returns Time x Batch x D."""
        if x.dim() != 3 or x.size(-1) != self.embedding_dim:
            raise ValueError(
                "x must be Time x Batch x {} (embed_dim), got shape {}".format(self.embedding_dim, tuple(x.shape))
            )
        residual = x
        layer_norm = fusable_layer_norm(self.norm) if self.prenorm else None
        if layer_norm is not None:
            # fc1(norm(x)) keeping x (alive for the residual) and the norm's statistics, not norm(x)
            hidden = layer_norm_linear(x, layer_norm, self.fc1)
        else:
            if self.prenorm:
                x = self.norm(x)
            hidden = self.fc1(x)
        if self.activation is silu and not self.hidden_dropout.is_active():
            # fc2(silu(fc1 x)) keeping only fc1's output for the backward
            x = silu_linear(hidden, self.fc2.weight, self.fc2.bias)
        else:
            x = self.fc2(self.hidden_dropout(self.activation(hidden)))
        x = self.dropout(x)
        x = x + residual
        if not self.prenorm:
            x = self.norm(x)
        return x

    def extra_repr(self) -> str:
        return "edim={}, hdim={}, act={}, prenorm={}".format(self.embedding_dim, self.hidden_dim, self.act_fn, self.prenorm)
