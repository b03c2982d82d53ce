"""What the two Mega attention layers share: their activations, dropouts, norm and output gate.

Both :class:`MovingAverageGatedAttention` and :class:`GatedCrossAttention` end the same way:
``out = x + u * (dropout(act(H + hx)) - x)`` (``hx`` only in the self-attention), with a norm
before (prenorm) or after, and both must keep what padded positions hold (even NaN/inf) from reaching real ones.
"""

from typing import Optional

import torch
import torch.nn as nn
from torch import Tensor

from .activations import check_attention_activation, get_activation_fn, silu
from .attention_state import CachedAttentionState
from .fairseq_dropout import FairseqDropout, FairseqFeatureDropout
from .fused_gates import gated_output
from .fusion_guard import has_forward_hooks
from .recomputed_activations import recompute_on_backward
from .sequence_norm import SequenceNorm


class GatedAttentionBase(CachedAttentionState, nn.Module):
    """Common set-up and output gate of the Mega gated attention layers.

    Sets ``embed_dim``, ``zdim``, ``ndim``, ``activation``, ``attention_activation``,
    ``scaling``, the dropouts (``dropout``, ``hidden_dropout``, ``attention_dropout``),
    ``prenorm`` and ``norm`` (parameter names ``norm.*``, as in the official code).
    """

    def __init__(
        self,
        embed_dim: int,
        zdim: int,
        ndim: int,
        dropout: float,
        attention_dropout: float,
        hidden_dropout: float,
        activation: str,
        attention_activation: str,
        norm_type: str,
        prenorm: bool,
        norm_affine: bool,
        feature_dropout: bool,
        export: bool,
    ):
        super().__init__()
        self.embed_dim = embed_dim
        self.zdim = zdim
        self.ndim = ndim
        self.activation = get_activation_fn(activation)
        self.attention_activation = check_attention_activation(attention_activation)
        self.scaling = zdim ** -0.5 if attention_activation == "softmax" else None

        name = self.__class__.__name__
        dropout_class = FairseqFeatureDropout if feature_dropout else FairseqDropout
        self.dropout = dropout_class(dropout, module_name=name)
        self.hidden_dropout = dropout_class(hidden_dropout, module_name=name)
        self.attention_dropout = FairseqDropout(attention_dropout, module_name=name)

        self.prenorm = prenorm
        self.norm = SequenceNorm(norm_type, embed_dim, affine=norm_affine, export=export)

    def _pre_norm(self, x: Tensor) -> Tensor:
        """``norm(x)`` before the attention. Inside a :func:`~.recomputed_activations.recompute_scope`
        a stateless norm's output (layer, RMS or scale norm, without hooks) is not kept for the
        backward: it is made again there from x (kept anyway) and the norm's parameters."""
        normed = self.norm(x)
        norm = self.norm
        stateless = norm.norm_type in ("layernorm", "rmsnorm", "scalenorm")
        if stateless and not any(has_forward_hooks(m) for m in norm.modules()):
            recompute_on_backward(normed, lambda: norm(x))
        return normed

    @staticmethod
    def _finite_at_pads(x: Tensor, padding_mask: Optional[Tensor]) -> Tensor:
        """x with every NaN/inf at a padded position replaced by 0 (finite pads are kept as they are).

        A pad key's attention weight is exactly 0, but ``0 * NaN`` is NaN (and a NaN key turns its
        whole score row into NaN); in the backward a non-finite pad makes the gates' gradients NaN
        there, which the EMA then spreads to real positions and into the weight gradients. Finite
        pad values never reach a real position, so only non-finite ones are replaced, and pad
        outputs stay as the official code computes them.

        x: Time x Batch x C; padding_mask: Batch x Time bool (True = pad) or None. Returns x
        itself when there is no mask (no cost without padding).
        """
        if padding_mask is None:
            return x
        bad = torch.isfinite(x).logical_not_().logical_and_(padding_mask.t().unsqueeze(-1))
        return x.masked_fill(bad, 0.0)

    def _gated_output(self, residual: Tensor, attended: Tensor, u: Tensor, hx: Optional[Tensor] = None,
                      hx_is_scratch: bool = False) -> Tensor:
        """``residual + u * (dropout(act(attended + hx)) - residual)``, then the norm if not prenorm.

        residual, u, hx: Time x Batch x embed_dim; attended: Time x Batch x embed_dim (any
        strides, e.g. a transposed Batch x Time result). ``hx_is_scratch``: hx is a buffer of its
        own that nothing reads afterwards (its memory may then hold ``attended + hx``). Returns Time
        x Batch x embed_dim in residual's dtype.
        """
        if self.activation is silu and not self.dropout.is_active() and attended.dtype == residual.dtype == u.dtype:
            # one autograd function that keeps only the pre-activation (fused_gates.GatedOutput)
            out = gated_output(residual, attended, u, hx, hx_is_scratch)
        else:
            # hx first: the sum is laid out like hx (Time x Batch) whatever attended's strides are
            pre_activation = attended if hx is None else hx + attended
            gated = self.dropout(self.activation(pre_activation))
            # residual + u * (gated - residual) in one pass
            out = torch.lerp(residual, gated.to(residual.dtype), u.to(residual.dtype))
        if not self.prenorm:
            out = self.norm(out)
        return out

    def extra_repr(self) -> str:
        return "edim={}, zdim={}, ndim={}, attn_act={}, prenorm={}".format(
            self.embed_dim, self.zdim, self.ndim, self.attention_activation, self.prenorm
        )
