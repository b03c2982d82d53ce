"""MultiHeadEMA beyond the official code: truncation, multi-token steps, padding, beam reordering.

Whole-sequence outputs are pinned to the official fixtures in
``test_ema_module.py`` and every path to the reference recurrence in ``test_ema_op.py``; here the truncated kernel is checked against a
direct windowed sum of the official kernel, and incremental decoding against
the whole-sequence forward.
"""
import pytest
import torch
import torch.nn.functional as F

from mega_fairseq.modules.exponential_moving_average import MultiHeadEMA

from helpers import load_fixture, max_diff
TOL = 1e-5


def load_reference(name, **overrides):
    record = load_fixture(name)
    config = dict(record["config"], **overrides)
    module = MultiHeadEMA(**config)
    module.load_state_dict(record["state_dict"], strict=True)
    return module.eval(), record


def random_ema(embed_dim=6, ndim=3, truncation=None, seed=0):
    torch.manual_seed(seed)
    module = MultiHeadEMA(embed_dim, ndim=ndim, truncation=truncation)
    with torch.no_grad():  # spread the decay rates so that both fast and slow EMAs occur
        module.delta.normal_(0.0, 1.5)
        module.alpha.normal_(0.0, 1.5)
    return module.eval()


def windowed_reference(x, kernel, omega, window, padding_mask=None, backward_kernel=None):
    """Direct sum over the first ``window`` taps of the official kernel; x is T x B x D."""
    length = x.size(0)
    taps = min(window, length) if window else length
    x_in = x.double()
    if padding_mask is not None:
        x_in = x_in.masked_fill(padding_mask.t().unsqueeze(-1), 0.0)
    out = torch.zeros_like(x_in)
    for m in range(taps):
        out[m:] += kernel[:, m].double() * x_in[: length - m]
        if backward_kernel is not None:
            out[: length - m] += backward_kernel[:, m].double() * x_in[m:]
    return F.silu(out + x.double() * omega.double())


def decode(module, x, splits, padding_mask=None, state=None):
    state = {} if state is None else state
    pieces, start = [], 0
    for size in splits:
        mask = None if padding_mask is None else padding_mask[:, start : start + size]
        pieces.append(module(x[start : start + size], padding_mask=mask, incremental_state=state))
        start += size
    return torch.cat(pieces), state



# ------------------------------------------------------------------ truncation
@pytest.mark.parametrize("name", ["ema_causal", "ema_bidirectional"])
@pytest.mark.parametrize("truncation", [0, -2])
def test_non_positive_truncation_means_none(name, truncation):
    module, record = load_reference(name, truncation=truncation)
    inputs = record["inputs"]
    with torch.no_grad():
        out = module(inputs["x"], inputs.get("padding_mask"))
    assert max_diff(out, record["outputs"]["full"]) < TOL


@pytest.mark.parametrize("window", [1, 4, 12, 13, 40])
@pytest.mark.parametrize("algorithm,block", [("toeplitz", None), ("fft", None), ("blocked_scan", 3), ("blocked_scan", 5)])
def test_truncated_full_forward_is_windowed_official_kernel(window, algorithm, block):
    module, record = load_reference("ema_causal", truncation=window)
    module.conv_algorithm, module.scan_block = algorithm, block
    x, kernel = record["inputs"]["x"], record["outputs"]["kernel"]
    with torch.no_grad():
        out = module(x)
    assert max_diff(out, windowed_reference(x, kernel, module.omega, window)) < TOL


@pytest.mark.parametrize("window", [1, 3, 11])
@pytest.mark.parametrize("algorithm,block", [("toeplitz", None), ("fft", None), ("blocked_scan", 4)])
def test_truncated_bidirectional_is_windowed_official_kernel(window, algorithm, block):
    module, record = load_reference("ema_bidirectional", truncation=window)
    module.conv_algorithm, module.scan_block = algorithm, block
    inputs, kernel = record["inputs"], record["outputs"]["kernel"]
    dim = module.embed_dim
    with torch.no_grad():
        out = module(inputs["x"], inputs["padding_mask"])
    expected = windowed_reference(
        inputs["x"], kernel[:dim], module.omega, window, inputs["padding_mask"], backward_kernel=kernel[dim:]
    )
    assert max_diff(out, expected) < TOL


@pytest.mark.parametrize("window", [1, 3, 7])
@pytest.mark.parametrize("splits", [[1] * 23, [5, 1, 1, 9, 2, 5], [2, 3, 1, 17], [23]])
def test_truncated_decoding_is_exact(window, splits):
    module = random_ema(truncation=window, seed=window)
    x = torch.randn(sum(splits), 2, module.embed_dim)
    with torch.no_grad():
        full = module(x)
        steps, state = decode(module, x, splits)
    assert max_diff(steps, full) < TOL
    # the saved window has a fixed size: the cost of a step does not grow with the position
    saved = module._get_input_buffer(state)["prev_inputs"]
    assert tuple(saved.shape) == (2, module.embed_dim, window - 1)


