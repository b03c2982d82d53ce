"""MegaLMConfig: the typed settings of the ``mega_lm`` decoder-only language model, and its presets.

Field names are the official command-line argument names of the Mega fork (``--decoder-z-dim``,
``--decoder-chunk-size``, ``--tie-adaptive-proj``, ...), so official training commands and
checkpoints map onto this config field by field. The dataclass defaults are the official
``base_lm_architecture`` values (the ``mega_lm`` preset), except ``activation_dropout``: the
official base never sets it and three official presets crash without ``--activation-dropout``;
here it defaults to 0.0.

Two settings default to "the same as another setting" as in the official code and are ``None``
here until :func:`mega_fairseq.models.mega_settings.read_settings` fills them (one table shared
by every Mega model): ``decoder_ffn_embed_dim`` (takes ``decoder_hidden_dim``) and
``decoder_input_dim`` (takes ``decoder_embed_dim``). ``max_target_positions`` defaults to the
task's ``tokens_per_sample`` (else 1024). :func:`check_lm_settings` adds the LM's own checks.
"""
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from omegaconf import II

from mega_fairseq.models.layer_execution import LayerExecutionSettings
from mega_fairseq.models.mega_shared_config import MegaBlockSettings, MegaOutputSettings


@dataclass
class MegaLMConfig(MegaBlockSettings, MegaOutputSettings, LayerExecutionSettings):
    # ---- sizes
    decoder_embed_path: Optional[str] = field(default=None, metadata={"help": "path to pre-trained decoder embedding"})
    decoder_embed_dim: int = field(default=512, metadata={"help": "decoder embedding dimension"})
    decoder_hidden_dim: int = field(default=1664, metadata={"help": "hidden (value) dimension of Mega attention"})
    decoder_z_dim: int = field(default=128, metadata={"help": "shared query/key dimension z"})
    decoder_n_dim: int = field(default=16, metadata={"help": "EMA dimension n"})
    decoder_ffn_embed_dim: Optional[int] = field(
        default=None, metadata={"help": "FFN dimension (default: decoder_hidden_dim; 0 = no FFN)"}
    )
    decoder_chunk_size: int = field(
        default=-1, metadata={"help": "attention chunk size (-1 or 0: attend over the whole sequence)"}
    )
    decoder_layers: int = field(default=6, metadata={"help": "number of decoder layers"})
    decoder_input_dim: Optional[int] = field(
        default=None, metadata={"help": "input embedding dimension (default: decoder_embed_dim)"}
    )
    # ---- what differs from MegaBlockSettings / MegaOutputSettings
    no_affine_final_norm: bool = field(default=False, metadata={"help": "final norm without affine parameters"})
    truncation_length: Optional[int] = field(
        default=2048, metadata={"help": "EMA kernel truncation length (0, negative or None: no truncation)"}
    )
    adaptive_input: bool = field(default=False, metadata={"help": "use adaptive input embeddings"})
    adaptive_input_factor: float = field(default=4.0, metadata={"help": "adaptive input size factor"})
    adaptive_input_cutoff: Optional[str] = field(default=None, metadata={"help": "comma separated adaptive input cutoffs"})
    # ---- lengths, borrowed from the task
    max_target_positions: Optional[int] = II("task.max_target_positions")
    tokens_per_sample: Optional[int] = II("task.tokens_per_sample")


