"""The gates of the Mega self-attention as fused autograd functions.

``MovingAverageGatedAttention`` projects the EMA output once, ``base = W_mx X'`` (Time x Batch x
(D + Z + H + D)), and reads four things from it::

    u = sigmoid(base[:D])                       update gate, Time x Batch x D
    z = silu(base[D:D+Z]);  q, k = z * gamma[i] + beta[i]   queries/keys, Batch x Time x Z
    r = silu(base[D+Z:D+Z+H])                   reset gate, Time x Batch x H
    hx = base[D+Z+H:]                           residual of the output, Time x Batch x D

and later gates the attention output with r: ``p = (attn @ silu(v_pre)) * r``.

Written with plain autograd the split costs a separate gradient buffer per piece plus a
zero-filled ``base``-sized buffer (and a copy) for each split. :class:`GateSplit` computes u, q
and k in one forward and, in the backward, writes every piece's gradient straight into its slice
of one ``base``-sized gradient; it hands out ``q`` and ``k`` already laid out Batch x Time (the
layout the chunked attention views without copying) and r's pre-activation as a view.
:class:`GatedAttentionProjection` applies both silu activations, the gate and ``h_proj`` and keeps
only pre-activations (which live in the gate buffers and ``v_proj``'s output anyway) for its backward.
"""

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .activations import silu
from .fusion_guard import fused_autograd_applies, plain_module

GateTensors = Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]


def _split_sizes(base: Tensor, embed_dim: int, zdim: int, hdim: int):
    if base.dim() != 3 or base.size(-1) != 2 * embed_dim + zdim + hdim:
        raise ValueError(
            "base must be Time x Batch x (2 * embed_dim + zdim + hdim) = (T, B, {}), got shape {}".format(
                2 * embed_dim + zdim + hdim, tuple(base.shape)
            )
        )
    z_start, r_start = embed_dim, embed_dim + zdim
    hx_start = r_start + hdim
    return z_start, r_start, hx_start


def _batch_first_query_key(z: Tensor, gamma: Tensor, beta: Tensor) -> Tuple[Tensor, Tensor]:
    """``z * gamma[i] + beta[i]`` for i = 0, 1 from z (Time x Batch x Z), each Batch x Time x Z contiguous."""
    seq_len, bsz, zdim = z.shape
    z_bt = z.transpose(0, 1)
    q = torch.addcmul(beta[0], z_bt, gamma[0], out=z.new_empty(bsz, seq_len, zdim))
    k = torch.addcmul(beta[1], z_bt, gamma[1], out=z.new_empty(bsz, seq_len, zdim))
    return q, k


def _gates_forward(base: Tensor, gamma: Tensor, beta: Tensor, embed_dim: int, zdim: int, hdim: int):
    z_start, r_start, hx_start = _split_sizes(base, embed_dim, zdim, hdim)
    u = torch.sigmoid(base[..., :z_start])
    z = F.silu(base[..., z_start:r_start])
    q, k = _batch_first_query_key(z, gamma, beta)
    return u, z, q, k, base[..., r_start:hx_start], base[..., hx_start:]


class GateSplit(torch.autograd.Function):
    """``(u, q, k, r_pre, hx)`` from ``base``, ``gamma``, ``beta`` with one fused backward.

    Shapes: base Time x Batch x (D + Z + H + D); gamma, beta 2 x Z. Returns u (T x B x D),
    q and k (B x T x Z, contiguous), and two views of base: r_pre (T x B x H, the reset gate
    before its silu) and hx (T x B x D).
    """

    @staticmethod
    def forward(ctx, base: Tensor, gamma: Tensor, beta: Tensor, embed_dim: int, zdim: int, hdim: int):
        u, z, q, k, r_pre, hx = _gates_forward(base, gamma, beta, embed_dim, zdim, hdim)
        ctx.sizes = (embed_dim, zdim, hdim)
        ctx.save_for_backward(base, gamma, u, z)
        return u, q, k, r_pre, hx

    @staticmethod
    def backward(ctx, grad_u, grad_q, grad_k, grad_r_pre, grad_hx):
        base, gamma, u, z = ctx.saved_tensors
        embed_dim, zdim, hdim = ctx.sizes
        z_start, r_start, _ = _split_sizes(base, embed_dim, zdim, hdim)
        # one Time x Batch x (D + Z + H + D) buffer; each piece writes its own slice
        grad_base = torch.empty_like(base, memory_format=torch.contiguous_format)
        grad_gamma, grad_beta = gate_gradients(
            grad_base, (grad_u, grad_q, grad_k, grad_r_pre, grad_hx), u, base[..., z_start:r_start], z, gamma,
            embed_dim, zdim, hdim, ctx.needs_input_grad[1], ctx.needs_input_grad[2],
        )
        return grad_base, grad_gamma, grad_beta, None, None, None


