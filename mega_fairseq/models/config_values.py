"""Reading and checking Mega model settings, shared by the ``mega`` and ``mega_lm`` configs.

A model's settings arrive either as an argparse Namespace (``--arch``, checkpoints of the
official code, which may lack newer fields) or as an omegaconf DictConfig (hydra). These helpers
read every field of a config dataclass from either, and check the choices the Mega layers accept.
"""
from enum import Enum
from typing import Any, Dict

from mega_fairseq.modules.activations import ATTENTION_ACTIVATIONS, available_activation_fns
from mega_fairseq.modules.relative_positional_bias import REL_POS_BIAS_TYPES as REL_POS_BIASES
from mega_fairseq.modules.sequence_norm import NORM_TYPES as NORMALIZATION_TYPES

#: What the layers accept (the modules are the single source of these lists).
ACTIVATIONS = tuple(available_activation_fns())
__all__ = ["ACTIVATIONS", "ATTENTION_ACTIVATIONS", "NORMALIZATION_TYPES", "REL_POS_BIASES", "get_value",
           "read_settings", "check_layer_choices"]


def get_value(cfg, key: str, default=None):
    """``cfg.key`` as a plain value; ``default`` when absent, None or an unresolvable interpolation."""
    try:
        value = getattr(cfg, key)
    except Exception:  # absent from a Namespace, or an unresolvable interpolation
        return default
    if isinstance(value, Enum):  # fairseq's ChoiceEnum values inside a DictConfig
        value = value.value
    return default if value is None else value


def read_settings(cfg, config_cls) -> Dict[str, Any]:
    """Every (non-private) field of ``config_cls`` read from ``cfg``; missing ones take the
    dataclass default (None for interpolations such as ``II("task.x")`` and factories)."""
    values: Dict[str, Any] = {}
    for name, dc_field in config_cls.__dataclass_fields__.items():
        if name.startswith("_"):
            continue
        default = dc_field.default
        if not isinstance(default, (int, float, str, bool, type(None))) or str(default).startswith("${"):
            default = None
        values[name] = get_value(cfg, name, default)
    return values


def check_layer_choices(values: Dict[str, Any]) -> None:
    """Raise ValueError naming the setting and the allowed values for a setting the layers reject."""
    for name, allowed in (("activation_fn", ACTIVATIONS), ("attention_activation_fn", ATTENTION_ACTIVATIONS),
                          ("normalization_type", NORMALIZATION_TYPES), ("rel_pos_bias", REL_POS_BIASES)):
        if str(values[name]) not in allowed:
            raise ValueError("{}={!r} is not supported; allowed values: {}".format(name, values[name], ", ".join(allowed)))
    if values["normalize_embedding"] and values["normalize_before"]:
        raise ValueError("normalize_embedding=True and normalize_before=True cannot be combined "
                         "(allowed: at most one of them)")
