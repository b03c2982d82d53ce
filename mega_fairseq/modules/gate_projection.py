"""``mx_proj`` and the gate split in one autograd function that keeps only what its backward needs.

The Mega self-attention projects the activated EMA output ``mx = silu(e)`` (``e = EMA(x) + omega
* x``) to ``base = W_mx mx + b`` and splits it into the update gate ``u = sigmoid(base[:D])``, the
shared query/key ``z = silu(base[D:D+Z])``, the reset gate before its silu ``r_pre =
base[D+Z:D+Z+H]`` and the output residual ``hx = base[D+Z+H:]`` (see :mod:`.fused_gates`).

Plain autograd (or :class:`~.fused_gates.GateSplit` after an ``nn.Linear``) keeps ``e`` (for
silu's derivative), ``mx`` (for the weight gradient) and the whole ``base`` (``2 D + Z + H`` per
token, alive as long as any of its slices is) until the backward. :class:`GateProjection` runs the
projection as three GEMMs into separate buffers (``u``, ``[z | r_pre]``, ``hx``), so ``hx`` is
the output gate's to reuse (it forms its kept sum ``attended + hx`` in hx's memory), and keeps
only ``e``, ``u`` and ``[z | r_pre]``:
``mx`` and ``z`` are recomputed in the backward (one silu over ``D`` and ``Z`` values a token).
That is ``2 D + Z`` fewer values per token kept for the backward (1,088 of 2,432 at d=512, z=128,
h=1024), and one ``base``-sized buffer fewer in the forward. On the CPU both directions run a
run of time steps at a time (:func:`~.fused_gates.block_tokens` tokens) in reused buffers: the
forward forms ``mx`` block by block (never whole), the backward the gradient of ``base``.
"""

import functools
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .fused_gates import (
    GateTensors,
    time_blocks,
    write_gate_gradient,
)
from .recomputed_activations import recompute_on_backward
from .silu_gate_kernels import query_key_backward, query_key_into, silu_into, silu_with_slope


class GateProjection(torch.autograd.Function):
    """``(u, q, k, r_pre, hx)`` from the EMA output before its silu, ``mx_proj``'s weight and bias.

    Shapes: ema_pre Time x Batch x D; weight (D + Z + H + D) x D; bias (D + Z + H + D) or None;
    gamma, beta 2 x Z. Returns u (T x B x D), q and k (B x T x Z, contiguous), r_pre (T x B x H, a
    view of the saved ``[z | r_pre]`` buffer) and hx (T x B x D, its own buffer).
    """

    @staticmethod
    def forward(ctx, ema_pre: Tensor, weight: Tensor, bias: Optional[Tensor], gamma: Tensor, beta: Tensor,
                embed_dim: int, zdim: int, hdim: int):
        seq_len, bsz, _ = ema_pre.shape
        sizes = [embed_dim, zdim + hdim, embed_dim]
        weights = weight.split(sizes)
        # as the query/key kernel reads them, once for every block here and in the remake
        gamma_rows, beta_rows = gamma.contiguous(), beta.contiguous()
        biases = bias.split(sizes) if bias is not None else (None, None, None)
        # zr: (T B) x (Z + H), z_pre then r_pre; q and k: B x T x Z
        u, zr, hx, q, k = _project_in_blocks(ema_pre, weights, biases, gamma_rows, beta_rows, zdim)
        # q and k are not kept by the attention's score matmul: remade from the kept [z | r_pre]
        remade = _RemadeQueryKey(zr, gamma_rows, beta_rows, seq_len, bsz, zdim)
        for index, tensor in enumerate((q, k)):
            recompute_on_backward(tensor, functools.partial(remade, index))
        ctx.sizes = (embed_dim, zdim, hdim)
        ctx.has_bias = bias is not None
        ctx.save_for_backward(ema_pre, weight, u, zr, gamma)
        return u, q, k, zr[:, zdim:].view(seq_len, bsz, hdim), hx

    @staticmethod
    def backward(ctx, grad_u, grad_q, grad_k, grad_r_pre, grad_hx):
        ema_pre, weight, u, zr, gamma = ctx.saved_tensors
        embed_dim, zdim, hdim = ctx.sizes
        seq_len, bsz, _ = ema_pre.shape
        need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
        z_pre = zr[:, :zdim].view(seq_len, bsz, zdim)
        grad_z_pre, grad_gamma, grad_beta = _query_key_backward(
            grad_q, grad_k, z_pre, gamma, ctx.needs_input_grad[3], ctx.needs_input_grad[4])
        grads = (grad_u, u, grad_z_pre, grad_r_pre, grad_hx)
        grad_ema_pre = torch.empty_like(ema_pre, memory_format=torch.contiguous_format) if need_input else None
        grad_weight = weight.new_zeros(weight.shape) if need_weight else None
        grad_bias = weight.new_zeros(weight.size(0)) if ctx.has_bias and need_bias else None
        # the gradient of base = mx_proj(mx), a run of time steps at a time in one reused buffer
        # (see time_blocks); the gates' gradients are read with whatever strides they have
        blocks = time_blocks(ema_pre)
        steps = blocks[0].stop - blocks[0].start
        grad_buffer = ema_pre.new_empty(steps * bsz * weight.size(0))
        mx_buffer = ema_pre.new_empty(steps * bsz * embed_dim) if need_weight else None
        # silu'(mx_pre), formed with mx when both gradients are needed
        slope_buffer = ema_pre.new_empty(steps * bsz * embed_dim) if need_weight and need_input else None
        # the bias gradient, a column sum, as a matrix-vector product (one pass, no reduction buffer)
        ones = ema_pre.new_ones(steps * bsz) if grad_bias is not None else None
        for block in blocks:
            shape = (block.stop - block.start, bsz, embed_dim)
            count = shape[0] * bsz
            grad_base = grad_buffer[: count * weight.size(0)].view(count, weight.size(0))
            write_gate_gradient(grad_base.view(block.stop - block.start, bsz, weight.size(0)),
                                *(None if t is None else t[block] for t in grads), embed_dim, zdim)
            mx_pre = ema_pre[block]
            slope = None if slope_buffer is None else slope_buffer[: count * embed_dim].view(shape)
            if need_weight:
                mx = mx_buffer[: count * embed_dim].view(shape)
                if slope is None:
                    silu_into(mx_pre, mx)
                else:
                    silu_with_slope(mx_pre, mx, slope)
                grad_weight.addmm_(grad_base.t(), mx.view(count, embed_dim))
            if grad_bias is not None:
                grad_bias.addmv_(grad_base.t(), ones[:count])
            if need_input:
                grad_mx = torch.mm(grad_base, weight, out=grad_ema_pre[block].view(count, embed_dim))
                if slope is None:
                    torch.ops.aten.silu_backward.grad_input(grad_mx, mx_pre.reshape(count, embed_dim), grad_input=grad_mx)
                else:
                    grad_mx.mul_(slope.view(count, embed_dim))
        return grad_ema_pre, grad_weight, grad_bias, grad_gamma, grad_beta, None, None, None