def gate_gradients(grad_base: Tensor, grads, u: Tensor, z_pre: Tensor, z: Tensor, gamma: Tensor, embed_dim: int,
                   zdim: int, hdim: int, need_gamma: bool, need_beta: bool):
    """Write the gradient of ``base`` from the gates' gradients; return ``(grad_gamma, grad_beta)``.

    grad_base: the Time x Batch x (D + Z + H + D) buffer to fill (every element is written);
    grads: ``(grad_u, grad_q, grad_k, grad_r_pre, grad_hx)``, each None or shaped like its gate
    (q and k Batch x Time x Z); u: the update gate; z_pre, z: Time x Batch x Z before and after
    its silu; gamma: 2 x Z. Shared by :class:`GateSplit` and the fused gate projection.
    """
    grad_u, grad_q, grad_k, grad_r_pre, grad_hx = grads
    z_start, r_start, hx_start = embed_dim, embed_dim + zdim, embed_dim + zdim + hdim
    grad_u_slice = grad_base[..., :z_start]
    if grad_u is None:
        grad_u_slice.zero_()
    else:
        torch.ops.aten.sigmoid_backward.grad_input(grad_u, u, grad_input=grad_u_slice)

    grad_gamma = grad_beta = None
    grad_z_slice = grad_base[..., z_start:r_start]
    if grad_q is None and grad_k is None:
        grad_z_slice.zero_()
        if need_gamma:
            grad_gamma = torch.zeros_like(gamma)
        if need_beta:
            grad_beta = torch.zeros_like(gamma)
    else:
        grad_q = torch.zeros_like(z.transpose(0, 1)) if grad_q is None else grad_q
        grad_k = torch.zeros_like(z.transpose(0, 1)) if grad_k is None else grad_k
        # Batch x Time x Z -> Time x Batch x Z views
        grad_q_tb, grad_k_tb = grad_q.transpose(0, 1), grad_k.transpose(0, 1)
        grad_z = torch.addcmul(grad_q_tb * gamma[0], grad_k_tb, gamma[1])
        torch.ops.aten.silu_backward.grad_input(grad_z, z_pre, grad_input=grad_z_slice)
        if need_gamma:
            grad_gamma = torch.stack([(grad_q_tb * z).sum((0, 1)), (grad_k_tb * z).sum((0, 1))])
        if need_beta:
            grad_beta = torch.stack([grad_q.sum((0, 1)), grad_k.sum((0, 1))])

    for grad, piece in ((grad_r_pre, grad_base[..., r_start:hx_start]), (grad_hx, grad_base[..., hx_start:])):
        if grad is None:
            piece.zero_()
        else:
            piece.copy_(grad)
    return grad_gamma, grad_beta


def split_gates(base: Tensor, gamma: Tensor, beta: Tensor, embed_dim: int, zdim: int, hdim: int) -> GateTensors:
    """``(u, q, k, r_pre, hx)`` of the Mega self-attention from its projection ``base`` (see the module doc).

    Args:
        base: Time x Batch x (embed_dim + zdim + hdim + embed_dim), the ``mx_proj`` output.
        gamma, beta: 2 x zdim, the query/key scale and offset.

    Returns:
        u (T x B x D), q and k (B x T x Z, contiguous), r_pre (T x B x H: the reset gate is
        ``silu(r_pre)``), hx (T x B x D); r_pre and hx are views of base. Without gradients
        (e.g. decoding) the same values come from the plain ops, no autograd function.
    """
    if torch.is_grad_enabled() and (base.requires_grad or gamma.requires_grad or beta.requires_grad):
        return GateSplit.apply(base, gamma, beta, embed_dim, zdim, hdim)
    u, _, q, k, r_pre, hx = _gates_forward(base, gamma, beta, embed_dim, zdim, hdim)
    return u, q, k, r_pre, hx


