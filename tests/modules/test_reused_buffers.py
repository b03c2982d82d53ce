"""The gradient buffers of the gated attention's backward are reused across steps, and only when free.

* ``ReusedBuffers`` hands a buffer out again once nothing else refers to its memory, never while a
  tensor (or a view of it) still does; small requests, and torches that cannot report a storage's
  reference count, get plain new tensors; the pool keeps at most ``max_buffers``;
* in the layer, a second training step writes ``v_pre``'s and ``r_pre``'s gradients into the first
  step's memory, while a gradient that a hook kept keeps its values through later steps.
"""

import pytest
import torch

from mega_fairseq.modules import fused_gates, reused_buffers
from mega_fairseq.modules.moving_average_gated_attention import MovingAverageGatedAttention
from mega_fairseq.modules.reused_buffers import ReusedBuffers

needs_use_count = pytest.mark.skipif(reused_buffers._use_count is None,
                                     reason="this torch cannot report a storage's reference count")


@needs_use_count
def test_a_free_buffer_is_handed_out_again():
    pool = ReusedBuffers(min_bytes=0)
    like = torch.empty(0)
    first = pool.empty((4, 6), like)
    address = first.data_ptr()
    del first
    second = pool.empty((3, 8), like)
    assert second.data_ptr() == address and second.shape == (3, 8) and second.is_contiguous()
    # a smaller request (at least half the buffer) takes it too; a much smaller one gets its own
    del second
    assert pool.empty((2, 6), like).data_ptr() == address
    assert pool.empty((2, 2), like).data_ptr() != address
    # clear() lets the memory go: the next request gets a new buffer
    pool.clear()
    assert pool._buffers == []


@needs_use_count
def test_a_buffer_still_referenced_is_not_reused():
    pool = ReusedBuffers(min_bytes=0)
    like = torch.empty(0)
    first = pool.empty((5, 5), like).fill_(1.0)
    kept_view = first[1:].t()  # only a view of the memory survives
    del first
    second = pool.empty((5, 5), like).fill_(2.0)
    assert second.data_ptr() != kept_view.data_ptr()
    assert torch.equal(kept_view, torch.ones(5, 4))


@needs_use_count
def test_dtypes_do_not_share_buffers():
    pool = ReusedBuffers(min_bytes=0)
    first = pool.empty((8,), torch.empty(0))
    address = first.data_ptr()
    del first
    assert pool.empty((8,), torch.empty(0, dtype=torch.float64)).data_ptr() != address


def test_small_requests_and_unknown_reference_counts_get_new_tensors(monkeypatch):
    pool = ReusedBuffers(min_bytes=1024)
    like = torch.empty(0)
    small = pool.empty((4, 4), like)  # 64 bytes
    del small
    assert pool._buffers == []
    monkeypatch.setattr(reused_buffers, "_use_count", None)
    large = pool.empty((32, 32), like)
    assert large.shape == (32, 32) and pool._buffers == []


@needs_use_count
def test_the_pool_keeps_at_most_max_buffers():
    pool = ReusedBuffers(max_buffers=2, min_bytes=0)
    like = torch.empty(0)
    for numel in (10, 30, 100, 300, 1000):  # each too large for the buffers before it
        pool.empty((numel,), like)
    assert len(pool._buffers) == 2
    assert sorted(flat.numel() for flat, _ in pool._buffers) == [300, 1000]
    # buffers in use are never dropped, even beyond the bound
    held = [pool.empty((numel,), like) for numel in (2000, 4000, 8000)]
    assert len(pool._buffers) == 3 and all(t.numel() for t in held)


@needs_use_count
def test_layer_steps_reuse_gradient_memory_and_leave_kept_gradients_alone(monkeypatch):
    pool = ReusedBuffers(min_bytes=0)
    monkeypatch.setattr(fused_gates, "BACKWARD_GRADIENTS", pool)
    torch.manual_seed(0)
    layer = MovingAverageGatedAttention(8, 4, 16, 2, chunk_size=4, max_positions=16)
    x = torch.randn(12, 2, 8, requires_grad=True)

    def step():
        layer.zero_grad(set_to_none=True)
        layer(x)[0].square().sum().backward()
        return {name: p.grad.clone() for name, p in layer.named_parameters()}

    reference = step()
    buffers = {flat.data_ptr() for flat, _ in pool._buffers}
    assert len(buffers) == 2  # the gradients of v_pre and r_pre
    again = step()
    assert {flat.data_ptr() for flat, _ in pool._buffers} == buffers
    for name in reference:
        assert torch.equal(again[name], reference[name]), name

    # a hook keeps v_pre's gradient (the pool's buffer): later steps must not write into it
    kept = []
    project_values = layer._project_values

    def keeping_projection(normed, **kwargs):
        v_pre, value_bias = project_values(normed, **kwargs)
        v_pre.register_hook(kept.append)
        return v_pre, value_bias

    monkeypatch.setattr(layer, "_project_values", keeping_projection)
    step()
    monkeypatch.setattr(layer, "_project_values", project_values)
    assert kept and kept[0].data_ptr() in buffers
    snapshot = kept[0].clone()
    step(), step()
    assert torch.equal(kept[0], snapshot)