def _project_in_blocks(ema_pre: Tensor, weights, biases, gamma: Tensor, beta: Tensor,
                       zdim: int) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(u, [z_pre | r_pre], hx, q, k)`` of :meth:`GateProjection.forward`, with ``mx = silu(ema_pre)``
    formed a run of time steps at a time in one reused buffer (see :func:`~.fused_gates.time_blocks`),
    never whole; q and k (Batch x Time x Z) are formed from each block's ``z_pre`` while it is in
    cache (:func:`_query_key_block`)."""
    seq_len, bsz, embed_dim = ema_pre.shape
    u = ema_pre.new_empty(seq_len, bsz, embed_dim)
    zr = ema_pre.new_empty(seq_len * bsz, weights[1].size(0))
    hx = ema_pre.new_empty(seq_len, bsz, embed_dim)
    q, k = (ema_pre.new_empty(bsz, seq_len, zdim) for _ in range(2))
    outputs = (u.view(-1, embed_dim), zr, hx.view(-1, embed_dim))
    blocks = time_blocks(ema_pre)
    steps = blocks[0].stop - blocks[0].start
    mx_buffer = ema_pre.new_empty(steps * bsz * embed_dim)
    for block in blocks:
        rows = slice(block.start * bsz, block.stop * bsz)
        count = rows.stop - rows.start
        mx = silu_into(ema_pre[block], mx_buffer[: count * embed_dim].view(block.stop - block.start, bsz, embed_dim))
        mx = mx.view(count, embed_dim)
        for piece, piece_weight, piece_bias in zip(outputs, weights, biases):
            torch.mm(mx, piece_weight.t(), out=piece[rows])
            if piece_bias is not None:
                # added while the block's rows are in cache (addmm would first copy the bias into
                # memory not yet touched, then read it back)
                piece[rows].add_(piece_bias)
        outputs[0][rows].sigmoid_()
        _query_key_block(zr, block, bsz, zdim, gamma, beta, q, k)
    return u, zr, hx, q, k


def _query_key_block(zr: Tensor, block: slice, bsz: int, zdim: int, gamma: Tensor, beta: Tensor, q: Tensor, k: Tensor):
    """Time steps ``block`` of q and k (Batch x Time x Z) from the ``[z_pre | r_pre]`` buffer ((T B) x (Z +
    H)): ``silu(z_pre) * gamma[i] + beta[i]``, one pass (:func:`~.silu_gate_kernels.query_key_into`;
    gamma and beta contiguous, as the kernel takes them)."""
    steps = block.stop - block.start
    z_pre = zr[block.start * bsz : block.stop * bsz, :zdim].view(steps, bsz, zdim)
    query_key_into(z_pre, gamma, beta, q[:, block].transpose(0, 1), k[:, block].transpose(0, 1))


def _query_key_backward(grad_q: Optional[Tensor], grad_k: Optional[Tensor], z_pre: Tensor, gamma: Tensor,
                        need_gamma: bool, need_beta: bool):
    """``(grad_z_pre, grad_gamma, grad_beta)`` of :func:`~.fused_gates.query_key_gradients` for the
    Batch x Time x Z gradients of q and k (None: zero), with ``z_pre`` Time x Batch x Z: one pass
    (:func:`~.silu_gate_kernels.query_key_backward`) forms z and its slope on the fly and sums the
    gamma and beta gradients."""
    seq_len, bsz, zdim = z_pre.shape
    if grad_q is None or grad_k is None:
        zero = z_pre.new_zeros(bsz, seq_len, zdim)
        grad_q, grad_k = (zero if grad is None else grad for grad in (grad_q, grad_k))
    grad_z_pre = torch.empty(z_pre.shape, dtype=z_pre.dtype, device=z_pre.device)
    sums = query_key_backward(grad_q.transpose(0, 1), grad_k.transpose(0, 1), z_pre, gamma.contiguous(), grad_z_pre,
                              need_gamma or need_beta)
    grad_gamma = sums[:2].to(gamma.dtype) if need_gamma else None
    grad_beta = sums[2:].to(gamma.dtype) if need_beta else None
    return grad_z_pre, grad_gamma, grad_beta


class _RemadeQueryKey:
    """Remakes q (``index`` 0) or k (1), Batch x Time x Z, from the kept ``[z_pre | r_pre]`` buffer ((T B)
    x (Z + H)) in the backward. The attention's backward reads both: a request for one not made yet
    makes the two in one pass over ``z_pre``, a run of time steps at a time (:func:`_query_key_block`,
    z never whole), and the other one is handed out at its request."""

    def __init__(self, zr: Tensor, gamma: Tensor, beta: Tensor, seq_len: int, bsz: int, zdim: int):
        self.zr, self.gamma, self.beta, self.sizes = zr, gamma, beta, (seq_len, bsz, zdim)
        self.made: Dict[int, Tensor] = {}

    def __call__(self, index: int) -> Tensor:
        if index not in self.made:
            seq_len, bsz, zdim = self.sizes
            q, k = (self.zr.new_empty(bsz, seq_len, zdim) for _ in range(2))
            for block in time_blocks(self.zr.view(seq_len, bsz, -1)):
                _query_key_block(self.zr, block, bsz, zdim, self.gamma, self.beta, q, k)
            self.made = {0: q, 1: k}
        return self.made.pop(index)


def project_gates(ema_pre: Tensor, weight: Tensor, bias: Optional[Tensor], gamma: Tensor, beta: Tensor,
                  embed_dim: int, zdim: int, hdim: int) -> GateTensors:
    """``split_gates(linear(silu(ema_pre), weight, bias), gamma, beta, ...)`` keeping less for the backward.

    Args:
        ema_pre: Time x Batch x embed_dim, the EMA sub-layer's output before its silu.
        weight, bias: ``mx_proj``'s, (embed_dim + zdim + hdim + embed_dim) x embed_dim and its rows.
        gamma, beta: 2 x zdim, the query/key scale and offset.

    Returns:
        ``(u, q, k, r_pre, hx)`` as :func:`~.fused_gates.split_gates` gives them (u, r_pre, hx
        Time x Batch; q, k Batch x Time x Z contiguous).
    """
    if weight.dim() != 2 or weight.shape != (2 * embed_dim + zdim + hdim, embed_dim):
        raise ValueError("weight must be (2 * embed_dim + zdim + hdim) x embed_dim = {}, got shape {}".format(
            (2 * embed_dim + zdim + hdim, embed_dim), tuple(weight.shape)))
    return GateProjection.apply(ema_pre, weight, bias, gamma, beta, embed_dim, zdim, hdim)