# ------------------------------------------------------------ reset gate on the attention output
def attend_values(weights: Tensor, v: Tensor, seq_len: int) -> Tensor:
    """Chunk-wise ``weights @ v``: weights Batch x Chunks x n x n, v Batch x Time x H.

    v is zero-padded to ``Chunks * n`` rows when Time is not a whole number of chunks (those keys
    carry zero weight). Returns Batch x Time x H (a view of the Batch x (Chunks * n) x H result).
    """
    bsz, num_chunks, frame, _ = weights.shape
    extra = num_chunks * frame - v.size(1)
    if extra > 0:
        v = F.pad(v, (0, 0, 0, extra))
    h = torch.matmul(weights, v.reshape(bsz, num_chunks, frame, v.size(-1)))
    return h.view(bsz, num_chunks * frame, -1)[:, :seq_len]


class GatedAttentionProjection(torch.autograd.Function):
    """``h = W_h ((weights @ silu(v_pre)) * silu(r_pre)) + b_h``, keeping only ``weights``, the
    pre-activations and ``W_h``.

    Plain autograd keeps ``silu(v_pre)``, the attention output, ``r = silu(r_pre)`` and the gated
    product (``h_proj``'s input) alive until the backward. Here the product is formed in place in
    the attention output and projected; the backward recomputes what it needs (one chunk-wise
    matmul, ~2 n H flops a token, two silu and one product). v_pre and r_pre are kept alive by
    ``v_proj`` / the gate split anyway, so nothing Batch x Time x H is stored for this step. The
    backward uses explicit derivatives only (no nested autograd call), so it traces as one graph
    under ``torch.compile``.

    Shapes: weights Batch x Chunks x n x n; v_pre Batch x Time x H; r_pre Time x Batch x H;
    weight D x H; bias D or None. Returns h Batch x Time x D.
    """

    @staticmethod
    def forward(ctx, weights: Tensor, v_pre: Tensor, r_pre: Tensor, weight: Tensor, bias: Optional[Tensor]):
        v = F.silu(v_pre)
        gated = attend_values(weights, v, v_pre.size(1))
        # v's buffer (Batch x Time x H, like gated) takes r = silu(r_pre): one fresh buffer fewer
        gated.mul_(torch.ops.aten.silu.out(r_pre.transpose(0, 1), out=v))
        del v
        ctx.save_for_backward(weights, v_pre, r_pre, weight)
        ctx.has_bias = bias is not None
        return F.linear(gated, weight, bias)

    @staticmethod
    def backward(ctx, grad_h):
        weights, v_pre, r_pre, weight = ctx.saved_tensors
        seq_len = v_pre.size(1)
        bsz, num_chunks, frame, _ = weights.shape
        grad_rows = grad_h.reshape(-1, grad_h.size(-1))
        grad_bias = grad_rows.sum(0) if ctx.has_bias and ctx.needs_input_grad[4] else None
        # the gated product's gradient, Batch x Time x H
        grad_gated = grad_rows.mm(weight).view(bsz, seq_len, -1)
        v = F.silu(v_pre)
        attended = attend_values(weights, v, seq_len)
        # r recomputed into a Batch x Time buffer; it first forms the gated product for W_h's
        # gradient, then becomes the attention output's gradient in place
        r_bt = torch.ops.aten.silu.out(r_pre.transpose(0, 1), out=torch.empty_like(grad_gated))
        grad_weight = None
        if ctx.needs_input_grad[3]:
            gated = attended * r_bt
            grad_weight = grad_rows.t().mm(gated.view(-1, gated.size(-1)))
            del gated
        grad_attended = r_bt.mul_(grad_gated)
        grad_r_pre = None
        if ctx.needs_input_grad[2]:
            # the recomputed attention output becomes r's gradient, then r_pre's, in place
            grad_r = attended.mul_(grad_gated).transpose(0, 1)
            grad_r_pre = torch.ops.aten.silu_backward.grad_input(grad_r, r_pre, grad_input=grad_r)
        del attended, grad_gated
        extra = num_chunks * frame - seq_len
        if extra > 0:
            grad_attended = F.pad(grad_attended, (0, 0, 0, extra))
            v = F.pad(v, (0, 0, 0, extra))
        grad_attended = grad_attended.reshape(bsz, num_chunks, frame, -1)
        v = v.reshape(bsz, num_chunks, frame, -1)
        grad_weights = None
        if ctx.needs_input_grad[0]:
            grad_weights = torch.matmul(grad_attended, v.transpose(-1, -2))
        grad_v_pre = None
        if ctx.needs_input_grad[1]:
            # v is no longer needed: its buffer takes the values' gradient, which then turns into
            # v_pre's gradient in place (fewer fresh Batch x Time x H buffers)
            grad_v = torch.matmul(weights.transpose(-1, -2), grad_attended, out=v)
            grad_v = grad_v.view(bsz, num_chunks * frame, -1)[:, :seq_len]
            grad_v_pre = torch.ops.aten.silu_backward.grad_input(grad_v, v_pre, grad_input=grad_v)
        return grad_weights, grad_v_pre, grad_r_pre, grad_weight, grad_bias


