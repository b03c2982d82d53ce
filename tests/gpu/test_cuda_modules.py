"""Every Mega module in float32 on CUDA equals float32 on the CPU (<= 1e-5 relative), forward and
backward; incremental decoding on CUDA equals the full forward on CUDA."""
import copy

import pytest
import torch

from gpu.cuda_support import (DEVICE, FLOAT32_RELATIVE_TOLERANCE, GPU_MARKS, exact_float32_matmuls,  # noqa: F401
                              relative_error)
from modules.test_half_precision import CASES, inputs, randomized
from mega_fairseq.modules import MegaDecoderLayer, MovingAverageGatedAttention
from helpers import tiny_layer_config

pytestmark = GPU_MARKS


def step(module, call, xs):
    """Output and all gradients (inputs, then parameters by name) of a fixed weighted sum of the output."""
    module.zero_grad()
    xs = [x.detach().clone().requires_grad_(True) for x in xs]
    out = call(module, *xs)
    weights = torch.linspace(-1.0, 1.0, out.numel(), device=out.device).view_as(out)
    (out * weights).sum().backward()
    grads = [x.grad for x in xs] + [p.grad for _, p in sorted(module.named_parameters()) if p.grad is not None]
    return out, grads


@pytest.mark.parametrize("case", sorted(CASES))
def test_module_float32_on_device_equals_cpu(case):
    build, call, shapes = CASES[case]
    torch.manual_seed(0)
    module = randomized(build())
    xs = inputs(*shapes)
    cpu_out, cpu_grads = step(module, call, xs)
    device_module = copy.deepcopy(module).to(DEVICE)
    out, grads = step(device_module, call, [x.to(DEVICE) for x in xs])
    assert out.device.type == DEVICE.type
    assert relative_error(out, cpu_out) <= FLOAT32_RELATIVE_TOLERANCE
    assert len(grads) == len(cpu_grads)
    for grad, cpu_grad in zip(grads, cpu_grads):
        assert grad.device.type == DEVICE.type
        assert relative_error(grad, cpu_grad) <= FLOAT32_RELATIVE_TOLERANCE


@pytest.mark.parametrize("algorithm", ["toeplitz", "fft", "blocked_scan"])
def test_every_ema_algorithm_on_device_equals_cpu(algorithm):
    build, call, shapes = CASES["ema_bidirectional_truncated"]
    torch.manual_seed(0)
    module = randomized(build())
    module.conv_algorithm = algorithm
    xs = inputs((80, 2, shapes[0][-1]))
    cpu_out, cpu_grads = step(module, call, xs)
    out, grads = step(copy.deepcopy(module).to(DEVICE), call, [x.to(DEVICE) for x in xs])
    assert relative_error(out, cpu_out) <= FLOAT32_RELATIVE_TOLERANCE
    for grad, cpu_grad in zip(grads, cpu_grads):
        assert relative_error(grad, cpu_grad) <= FLOAT32_RELATIVE_TOLERANCE


def layer_config(**overrides):
    return tiny_layer_config(**dict(dict(chunk_size=4), **overrides))


@pytest.mark.parametrize("truncation", [None, 5])
def test_incremental_decoding_on_device_equals_full_forward(truncation):
    torch.manual_seed(1)
    layer = randomized(MegaDecoderLayer(layer_config(truncation=truncation))).to(DEVICE).eval()
    x, encoder_out = (t.to(DEVICE) for t in inputs((11, 2, 16), (7, 2, 16)))
    padding = torch.zeros(2, 11, dtype=torch.bool, device=DEVICE)
    padding[1, 8:] = True
    mask = torch.triu(torch.full((4, 4), float("-inf"), device=DEVICE), 1)
    with torch.no_grad():
        full = layer(x, encoder_out, None, attn_mask=mask, decoder_padding_mask=padding)[0]
        state, steps = {}, []
        for t in range(11):
            steps.append(layer(x[t:t + 1], encoder_out, None, state, decoder_padding_mask=padding[:, t:t + 1])[0])
    keep = (~padding).t().unsqueeze(-1)
    incremental = torch.cat(steps)
    assert incremental.device.type == DEVICE.type
    assert relative_error(incremental * keep, full * keep) <= FLOAT32_RELATIVE_TOLERANCE


def test_attention_state_after_a_beam_reorder_stays_on_device():
    torch.manual_seed(2)
    module = randomized(MovingAverageGatedAttention(16, 8, 24, 4, chunk_size=4)).to(DEVICE).eval()
    state = {}
    with torch.no_grad():
        module(torch.randn(3, 2, 16, device=DEVICE), incremental_state=state)
        module.reorder_incremental_state(state, torch.tensor([1, 1, 0], device=DEVICE))
        module.move.reorder_incremental_state(state, torch.tensor([1, 1, 0], device=DEVICE))
        out, _ = module(torch.randn(1, 3, 16, device=DEVICE), incremental_state=state)
    tensors = [v for buffer in state.values() for v in buffer.values() if torch.is_tensor(v)]
    assert out.shape == (1, 3, 16) and tensors
    assert all(t.device.type == DEVICE.type and t.size(0) == 3 for t in tensors)
