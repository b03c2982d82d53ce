"""Reading a Mega model's settings once, typed: the boundary between fairseq's configs and the layers.

A model's settings arrive as an argparse Namespace (``--arch``, checkpoints of the official
code, which may lack newer fields) or as an omegaconf DictConfig (hydra). :func:`read_settings`
turns either into an instance of the model's config dataclass (``MegaConfig``, ``MegaLMConfig``,
the classifiers' configs) holding plain values: absent settings take the dataclass default,
settings whose official default is "the same as another setting" take it from the one table
:data:`DERIVED_DEFAULTS` (shared by every Mega model), and the layer choices are checked. From
then on the models read typed fields, and :func:`layer_config` builds each block's
:class:`MegaLayerConfig`. Nothing else reads a Namespace.
"""
import dataclasses
from enum import Enum
from typing import Any, Dict, Optional, Tuple, Type, TypeVar

from mega_fairseq.modules.activations import ATTENTION_ACTIVATIONS, available_activation_fns
from mega_fairseq.modules.mega_layer_config import MegaLayerConfig
from mega_fairseq.modules.relative_positional_bias import REL_POS_BIAS_TYPES as REL_POS_BIASES
from mega_fairseq.modules.sequence_norm import NORM_TYPES as NORMALIZATION_TYPES

#: What the layers accept (the modules are the single source of these lists).
ACTIVATIONS = tuple(available_activation_fns())

#: derived setting -> the settings it takes its value from when unset, in order of preference;
#: only the ones a model's config has count (e.g. the LM has no ``encoder_*`` settings, so its
#: ``decoder_ffn_embed_dim`` follows ``decoder_hidden_dim``). ``"2*name"`` takes twice the value,
#: ``"other*name"`` the product with setting ``other`` (taken as 1 when unset)
#: of ``name``. Resolved top to bottom.
DERIVED_DEFAULTS: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("encoder_ffn_embed_dim", ("encoder_hidden_dim",)),
    ("decoder_embed_dim", ("encoder_embed_dim",)),
    ("decoder_hidden_dim", ("encoder_hidden_dim",)),
    ("decoder_ffn_embed_dim", ("encoder_ffn_embed_dim", "decoder_hidden_dim")),
    ("decoder_z_dim", ("encoder_z_dim",)),
    ("decoder_n_dim", ("encoder_n_dim",)),
    ("decoder_chunk_size", ("encoder_chunk_size",)),
    ("decoder_input_dim", ("decoder_embed_dim",)),
    ("max_target_positions", ("tokens_per_sample",)),
    ("max_positions", ("tokens_per_sample",)),
    # sequence classifiers (lra, sc_raw)
    ("classifier_in_dim", ("num_documents*encoder_embed_dim", "encoder_embed_dim")),
    ("classifier_out_dim", ("2*encoder_embed_dim",)),
)
#: lengths the task did not provide (a model built outside a task, an old checkpoint)
DEFAULT_MAX_POSITIONS = 1024
_LENGTH_SETTINGS = ("max_source_positions", "max_target_positions", "max_positions")

#: What a decoder without cross-attention reports as its longest input when chunked: chunked
#: attention and the EMA accept any length (the relative bias is sized by the chunk), so fairseq
#: must not filter long blocks out.
UNBOUNDED_POSITIONS = 1 << 30

C = TypeVar("C")


def plain_value(cfg, key: str):
    """``cfg.key`` as a plain value; None when absent or an unresolvable interpolation."""
    try:
        value = getattr(cfg, key)
    except Exception:  # absent from a Namespace, or an unresolvable interpolation
        return None
    if isinstance(value, Enum):  # fairseq's ChoiceEnum values inside a DictConfig
        value = value.value
    return value


def read_settings(cfg, config_cls: Type[C]) -> C:
    """``cfg`` (Namespace or DictConfig) as a resolved, validated ``config_cls`` instance.

    Every non-private field of ``config_cls`` is read from ``cfg``; absent or None ones take the
    dataclass default (None for interpolations such as ``II("task.x")``); derived settings still
    None take their twin's value (:data:`DERIVED_DEFAULTS`); lengths still None become
    :data:`DEFAULT_MAX_POSITIONS`; chunk sizes ``0`` mean ``-1`` (no chunking). Bad values raise
    ``ValueError`` naming the setting and what is allowed. ``cfg`` is not modified.
    """
    fields = {f.name: f for f in dataclasses.fields(config_cls) if not f.name.startswith("_")}
    values: Dict[str, Any] = {}
    for name, dc_field in fields.items():
        value = plain_value(cfg, name)
        if value is None:
            default = dc_field.default
            if default is dataclasses.MISSING or str(default).startswith("${"):
                default = None
            value = default
        values[name] = value
    for name, twins in DERIVED_DEFAULTS:
        if name in values and values[name] is None:
            for twin in twins:
                factor, _, twin_name = twin.rpartition("*")
                if twin_name not in values or (factor and not factor.isdigit() and factor not in values):
                    continue
                value = values[twin_name]
                if factor and value is not None:
                    value = value * int(factor if factor.isdigit() else (values[factor] or 1))
                values[name] = value
                break
    for name in _LENGTH_SETTINGS:
        if name in values and values[name] is None:
            values[name] = DEFAULT_MAX_POSITIONS
    check_settings(values)
    for name in values:
        if name.endswith("chunk_size") and values[name] is not None and int(values[name]) == 0:
            values[name] = -1
    return config_cls(**values)


