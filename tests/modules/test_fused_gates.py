"""The fused gates of the Mega self-attention have exact gradients.

* ``GateSplit`` (the split of ``mx_proj``), ``GateProjection`` (``mx_proj(silu(e))`` and the
  split), ``GatedAttentionProjection`` (``h_proj((weights @ silu(v)) * silu(r))`` with
  recomputation) and ``GatedOutput`` (the update gate ``lerp(x, silu(pre), u)``) pass a float64
  gradcheck; their values equal the plain definitions;
* a whole ``MovingAverageGatedAttention`` gives the same outputs and gradients (input and every
  parameter) as the same layer with all of them written as plain autograd ops.
"""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from mega_fairseq.modules import fused_gates
from mega_fairseq.modules import gated_attention_base as attention_base
from mega_fairseq.modules import moving_average_gated_attention as mega_attention
from mega_fairseq.modules.activations import laplace, silu
from mega_fairseq.modules.fused_gates import (
    GatedAttentionProjection,
    GatedOutput,
    GateSplit,
    attend_values,
    gated_attention_projection,
    gated_output,
    split_gates,
)
from mega_fairseq.modules.gate_projection import GateProjection, project_gates
from mega_fairseq.modules.moving_average_gated_attention import MovingAverageGatedAttention

D, Z, H = 3, 2, 4


def plain_split(base, gamma, beta, embed_dim, zdim, hdim):
    """The gate split written with ordinary autograd ops (no fusion, q/k transposed views)."""
    u, z, r_pre, hx = torch.split(base, [embed_dim, zdim, hdim, embed_dim], dim=-1)
    z = F.silu(z)
    q = (z * gamma[0] + beta[0]).transpose(0, 1)
    k = (z * gamma[1] + beta[1]).transpose(0, 1)
    return torch.sigmoid(u), q, k, r_pre, hx


def plain_gated_projection(weights, v_pre, r_pre, activation, projection, value_bias=None):
    """``projection((weights @ activation(v_pre + value_bias)) * silu(r_pre))`` with ordinary autograd
    ops (Batch x Time x D)."""
    if value_bias is not None:
        v_pre = v_pre + value_bias
    return projection(attend_values(weights, activation(v_pre), v_pre.size(1)) * F.silu(r_pre).transpose(0, 1))


def plain_project_gates(ema_pre, weight, bias, gamma, beta, embed_dim, zdim, hdim):
    """``mx_proj(silu(ema_pre))`` and the split, with ordinary autograd ops."""
    return plain_split(F.linear(F.silu(ema_pre), weight, bias), gamma, beta, embed_dim, zdim, hdim)


def plain_gated_output(residual, attended, u, hx, hx_is_scratch=False):
    """``lerp(residual, silu(attended + hx), u)`` with ordinary autograd ops (hx left as it is)."""
    return torch.lerp(residual, F.silu(attended if hx is None else hx + attended), u)


