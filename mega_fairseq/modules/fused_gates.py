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
only pre-activations (which live in the gate buffers and ``v_proj``'s output anyway) for its backward;
it runs block by block in reused work buffers (:data:`CPU_BLOCK_TOKENS`). The element-wise steps
of these functions (silu, its derivative and the products around them) each take one pass through
:mod:`.silu_gate_kernels` (a compiled kernel for float32 on the CPU, torch ops otherwise).
"""

import functools
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .activations import silu
from .fusion_guard import compiling, fused_autograd_applies, plain_module
from .recomputed_activations import recompute_on_backward
from .reused_buffers import BACKWARD_GRADIENTS
from .silu_gate_kernels import (
    gated_output_backward,
    gated_output_into,
    mul_silu_,
    reset_gate_backward,
    silu_into,
    silu_with_slope,
)

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


def batch_first_query_or_key(z: Tensor, gamma: Tensor, beta: Tensor, index: int) -> Tensor:
    """``z * gamma[index] + beta[index]`` (q: 0, k: 1) from z (Time x Batch x Z), Batch x Time x Z contiguous."""
    seq_len, bsz, zdim = z.shape
    return torch.addcmul(beta[index], z.transpose(0, 1), gamma[index], out=z.new_empty(bsz, seq_len, zdim))


def _batch_first_query_key(z: Tensor, gamma: Tensor, beta: Tensor) -> Tuple[Tensor, Tensor]:
    """q and k (:func:`batch_first_query_or_key`)."""
    return batch_first_query_or_key(z, gamma, beta, 0), batch_first_query_or_key(z, gamma, beta, 1)


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
        grad_z_pre, grad_gamma, grad_beta = query_key_gradients(
            grad_q, grad_k, base[..., z_start:r_start], z, gamma, ctx.needs_input_grad[1], ctx.needs_input_grad[2])
        # one Time x Batch x (D + Z + H + D) buffer; each piece writes its own slice
        grad_base = torch.empty_like(base, memory_format=torch.contiguous_format)
        write_gate_gradient(grad_base, grad_u, u, grad_z_pre, grad_r_pre, grad_hx, embed_dim, zdim)
        return grad_base, grad_gamma, grad_beta, None, None, None


def query_key_gradients(grad_q: Optional[Tensor], grad_k: Optional[Tensor], z_pre: Tensor, z: Tensor, gamma: Tensor,
                        need_gamma: bool, need_beta: bool):
    """``(grad_z_pre, grad_gamma, grad_beta)`` from the gradients of ``q = z * gamma[0] + beta[0]`` and
    ``k = z * gamma[1] + beta[1]`` (each Batch x Time x Z or None), with ``z = silu(z_pre)``.

    z_pre, z: Time x Batch x Z; gamma: 2 x Z. grad_z_pre is Time x Batch x Z contiguous, or None
    when neither q nor k has a gradient (the gamma and beta gradients are then zero).
    """
    if grad_q is None and grad_k is None:
        return None, (torch.zeros_like(gamma) if need_gamma else None), (torch.zeros_like(gamma) if need_beta else None)
    grad_q = torch.zeros_like(z.transpose(0, 1)) if grad_q is None else grad_q
    grad_k = torch.zeros_like(z.transpose(0, 1)) if grad_k is None else grad_k
    # Batch x Time x Z -> Time x Batch x Z views
    grad_q_tb, grad_k_tb = grad_q.transpose(0, 1), grad_k.transpose(0, 1)
    grad_z = torch.mul(grad_q_tb, gamma[0], out=torch.empty_like(z, memory_format=torch.contiguous_format))
    grad_z.addcmul_(grad_k_tb, gamma[1])
    grad_z_pre = torch.ops.aten.silu_backward.grad_input(grad_z, z_pre, grad_input=grad_z)
    grad_gamma = grad_beta = None
    if need_gamma:
        grad_gamma = torch.stack([(grad_q_tb * z).sum((0, 1)), (grad_k_tb * z).sum((0, 1))])
    if need_beta:
        grad_beta = torch.stack([grad_q.sum((0, 1)), grad_k.sum((0, 1))])
    return grad_z_pre, grad_gamma, grad_beta


def write_gate_gradient(out: Tensor, grad_u: Optional[Tensor], u: Tensor, grad_z_pre: Optional[Tensor],
                        grad_r_pre: Optional[Tensor], grad_hx: Optional[Tensor], embed_dim: int, zdim: int):
    """Write the gradient of (a run of time steps of) ``base`` into ``out``, every element.

    out: Steps x Batch x (D + Z + H + D); the other arguments are the same steps of the gates'
    gradients (None: no gradient), of ``u`` and of ``grad_z_pre`` (:func:`query_key_gradients`),
    Steps x Batch x width with any strides.
    """
    z_start, r_start = embed_dim, embed_dim + zdim
    hx_start = out.size(-1) - embed_dim
    if grad_u is None:
        out[..., :z_start].zero_()
    else:
        torch.ops.aten.sigmoid_backward.grad_input(grad_u, u, grad_input=out[..., :z_start])
    for grad, piece in ((grad_z_pre, out[..., z_start:r_start]), (grad_r_pre, out[..., r_start:hx_start]),
                        (grad_hx, out[..., hx_start:])):
        if grad is None:
            piece.zero_()
        else:
            piece.copy_(grad)


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


#: tokens per block of :class:`GatedAttentionProjection`, the gate projection and the output gate on
#: the CPU. The element-wise work and the chunk matmuls run block by block in a few block-sized work
#: buffers, made once per call and reused by every block: whole Batch x Time x H temporaries would
#: each be mapped fresh by the allocator (and zero-filled page by page by the kernel) and raise the
#: peak memory. A fixed size, not a share of the call, because what matters is that a block's
#: buffers stay in the core's caches between the passes over them (at H=1024, 2 MiB a buffer);
#: below 512 tokens the GEMMs' repeated packing of the weights costs more than that saves.
#: Measured (``layer forward + backward``, 8192 tokens, 1 thread, interleaved): 512-token blocks
#: were 1.04x faster than blocks of a quarter of the call at d=512 h=1024 and d=256 h=512, and
#: level at d=1024 h=2048; 256 and 384 tokens were 1.04x slower than 512. Other devices take the
#: whole batch as one block.
CPU_BLOCK_TOKENS = 512


def block_tokens(device: torch.device, total: int) -> int:
    """Tokens per block of a call over ``total`` tokens on ``device`` (see :data:`CPU_BLOCK_TOKENS`)."""
    if device.type != "cpu":
        return max(1, total)
    return max(1, CPU_BLOCK_TOKENS)


class _ChunkBlocks:
    """Blocks of whole attention chunks for :class:`GatedAttentionProjection`, with work buffers.

    ``weights`` is Batch x Chunks x n x n over a sequence of ``seq_len`` tokens (the last chunk may
    be partial). A block is one sequence's run of chunks, or several whole sequences when one
    sequence (with no partial chunk) fits in a block. Buffers are flat and each block views the
    front of them, Block sequences x Block frames x H.
    """

    def __init__(self, weights: Tensor, seq_len: int, hdim: int, count: int):
        bsz, num_chunks, frame, _ = weights.shape
        self.frame, self.seq_len, self.hdim = frame, seq_len, hdim
        chunks = max(1, block_tokens(weights.device, bsz * num_chunks * frame) // frame)
        if chunks >= num_chunks and num_chunks * frame == seq_len:
            per = max(1, chunks // num_chunks)
            self.ranges = [(slice(b, min(bsz, b + per)), slice(0, num_chunks)) for b in range(0, bsz, per)]
        else:
            per = min(chunks, num_chunks)
            self.ranges = [(slice(b, b + 1), slice(c, min(num_chunks, c + per)))
                           for b in range(bsz) for c in range(0, num_chunks, per)]
        #: the most token rows a block holds
        self.rows = max((s.stop - s.start) * (c.stop - c.start) for s, c in self.ranges) * frame
        self.buffers = [weights.new_empty(self.rows * hdim) for _ in range(count)]

    def __iter__(self):
        """``(sequences, chunks, first, last)``: the slices of weights and the block's tokens first:last."""
        for sequences, chunks in self.ranges:
            yield sequences, chunks, chunks.start * self.frame, min(chunks.stop * self.frame, self.seq_len)

    def buffer(self, index: int, sequences: slice, chunks: slice) -> Tensor:
        """Work buffer ``index`` viewed Block sequences x (Block chunks * n) x H."""
        shape = (sequences.stop - sequences.start, (chunks.stop - chunks.start) * self.frame, self.hdim)
        return self.buffers[index][: shape[0] * shape[1] * shape[2]].view(shape)


def _silu_padded(pre: Tensor, out: Tensor, slope: Optional[Tensor] = None, bias: Optional[Tensor] = None) -> Tensor:
    """``silu(pre + bias)`` (``silu(pre)`` when bias is None) into the front rows of ``out`` (S x P x H,
    pre S x P' x H with P' <= P); the rows after them are zeroed (keys past the end: their weight is
    zero, a leftover NaN must not leak). With ``slope`` (out's shape), silu's derivative goes into its
    front rows."""
    if slope is None:
        silu_into(pre, out[:, : pre.size(1)], bias)
    else:
        silu_with_slope(pre, out[:, : pre.size(1)], slope[:, : pre.size(1)], bias)
    out[:, pre.size(1):].zero_()
    return out


def _chunk_matmul(weights: Tensor, values: Tensor, out: Tensor, transpose: bool = False) -> Tensor:
    """``weights @ values`` chunk by chunk (``weights^T`` with ``transpose``): weights S x K x n x n,
    values and out S x (K n) x H."""
    frames = weights.reshape(-1, weights.size(-2), weights.size(-1))
    if transpose:
        frames = frames.transpose(1, 2)
    rows = out.view(frames.size(0), frames.size(-1), out.size(-1))
    torch.bmm(frames, values.reshape(rows.shape), out=rows)
    return out


class GatedAttentionProjection(torch.autograd.Function):
    """``h = W_h ((weights @ silu(v_pre + b_v)) * silu(r_pre)) + b_h``, keeping only ``weights``, the
    pre-activations and ``W_h``.

    ``b_v`` is ``v_proj``'s bias (or None, e.g. when ``v_pre`` already holds it): added here, in the
    passes that form ``silu(v)`` anyway, ``v_proj`` runs as a GEMM without bias (no bias copied into its
    Batch x Time x H output first) and the bias gradient is summed block by block while the blocks
    of ``v_pre``'s gradient are in cache.

    Plain autograd keeps ``silu(v_pre)``, the attention output, ``r = silu(r_pre)`` and the gated
    product (``h_proj``'s input) alive until the backward. Here the forward and the backward run
    block by block (:class:`_ChunkBlocks`, :data:`CPU_BLOCK_TOKENS`): each block forms what it
    needs in reused work buffers, and the backward recomputes it (one chunk-wise matmul, ~2 n H
    flops a token, two silu and one product). v_pre and r_pre are kept alive by ``v_proj`` / the
    gate split anyway, so nothing Batch x Time x H is stored for this step, and no Batch x Time x H
    temporary is made. The backward uses explicit derivatives only (no nested autograd call).

    Shapes: weights Batch x Chunks x n x n; v_pre Batch x Time x H; r_pre Time x Batch x H;
    weight D x H; bias D or None; value_bias H or None. Returns h Batch x Time x D. The gradient of
    r_pre is a contiguous Time x Batch x H tensor.
    """

    @staticmethod
    def forward(ctx, weights: Tensor, v_pre: Tensor, r_pre: Tensor, weight: Tensor, bias: Optional[Tensor],
                value_bias: Optional[Tensor] = None):
        bsz, seq_len, hdim = v_pre.shape
        out = v_pre.new_empty(bsz, seq_len, weight.size(0))
        r_bt = r_pre.transpose(0, 1)
        blocks = _ChunkBlocks(weights, seq_len, hdim, count=2)
        for sequences, chunks, first, last in blocks:
            values = _silu_padded(v_pre[sequences, first:last], blocks.buffer(0, sequences, chunks), bias=value_bias)
            attended = _chunk_matmul(weights[sequences, chunks], values, blocks.buffer(1, sequences, chunks))
            # the attention output becomes the gated product in place (values' buffer: scratch)
            gated = mul_silu_(attended[:, : last - first], r_bt[sequences, first:last], values[:, : last - first])
            rows = out[sequences, first:last].view(-1, out.size(-1))
            torch.mm(gated.reshape(-1, hdim), weight.t(), out=rows)
            if bias is not None:
                rows.add_(bias)  # while the rows are in cache (see gate_projection._project_in_blocks)
        ctx.save_for_backward(weights, v_pre, r_pre, weight, value_bias)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad_h):
        weights, v_pre, r_pre, weight, value_bias = ctx.saved_tensors
        bsz, seq_len, hdim = v_pre.shape
        need_weights, need_r, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[2], ctx.needs_input_grad[3]
        need_value_bias = value_bias is not None and ctx.needs_input_grad[5]
        # v_pre's gradient is formed for the value bias's too
        need_v = ctx.needs_input_grad[1] or need_value_bias
        # h_proj's bias gradient, summed block by block below while grad_h's rows are in cache
        grad_bias = grad_h.new_zeros(grad_h.size(-1)) if ctx.has_bias and ctx.needs_input_grad[4] else None
        grad_value_bias = value_bias.new_zeros(value_bias.shape) if need_value_bias else None
        grad_weights = torch.empty_like(weights, memory_format=torch.contiguous_format) if need_weights else None
        # each read once by the projection before (v_proj / mx_proj), then dead: memory reused across steps
        grad_v_pre = BACKWARD_GRADIENTS.empty(v_pre.shape, v_pre) if need_v else None
        grad_r_pre = BACKWARD_GRADIENTS.empty(r_pre.shape, r_pre) if need_r else None
        grad_weight = weight.new_zeros(weight.shape) if need_weight else None
        r_bt = r_pre.transpose(0, 1)
        # buffers: 0 values, 1 the attention output (then its gradient through the chunk matmul),
        # 2 the gated product's gradient, 3 scratch, 4 the gated product, 5 silu'(v_pre)
        blocks = _ChunkBlocks(weights, seq_len, hdim, count=6)
        # the bias gradients, column sums, as matrix-vector products (see gate_projection)
        ones = v_pre.new_ones(blocks.rows) if need_value_bias or grad_bias is not None else None
        for sequences, chunks, first, last in blocks:
            count = last - first
            block_weights = weights[sequences, chunks]
            grad_rows = grad_h[sequences, first:last].reshape(-1, grad_h.size(-1))
            if grad_bias is not None:
                grad_bias.addmv_(grad_rows.t(), ones[: grad_rows.size(0)])
            slope = blocks.buffer(5, sequences, chunks) if need_v else None
            values = _silu_padded(v_pre[sequences, first:last], blocks.buffer(0, sequences, chunks), slope, value_bias)
            attended = _chunk_matmul(block_weights, values, blocks.buffer(1, sequences, chunks))[:, :count]
            # the gated product's gradient; rows past the end stay zero (they feed the chunk matmuls)
            grad_attended = blocks.buffer(2, sequences, chunks)
            grad_attended[:, count:].zero_()
            grad_gated = grad_attended[:, :count]
            torch.mm(grad_rows, weight, out=grad_gated.view(-1, hdim))
            gated = blocks.buffer(4, sequences, chunks)[:, :count] if need_weight else None
            grad_r = grad_r_pre.transpose(0, 1)[sequences, first:last] if need_r else None
            # gated = attended * silu(r), r's gradient, and grad_gated becomes the attention output's gradient
            reset_gate_backward(attended, grad_gated, r_bt[sequences, first:last], gated, grad_r,
                                blocks.buffer(3, sequences, chunks)[:, :count])
            if need_weight:
                grad_weight.addmm_(grad_rows.t(), gated.reshape(-1, hdim))
            if need_weights:
                frames = grad_weights[sequences, chunks].view(-1, blocks.frame, blocks.frame)
                torch.bmm(grad_attended.reshape(frames.size(0), blocks.frame, hdim),
                          values.reshape(frames.size(0), blocks.frame, hdim).transpose(1, 2), out=frames)
            if need_v:
                grad_values = _chunk_matmul(block_weights, grad_attended, blocks.buffer(1, sequences, chunks), transpose=True)
                grad_block = torch.mul(grad_values[:, :count], slope[:, :count], out=grad_v_pre[sequences, first:last])
                if need_value_bias:
                    rows = grad_block.reshape(-1, hdim)
                    grad_value_bias.addmv_(rows.t(), ones[: rows.size(0)])
        if not ctx.needs_input_grad[1]:
            grad_v_pre = None
        return grad_weights, grad_v_pre, grad_r_pre, grad_weight, grad_bias, grad_value_bias