def check_settings(values: Dict[str, Any]) -> None:
    """Raise ValueError naming the setting and the allowed values for a value the layers reject."""
    for name, allowed in (("activation_fn", ACTIVATIONS), ("attention_activation_fn", ATTENTION_ACTIVATIONS),
                          ("normalization_type", NORMALIZATION_TYPES), ("norm_type", NORMALIZATION_TYPES),
                          ("rel_pos_bias", REL_POS_BIASES)):
        if name in values and str(values[name]) not in allowed:
            raise ValueError("{}={!r} is not supported; allowed values: {}".format(name, values[name], ", ".join(allowed)))
    if values.get("normalize_embedding") and values.get("normalize_before"):
        raise ValueError("normalize_embedding=True and normalize_before=True cannot be combined "
                         "(allowed: at most one of them)")
    for name, value in values.items():
        if value is None or isinstance(value, bool):
            continue
        if name.endswith(("_embed_dim", "_hidden_dim", "_z_dim", "_n_dim", "_input_dim")) \
                or name in _LENGTH_SETTINGS + ("encoder_layers", "decoder_layers"):
            minimum = 0 if name.endswith("ffn_embed_dim") else 1
            if int(value) < minimum:
                raise ValueError("{}={} must be {}".format(
                    name, value, "a positive integer" if minimum else ">= 0 (0 = no feed-forward block)"))
        if name.endswith("chunk_size") and int(value) < -1:
            raise ValueError("{}={} is not supported; allowed values: -1 or 0 (no chunking) or a positive chunk "
                             "length".format(name, value))


def effective_truncation(truncation: Optional[int], longest: Optional[int]) -> Optional[int]:
    """The EMA truncation a layer needs: None for "no truncation" (None, 0 or negative) and for a
    truncation of at least ``longest`` steps, which cannot take effect (the kernel is cut at
    ``min(truncation, length)``); dropping it lets decoding use the plain O(N) recurrence instead
    of a truncation-long window of past inputs. ``longest`` None: lengths are unbounded."""
    if truncation is None or int(truncation) <= 0:
        return None
    if longest is not None and int(truncation) >= longest:
        return None
    return int(truncation)


def layer_config(settings, side: str, max_positions: int, longest: Optional[int],
                 cross_max_positions: Optional[int] = None) -> MegaLayerConfig:
    """The :class:`MegaLayerConfig` of the ``side`` (``"encoder"`` or ``"decoder"``) blocks.

    Args:
        settings: a model config from :func:`read_settings` (official field names).
        max_positions: positions the self-attention's relative bias covers (unchunked).
        longest: the longest sequence the blocks will see, None if unbounded (see
            :func:`effective_truncation`).
        cross_max_positions: positions of the cross-attention bias; None = no cross-attention.
    """
    return MegaLayerConfig(
        embed_dim=int(getattr(settings, side + "_embed_dim")),
        zdim=int(getattr(settings, side + "_z_dim")),
        hdim=int(getattr(settings, side + "_hidden_dim")),
        ndim=int(getattr(settings, side + "_n_dim")),
        ffn_hidden_dim=int(getattr(settings, side + "_ffn_embed_dim")),
        chunk_size=int(getattr(settings, side + "_chunk_size")),
        truncation=effective_truncation(settings.truncation_length, longest),
        max_positions=int(max_positions),
        cross_max_positions=cross_max_positions,
        dropout=float(settings.dropout),
        attention_dropout=float(settings.attention_dropout),
        hidden_dropout=float(settings.hidden_dropout),
        activation_dropout=float(settings.activation_dropout),
        feature_dropout=bool(settings.feature_dropout),
        activation=str(settings.activation_fn),
        attention_activation=str(settings.attention_activation_fn),
        norm_type=str(settings.normalization_type),
        prenorm=bool(settings.normalize_before),
        rel_pos_bias=str(settings.rel_pos_bias),
    )


def parse_cutoff(text: Optional[str], name: str, vocab_size: int) -> Optional[list]:
    """``"20000,60000"`` -> ``[20000, 60000]``; checks the cutoffs increase and stay below the vocab."""
    if text is None or str(text).strip() == "":
        return None
    try:
        cutoff = [int(part) for part in str(text).replace("[", "").replace("]", "").split(",") if part.strip()]
    except ValueError:
        raise ValueError("{}={!r} must be comma separated integers, e.g. '20000,60000'".format(name, text))
    if not cutoff or any(b <= a for a, b in zip(cutoff, cutoff[1:])) or cutoff[0] <= 0:
        raise ValueError("{}={!r} must be increasing positive integers".format(name, text))
    if cutoff[-1] > vocab_size:
        raise ValueError(
            "{}={!r}: the cutoffs must not exceed the vocabulary size {} (allowed: values below {})".format(
                name, text, vocab_size, vocab_size
            )
        )
    return cutoff


def layer_config_from_args(args, side: str, cross_attention: bool = False) -> MegaLayerConfig:
    """The official layer constructors' path: ``MegaEncoderLayer(args)`` / ``MegaDecoderLayer(args)``
    with fairseq args of the ``mega`` model (Namespace or DictConfig). The args are read as a
    ``MegaConfig`` (its defaults fill what is missing, as for a whole model), then converted once."""
    from mega_fairseq.models.mega_config import MegaConfig

    settings = read_settings(args, MegaConfig)
    if side == "encoder":
        positions = settings.max_source_positions
    else:
        positions = settings.max_target_positions
    cross = max(settings.max_target_positions, settings.max_source_positions) if cross_attention else None
    return layer_config(settings, side, max_positions=positions, longest=None, cross_max_positions=cross)
