"""MegaLayerConfig: the typed settings of one Mega block (encoder, decoder or classifier layer).

A model converts its own config (``MegaConfig``, ``MegaLMConfig``, the classifiers' configs)
into this object once, in its ``build_model``; the layers then read explicit fields and nothing
else. Every field is required: the defaults live in the model configs only (one place each).
"""
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class MegaLayerConfig:
    """What :class:`MegaEncoderLayer` / :class:`MegaDecoderLayer` build from.

    Attributes:
        embed_dim: model width D.
        zdim: shared query/key dimension z of the gated attention.
        hdim: value (hidden) dimension of the gated attention.
        ndim: EMA dimensions per channel.
        ffn_hidden_dim: hidden size of the normalized feed-forward block; 0 = no such block.
        chunk_size: attention chunk length; -1 = attend over the whole sequence.
        truncation: EMA kernel truncation length, or None for no truncation.
        max_positions: longest sequence the self-attention's relative bias covers (the bias
            covers ``chunk_size`` instead when chunked).
        cross_max_positions: with a value, decoder layers add gated cross-attention whose
            relative bias covers this many positions; None = no cross-attention.
        dropout, attention_dropout, hidden_dropout, activation_dropout: dropout probabilities
            (activation_dropout is the feed-forward block's hidden dropout).
        feature_dropout: drop whole channels instead of elements.
        activation: activation of the values and the feed-forward block (e.g. ``silu``).
        attention_activation: ``softmax``, ``relu2`` or ``laplace``.
        norm_type: ``layernorm``, ``scalenorm``, ``rmsnorm``, ``batchnorm`` or ``syncbatchnorm``.
        prenorm: normalize the sub-layer inputs (True) or outputs (False).
        rel_pos_bias: ``simple`` or ``rotary``.
    """

    embed_dim: int
    zdim: int
    hdim: int
    ndim: int
    ffn_hidden_dim: int
    chunk_size: int
    truncation: Optional[int]
    max_positions: int
    cross_max_positions: Optional[int]
    dropout: float
    attention_dropout: float
    hidden_dropout: float
    activation_dropout: float
    feature_dropout: bool
    activation: str
    attention_activation: str
    norm_type: str
    prenorm: bool
    rel_pos_bias: str

    def __post_init__(self):
        for name in ("embed_dim", "zdim", "hdim", "ndim", "max_positions"):
            if int(getattr(self, name)) <= 0:
                raise ValueError("{}={} must be a positive integer".format(name, getattr(self, name)))
        if self.ffn_hidden_dim < 0:
            raise ValueError("ffn_hidden_dim={} must be >= 0 (0 = no feed-forward block)".format(self.ffn_hidden_dim))
        if self.chunk_size == 0 or self.chunk_size < -1:
            raise ValueError("chunk_size={} is not supported; allowed values: -1 (no chunking) or a positive "
                             "chunk length".format(self.chunk_size))

    @property
    def sublayer_kwargs(self) -> dict:
        """Keyword arguments every sub-layer (attention, cross-attention, feed-forward) takes."""
        return dict(dropout=self.dropout, activation=self.activation, norm_type=self.norm_type, prenorm=self.prenorm,
                    feature_dropout=self.feature_dropout)

    @property
    def attention_kwargs(self) -> dict:
        """:attr:`sublayer_kwargs` plus what both attention kinds take (official constructor names)."""
        return dict(self.sublayer_kwargs, attention_dropout=self.attention_dropout, hidden_dropout=self.hidden_dropout,
                    attention_activation=self.attention_activation, rel_pos_bias=self.rel_pos_bias)
