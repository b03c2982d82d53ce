"""The EMA op (``multi_head_ema``) against its plain-recurrence reference (``ema_reference``).

Every path is paired with the reference, values and gradients (of the input, the three
coefficient tensors and the initial state), in float64:

* whole sequences: dense Toeplitz, FFT, blocked scan (default and odd block lengths), the
  compiled recurrence, ``auto`` (and ``auto`` without the compiled kernel);
  causal and bidirectional; untruncated, truncated, window longer than the sequence;
* streaming: one-token steps, multi-token steps, prefill handing its last state to decoding;
* lengths from 1 to 5000 (the long cases use D=4, N=2, B=1 to stay fast; the dense Toeplitz
  path runs its 4096-step case on one channel: it builds a 4096 x 4096 matrix per channel);
* with and without the ``omega`` residual (which the blocked scan folds into its lag-0 tap),
  against the reference plus ``omega * x``, with the gradient of ``omega`` too.

Gradients are compared through ``sum(output * random weights)``. The reference itself is pinned
to the official float64 fixtures.
"""
import pytest
import torch

from mega_fairseq.modules import ema_blocked_scan, ema_recurrence
from mega_fairseq.modules.ema_layout import swap_time_and_channels
from mega_fairseq.modules.ema_op import ALGORITHMS, multi_head_ema, pick_algorithm
from mega_fairseq.modules.ema_reference import ema_reference
from mega_fairseq.modules.exponential_moving_average import MultiHeadEMA

from helpers import load_fixture, max_diff

TOL = 1e-9  # relative to the largest reference value; both run in float64

WHOLE_SEQUENCE_PATHS = [("toeplitz", None), ("fft", None), ("blocked_scan", None), ("blocked_scan", 3), ("auto", None),
                        ("recurrence", None)]
LONG_PATHS = [("fft", None), ("blocked_scan", None), ("blocked_scan", 100), ("auto", None), ("recurrence", None)]


def random_coefficients(rows, ndim, seed):
    """``q, p_beta, gamma`` (``rows x ndim``, float64, requiring grad) with fast and very slow decays."""
    generator = torch.Generator().manual_seed(seed)
    # 1 - q spread over 1e-4 .. 0.5: some EMAs forget in a step, some remember thousands of steps
    one_minus_q = 10.0 ** (-4.0 + 3.7 * torch.rand(rows, ndim, generator=generator, dtype=torch.float64))
    q = (1.0 - one_minus_q).requires_grad_(True)
    p_beta = torch.randn(rows, ndim, generator=generator, dtype=torch.float64).requires_grad_(True)
    gamma = torch.randn(rows, ndim, generator=generator, dtype=torch.float64).requires_grad_(True)
    return q, p_beta, gamma


