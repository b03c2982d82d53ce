"""MegaConfig: the typed settings of the ``mega`` encoder-decoder, and the named presets.

Field names are the official command-line argument names of the Mega fork, so
``--encoder-z-dim 128`` etc. work unchanged and checkpoints written by the official code map
onto this config field by field. The dataclass defaults are the official ``base_architecture``
values (the ``mega`` preset). Settings whose official default is "the same as another setting"
(every ``decoder_*`` size defaults to its ``encoder_*`` twin, ``encoder_ffn_embed_dim`` to
``encoder_hidden_dim``) are ``None`` here and resolved by
:func:`mega_fairseq.models.mega_settings.read_settings` (one table shared by every Mega model).
"""
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from omegaconf import II

from mega_fairseq.models.layer_execution import LayerExecutionSettings
from mega_fairseq.models.mega_shared_config import MegaBlockSettings, MegaOutputSettings


@dataclass
class MegaConfig(MegaBlockSettings, MegaOutputSettings, LayerExecutionSettings):
    # ---- encoder
    encoder_embed_path: Optional[str] = field(default=None, metadata={"help": "path to pre-trained encoder embedding"})
    encoder_embed_dim: int = field(default=512, metadata={"help": "encoder embedding dimension"})
    encoder_hidden_dim: int = field(default=1024, metadata={"help": "encoder hidden (value) dimension of Mega attention"})
    encoder_z_dim: int = field(default=128, metadata={"help": "encoder shared query/key dimension z"})
    encoder_n_dim: int = field(default=16, metadata={"help": "encoder EMA dimension n"})
    encoder_ffn_embed_dim: Optional[int] = field(
        default=None, metadata={"help": "encoder FFN dimension (default: encoder_hidden_dim; 0 = no FFN)"}
    )
    encoder_chunk_size: int = field(default=-1, metadata={"help": "encoder attention chunk size (-1 or 0: no chunks)"})
    encoder_layers: int = field(default=6, metadata={"help": "number of encoder layers"})
    # ---- decoder (None: same as the encoder setting)
    decoder_embed_path: Optional[str] = field(default=None, metadata={"help": "path to pre-trained decoder embedding"})
    decoder_embed_dim: Optional[int] = field(default=None, metadata={"help": "decoder embedding dim (default: encoder's)"})
    decoder_hidden_dim: Optional[int] = field(default=None, metadata={"help": "decoder hidden dim (default: encoder's)"})
    decoder_z_dim: Optional[int] = field(default=None, metadata={"help": "decoder z dim (default: encoder's)"})
    decoder_n_dim: Optional[int] = field(default=None, metadata={"help": "decoder EMA dim n (default: encoder's)"})
    decoder_ffn_embed_dim: Optional[int] = field(default=None, metadata={"help": "decoder FFN dim (default: encoder's)"})
    decoder_chunk_size: Optional[int] = field(default=None, metadata={"help": "decoder chunk size (default: encoder's)"})
    decoder_layers: int = field(default=6, metadata={"help": "number of decoder layers"})
    decoder_input_dim: Optional[int] = field(default=None, metadata={"help": "decoder input dim (default: decoder_embed_dim)"})
    # ---- embeddings (the block flavour and output layer: MegaBlockSettings, MegaOutputSettings)
    share_all_embeddings: bool = field(default=False, metadata={"help": "share encoder, decoder and output embeddings"})
    adaptive_input: bool = field(default=False, metadata={"help": "unused; kept for official checkpoints"})
    # ---- lengths, borrowed from the task
    max_source_positions: Optional[int] = II("task.max_source_positions")
    max_target_positions: Optional[int] = II("task.max_target_positions")


#: Named presets (overrides of the dataclass defaults above), official values.
MEGA_PRESETS: Dict[str, Dict[str, Any]] = {
    "mega_wmt_en_de": {
        "dropout": 0.1,
        "attention_dropout": 0.1,
        "hidden_dropout": 0.1,
        "activation_dropout": 0.1,
    },
    "mega_wmt_en_de_big": {
        "encoder_embed_dim": 1024,
        "encoder_hidden_dim": 2048,
        "encoder_z_dim": 256,
        "dropout": 0.3,
        "attention_dropout": 0.1,
        "hidden_dropout": 0.1,
        "activation_dropout": 0.1,
    },
}
