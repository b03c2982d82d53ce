"""Read Mega layer settings from an argparse Namespace or an omegaconf DictConfig."""

from typing import Any

# Defaults used when an optional setting is absent (or None) in the args; they follow the
# official ``mega`` base architecture and module defaults.
OPTIONAL_DEFAULTS = {
    "dropout": 0.0,
    "attention_dropout": 0.0,
    "hidden_dropout": 0.0,
    "activation_dropout": 0.0,
    "feature_dropout": False,
    "truncation_length": None,
    "rel_pos_bias": "simple",
    "normalization_type": "layernorm",
    "normalize_before": False,
    "activation_fn": "silu",
    "attention_activation_fn": "softmax",
    "max_source_positions": 1024,
    "max_target_positions": 1024,
    "encoder_chunk_size": -1,
    "decoder_chunk_size": -1,
}

_MISSING = object()


def layer_arg(args: Any, name: str, default: Any = _MISSING) -> Any:
    """``args.name`` for a Namespace or DictConfig; absent or None values give the default.

    The default is ``default`` when given, else :data:`OPTIONAL_DEFAULTS` ``[name]``.

    Raises:
        ValueError: when a required setting (no default known) is absent.
    """
    try:
        value = getattr(args, name)
    except Exception:  # AttributeError, omegaconf ConfigAttributeError / MissingMandatoryValue
        value = None
    if value is not None:
        return value
    if default is _MISSING:
        default = OPTIONAL_DEFAULTS.get(name, _MISSING)
    if default is _MISSING:
        raise ValueError("args.{} is required to build a Mega layer but is missing".format(name))
    return default