def random_input(length, bsz, dim, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(length, bsz, dim, generator=generator, dtype=torch.float64).requires_grad_(True)


def random_omega(dim, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(dim, generator=generator, dtype=torch.float64).requires_grad_(True)


def values_and_gradients(outputs, leaves, seed):
    """The outputs and the gradients of ``sum(output * random weights)`` w.r.t. every leaf."""
    generator = torch.Generator().manual_seed(seed)
    loss = sum((out * torch.randn(out.shape, generator=generator, dtype=out.dtype)).sum() for out in outputs)
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return [out.detach() for out in outputs] + [g if g is not None else torch.zeros_like(l) for g, l in zip(grads, leaves)]


@pytest.fixture(params=["wide", "narrow"])
def backward_copy(request):
    """Each copy of the compiled kernel's backward in turn: the AVX-512 one (blocks of 16 floats, 8
    doubles, four EMA dimensions at once; skipped where the machine lacks AVX-512) and the other one
    (AVX2 or generic: blocks of 8 floats, 4 doubles, two dimensions)."""
    kernel = ema_recurrence._kernel
    if kernel is None:
        pytest.skip("the compiled kernel is not installed")
    wide = kernel.set_wide_vectors(request.param == "wide")
    try:
        if request.param == "wide" and not wide:
            pytest.skip("this machine has no AVX-512")
        yield request.param
    finally:
        kernel.set_wide_vectors(True)


def assert_close(fast, reference, what):
    names = ["output", "last state", "grad x", "grad q", "grad p_beta", "grad gamma", "grad initial state"]
    for index, (a, b) in enumerate(zip(fast, reference)):
        assert a.shape == b.shape, (what, index)
        if b.numel() == 0:
            continue
        scale = max(b.abs().max().item(), 1.0)
        assert max_diff(a, b) <= TOL * scale, (what, names[index] if len(fast) == 7 else index, max_diff(a, b), scale)


# ------------------------------------------------------------- the reference itself
@pytest.mark.parametrize("name", ["ema_causal_f64", "ema_bidirectional_f64"])
def test_reference_reproduces_the_official_fixtures(name):
    """The reference recurrence, fed the official parameters, gives the official outputs."""
    record = load_fixture(name)
    state, inputs, outputs = record["state_dict"], record["inputs"], record["outputs"]
    ndim = record["config"]["ndim"]
    p = torch.sigmoid(state["delta"].double()).squeeze(-1)
    q = 1.0 - p * torch.sigmoid(state["alpha"].double()).squeeze(-1)
    p_beta = p * state["beta"].double().squeeze(-1)
    gamma = state["gamma"].double() * ndim ** -0.5
    x = inputs["x"].double()
    if inputs.get("padding_mask") is not None:
        x = x.masked_fill(inputs["padding_mask"].t().unsqueeze(-1), 0.0)
    bidirectional = record["config"].get("bidirectional", False)
    residual = inputs["x"].double() * state["omega"].double()
    if bidirectional:
        out = torch.nn.functional.silu(ema_reference(x, q, p_beta, gamma, bidirectional=True) + residual)
    else:
        ema, last_state = ema_reference(x, q, p_beta, gamma, return_last_state=True)
        out = torch.nn.functional.silu(ema + residual)
        # the official one-token decoding is pure float64
        assert max_diff(out, outputs["incremental"]) < 1e-10
        assert max_diff(last_state, outputs["incremental_states"][-1]) < 1e-10
    assert max_diff(out, outputs["full"]) < 1e-5  # the official full forward ran its FFT in float32


# ------------------------------------------------------------------ whole sequences
def check_whole_sequence(length, bsz, dim, ndim, bidirectional, window, paths, seed, with_omega=False):
    q, p_beta, gamma = random_coefficients(2 * dim if bidirectional else dim, ndim, seed)
    x = random_input(length, bsz, dim, seed + 1)
    omega = random_omega(dim, seed + 2) if with_omega else None
    leaves = [x, q, p_beta, gamma] + ([omega] if with_omega else [])
    reference = ema_reference(x, q, p_beta, gamma, bidirectional=bidirectional, window=window)
    if with_omega:
        reference = reference + omega * x
    expected = values_and_gradients([reference], leaves, seed)
    for algorithm, block in paths:
        if algorithm == "recurrence" and window is not None:
            with pytest.raises(ValueError, match="untruncated"):
                multi_head_ema(x, q, p_beta, gamma, bidirectional=bidirectional, window=window, algorithm=algorithm)
            continue
        out = multi_head_ema(
            x, q, p_beta, gamma, bidirectional=bidirectional, window=window, algorithm=algorithm, scan_block=block,
            omega=omega,
        )
        assert_close(values_and_gradients([out], leaves, seed), expected, (algorithm, block, with_omega))


@pytest.mark.parametrize("with_omega", [False, True], ids=["ema", "ema+omega"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("window", [None, 1, 5, 200])
@pytest.mark.parametrize("length", [1, 7, 64, 100])
def test_whole_sequence_paths_equal_reference(length, bidirectional, window, with_omega):
    check_whole_sequence(length, 2, 3, 2, bidirectional, window, WHOLE_SEQUENCE_PATHS, seed=length, with_omega=with_omega)


@pytest.mark.parametrize("window", [None, 700])
@pytest.mark.parametrize("length,bidirectional", [(5000, False), (4096, True)])
def test_long_whole_sequence_paths_equal_reference(length, bidirectional, window):
    check_whole_sequence(length, 1, 4, 2, bidirectional, window, LONG_PATHS, seed=length + 7, with_omega=window is None)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("with_omega", [False, True], ids=["ema", "ema+omega"])
def test_auto_without_the_compiled_kernel_equals_reference(monkeypatch, bidirectional, with_omega):
    """Where the kernel is not installed, ``auto`` (and so every layer) runs the other paths."""
    monkeypatch.setattr(ema_recurrence, "_kernel", None)
    assert not ema_recurrence.available()
    for length in (40, 300):
        check_whole_sequence(length, 2, 3, 2, bidirectional, None, [("auto", None)], seed=length,
                             with_omega=with_omega)
    q, p_beta, gamma = random_coefficients(3, 2, 0)
    with pytest.raises(ValueError, match="compiled kernel"):
        multi_head_ema(torch.randn(5, 1, 3, dtype=torch.float64), q, p_beta, gamma, algorithm="recurrence")


@pytest.mark.parametrize("bidirectional", [False, True])
def test_recurrence_passes_gradcheck(bidirectional, backward_copy):
    """Its explicit backward (adjoint recurrence over segments of remade states) against finite
    differences, with lengths that end inside a segment and span several."""
    q, p_beta, gamma = random_coefficients(6 if bidirectional else 3, 2, 12)
    omega = random_omega(3, 13)
    for length in (5, 130):
        x = random_input(length, 2, 3, 14)
        assert torch.autograd.gradcheck(
            lambda *t: multi_head_ema(t[0], *t[1:4], bidirectional=bidirectional, algorithm="recurrence", omega=t[4]),
            (x, q, p_beta, gamma, omega))


def test_recurrence_reads_strided_arguments_and_refuses_a_second_derivative():
    """Views with any strides (a transposed input, every other element of omega) give the
    reference; a second derivative through its explicit backward is an error, not a wrong number."""
    q, p_beta, gamma = random_coefficients(3, 2, 15)
    x = random_input(3, 40, 2, 16).transpose(0, 2)  # 2 x 40 x 3 view of a 3 x 40 x 2 tensor
    omega_storage = random_omega(6, 17)
    omega = omega_storage[::2]
    leaves = [x, q, p_beta, gamma, omega]
    out = multi_head_ema(x, q, p_beta, gamma, algorithm="recurrence", omega=omega)
    reference = ema_reference(x, q, p_beta, gamma) + omega * x
    assert_close(values_and_gradients([out], leaves, 18), values_and_gradients([reference], leaves, 18), "strided")
    again = multi_head_ema(x, q, p_beta, gamma, algorithm="recurrence", omega=omega)
    (grad_x,) = torch.autograd.grad(again.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad"):
        grad_x.sum().backward()


def test_kernel_refuses_arrays_it_cannot_read_densely():
    """Called directly, the kernel names what is wrong instead of reading past a view."""
    x, q = torch.randn(5, 2, 3), torch.rand(2, 3)
    with pytest.raises(RuntimeError, match="omega must be a contiguous"):
        ema_recurrence._kernel.forward(x, q, q, q, torch.randn(6)[::2], None, False, 64, True)
    with pytest.raises(RuntimeError, match="x must be a contiguous"):
        ema_recurrence._kernel.forward(x.transpose(0, 1), q, q, q, None, None, False, 64, True)


def test_compiled_kernel_is_installed():
    """``make install`` builds it (tools/install.sh); a broken build must not pass unnoticed."""
    assert ema_recurrence.available()


@pytest.mark.parametrize("bidirectional", [False, True])
def test_recurrence_in_float32_agrees_with_float64_reference(bidirectional, backward_copy):
    """Layer sizes in float32: within float32 rounding of float64, values and gradients. The float64
    side is the FFT path, another algorithm, which the tests above hold to the reference at 1e-9 at
    these lengths (the reference's Python loop over 2048 steps took seconds)."""
    q, p_beta, gamma = (t.detach().float().requires_grad_(True) for t in random_coefficients(
        32 if bidirectional else 16, 16, 5))
    x = random_input(2048, 2, 16, 6).detach().float().requires_grad_(True)
    omega = random_omega(16, 7).detach().float().requires_grad_(True)
    leaves = [x, q, p_beta, gamma, omega]
    out = multi_head_ema(x, q, p_beta, gamma, bidirectional=bidirectional, algorithm="recurrence", omega=omega)
    doubled = [t.detach().double().requires_grad_(True) for t in leaves]
    reference = multi_head_ema(doubled[0], *doubled[1:4], bidirectional=bidirectional, algorithm="fft",
                               omega=doubled[4])
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    fast = [out.detach()] + list(torch.autograd.grad((out * weights.float()).sum(), leaves))
    expected = [reference.detach()] + list(torch.autograd.grad((reference * weights).sum(), doubled))
    for index, (a, b) in enumerate(zip(fast, expected)):
        assert a.dtype == torch.float32
        assert max_diff(a.double(), b) <= 2e-5 * max(b.abs().max().item(), 1.0), index


@pytest.mark.parametrize("bidirectional", [False, True])
def test_recurrence_over_several_channel_panels_with_a_partial_block(bidirectional, backward_copy):
    """The kernel takes the channels a panel at a time (256 float64 channels) in blocks of one
    register (4 float64 channels; 8 in the backward's AVX-512 copy), and the EMA dimensions four at a
    time forward and two (AVX-512: four) backward: 530 channels end in a partial panel and a partial
    block, and 3 dimensions all go to the forward's remainder loop and leave one over in the narrow
    backward (all three in the wide one). Values and gradients are the reference."""
    dim, ndim = 530, 3
    q, p_beta, gamma = random_coefficients(2 * dim if bidirectional else dim, ndim, 19)
    x = random_input(70, 2, dim, 20)
    omega = random_omega(dim, 21)
    leaves = [x, q, p_beta, gamma, omega]
    out = multi_head_ema(x, q, p_beta, gamma, bidirectional=bidirectional, algorithm="recurrence", omega=omega)
    reference = ema_reference(x, q, p_beta, gamma, bidirectional=bidirectional) + omega * x
    assert_close(values_and_gradients([out], leaves, 22), values_and_gradients([reference], leaves, 22), "panels")


def test_backward_copies_agree_in_float32():
    """Both copies of the backward at layer-like sizes in float32 (1,000 channels, 16 dimensions):
    the same arithmetic per channel in another vector width, so the same gradients to float32 rounding."""
    kernel = ema_recurrence._kernel
    if kernel is None or not kernel.set_wide_vectors(True):
        pytest.skip("needs the compiled kernel with its AVX-512 copy")
    q, p_beta, gamma = (t.detach().float().requires_grad_(True) for t in random_coefficients(1000, 16, 31))
    x = random_input(150, 2, 1000, 32).detach().float().requires_grad_(True)
    leaves = [x, q, p_beta, gamma]
    results = []
    try:
        for wide in (True, False):
            kernel.set_wide_vectors(wide)
            out = multi_head_ema(x, q, p_beta, gamma, algorithm="recurrence")
            results.append(values_and_gradients([out], leaves, 33))
    finally:
        kernel.set_wide_vectors(True)
    for index, (a, b) in enumerate(zip(*results)):
        assert max_diff(a, b) <= 1e-6 * max(b.abs().max().item(), 1.0), index


def test_recurrence_is_the_same_on_more_threads():
    """The kernel splits the channels among threads: each channel's arithmetic is unchanged."""
    q, p_beta, gamma = random_coefficients(40, 3, 9)
    x = random_input(300, 3, 40, 10)
    results = []
    threads = torch.get_num_threads()
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            out = multi_head_ema(x, q, p_beta, gamma, algorithm="recurrence")
            results.append(values_and_gradients([out], [x, q, p_beta, gamma], 11))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_long_dense_toeplitz_equals_reference():
    """The dense path at 4096 steps too, both triangles and a window (one channel: the
    4096 x 4096 matrix is 128 MB in float64; the windowed reference is the quicker one)."""
    check_whole_sequence(4096, 1, 1, 2, True, 700, [("toeplitz", None)], seed=21)


# ------------------------------------------------------------------------- streaming
def check_streaming(splits, bsz, dim, ndim, window, scan_block, seed, with_initial_state=True, with_omega=False):
    """Decoding ``x`` in pieces (``splits``), each piece starting from the previous piece's last
    state, equals the reference on the whole sequence: outputs, last state and every gradient."""
    q, p_beta, gamma = random_coefficients(dim, ndim, seed)
    x = random_input(sum(splits), bsz, dim, seed + 1)
    state_size = ndim if window is None else window - 1
    initial = torch.randn(bsz, dim, state_size, dtype=torch.float64) if with_initial_state else None
    omega = random_omega(dim, seed + 2) if with_omega else None
    leaves = [x, q, p_beta, gamma] + ([initial.requires_grad_(True)] if with_initial_state else [])
    leaves += [omega] if with_omega else []
    reference, last_state = ema_reference(x, q, p_beta, gamma, window=window, initial_state=initial, return_last_state=True)
    if with_omega:
        reference = reference + omega * x
    expected = values_and_gradients([reference, last_state], leaves, seed)
    pieces, state, start = [], initial, 0
    for size in splits:
        out, state = multi_head_ema(
            x[start : start + size], q, p_beta, gamma, window=window, scan_block=scan_block,
            initial_state=state, return_last_state=True, omega=omega,
        )
        pieces.append(out)
        start += size
    assert_close(values_and_gradients([torch.cat(pieces), state], leaves, seed), expected, splits)


@pytest.mark.parametrize("window", [None, 1, 4])
@pytest.mark.parametrize(
    "splits", [[1] * 9, [5, 1, 1, 17, 3], [2, 30], [40]], ids=["one-token", "mixed", "two", "prefill-only"]
)
@pytest.mark.parametrize("with_initial_state", [False, True])
def test_streaming_steps_equal_reference(splits, window, with_initial_state):
    check_streaming(splits, 2, 3, 2, window, scan_block=4, seed=len(splits), with_initial_state=with_initial_state,
                    with_omega=with_initial_state)


@pytest.mark.parametrize("window", [None, 700])
def test_long_prefill_hands_its_state_to_decoding(window):
    """A 4096-step prefill (blocked scan) returns its last state; one-token and multi-token steps
    continue from it exactly, values and gradients through the whole chain."""
    check_streaming([4096, 1, 1, 37, 1], 1, 4, 2, window, scan_block=None, seed=11, with_initial_state=False)


@pytest.mark.parametrize("length", [130, 4100])
def test_blocked_scan_last_state_of_partial_last_block(length):
    """The last state is exact whether the last block is full or partial (padded inside the scan)."""
    check_streaming([length], 1, 4, 2, None, scan_block=64, seed=length, with_initial_state=True)


@pytest.mark.parametrize("group_values", [1, 300], ids=["a-row-a-group", "uneven-groups"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_blocked_scan_in_row_groups_equals_reference(monkeypatch, group_values, bidirectional):
    """On the CPU a large input is scanned in groups of rows (``CPU_GROUP_VALUES`` values a group):
    here one row a group, or 5 rows in groups of 2, 2, 1; whole sequences (also windowed) and a
    prefill with its initial and last state continued by decoding steps."""
    monkeypatch.setattr(ema_blocked_scan, "CPU_GROUP_VALUES", group_values)
    check_whole_sequence(100, 2, 5, 2, bidirectional, None, [("blocked_scan", 16)], seed=3)
    check_whole_sequence(100, 2, 5, 2, bidirectional, None, [("blocked_scan", 16), ("blocked_scan", 200)], seed=6,
                         with_omega=True)
    check_whole_sequence(100, 2, 5, 2, bidirectional, 7, [("blocked_scan", 16)], seed=5, with_omega=True)
    if not bidirectional:
        check_streaming([60, 1, 7], 2, 5, 2, None, scan_block=16, seed=4)


# ---------------------------------------------------------------------- edge cases
def test_empty_sequence_gives_empty_output_and_keeps_the_state():
    q, p_beta, gamma = random_coefficients(3, 2, 0)
    x = torch.zeros(0, 2, 3, dtype=torch.float64)
    assert multi_head_ema(x, q, p_beta, gamma).shape == (0, 2, 3)
    state = torch.randn(2, 3, 2, dtype=torch.float64)
    out, last = multi_head_ema(x, q, p_beta, gamma, initial_state=state, return_last_state=True)
    assert out.shape == (0, 2, 3) and torch.equal(last, state)
    module = MultiHeadEMA(3, ndim=2)
    assert module(torch.zeros(0, 2, 3)).shape == (0, 2, 3)
    assert MultiHeadEMA(3, ndim=2, bidirectional=True, truncation=2)(torch.zeros(0, 2, 3)).shape == (0, 2, 3)
    incremental = {}
    module(torch.randn(2, 2, 3), incremental_state=incremental)
    saved = module._get_input_buffer(incremental)["prev_state"].clone()
    assert module(torch.zeros(0, 2, 3), incremental_state=incremental).shape == (0, 2, 3)
    assert torch.equal(module._get_input_buffer(incremental)["prev_state"], saved)


def test_integer_input_is_rejected_naming_the_dtype():
    module = MultiHeadEMA(3, ndim=2)
    with pytest.raises(TypeError, match="int64"):
        module(torch.ones(4, 2, 3, dtype=torch.int64))
    q, p_beta, gamma = random_coefficients(3, 2, 0)
    with pytest.raises(TypeError, match="int64"):
        multi_head_ema(torch.ones(4, 2, 3, dtype=torch.int64), q, p_beta, gamma)


@pytest.mark.parametrize("first,second", [(1, 5), (3, 2)])
@pytest.mark.parametrize("truncation", [None, 4])
def test_state_of_another_batch_size_is_a_clear_error(first, second, truncation):
    module = MultiHeadEMA(3, ndim=2, truncation=truncation).eval()
    state = {}
    with torch.no_grad():
        module(torch.randn(2, first, 3), incremental_state=state)
        with pytest.raises(ValueError, match=r"batch size {}.*batch size {}.*reorder_incremental_state".format(first, second)):
            module(torch.randn(1, second, 3), incremental_state=state)
    q, p_beta, gamma = random_coefficients(3, 2, 0)
    with pytest.raises(ValueError, match=r"initial_state .* holds batch size {} but x has batch size {}".format(first, second)):
        multi_head_ema(torch.randn(1, second, 3, dtype=torch.float64), q, p_beta, gamma,
                       initial_state=torch.zeros(first, 3, 2, dtype=torch.float64))


def test_algorithm_names_and_old_names_are_rejected():
    assert ALGORITHMS == ("auto", "toeplitz", "fft", "blocked_scan", "recurrence")
    q, p_beta, gamma = random_coefficients(3, 2, 0)
    x = torch.randn(5, 1, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="blocked_scan"):
        multi_head_ema(x, q, p_beta, gamma, algorithm="chunked")
    module = MultiHeadEMA(3, ndim=2)
    module.conv_algorithm = "chunked"
    with pytest.raises(ValueError, match="conv_algorithm"):
        module(torch.randn(5, 1, 3))
    with pytest.raises(AttributeError, match="scan_block"):
        module.chunk_block = 4
    with pytest.raises(ValueError, match="scan_block"):
        multi_head_ema(x, q, p_beta, gamma, scan_block=0)
    with pytest.raises(ValueError, match="bidirectional=False"):
        q2, p2, g2 = random_coefficients(6, 2, 0)
        multi_head_ema(x, q2, p2, g2, bidirectional=True, return_last_state=True)
    with pytest.raises(ValueError, match=r"omega must have shape \(D,\) = \(3,\), got shape \(6,\)"):
        multi_head_ema(x, q, p_beta, gamma, omega=torch.ones(6, dtype=torch.float64))


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("algorithm", ["toeplitz", "fft", "blocked_scan", "recurrence"])
def test_autocast_leaves_the_ema_in_float32(algorithm, bidirectional):
    """Under CPU autocast (bfloat16 matmuls) the EMA still runs in float32: same output and gradients
    as without autocast (its Toeplitz backward used to fail on mixed dtypes)."""
    torch.manual_seed(3)
    module = MultiHeadEMA(4, ndim=2, bidirectional=bidirectional).train()
    module.conv_algorithm, module.scan_block = algorithm, 4
    x = torch.randn(9, 2, 4)
    results = []
    for autocast in (False, True):
        module.zero_grad()
        x_in = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = module(x_in)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        assert out.dtype == torch.float32
        results.append([out.detach(), x_in.grad] + [p.grad.clone() for p in module.parameters()])
    for plain, mixed in zip(*results):
        assert max_diff(plain, mixed) <= 1e-6


def test_auto_rule():
    assert pick_algorithm("auto", 64, 1000) == "toeplitz"
    assert pick_algorithm("auto", 80, 2) == "fft"
    assert pick_algorithm("auto", 80, 40) == "blocked_scan"
    assert pick_algorithm("auto", 255, 8) == "fft"
    assert pick_algorithm("auto", 256, 1) == "blocked_scan"


@pytest.mark.parametrize("shape", [(7, 3, 5), (1, 1, 4), (5, 2, 1)])
def test_layout_swap_is_a_transpose_in_both_directions(shape):
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    swapped = swap_time_and_channels(x)
    assert swapped.is_contiguous() and torch.equal(swapped, x.permute(2, 1, 0))
    assert torch.equal(swap_time_and_channels(swapped), x)
    assert torch.autograd.gradcheck(swap_time_and_channels, (x,))


def test_row_groups_are_a_quarter_of_the_input_within_bounds():
    from mega_fairseq.modules.ema_blocked_scan import _row_groups

    def groups(length, bsz, rows, device="cpu"):
        return _row_groups(torch.empty(length, bsz, rows, device=device))

    assert groups(2048, 1, 256) == 4  # 2^19 values in groups of 2^17
    assert groups(2048, 4, 512) == 8  # 2^22 values in groups of 2^19
    assert groups(100, 2, 5) == 1  # small inputs: one group
    assert groups(2048, 4, 512, device="meta") == 1