def inputs(dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(5, 3, 2 * D + Z + H, generator=gen, dtype=dtype).requires_grad_(True)
    gamma = torch.randn(2, Z, generator=gen, dtype=dtype).requires_grad_(True)
    beta = torch.randn(2, Z, generator=gen, dtype=dtype).requires_grad_(True)
    return base, gamma, beta


def test_gate_split_values_and_layout():
    base, gamma, beta = inputs()
    fused = split_gates(base, gamma, beta, D, Z, H)
    plain = plain_split(base, gamma, beta, D, Z, H)
    for got, expected in zip(fused, plain):
        assert got.shape == expected.shape
        assert (got - expected).abs().max().item() < 1e-14
    u, q, k, r, hx = fused
    assert q.is_contiguous() and k.is_contiguous()  # Batch x Time, ready for chunk views
    with torch.no_grad():  # the no-grad path (decoding) gives the same values
        for got, expected in zip(split_gates(base, gamma, beta, D, Z, H), plain):
            assert (got - expected).abs().max().item() < 1e-14


@pytest.mark.parametrize("used", ["all", "u_hx", "q_k", "r_pre"])
def test_gate_split_gradcheck_float64(used):
    picks = {"all": range(5), "u_hx": (0, 4), "q_k": (1, 2), "k": (2,), "r_pre": (3,)}[used]

    def run(base, gamma, beta):
        outputs = GateSplit.apply(base, gamma, beta, D, Z, H)
        return tuple(outputs[i] for i in picks)

    assert torch.autograd.gradcheck(run, inputs())


#: the fused functions' CPU block sizes the tests run (default: one block here; 1, 4, 7: many
#: blocks, a block shorter than a chunk; 16: several sequences a block)
CPU_BLOCKS = [None, 1, 4, 7, 16]


def block_id(block) -> str:
    return "block{}".format(block or "-default")


@pytest.fixture(params=CPU_BLOCKS, ids=block_id)
def cpu_block(request, monkeypatch):
    """Runs a test with the fused functions' CPU blocks of this many tokens (see :data:`CPU_BLOCKS`)."""
    use_cpu_block(monkeypatch, request.param)
    return request.param


def use_cpu_block(monkeypatch, block):
    if block is not None:
        monkeypatch.setattr(fused_gates, "CPU_BLOCK_TOKENS", block)


def covering(options, blocks=CPU_BLOCKS, full_at=4):
    """``(option..., block)`` cases: every option at the many-block size ``full_at``, the first
    (every output used) at every block size. The gradchecks are float64 and slow, and the options
    (which outputs have a gradient, a bias or not) do not meet the block loop in other ways."""
    cases = [(*option, full_at) for option in options]
    cases += [(*options[0], block) for block in blocks if block != full_at]
    return [pytest.param(*case, id="-".join([*map(str, case[:-1]), block_id(case[-1])])) for case in cases]


@pytest.mark.parametrize("used,with_bias,block", covering(
    [("all", True), ("all", False), ("u_hx", True), ("q_k", True), ("k", True), ("r_pre", True), ("r_pre", False)]))
def test_gate_projection_gradcheck_and_values(used, with_bias, block, monkeypatch):
    use_cpu_block(monkeypatch, block)
    picks = {"all": range(5), "u_hx": (0, 4), "q_k": (1, 2), "k": (2,), "r_pre": (3,)}[used]
    gen = torch.Generator().manual_seed(5)
    ema_pre = torch.randn(5, 3, D, generator=gen, dtype=torch.float64).requires_grad_(True)
    weight = torch.randn(2 * D + Z + H, D, generator=gen, dtype=torch.float64).requires_grad_(True)
    bias = torch.randn(2 * D + Z + H, generator=gen, dtype=torch.float64).requires_grad_(True) if with_bias else None
    _, gamma, beta = inputs()
    fused = project_gates(ema_pre, weight, bias, gamma, beta, D, Z, H)
    for got, expected in zip(fused, plain_project_gates(ema_pre, weight, bias, gamma, beta, D, Z, H)):
        assert got.shape == expected.shape
        assert (got - expected).abs().max().item() < 1e-14
    assert fused[1].is_contiguous() and fused[2].is_contiguous()

    def run(*tensors):
        pre, w, g, b = tensors[:4]
        outputs = GateProjection.apply(pre, w, tensors[4] if with_bias else None, g, b, D, Z, H)
        return tuple(outputs[i] for i in picks)

    assert torch.autograd.gradcheck(run, (ema_pre, weight, gamma, beta) + ((bias,) if with_bias else ()))


def test_gate_projection_rejects_a_wrong_weight():
    ema_pre = torch.randn(5, 3, D, dtype=torch.float64, requires_grad=True)
    _, gamma, beta = inputs()
    with pytest.raises(ValueError, match="weight must be"):
        project_gates(ema_pre, torch.randn(2 * D + Z + H - 1, D, dtype=torch.float64), None, gamma, beta, D, Z, H)


def test_gate_split_rejects_a_wrong_width():
    base, gamma, beta = inputs()
    with pytest.raises(ValueError, match="base"):
        split_gates(base[..., 1:], gamma, beta, D, Z, H)


@pytest.mark.parametrize("block", [None, 4], ids=["block-default", "block4"])
@pytest.mark.parametrize("chunk_size", [-1, 4])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_fused_layer_gradients_equal_plain_autograd(monkeypatch, chunk_size, bidirectional, block):
    if block is not None:
        monkeypatch.setattr(fused_gates, "CPU_BLOCK_TOKENS", block)
    torch.manual_seed(3)
    layer = MovingAverageGatedAttention(8, 4, 12, 2, chunk_size=chunk_size, bidirectional=bidirectional,
                                        max_positions=16).double().train()
    with torch.no_grad():
        layer.gamma.normal_()
        layer.beta.normal_()
    x = torch.randn(10, 3, 8, dtype=torch.float64)
    padding_mask = torch.zeros(3, 10, dtype=torch.bool)
    padding_mask[1, :3] = True
    out_weights = torch.randn(10, 3, 8, dtype=torch.float64)

    def gradients():
        layer.zero_grad(set_to_none=True)
        x_in = x.clone().requires_grad_(True)
        out, _ = layer(x_in, padding_mask=padding_mask)
        (out * out_weights).sum().backward()
        return [out.detach(), x_in.grad] + [p.grad.clone() for p in layer.parameters()]

    fused = gradients()
    monkeypatch.setattr(mega_attention, "split_gates", plain_split)
    monkeypatch.setattr(mega_attention, "project_gates", plain_project_gates)
    monkeypatch.setattr(mega_attention, "gated_attention_projection", plain_gated_projection)
    monkeypatch.setattr(attention_base, "gated_output", plain_gated_output)
    plain = gradients()
    for got, expected in zip(fused, plain):
        assert (got - expected).abs().max().item() < 1e-12


def values_inputs(seq_len, chunks, frame, seed=0, bias=True):
    gen = torch.Generator().manual_seed(seed)
    weights = torch.rand(2, chunks, frame, frame, generator=gen, dtype=torch.float64).requires_grad_(True)
    v_pre = torch.randn(2, seq_len, 3, generator=gen, dtype=torch.float64).requires_grad_(True)
    r = torch.randn(seq_len, 2, 3, generator=gen, dtype=torch.float64).requires_grad_(True)
    projection = torch.nn.Linear(3, 4, bias=bias).double()
    with torch.no_grad():
        projection.weight.copy_(torch.randn(4, 3, generator=gen, dtype=torch.float64))
        if bias:
            projection.bias.copy_(torch.randn(4, generator=gen, dtype=torch.float64))
    return weights, v_pre, r, projection


@pytest.mark.parametrize("seq_len,chunks,frame", [(8, 2, 4), (7, 2, 4), (5, 1, 5)])
@pytest.mark.parametrize("bias,block", covering([(True,), (False,)]))
def test_gated_attention_projection_gradcheck_and_values(seq_len, chunks, frame, bias, block, monkeypatch):
    use_cpu_block(monkeypatch, block)
    weights, v_pre, r, projection = values_inputs(seq_len, chunks, frame, bias=bias)
    fused = GatedAttentionProjection.apply(weights, v_pre, r, projection.weight, projection.bias)
    assert fused.shape == (2, seq_len, 4)
    assert (fused - plain_gated_projection(weights, v_pre, r, F.silu, projection)).abs().max().item() < 1e-14

    def run(*tensors):
        return GatedAttentionProjection.apply(*tensors[:4], tensors[4] if bias else None)

    extra = (projection.bias,) if bias else ()
    assert torch.autograd.gradcheck(run, (weights, v_pre, r, projection.weight) + extra)


@pytest.mark.parametrize("needed", ["all", "value_bias", "v_pre", "v_pre+value_bias"])
@pytest.mark.parametrize("block", [None, 4], ids=["block-default", "block4"])
def test_gated_attention_projection_with_a_value_bias(needed, block, monkeypatch):
    """``v_proj``'s bias added inside (``value_bias``): float64 gradcheck, the plain definition's values,
    and only the gradients asked for (the bias's alone still forms v_pre's gradient internally)."""
    use_cpu_block(monkeypatch, block)
    weights, v_pre, r, projection = values_inputs(7, 2, 4, seed=4)
    value_bias = torch.randn(3, dtype=torch.float64, generator=torch.Generator().manual_seed(5)).requires_grad_(True)
    fused = GatedAttentionProjection.apply(weights, v_pre, r, projection.weight, projection.bias, value_bias)
    plain = plain_gated_projection(weights, v_pre, r, F.silu, projection, value_bias)
    assert (fused - plain).abs().max().item() < 1e-14
    inputs = (weights, v_pre, r, projection.weight, projection.bias, value_bias)
    if needed == "all":
        assert torch.autograd.gradcheck(lambda *t: GatedAttentionProjection.apply(*t), inputs)
        return
    asked = [value_bias] if needed == "value_bias" else [v_pre] if needed == "v_pre" else [v_pre, value_bias]
    grad_out = torch.linspace(-1, 1, fused.numel(), dtype=fused.dtype).view_as(fused)
    got = torch.autograd.grad(fused, asked, grad_out)
    expected = torch.autograd.grad(plain, asked, grad_out)
    for g, e in zip(got, expected):
        assert (g - e).abs().max().item() < 1e-13


def test_training_adds_the_value_bias_in_the_fused_projection_inference_in_v_proj(monkeypatch):
    """v_proj runs without its bias where GatedAttentionProjection adds it (training, whole sequence);
    elsewhere (no gradient, or another value activation) v_proj applies it as before."""
    seen = []
    batch_first_linear = mega_attention.batch_first_linear

    def recorded(x, weight, bias):
        seen.append(bias is not None)
        return batch_first_linear(x, weight, bias)

    monkeypatch.setattr(mega_attention, "batch_first_linear", recorded)
    torch.manual_seed(0)
    layer = MovingAverageGatedAttention(D, Z, H, 2, chunk_size=4, max_positions=16)
    x = torch.randn(12, 2, D, requires_grad=True)
    layer(x)[0].sum().backward()
    with torch.no_grad():
        layer(x)
    assert seen == [False, True]
    assert layer.v_proj.bias.grad is not None and layer.v_proj.bias.grad.abs().sum() > 0


@pytest.mark.parametrize("activation", [silu, laplace, torch.tanh], ids=["silu", "laplace", "tanh"])
def test_gated_attention_projection_any_activation_equals_plain(activation):
    """Other value activations take the plain ops; silu the fused function: same values, gradients."""
    results = []
    for run in (gated_attention_projection, plain_gated_projection):
        weights, v_pre, r, projection = values_inputs(7, 2, 4, seed=1)
        out = run(weights, v_pre, r, activation, projection)
        out.backward(torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out))
        results.append([out.detach(), weights.grad, v_pre.grad, r.grad, projection.weight.grad, projection.bias.grad])
    for got, expected in zip(*results):
        assert (got - expected).abs().max().item() < 1e-13


