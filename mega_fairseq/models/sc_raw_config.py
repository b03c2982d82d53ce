"""SCRawConfig: the typed settings of the ``sc_raw`` raw-waveform classifier (Speech Commands), and its presets.

The fields are those of :class:`LRAConfig` (the official ``sc_raw`` arguments are the ``lra`` ones
minus the text-only ones); the defaults are the official ``sc_raw`` base architecture: 6 pre-norm
layers, D 60, hidden 120, z 30, n 16, laplace attention, batch norm, chunk 1000, truncation 1000,
16,000 positions, 10 classes, no dropout. ``classifier_out_dim`` defaults to twice
``encoder_embed_dim`` (derived by ``read_settings``). The input is always real-valued
(``input_type`` image: one value per audio sample).
"""
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from fairseq.dataclass import ChoiceEnum

from mega_fairseq.models.lra_config import INPUT_TYPES, LRAConfig
from mega_fairseq.models.mega_settings import ACTIVATIONS, ATTENTION_ACTIVATIONS, NORMALIZATION_TYPES


@dataclass
class SCRawConfig(LRAConfig):
    dropout: float = field(default=0.0, metadata={"help": "dropout probability"})
    attention_dropout: float = field(default=0.0, metadata={"help": "dropout probability of attention weights"})
    encoder_layers: int = field(default=6, metadata={"help": "number of encoder layers"})
    encoder_embed_dim: int = field(default=60, metadata={"help": "model width D"})
    encoder_hidden_dim: int = field(default=120, metadata={"help": "hidden (value) dimension of Mega attention"})
    z_dim: int = field(default=30, metadata={"help": "shared query/key dimension z"})
    n_dim: int = field(default=16, metadata={"help": "EMA dimension n"})
    chunk_size: int = field(default=1000, metadata={"help": "attention chunk size (-1 or 0: no chunking)"})
    truncation_length: Optional[int] = field(
        default=1000, metadata={"help": "EMA kernel truncation length (None, 0 or negative: no truncation)"})
    max_positions: Optional[int] = field(default=16000, metadata={"help": "longest input"})
    activation_fn: ChoiceEnum(ACTIVATIONS) = field(default="silu", metadata={"help": "activation function"})
    attention_activation_fn: ChoiceEnum(ATTENTION_ACTIVATIONS) = field(
        default="laplace", metadata={"help": "attention activation function"})
    norm_type: ChoiceEnum(NORMALIZATION_TYPES) = field(default="batchnorm", metadata={"help": "normalization"})
    encoder_normalize_before: Optional[bool] = field(
        default=None, metadata={"help": "pre-norm layers (plus a final norm); unset: True (SC_RAW_FLAG_DEFAULTS)"})
    input_type: Optional[ChoiceEnum(INPUT_TYPES)] = field(
        default="image", metadata={"help": "always image: one real value per audio sample"})
    sentence_class_num: int = field(default=10, metadata={"help": "number of classes"})
    classifier_out_dim: Optional[int] = field(
        default=None, metadata={"help": "classifier hidden dimension (default: 2 * encoder_embed_dim)"})
    apply_bert_init: Optional[bool] = field(
        default=None, metadata={"help": "initialise every linear layer N(0, 0.02); unset: False"})


#: Unset flags of ``sc_raw`` take these official defaults (see ``lra_config.LRA_FLAG_DEFAULTS``).
SC_RAW_FLAG_DEFAULTS: Dict[str, bool] = {"apply_bert_init": False, "encoder_normalize_before": True}

#: The official presets of ``sc_raw`` (``mega_sc_raw`` and ``mega_sc_raw_base`` are the base values).
SC_RAW_PRESETS: Dict[str, Dict[str, Any]] = {
    "mega_sc_raw": {},
    "mega_sc_raw_base": {},
    "mega_sc_raw_big": {"encoder_embed_dim": 72, "encoder_hidden_dim": 144, "z_dim": 36, "encoder_layers": 6},
}