# --------------------------------------------------------- multi-token steps
@pytest.mark.parametrize("algorithm", ["toeplitz", "fft", "blocked_scan"])
@pytest.mark.parametrize("splits", [[7, 1, 1, 1, 3, 10, 1], [1, 1, 2, 30, 1], [40, 1, 1]])
def test_multi_token_steps_equal_full_forward(algorithm, splits):
    module = random_ema(seed=1)
    module.conv_algorithm, module.scan_block = algorithm, 4
    x = torch.randn(sum(splits), 3, module.embed_dim)
    with torch.no_grad():
        full = module(x)
        steps, _ = decode(module, x, splits)
    assert max_diff(steps, full) < TOL


def test_one_token_step_does_no_fft(monkeypatch):
    modules = [random_ema(seed=2), random_ema(truncation=4, seed=3)]
    x = torch.randn(6, 2, 6)
    with torch.no_grad():
        full = [m(x) for m in modules]

    def forbidden(*args, **kwargs):
        raise AssertionError("one-token decoding must not use an FFT")

    monkeypatch.setattr(torch.fft, "rfft", forbidden)
    monkeypatch.setattr(torch.fft, "irfft", forbidden)
    with torch.no_grad():
        for module, expected in zip(modules, full):
            steps, _ = decode(module, x, [1] * 6)
            assert max_diff(steps, expected) < TOL


# ------------------------------------------------------------------- padding
@pytest.mark.parametrize("name", ["ema_causal", "ema_bidirectional"])
@pytest.mark.parametrize("algorithm", ["toeplitz", "fft", "blocked_scan"])
def test_padding_never_leaks_and_gives_no_nan(name, algorithm):
    module, record = load_reference(name)
    module.conv_algorithm, module.scan_block = algorithm, 3
    x = record["inputs"]["x"][:, :2].clone()  # T x 2 x D
    length = x.size(0)
    real = 7
    batch = torch.zeros(length, 3, x.size(-1))
    mask = torch.ones(3, length, dtype=torch.bool)
    batch[length - real :, 0] = x[:real, 0]  # left-padded
    mask[0, length - real :] = False
    batch[:real, 1] = x[:real, 1]  # right-padded
    mask[1, :real] = False
    batch[mask.t()] = float("nan")  # garbage at pads must stay out of the convolution; row 2 fully padded
    with torch.no_grad():
        out = module(batch, mask)
        alone = module(torch.stack([x[:real, 0], x[:real, 1]], dim=1))
    real_positions = ~mask.t()
    assert torch.isfinite(out[real_positions]).all()
    assert max_diff(out[length - real :, 0], alone[:, 0]) < TOL
    assert max_diff(out[:real, 1], alone[:, 1]) < TOL


def test_fully_padded_rows_and_zero_inputs_are_finite():
    module, record = load_reference("ema_bidirectional")
    x = torch.zeros(9, 2, module.embed_dim)
    mask = torch.ones(2, 9, dtype=torch.bool)
    with torch.no_grad():
        out = module(x, mask)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("splits", [[1] * 12, [4, 1, 5, 2]])
def test_right_padded_decoding_equals_full(window, splits):
    module = random_ema(truncation=window, seed=4)
    x = torch.randn(12, 3, module.embed_dim)
    mask = torch.zeros(3, 12, dtype=torch.bool)
    mask[1, 8:] = True
    mask[2, 3:] = True
    with torch.no_grad():
        full = module(x, mask)
        steps, _ = decode(module, x, splits, padding_mask=mask)
    assert max_diff(steps, full) < TOL


# ----------------------------------------------------------------- reordering
@pytest.mark.parametrize("window", [None, 4])
@pytest.mark.parametrize("new_order", [[2, 0, 1], [0, 0, 1, 2, 2, 2], [1]])
def test_reorder_then_decode_equals_decoding_reordered_batch(window, new_order):
    module = random_ema(truncation=window, seed=5)
    x = torch.randn(10, 3, module.embed_dim)
    order = torch.tensor(new_order)
    with torch.no_grad():
        _, state = decode(module, x[:6], [3, 1, 1, 1])
        module.reorder_incremental_state(state, order)
        continued, _ = decode(module, x[6:, order], [1, 2, 1], state=state)
        scratch, _ = decode(module, x[:, order], [1] * 10)
    assert max_diff(continued, scratch[6:]) < TOL