def gated_attention_projection(weights: Tensor, v_pre: Tensor, r_pre: Tensor, activation, projection) -> Tensor:
    """``projection((weights @ activation(v_pre)) * silu(r_pre))`` chunk by chunk, Batch x Time x D.

    Args:
        weights: Batch x Chunks x n x n attention weights (after attention dropout).
        v_pre: Batch x Time x H values before their activation (no dropout between the two).
        r_pre: Time x Batch x H reset gate before its silu.
        activation: the element-wise value activation.
        projection: ``h_proj`` (H -> D). With ``silu`` (Mega's default), a plain ``nn.Linear``
            without hooks and gradients needed, :class:`GatedAttentionProjection` runs; otherwise
            the same value comes from plain ops.
    """
    if activation is silu and plain_module(projection, torch.nn.Linear):
        if fused_autograd_applies(weights, v_pre, r_pre, projection.weight, projection.bias):
            return GatedAttentionProjection.apply(weights, v_pre, r_pre, projection.weight, projection.bias)
    return projection(attend_values(weights, activation(v_pre), v_pre.size(1)) * F.silu(r_pre).transpose(0, 1))


# ------------------------------------------------------------------- update gate on the output
class GatedOutput(torch.autograd.Function):
    """``out = residual + u * (silu(pre) - residual)`` with ``pre = attended (+ hx)``; keeps only ``pre``.

    Plain autograd keeps ``pre`` and ``silu(pre)``, and its backward makes five temporaries for
    the interpolation plus a Batch x Time copy of the gradient for the projection that produced
    ``attended``. Here ``silu(pre)`` is recomputed, the gradients are formed in three buffers, and
    the gradient of ``pre`` is written in ``attended``'s own memory layout (its producer then
    reads it without copying).

    Shapes: residual, u: Time x Batch x D; attended: Time x Batch x D with any strides (e.g. a
    transposed Batch x Time result); hx: Time x Batch x D or None. Returns Time x Batch x D.
    """

    @staticmethod
    def forward(ctx, residual: Tensor, attended: Tensor, u: Tensor, hx: Optional[Tensor]):
        pre = attended if hx is None else hx + attended
        ctx.has_hx = hx is not None
        # the strides empty_like would give (attended's own when dense), without allocating
        layout = torch.empty_like(attended, device="meta")
        ctx.attended_layout = (layout.shape, layout.stride())
        ctx.save_for_backward(residual, u, pre)
        gated = F.silu(pre)
        return torch.lerp(residual, gated, u, out=gated)

    @staticmethod
    def backward(ctx, grad_out):
        residual, u, pre = ctx.saved_tensors
        grad_gated = grad_out * u
        grad_residual = grad_out - grad_gated if ctx.needs_input_grad[0] else None
        grad_u = None
        if ctx.needs_input_grad[2]:
            grad_u = F.silu(pre).sub_(residual).mul_(grad_out)
        # d out / d pre = u * silu'(pre), written with attended's strides
        shape, stride = ctx.attended_layout
        grad_pre = torch.empty_strided(shape, stride, dtype=pre.dtype, device=pre.device)
        torch.ops.aten.silu_backward.grad_input(grad_gated, pre, grad_input=grad_pre)
        return grad_residual, grad_pre, grad_u, (grad_pre if ctx.has_hx else None)


def gated_output(residual: Tensor, attended: Tensor, u: Tensor, hx: Optional[Tensor]) -> Tensor:
    """``residual + u * (silu(attended + hx) - residual)`` (``hx`` may be None), Time x Batch x D.

    Through :class:`GatedOutput` when a gradient is needed, else plain ops (same values).
    """
    tensors = (residual, attended, u, hx)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return GatedOutput.apply(residual, attended, u, hx)
    pre = attended if hx is None else hx + attended
    return torch.lerp(residual, F.silu(pre), u)