def attention_projection_fuses(activation, projection, *tensors: Optional[Tensor]) -> bool:
    """Whether :func:`gated_attention_projection` runs :class:`GatedAttentionProjection` for these
    operands: the value activation is ``silu`` (Mega's default), ``projection`` a plain
    ``nn.Linear`` without hooks, a gradient is needed (:func:`~.fusion_guard.fused_autograd_applies`,
    with the projection's parameters) and torch.compile is not tracing (it fuses the plain ops itself)."""
    if activation is not silu or not plain_module(projection, torch.nn.Linear) or compiling():
        return False
    return fused_autograd_applies(*tensors, projection.weight, projection.bias)


def gated_attention_projection(weights: Tensor, v_pre: Tensor, r_pre: Tensor, activation, projection,
                               value_bias: Optional[Tensor] = None) -> Tensor:
    """``projection((weights @ activation(v_pre + value_bias)) * silu(r_pre))`` chunk by chunk, Batch x Time x D.

    Args:
        weights: Batch x Chunks x n x n attention weights (after attention dropout).
        v_pre: Batch x Time x H values before their activation (no dropout between the two).
        r_pre: Time x Batch x H reset gate before its silu.
        activation: the element-wise value activation.
        projection: ``h_proj`` (H -> D).
        value_bias: H, ``v_proj``'s bias when ``v_pre`` does not hold it yet, or None.

    When :func:`attention_projection_fuses`, :class:`GatedAttentionProjection` runs; otherwise the
    same value comes from plain ops.
    """
    if attention_projection_fuses(activation, projection, weights, v_pre, r_pre, value_bias):
        return GatedAttentionProjection.apply(weights, v_pre, r_pre, projection.weight, projection.bias, value_bias)
    if value_bias is not None:
        v_pre = v_pre + value_bias
    return projection(attend_values(weights, activation(v_pre), v_pre.size(1)) * F.silu(r_pre).transpose(0, 1))