#: Named presets of ``mega_lm`` (overrides of the dataclass defaults above), official values.
_ADAPTIVE_WIKI103 = {
    "adaptive_input": True,
    "tie_adaptive_weights": True,
    "adaptive_input_cutoff": "20000,60000",
    "adaptive_softmax_cutoff": "20000,60000",
    "adaptive_softmax_dropout": 0.2,
    "tie_adaptive_proj": True,
}
_BIG = {
    "decoder_layers": 16,
    "decoder_embed_dim": 1024,
    "decoder_hidden_dim": 2048,
    "decoder_ffn_embed_dim": 2048,
    "decoder_z_dim": 256,
}
_ADAPTIVE_BIG = {
    **_BIG,
    **_ADAPTIVE_WIKI103,
    "dropout": 0.3,
    "attention_dropout": 0.1,
    "hidden_dropout": 0.1,
    "activation_dropout": 0.1,
}
MEGA_LM_PRESETS: Dict[str, Dict[str, Any]] = {
    "mega_lm_big": dict(_BIG),
    "mega_lm_adaptive_big": dict(_ADAPTIVE_BIG),
    "mega_lm_wiki103": dict(_ADAPTIVE_BIG),
    "mega_lm_adaptive_base": {
        "decoder_layers": 16,
        "decoder_embed_dim": 768,
        "decoder_hidden_dim": 1536,
        "decoder_ffn_embed_dim": 1536,
        "decoder_z_dim": 128,
        **_ADAPTIVE_WIKI103,
        "dropout": 0.3,
        "attention_dropout": 0.1,
        "hidden_dropout": 0.1,
        "activation_dropout": 0.1,
    },
    "mega_lm_enwik8_base": {
        "decoder_layers": 12,
        "decoder_embed_dim": 512,
        "decoder_hidden_dim": 1024,
        "decoder_ffn_embed_dim": 1024,
        "decoder_z_dim": 128,
        "decoder_n_dim": 16,
        "dropout": 0.1,
        "attention_dropout": 0.0,
        "hidden_dropout": 0.0,
        "activation_dropout": 0.0,
    },
    "mega_lm_enwik8_large": {
        "decoder_layers": 24,
        "decoder_embed_dim": 1024,
        "decoder_hidden_dim": 1536,
        "decoder_ffn_embed_dim": 1536,
        "decoder_z_dim": 128,
        "decoder_n_dim": 16,
        "dropout": 0.2,
        "attention_dropout": 0.1,
        "hidden_dropout": 0.1,
    },
}


def check_lm_settings(settings: MegaLMConfig) -> None:
    """The LM's own checks on settings from ``read_settings`` (lengths, adaptive input/softmax ties)."""
    values = vars(settings)
    tokens = values["tokens_per_sample"]
    if values["decoder_chunk_size"] <= 0 and tokens is not None and int(tokens) > int(values["max_target_positions"]):
        raise ValueError(
            "tokens_per_sample={} is larger than max_target_positions={}: without chunking "
            "(decoder_chunk_size={}) the relative positional bias covers only max_target_positions tokens. "
            "Allowed: --tokens-per-sample <= --max-target-positions, or a --decoder-chunk-size > 0 "
            "(any length then works)".format(tokens, values["max_target_positions"], values["decoder_chunk_size"])
        )
    if values["tie_adaptive_weights"]:
        problems = []
        if not values["adaptive_input"]:
            problems.append("adaptive_input must be True")
        if float(values["adaptive_input_factor"]) != float(values["adaptive_softmax_factor"]):
            problems.append("adaptive_input_factor must equal adaptive_softmax_factor")
        if str(values["adaptive_input_cutoff"]) != str(values["adaptive_softmax_cutoff"]):
            problems.append("adaptive_input_cutoff must equal adaptive_softmax_cutoff")
        if int(values["decoder_input_dim"]) != int(values["decoder_embed_dim"]):
            problems.append("decoder_input_dim must equal decoder_embed_dim")
        if values["adaptive_softmax_cutoff"] is None:
            problems.append("adaptive_softmax_cutoff must be set")
        if problems:
            raise ValueError("tie_adaptive_weights=True needs: " + "; ".join(problems))
    if values["tie_adaptive_proj"] and not values["tie_adaptive_weights"]:
        raise ValueError("tie_adaptive_proj=True needs tie_adaptive_weights=True")
    if values["adaptive_input"] and values["adaptive_input_cutoff"] is None:
        raise ValueError("adaptive_input=True needs --adaptive-input-cutoff (e.g. '20000,60000')")
