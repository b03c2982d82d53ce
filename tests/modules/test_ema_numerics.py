"""MultiHeadEMA: kernel cache, precision, gradients, bad input, FFT length, long-sequence paths."""
import copy
from pathlib import Path

import pytest
import torch

from mega_fairseq.modules.ema_fft import fast_fft_length
from mega_fairseq.modules.exponential_moving_average import MultiHeadEMA

from helpers import REFERENCE_DIR
from helpers import max_diff
TOL = 1e-5


def load_reference(name):
    record = torch.load(REFERENCE_DIR / "{}.pt".format(name), weights_only=True)
    module = MultiHeadEMA(**record["config"])
    module.load_state_dict(record["state_dict"], strict=True)
    return module.eval(), record



# ------------------------------------------------------------- kernel cache
def test_eval_cache_follows_load_state_dict():
    module, record = load_reference("ema_causal")
    x = record["inputs"]["x"]
    fresh = MultiHeadEMA(**record["config"]).eval()
    with torch.no_grad():
        fresh(x)  # fill the cache with the random init
        fresh.load_state_dict(record["state_dict"], strict=True)
        assert max_diff(fresh(x), record["outputs"]["full"]) < TOL
        assert max_diff(fresh.kernel(x.size(0)), record["outputs"]["kernel"]) < 1e-6


def test_eval_cache_follows_in_place_edits_and_train_switch():
    module, record = load_reference("ema_causal")
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
        assert max_diff(out64, record["outputs"]["full"]) < TOL
        module.float()
        with torch.no_grad():
            module.gamma.mul_(2.0)
        changed = module(x)
    assert max_diff(changed, record["outputs"]["full"]) > 1e-3


# --------------------------------------------------------------- precision
@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["ema_causal", "ema_bidirectional"])
def test_half_precision_forward_on_cpu(name, half):
    module, record = load_reference(name)
    inputs = record["inputs"]
    x16 = inputs["x"].to(half)
    with torch.no_grad():
        out = module(x16, inputs.get("padding_mask"))
        # the same input rounded to bf16 but computed in float32 throughout
        expected = module(x16.float(), inputs.get("padding_mask"))
    assert out.dtype == half
    assert torch.isfinite(out).all()
    # only the final rounding to bf16 separates them: the kernel and FFT ran in float32
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
@pytest.mark.parametrize("algorithm", ["toeplitz", "fft", "chunked"])
def test_gradcheck_float64(bidirectional, algorithm):
    torch.manual_seed(0)
    module = MultiHeadEMA(3, ndim=2, bidirectional=bidirectional).double().train()
    module.conv_algorithm, module.chunk_block = algorithm, 2
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    params = list(module.parameters())

    def run(x_in, *_):
        return module(x_in)

    assert torch.autograd.gradcheck(run, (x, *params), eps=1e-6, atol=1e-5)


# ------------------------------------------------------------------ bad input
def test_wrong_width_is_rejected():
    module = MultiHeadEMA(8, ndim=2)
    with pytest.raises(ValueError, match="embed_dim"):
        module(torch.randn(4, 2, 7))
    with pytest.raises(ValueError, match="padding_mask"):
        module(torch.randn(4, 2, 8), torch.zeros(2, 5, dtype=torch.bool))


def test_bidirectional_incremental_is_rejected():
    module = MultiHeadEMA(8, ndim=2, bidirectional=True)
    with pytest.raises(ValueError, match="incremental_state"):
        module(torch.randn(1, 2, 8), incremental_state={})


def test_bad_constructor_and_algorithm_names():
    with pytest.raises(ValueError, match="ndim"):
        MultiHeadEMA(8, ndim=0)
    module = MultiHeadEMA(8)
    module.conv_algorithm = "magic"
    with pytest.raises(ValueError, match="conv_algorithm"):
        module(torch.randn(4, 1, 8))


# ---------------------------------------------------------- speed-related paths
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


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("window", [None, 100, 700])
def test_long_sequence_paths_agree(bidirectional, window):
    torch.manual_seed(6)
    module = MultiHeadEMA(4, ndim=3, bidirectional=bidirectional, truncation=window).eval()
    with torch.no_grad():
        module.delta.normal_(-3.0, 1.0)  # slow decays so that far taps matter
        module.alpha.normal_(-3.0, 1.0)
    x = torch.randn(1500, 2, 4)
    outs = {}
    with torch.no_grad():
        for algorithm, block in [("fft", None), ("toeplitz", None), ("chunked", None), ("chunked", 48)]:
            module.conv_algorithm, module.chunk_block = algorithm, block
            outs[(algorithm, block)] = module(x)
    baseline = outs[("fft", None)]
    for key, out in outs.items():
        assert max_diff(out, baseline) < 1e-4, key