# ------------------------------------------------------------------- update gate on the output
class GatedOutput(torch.autograd.Function):
    """``out = residual + u * (silu(pre) - residual)`` with ``pre = attended (+ hx)``; keeps only ``pre``.

    Plain autograd keeps ``pre`` and ``silu(pre)``, and its backward makes five temporaries for
    the interpolation plus a Batch x Time copy of the gradient for the projection that produced
    ``attended``. Here ``silu(pre)`` is recomputed, and forward and backward run a run of time
    steps at a time (:func:`block_tokens` tokens on the CPU), each block's operands read while they
    are in cache and its one temporary in a reused buffer; the gradient of ``pre`` is written in
    ``attended``'s own memory layout (its producer then reads it without copying). Inside a
    recompute scope (``recomputed_activations``) the output itself is registered: whoever keeps it
    for the backward (the feed-forward network's norm, a post-norm) gets it remade from
    ``residual``, ``pre`` and ``u``, which are kept here anyway.

    With ``hx_is_scratch`` (hx a buffer of its own that nothing reads after this function, as the
    gate projection's ``hx``), the sum ``pre`` is formed in hx's memory instead of a new buffer.

    Shapes: residual, u: Time x Batch x D; attended: Time x Batch x D with any strides (e.g. a
    transposed Batch x Time result); hx: Time x Batch x D or None. Returns Time x Batch x D.
    """

    @staticmethod
    def forward(ctx, residual: Tensor, attended: Tensor, u: Tensor, hx: Optional[Tensor], hx_is_scratch: bool = False):
        ctx.has_hx = hx is not None
        # the strides empty_like would give (attended's own when dense), without allocating
        layout = torch.empty_like(attended, device="meta")
        ctx.attended_layout = (layout.shape, layout.stride())
        if hx is None:
            pre = attended
        elif hx_is_scratch and hx.is_contiguous():
            pre = hx  # hx + attended written over hx, block by block below
        else:
            pre = torch.empty_like(hx, memory_format=torch.contiguous_format)
        out = torch.empty_like(residual, memory_format=torch.contiguous_format)
        for block in time_blocks(residual):
            if hx is not None:
                torch.add(hx[block], attended[block], out=pre[block])
            _gated_output_value(residual[block], pre[block], u[block], out=out[block])
        ctx.save_for_backward(residual, u, pre)
        # whoever keeps the output (the feed-forward network, a post-norm) gets it remade from these three
        return recompute_on_backward(out, functools.partial(_gated_output_value, residual, pre, u))

    @staticmethod
    def backward(ctx, grad_out):
        residual, u, pre = ctx.saved_tensors
        need_residual, _, need_u = ctx.needs_input_grad[:3]
        shape, stride = ctx.attended_layout
        grad_pre = torch.empty_strided(shape, stride, dtype=pre.dtype, device=pre.device)
        grad_residual = torch.empty_like(residual, memory_format=torch.contiguous_format) if need_residual else None
        grad_u = torch.empty_like(u, memory_format=torch.contiguous_format) if need_u else None
        blocks = time_blocks(residual)
        buffer = pre.new_empty((blocks[0].stop - blocks[0].start) * pre.size(1) * pre.size(2))
        for block in blocks:
            step_grad = grad_out[block]
            # grad_pre (written with attended's strides) = grad * u * silu'(pre); grad_residual =
            # grad * (1 - u); grad_u = grad * (silu(pre) - residual)
            gated_output_backward(step_grad, residual[block], pre[block], u[block], grad_pre[block],
                                  None if grad_residual is None else grad_residual[block],
                                  None if grad_u is None else grad_u[block],
                                  buffer[: step_grad.numel()].view(step_grad.shape))
        return grad_residual, grad_pre, grad_u, (grad_pre if ctx.has_hx else None), None


