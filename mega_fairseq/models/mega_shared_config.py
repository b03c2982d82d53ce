"""The settings every Mega encoder-decoder and language model shares, declared once.

``MegaConfig`` (translation) and ``MegaLMConfig`` (language model) inherit these fields and add
their sizes; a model whose official default differs redeclares just that field (the LM's
``truncation_length``). Field names are the official command-line argument names.
"""
from dataclasses import dataclass, field
from typing import Optional

from fairseq.dataclass import ChoiceEnum, FairseqDataclass

from mega_fairseq.models.mega_settings import ACTIVATIONS, ATTENTION_ACTIVATIONS, NORMALIZATION_TYPES, REL_POS_BIASES


@dataclass
class MegaBlockSettings(FairseqDataclass):
    """Dropout and layer flavour of the Mega blocks (the official ``base_architecture`` values)."""

    # ---- dropout
    dropout: float = field(default=0.1, metadata={"help": "dropout probability"})
    attention_dropout: float = field(default=0.0, metadata={"help": "dropout probability of attention weights"})
    hidden_dropout: float = field(default=0.0, metadata={"help": "dropout probability of Mega hidden vectors"})
    activation_dropout: float = field(default=0.0, metadata={"help": "dropout probability after the FFN activation"})
    feature_dropout: bool = field(default=False, metadata={"help": "drop whole feature channels instead of elements"})
    # ---- layer flavour
    activation_fn: ChoiceEnum(ACTIVATIONS) = field(default="silu", metadata={"help": "activation function"})
    attention_activation_fn: ChoiceEnum(ATTENTION_ACTIVATIONS) = field(
        default="softmax", metadata={"help": "attention activation function"}
    )
    normalization_type: ChoiceEnum(NORMALIZATION_TYPES) = field(default="layernorm", metadata={"help": "normalization"})
    normalize_before: bool = field(default=False, metadata={"help": "pre-norm layers (plus a final norm)"})
    normalize_embedding: bool = field(default=False, metadata={"help": "normalize the scaled embeddings"})
    no_scale_embedding: bool = field(default=False, metadata={"help": "do not scale embeddings by sqrt(embed_dim)"})
    rel_pos_bias: ChoiceEnum(REL_POS_BIASES) = field(default="simple", metadata={"help": "relative positional bias"})
    truncation_length: Optional[int] = field(
        default=1024, metadata={"help": "EMA kernel truncation length (0, negative or None: no truncation)"}
    )


@dataclass
class MegaOutputSettings(FairseqDataclass):
    """The decoder's output layer: a tied or separate projection, or an adaptive softmax."""

    # ---- decoder output layer
    share_decoder_input_output_embed: bool = field(default=False, metadata={"help": "share decoder input/output embeddings"})
    adaptive_softmax_cutoff: Optional[str] = field(
        default=None, metadata={"help": "comma separated adaptive softmax cutoffs (use with --criterion adaptive_loss)"}
    )
    adaptive_softmax_dropout: float = field(default=0.0, metadata={"help": "adaptive softmax dropout of the tails"})
    adaptive_softmax_factor: float = field(default=4.0, metadata={"help": "adaptive softmax size factor"})
    tie_adaptive_weights: bool = field(default=False, metadata={"help": "tie adaptive softmax and input weights"})
    tie_adaptive_proj: bool = field(default=False, metadata={"help": "tie adaptive softmax projections"})
