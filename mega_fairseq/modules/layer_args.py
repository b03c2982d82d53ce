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


def shared_layer_kwargs(args: Any) -> dict:
    """Keyword arguments every Mega sub-layer (attention, cross-attention, FFN) takes from args."""
    return dict(
        dropout=layer_arg(args, "dropout"),
        activation=layer_arg(args, "activation_fn"),
        norm_type=layer_arg(args, "normalization_type"),
        prenorm=layer_arg(args, "normalize_before"),
        feature_dropout=layer_arg(args, "feature_dropout"),
    )


def attention_kwargs(args: Any) -> dict:
    """:func:`shared_layer_kwargs` plus what both attention kinds take (attention dropouts/function)."""
    return dict(
        shared_layer_kwargs(args),
        attention_dropout=layer_arg(args, "attention_dropout"),
        hidden_dropout=layer_arg(args, "hidden_dropout"),
        attention_activation=layer_arg(args, "attention_activation_fn"),
        rel_pos_bias=layer_arg(args, "rel_pos_bias"),
    )


def mega_attention_kwargs(args: Any, side: str, max_positions: int) -> dict:
    """``MovingAverageGatedAttention`` keyword arguments of the ``side`` ("encoder" or "decoder")
    settings, except ``embed_dim`` and ``bidirectional``."""
    return dict(
        attention_kwargs(args),
        zdim=layer_arg(args, side + "_z_dim"),
        hdim=layer_arg(args, side + "_hidden_dim"),
        ndim=layer_arg(args, side + "_n_dim"),
        chunk_size=layer_arg(args, side + "_chunk_size"),
        truncation=layer_arg(args, "truncation_length"),
        max_positions=max_positions,
    )


def nffn_kwargs(args: Any, side: str) -> dict:
    """``NormalizedFeedForwardNetwork`` keyword arguments of the ``side`` settings, except ``embed_dim``."""
    return dict(
        shared_layer_kwargs(args),
        ffn_hidden_dim=layer_arg(args, side + "_ffn_embed_dim"),
        hidden_dropout=layer_arg(args, "activation_dropout"),
    )
