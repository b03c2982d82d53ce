"""MultiHeadEMA the module: the official fixtures (``fixtures/reference/ema_*.pt``), the eval-mode
coefficient cache, precision, gradcheck and bad input.

Every whole-sequence path (dense Toeplitz, FFT, blocked scan with several block lengths, auto)
must reproduce the official outputs, and so must one-token and multi-token incremental decoding,
including the saved ``prev_state``. The op behind the module is checked path by path against the
reference recurrence in ``test_ema_op.py``.
"""
import copy

import pytest
import torch

from mega_fairseq.modules.ema_fft import fast_fft_length
from mega_fairseq.modules.exponential_moving_average import MultiHeadEMA

from helpers import load_fixture, max_diff

FLOAT32_TOL = 1e-5
# the official f64 full forward ran its FFT in float32; its one-token path is pure float64
F64_FULL_TOL = 1e-5
F64_EXACT_TOL = 1e-10
FIXTURES = ["ema_causal", "ema_causal_f64", "ema_bidirectional", "ema_bidirectional_f64"]

# (conv_algorithm, scan_block)
PATHS = [("toeplitz", None), ("fft", None), ("blocked_scan", None), ("blocked_scan", 3), ("blocked_scan", 5), ("auto", None)]


def load_reference(name):
    record = load_fixture(name)
    module = MultiHeadEMA(**record["config"])
    if name.endswith("_f64"):
        module = module.double()
    module.load_state_dict(record["state_dict"], strict=True)
    return module.eval(), record


# ------------------------------------------------------------ official fixtures
@pytest.mark.parametrize("name", FIXTURES)
@pytest.mark.parametrize("algorithm,block", PATHS)
def test_full_forward_matches_official(name, algorithm, block):
    module, record = load_reference(name)
    module.conv_algorithm, module.scan_block = algorithm, block
    inputs, outputs = record["inputs"], record["outputs"]
    with torch.no_grad():
        out = module(inputs["x"], inputs.get("padding_mask"))
    assert out.dtype == inputs["x"].dtype
    tol = F64_FULL_TOL if name.endswith("_f64") else FLOAT32_TOL
    assert max_diff(out, outputs["full"]) < tol


@pytest.mark.parametrize("name", FIXTURES)
def test_kernel_and_coefficients_match_official(name):
    module, record = load_reference(name)
    outputs = record["outputs"]
    length = record["inputs"]["x"].size(0)
    with torch.no_grad():
        p, q = module.coeffs()
        kernel = module.kernel(length)
    tol = 1e-12 if name.endswith("_f64") else 1e-6
    assert kernel.shape == outputs["kernel"].shape
    assert max_diff(kernel, outputs["kernel"]) < tol
    assert max_diff(p, outputs["coeff_p"]) < tol
    assert max_diff(q, outputs["coeff_q"]) < tol


def test_state_dict_names_and_shapes_are_official():
    for name in ["ema_causal", "ema_bidirectional"]:
        module, record = load_reference(name)
        ours = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        official = {k: tuple(v.shape) for k, v in record["state_dict"].items()}
        assert ours == official


@pytest.mark.parametrize("name", ["ema_causal", "ema_causal_f64"])
def test_one_token_decoding_matches_official(name):
    module, record = load_reference(name)
    x, outputs = record["inputs"]["x"], record["outputs"]
    tol = F64_EXACT_TOL if name.endswith("_f64") else FLOAT32_TOL
    state, steps = {}, []
    with torch.no_grad():
        for t in range(x.size(0)):
            steps.append(module(x[t : t + 1], incremental_state=state))
            saved = module._get_input_buffer(state)["prev_state"]
            assert saved.shape == outputs["incremental_states"][t].shape  # B x D x N
            assert max_diff(saved, outputs["incremental_states"][t]) < tol
    assert max_diff(torch.cat(steps), outputs["incremental"]) < tol


@pytest.mark.parametrize("name", ["ema_causal", "ema_causal_f64"])
@pytest.mark.parametrize("block", [None, 1, 2, 5])
def test_multi_token_decoding_matches_official(name, block):
    module, record = load_reference(name)
    module.scan_block = block
    x, outputs = record["inputs"]["x"], record["outputs"]
    state, pieces, start = {}, [], 0
    with torch.no_grad():
        for size in record["inputs"]["incremental_splits"].tolist():
            pieces.append(module(x[start : start + size], incremental_state=state))
            start += size
    final_state = module._get_input_buffer(state)["prev_state"]
    # the official multi-token step used a float32 FFT even in the f64 twin
    assert max_diff(torch.cat(pieces), outputs["incremental_multistep"]) < FLOAT32_TOL
    assert max_diff(final_state, outputs["incremental_multistep_final_state"]) < FLOAT32_TOL


def test_f64_full_forward_is_float64_accurate():
    """Our f64 path computes in float64: it matches the official pure-f64 recurrence closely."""
    module, record = load_reference("ema_causal_f64")
    for algorithm in ["toeplitz", "fft", "blocked_scan"]:
        module.conv_algorithm = algorithm
        with torch.no_grad():
            out = module(record["inputs"]["x"])
        assert max_diff(out, record["outputs"]["incremental"]) < F64_EXACT_TOL