def test_layer_with_active_hidden_dropout_takes_the_plain_path_and_agrees():
    """Hidden dropout between act(v) and the attention rules out recomputing act(v); the plain
    path then runs. With a drop rate of 1e-12 it must give the fused path's values and gradients."""
    torch.manual_seed(4)
    fused_layer = MovingAverageGatedAttention(8, 4, 12, 2, chunk_size=4, max_positions=16).double().train()
    plain_layer = MovingAverageGatedAttention(8, 4, 12, 2, chunk_size=4, max_positions=16,
                                              hidden_dropout=1e-12).double().train()
    plain_layer.load_state_dict(fused_layer.state_dict())
    assert plain_layer.hidden_dropout.is_active() and not fused_layer.hidden_dropout.is_active()
    x = torch.randn(9, 2, 8, dtype=torch.float64)
    results = []
    for layer in (fused_layer, plain_layer):
        x_in = x.clone().requires_grad_(True)
        out, _ = layer(x_in)
        (out * torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out)).sum().backward()
        results.append([out.detach(), x_in.grad] + [p.grad for p in layer.parameters()])
    for got, expected in zip(*results):
        assert (got - expected).abs().max().item() < 1e-9



class _NewTensorSizes(TorchDispatchMode):
    """Records the element count of every tensor an op creates (outputs that share no input's
    storage; meta tensors, which hold no memory, are not counted)."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor) and not tensor.is_meta and tensor.untyped_storage().data_ptr() not in inputs:
                self.sizes.append(tensor.untyped_storage().nbytes() // tensor.element_size())
        return out


def test_gate_functions_make_no_batch_time_hidden_temporaries(monkeypatch):
    """With CPU blocks of 16 tokens, the gate functions work in block-sized buffers: the only
    tensors of Batch x Time x H elements or more they make are their outputs' gradients (v_pre's
    and r_pre's; the gate projection's backward none) and the gate projection's outputs; the
    output gate makes only its output, its kept sum and its inputs' gradients. Whole-sequence
    temporaries (the previous design: silu(v), the attention output, the gated product, mx and
    mx_proj's output gradient; silu of the output gate's sum, its product with the gradient) fail this."""
    monkeypatch.setattr(fused_gates, "CPU_BLOCK_TOKENS", 16)
    bsz, seq_len, frame, dim, zdim, hdim = 2, 64, 8, 6, 4, 10
    gen = torch.Generator().manual_seed(11)
    weights = torch.rand(bsz, seq_len // frame, frame, frame, generator=gen).requires_grad_(True)
    v_pre = torch.randn(bsz, seq_len, hdim, generator=gen).requires_grad_(True)
    r_pre = torch.randn(seq_len, bsz, hdim, generator=gen).requires_grad_(True)
    projection = torch.nn.Linear(hdim, dim)
    whole = bsz * seq_len * hdim
    with _NewTensorSizes() as forward:
        out = GatedAttentionProjection.apply(weights, v_pre, r_pre, projection.weight, projection.bias)
    grad_out = torch.randn(out.shape, generator=gen)
    with _NewTensorSizes() as backward:
        out.backward(grad_out)
    assert [n for n in forward.sizes if n >= whole] == []
    assert [n for n in backward.sizes if n >= whole] == [whole, whole]  # grad of v_pre, of r_pre

    ema_pre = torch.randn(seq_len, bsz, dim, generator=gen).requires_grad_(True)
    mx_proj = torch.nn.Linear(dim, 2 * dim + zdim + hdim)
    gamma, beta = torch.randn(2, zdim).requires_grad_(True), torch.randn(2, zdim).requires_grad_(True)
    with _NewTensorSizes() as forward:
        gates = project_gates(ema_pre, mx_proj.weight, mx_proj.bias, gamma, beta, dim, zdim, hdim)
    # u, [z_pre | r_pre], hx, q and k (no whole mx = silu(ema_pre), no whole z = silu(z_pre))
    tokens = seq_len * bsz
    assert sorted(n for n in forward.sizes if n >= tokens) == sorted([tokens * dim, tokens * (zdim + hdim), tokens * dim]
                                                                     + [tokens * zdim] * 2)
    grads = [torch.randn(g.shape, generator=gen) for g in gates]
    with _NewTensorSizes() as backward:
        torch.autograd.backward(gates, grads)
    assert [n for n in backward.sizes if n >= whole] == []

    residual, u, hx = (torch.randn(seq_len, bsz, dim, generator=gen).requires_grad_(True) for _ in range(3))
    attended = torch.randn(bsz, seq_len, dim, generator=gen).requires_grad_(True)
    inputs = (residual, attended.transpose(0, 1), u, hx)
    with _NewTensorSizes() as forward:
        out = GatedOutput.apply(*inputs)
    assert [n for n in forward.sizes if n >= tokens * dim] == [tokens * dim] * 2  # the sum with hx, the output
    grad_out = torch.randn(out.shape, generator=gen)
    with _NewTensorSizes() as backward:  # the gradients taken at the inputs: no accumulation into leaves
        torch.autograd.grad(out, inputs, grad_out)
    assert [n for n in backward.sizes if n >= tokens * dim] == [tokens * dim] * 3  # grads of attended/hx, residual, u
    # the gate projection's hx is scratch: the sum is formed in its memory, the output is the one new tensor
    scratch = hx.detach().clone().requires_grad_(True)
    with _NewTensorSizes() as forward:
        GatedOutput.apply(residual, attended.transpose(0, 1), u, scratch.clone(), True)
    assert [n for n in forward.sizes if n >= tokens * dim] == [tokens * dim] * 2  # the clone, the output


@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "fallback"])
def test_q_and_k_are_made_block_by_block_and_remade_in_one_pass(monkeypatch, kernel):
    """The forward makes q and k from each time block's ``z_pre`` while it is in cache; in training
    they are not kept (recomputed_activations), and the attention's backward, which reads both, has
    them remade together in one more pass over the blocks (``z = silu(z_pre)`` never whole). The
    gate projection's backward then forms z and its slope itself
    (:func:`~.silu_gate_kernels.query_key_backward`, kernel or fallback), without another pass."""
    from mega_fairseq.modules import gate_projection, silu_gate_kernels

    if kernel and not silu_gate_kernels.available():
        pytest.skip("the gate kernel is not built")
    if not kernel:
        monkeypatch.setattr(silu_gate_kernels, "_kernel", None)
    use_cpu_block(monkeypatch, 4)  # 2 time steps of 2 sequences a block: 6 blocks
    blocks, z_steps = [], []
    query_key_block, query_key_into = gate_projection._query_key_block, gate_projection.query_key_into

    def counted_block(zr, block, *args):
        blocks.append((block.start, block.stop))
        return query_key_block(zr, block, *args)

    def recorded_query_key(z_pre, *args):
        z_steps.append(z_pre.size(0))  # q and k from silu(z_pre): how many time steps at once
        return query_key_into(z_pre, *args)

    monkeypatch.setattr(gate_projection, "_query_key_block", counted_block)
    monkeypatch.setattr(gate_projection, "query_key_into", recorded_query_key)
    torch.manual_seed(0)
    layer = MovingAverageGatedAttention(D, Z, H, 2, chunk_size=4, max_positions=16)
    x = torch.randn(12, 2, D, requires_grad=True)
    out = layer(x)[0]
    steps = [(start, start + 2) for start in range(0, 12, 2)]
    assert blocks == steps
    out.square().sum().backward()
    assert blocks == steps + steps and z_steps == [2] * 12


@pytest.mark.parametrize("with_hx", [True, False])
@pytest.mark.parametrize("transposed", [True, False])
def test_gated_output_gradcheck_values_and_gradient_layout(with_hx, transposed, cpu_block):
    gen = torch.Generator().manual_seed(7)

    def tensor(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_(True)

    residual, u = tensor(5, 3, 4), torch.rand(5, 3, 4, generator=gen, dtype=torch.float64).requires_grad_(True)
    # attended as the self-attention passes it: a Batch x Time result read as Time x Batch
    attended_source = tensor(3, 5, 4) if transposed else tensor(5, 3, 4)
    hx = tensor(5, 3, 4) if with_hx else None

    def fused(res, att, gate, *rest):
        att = att.transpose(0, 1) if transposed else att
        return GatedOutput.apply(res, att, gate, rest[0] if rest else None)

    inputs = (residual, attended_source, u) + ((hx,) if with_hx else ())
    assert torch.autograd.gradcheck(fused, inputs)
    attended = attended_source.transpose(0, 1) if transposed else attended_source
    expected = torch.lerp(residual, F.silu(attended if hx is None else hx + attended), u)
    assert (gated_output(residual, attended, u, hx) - expected).abs().max().item() < 1e-14
    # the gradient reaching attended has attended's strides (no copy for the projection's backward)
    grad_holder = {}
    attended.register_hook(lambda grad: grad_holder.setdefault("grad", grad))
    gated_output(residual, attended, u, hx).sum().backward()
    assert grad_holder["grad"].stride() == attended.stride()


@pytest.mark.parametrize("transposed", [True, False])
def test_gated_output_forms_the_sum_in_a_scratch_hx(transposed, cpu_block):
    """With ``hx_is_scratch`` (the gate projection's own hx) the kept sum ``attended + hx`` is written
    over hx: hx then holds it, and values and gradients equal those of the call that leaves hx
    alone (float64 gradcheck on a fresh copy of hx each call)."""
    gen = torch.Generator().manual_seed(8)

    def tensor(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_(True)

    residual, hx = tensor(5, 3, 4), tensor(5, 3, 4)
    u = torch.rand(5, 3, 4, generator=gen, dtype=torch.float64).requires_grad_(True)
    attended_source = tensor(3, 5, 4) if transposed else tensor(5, 3, 4)

    def fused(res, att, gate, h, scratch):
        att = att.transpose(0, 1) if transposed else att
        return GatedOutput.apply(res, att, gate, h.clone(), scratch)

    assert torch.autograd.gradcheck(lambda *t: fused(*t, True), (residual, attended_source, u, hx))
    attended = attended_source.transpose(0, 1) if transposed else attended_source
    copy = hx.detach().clone().requires_grad_(True)
    kept = copy.clone()
    out = GatedOutput.apply(residual, attended, u, kept, True)
    assert (out - GatedOutput.apply(residual, attended, u, hx, False)).abs().max().item() == 0.0
    assert (kept - (hx + attended)).abs().max().item() == 0.0
    grads = torch.autograd.grad(out.sum(), (residual, attended_source, u, copy))
    expected = torch.autograd.grad(plain_gated_output(residual, attended, u, hx).sum(),
                                   (residual, attended_source, u, hx))
    for got, want in zip(grads, expected):
        assert (got - want).abs().max().item() < 1e-12


def test_gate_functions_of_an_empty_sequence():
    residual, u, hx = (torch.randn(0, 2, 4, requires_grad=True) for _ in range(3))
    attended = torch.randn(2, 0, 4, requires_grad=True)
    out = GatedOutput.apply(residual, attended.transpose(0, 1), u, hx)
    out.sum().backward()
    assert out.shape == (0, 2, 4) and attended.grad.shape == (2, 0, 4) and residual.grad.shape == (0, 2, 4)
    ema_pre = torch.randn(0, 2, 4, requires_grad=True)
    mx_proj = torch.nn.Linear(4, 2 * 4 + 3 + 5)
    gamma, beta = torch.randn(2, 3).requires_grad_(True), torch.randn(2, 3).requires_grad_(True)
    gates = project_gates(ema_pre, mx_proj.weight, mx_proj.bias, gamma, beta, 4, 3, 5)
    sum(g.sum() for g in gates).backward()
    assert [tuple(g.shape) for g in gates] == [(0, 2, 4), (2, 0, 3), (2, 0, 3), (0, 2, 5), (0, 2, 4)]
    assert ema_pre.grad.shape == (0, 2, 4) and mx_proj.weight.grad.abs().sum() == 0


def test_cpu_blocks_have_a_fixed_size_other_devices_run_one_block(monkeypatch):
    """CPU blocks are CPU_BLOCK_TOKENS tokens whatever the call's size (their buffers stay in
    cache); other devices run one block."""
    from mega_fairseq.modules.fused_gates import block_tokens

    cpu = torch.device("cpu")
    assert [block_tokens(cpu, n) for n in (100, 2048, 8192, 1 << 20)] == [512] * 4
    monkeypatch.setattr(fused_gates, "CPU_BLOCK_TOKENS", 64)
    assert block_tokens(cpu, 8192) == 64
    assert block_tokens(torch.device("meta"), 8192) == 8192


def test_a_second_backward_through_a_retained_graph_gives_the_same_gradients():
    """The fused layer's backward only reads what it kept (the output gate's sum formed in the gate
    projection's hx, the remade q and k, the reused gradient buffers): backward twice through a
    retained graph, same gradients."""
    torch.manual_seed(0)
    layer = MovingAverageGatedAttention(D, Z, H, 2, chunk_size=4, max_positions=16)
    x = torch.randn(12, 2, D, requires_grad=True)
    out = layer(x)[0]
    grad_out = torch.randn(out.shape)
    leaves = [x] + list(layer.parameters())
    first = torch.autograd.grad(out, leaves, grad_out, retain_graph=True)
    second = torch.autograd.grad(out, leaves, grad_out)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
