"""Activation functions used by Mega that stock fairseq 0.12.2 does not provide.

Two families live here:

* hidden activations (``silu``, ``relu2``, ``laplace`` plus everything fairseq knows), looked up by
  :func:`get_activation_fn`;
* attention activations (``softmax``, ``relu2``, ``laplace``), which turn attention scores into
  attention weights; see :data:`ATTENTION_ACTIVATIONS`.
"""

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

# The laplace attention function approximates relu2 with a Gaussian CDF; these are the
# paper's constants (mu = sqrt(1/2), sigma = sqrt(1/(4*pi))).
LAPLACE_MU = 0.707107
LAPLACE_SIGMA = 0.282095

# Names accepted as an attention activation.
ATTENTION_ACTIVATIONS = ("softmax", "relu2", "laplace")

# Hidden activations this module adds on top of fairseq's own list.
MEGA_ACTIVATIONS = ("silu", "relu2", "laplace")


def silu(x: Tensor) -> Tensor:
    """x * sigmoid(x), element-wise."""
    return F.silu(x)


def relu2(x: Tensor) -> Tensor:
    """Squared ReLU, element-wise."""
    return torch.square(F.relu(x))


def laplace(x: Tensor, mu: float = LAPLACE_MU, sigma: float = LAPLACE_SIGMA) -> Tensor:
    """Gaussian CDF with mean ``mu`` and scale ``sigma``, element-wise (values in [0, 1])."""
    scaled = (x - mu) / (sigma * math.sqrt(2.0))
    return 0.5 * (1.0 + torch.erf(scaled))


def softmax(x: Tensor, dim: int) -> Tensor:
    """Softmax computed (and returned) in float32, or in float64 for float64 input."""
    return F.softmax(x, dim=dim, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)


def _fairseq_activation_names():
    try:
        from fairseq import utils as fairseq_utils

        return list(fairseq_utils.get_available_activation_fns())
    except Exception:  # pragma: no cover - fairseq missing or broken
        return []


def available_activation_fns():
    """All names accepted by :func:`get_activation_fn`."""
    names = list(MEGA_ACTIVATIONS)
    for name in _fairseq_activation_names():
        if name not in names:
            names.append(name)
    return names


def get_activation_fn(activation: str) -> Callable[[Tensor], Tensor]:
    """Return the element-wise function called ``activation``.

    Knows ``silu``, ``relu2`` and ``laplace`` and falls back to fairseq's
    ``utils.get_activation_fn`` for every other name (relu, gelu, gelu_accurate, tanh, linear...).

    Raises:
        ValueError: naming ``activation`` and the allowed values when the name is unknown.
    """
    if activation == "silu":
        return silu
    if activation == "relu2":
        return relu2
    if activation == "laplace":
        return laplace
    known = _fairseq_activation_names()
    if activation in known:
        from fairseq import utils as fairseq_utils

        return fairseq_utils.get_activation_fn(activation)
    raise ValueError(
        "activation={!r} is not supported; allowed values: {}".format(
            activation, ", ".join(available_activation_fns())
        )
    )


def check_attention_activation(attention_activation: str) -> str:
    """Validate an attention activation name and return it.

    Raises:
        ValueError: naming ``attention_activation`` and the allowed values.
    """
    if attention_activation not in ATTENTION_ACTIVATIONS:
        raise ValueError(
            "attention_activation={!r} is not supported; allowed values: {}".format(
                attention_activation, ", ".join(ATTENTION_ACTIVATIONS)
            )
        )
    return attention_activation