# ------------------------------------------------------------- coefficient cache
def test_eval_cache_follows_load_state_dict():
    _, record = load_reference("ema_causal")
    x = record["inputs"]["x"]
    fresh = MultiHeadEMA(**record["config"]).eval()
    with torch.no_grad():
        fresh(x)  # fill the cache with the random init
        fresh.load_state_dict(record["state_dict"], strict=True)
        assert max_diff(fresh(x), record["outputs"]["full"]) < FLOAT32_TOL
        assert max_diff(fresh.kernel(x.size(0)), record["outputs"]["kernel"]) < 1e-6


@pytest.mark.parametrize("algorithm", ["fft", "toeplitz", "blocked_scan"])
def test_eval_cache_follows_in_place_edits_and_train_switch(algorithm):
    module, record = load_reference("ema_causal")
    module.conv_algorithm = algorithm
    x = record["inputs"]["x"]
    reference = copy.deepcopy(module)
    with torch.no_grad():
        module(x)
        module.alpha.add_(0.5)  # in-place edit bumps the parameter version
        reference.alpha.add_(0.5)
        reference.train()
        expected = reference(x)
        assert max_diff(module(x), expected) < 1e-6
    # a training step changes the parameters: the next eval forward must see it
    module.train()
    module(x).sum().backward()
    with torch.no_grad():
        for p in module.parameters():
            p.sub_(0.1 * p.grad)
    module.eval()
    reference.load_state_dict(module.state_dict())
    with torch.no_grad():
        assert max_diff(module(x), reference.train()(x)) < 1e-6


def test_eval_cache_follows_dtype_changes():
    module, record = load_reference("ema_causal")
    x = record["inputs"]["x"]
    with torch.no_grad():
        module(x)
        module.double()
        out64 = module(x.double())
        assert out64.dtype == torch.float64
        assert max_diff(out64, record["outputs"]["full"]) < FLOAT32_TOL
        module.float()
        module.gamma.mul_(2.0)
        changed = module(x)
    assert max_diff(changed, record["outputs"]["full"]) > 1e-3


# --------------------------------------------------------------------- precision
@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["ema_causal", "ema_bidirectional"])
def test_half_precision_forward_on_cpu(name, half):
    module, record = load_reference(name)
    inputs = record["inputs"]
    x16 = inputs["x"].to(half)
    with torch.no_grad():
        out = module(x16, inputs.get("padding_mask"))
        # the same input rounded to half but computed in float32 throughout
        expected = module(x16.float(), inputs.get("padding_mask"))
    assert out.dtype == half
    assert torch.isfinite(out).all()
    # only the final rounding to half separates them: the EMA ran in float32
    assert max_diff(out, expected) <= 0.01 * expected.abs().max().item()
    half_module = copy.deepcopy(module).to(half)
    with torch.no_grad():
        out_half_params = half_module(x16, inputs.get("padding_mask"))
    assert out_half_params.dtype == half
    assert torch.isfinite(out_half_params).all()


def test_bfloat16_decoding():
    module, record = load_reference("ema_causal")
    x16 = record["inputs"]["x"].to(torch.bfloat16)
    state = {}
    with torch.no_grad():
        steps = torch.cat([module(x16[t : t + 1], incremental_state=state) for t in range(x16.size(0))])
        full = module(x16)
    assert steps.dtype == torch.bfloat16
    assert max_diff(steps, full) <= 0.01 * full.float().abs().max().item()


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("algorithm", ["toeplitz", "fft", "blocked_scan"])
def test_gradcheck_float64(bidirectional, algorithm):
    torch.manual_seed(0)
    module = MultiHeadEMA(3, ndim=2, bidirectional=bidirectional).double().train()
    module.conv_algorithm, module.scan_block = algorithm, 2
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    params = list(module.parameters())

    def run(x_in, *_):
        return module(x_in)

    assert torch.autograd.gradcheck(run, (x, *params), eps=1e-6, atol=1e-5)


# --------------------------------------------------------------------- bad input
def test_wrong_width_is_rejected():
    module = MultiHeadEMA(8, ndim=2)
    with pytest.raises(ValueError, match="embed_dim"):
        module(torch.randn(4, 2, 7))
    with pytest.raises(ValueError, match="padding_mask"):
        module(torch.randn(4, 2, 8), torch.zeros(2, 5, dtype=torch.bool))


def test_bidirectional_incremental_is_rejected():
    module, record = load_reference("ema_bidirectional")
    with pytest.raises(ValueError, match="incremental_state"):
        module(record["inputs"]["x"][:1], incremental_state={})


def test_bad_constructor_and_algorithm_names():
    with pytest.raises(ValueError, match="ndim"):
        MultiHeadEMA(8, ndim=0)
    module = MultiHeadEMA(8)
    module.conv_algorithm = "magic"
    with pytest.raises(ValueError, match="conv_algorithm"):
        module(torch.randn(4, 1, 8))


# ------------------------------------------------------------------- FFT length
def test_fast_fft_length_is_smallest_even_smooth_size():
    def smooth_even(n):
        if n % 2:
            return False
        for prime in (2, 3, 5):
            while n % prime == 0:
                n //= prime
        return n == 1

    for need in range(1, 700):
        got = fast_fft_length(need)
        assert got >= need and smooth_even(got)
        assert not any(smooth_even(n) for n in range(need, got))
    assert fast_fft_length(2 * 1000 - 1) == 2000  # not blindly a power of two