def time_blocks(x: Tensor) -> List[slice]:
    """Runs of time steps, :func:`block_tokens` tokens each (at least one step), as slices of dim 0
    of a Time x Batch x ... tensor; one empty slice for an empty sequence."""
    seq_len, bsz = x.shape[:2]
    steps = max(1, block_tokens(x.device, seq_len * bsz) // max(1, bsz))
    return [slice(start, min(seq_len, start + steps)) for start in range(0, max(seq_len, 1), steps)]


def _gated_output_value(residual: Tensor, pre: Tensor, u: Tensor, out: Optional[Tensor] = None) -> Tensor:
    """``residual + u * (silu(pre) - residual)``, written into ``out`` (a new tensor when None)."""
    if out is None:
        out = torch.empty_like(residual, memory_format=torch.contiguous_format)
    return gated_output_into(residual, pre, u, out)


def gated_output(residual: Tensor, attended: Tensor, u: Tensor, hx: Optional[Tensor], hx_is_scratch: bool = False) -> Tensor:
    """``residual + u * (silu(attended + hx) - residual)`` (``hx`` may be None), Time x Batch x D.

    Through :class:`GatedOutput` when a gradient is needed, else (or under torch.compile, which fuses
    the plain ops itself) plain ops (same values). ``hx_is_scratch``: hx is a buffer of its own that
    nothing reads afterwards; :class:`GatedOutput` then overwrites it with ``attended + hx``.
    """
    tensors = (residual, attended, u, hx)
    if not compiling() and torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return GatedOutput.apply(residual, attended, u, hx, hx_is_scratch)
    pre = attended if hx is None else hx + attended
    return torch.lerp(residual, F.silu(pre), u)
