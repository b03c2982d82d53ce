"""The copy-free, fused ``MovingAverageGatedAttention`` computes what the layer computed before.

The layer as it was at ``BEFORE_REWRITE`` (read with ``git show`` by the benchmark's loader, the
way ``benchmarks/bench_layers.py --baseline-rev`` measures it) and the current one get the same
weights and inputs: outputs, input gradients and every parameter gradient must agree, with
padding, chunks of any fill, causal and bidirectional, every attention activation. The ``e2e``
tests at the end smoke-run both benchmarks' ``--baseline-rev`` modes (structure only, no timing
assertions). Skipped where the git history is not available (e.g. an sdist).
"""
import importlib
import json
import os
import subprocess
import sys

import pytest
import torch

from helpers import REPO_ROOT
from mega_fairseq.modules.attention_weights import causal_attention_mask
from mega_fairseq.modules.moving_average_gated_attention import MovingAverageGatedAttention

BEFORE_REWRITE = "c5153e8"


def _history_available() -> bool:
    try:
        return subprocess.run(["git", "-C", str(REPO_ROOT), "cat-file", "-e", BEFORE_REWRITE + "^{commit}"],
                              capture_output=True).returncode == 0
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _history_available(), reason="git history with the pre-rewrite layer needed")


def benchmark_module(name):
    """The script ``benchmarks/<name>.py`` imported as a module (with its sibling ``bench_common``)."""
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


@pytest.fixture(scope="module")
def old_layer_class():
    return benchmark_module("bench_layers").load_baseline_layer_class(BEFORE_REWRITE)


def causal_mask(length, chunk_size, attention_activation):
    """The full-forward causal mask (chunk x chunk, or length x length unchunked), float64."""
    n = chunk_size if 0 < chunk_size < length else length
    return causal_attention_mask(n, n, 0, attention_activation, torch.zeros((), dtype=torch.float64))


def run(layer, x, padding_mask, attn_mask, out_weights):
    layer.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    out, weights = layer(x, padding_mask=padding_mask, attn_mask=attn_mask, need_weights=True)
    (out * out_weights).sum().backward()
    return [out.detach(), weights.detach(), x.grad] + [p.grad for p in layer.parameters()]


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("chunk_size", [-1, 4])
@pytest.mark.parametrize("attention_activation", ["softmax", "relu2", "laplace"])
def test_current_layer_equals_the_layer_before_the_rewrite(old_layer_class, bidirectional, chunk_size,
                                                           attention_activation):
    torch.manual_seed(0)
    kwargs = dict(bidirectional=bidirectional, chunk_size=chunk_size, attention_activation=attention_activation,
                  max_positions=16)
    new = MovingAverageGatedAttention(8, 4, 12, 2, **kwargs).double().train()
    with torch.no_grad():
        new.gamma.normal_()
        new.beta.normal_()
    old = old_layer_class(8, 4, 12, 2, **kwargs).double().train()
    old.load_state_dict(new.state_dict())
    length = 10  # not a multiple of the chunk: the last chunk is padded internally
    x = torch.randn(length, 3, 8, dtype=torch.float64)
    padding_mask = torch.zeros(3, length, dtype=torch.bool)
    padding_mask[1, :3] = True
    attn_mask = None if bidirectional else causal_mask(length, chunk_size, attention_activation)
    out_weights = torch.randn(length, 3, 8, dtype=torch.float64)
    for got, expected in zip(run(new, x, padding_mask, attn_mask, out_weights),
                             run(old, x, padding_mask, attn_mask, out_weights)):
        assert got.shape == expected.shape
        assert (got - expected).abs().max().item() < 1e-12


# ------------------------------------------------------------- benchmark smoke runs (e2e)
def run_script(name, *args, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / name), *args], capture_output=True,
                          text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_bench_layers_refuses_only_with_a_baseline_rev(monkeypatch, capsys):
    """The comparison always measures both parts: ``--only`` there is an error, not silently ignored."""
    bench_layers = benchmark_module("bench_layers")
    monkeypatch.setattr(sys, "argv", ["bench_layers.py", "--baseline-rev", BEFORE_REWRITE, "--only", "train"])
    with pytest.raises(SystemExit) as stop:
        bench_layers.main()
    assert stop.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and "--only does not apply with --baseline-rev" in err


@pytest.mark.e2e
def test_bench_layers_baseline_rev_quick():
    report = run_script("bench_layers.py", "--quick", "--baseline-rev", BEFORE_REWRITE, "--reps", "1")
    assert report["config"]["baseline_rev"] == BEFORE_REWRITE and report["config"]["threads"] == 1
    assert report["max_abs_output_diff"] < 1e-5
    assert set(report["train_fwd_bwd_ms"]) == {"before", "after", "matmuls", "other_gemms"}
    assert all(value > 0 for value in report["train_fwd_bwd_ms"].values())
    times = report["train_fwd_bwd_ms"]
    assert report["gemm_floor_ms"] == pytest.approx(times["matmuls"] + times["other_gemms"], abs=0.0011)
    # before / floor, within what rounding every time to 0.001 ms and the ratio to 0.001 allows
    before, floor = times["before"], report["gemm_floor_ms"]
    lowest, highest = (before - 5e-4) / (floor + 5e-4), (before + 5e-4) / max(floor - 5e-4, 1e-9)
    assert lowest - 5e-4 <= report["max_speedup_at_gemm_floor"] <= highest + 5e-4
    assert set(report["decode_step_ms"]) == {"before", "after"}
    assert report["ratios"]["train_speedup_before_over_after"] > 0
    assert report["ratios"]["decode_step_after_over_before"] > 0
    assert 0 < report["percent_of_matmul_peak"]["after"]
    paired = report["paired_median"]
    assert paired["train_speedup_before_over_after"] > 0 and paired["decode_step_after_over_before"] > 0
    assert 0 < paired["percent_of_matmul_peak"]["after"]


@pytest.mark.e2e
def test_bench_lm_baseline_rev_adds_the_old_layer_row():
    # one run a point (every point is a fresh process); test_bench_lm_merges_repeated_runs covers --repeats
    report = run_script("bench_lm.py", "--lengths", "64", "--steps", "1", "--baseline-rev", BEFORE_REWRITE)
    assert report["threads"] == 1 and report["repeats"] == 1
    models = {point["model"] for point in report["points"]}
    assert {"mega_lm", "mega_lm@" + BEFORE_REWRITE, "transformer_lm"} <= models
    ratios = report["mega_over_transformer"]["64"]
    assert ratios["train_peak_memory"] > 0 and ratios["baseline_train_peak_memory"] > 0
    assert ratios["train_saved"] > 0 and ratios["train_peak_live_memory"] > 0  # glibc's mallinfo2 (the test machines run Linux)
    mega = next(point for point in report["points"] if point["model"] == "mega_lm")
    assert mega["train_peak_live_mb"] > 0 and mega["train_peak_rss_mb"] > 0


def test_bench_lm_merges_repeated_runs(monkeypatch):
    """``--repeats K``: one point per (model, length) with the median of every figure and each
    run's peak; a skipped run is left out, and a point skipped every time stays skipped."""
    bench_lm = benchmark_module("bench_lm")
    runs = [{"model": "mega_lm", "context": 64, "train_tokens_per_s": speed, "train_peak_rss_mb": peak}
            for speed, peak in ((100.0, 300.0), (140.0, 310.0), (120.0, 290.0))]
    merged = bench_lm._median_point(runs + [{"model": "mega_lm", "context": 64, "skipped": "timeout after 1 s"}])
    assert merged["train_tokens_per_s"] == 120.0 and merged["train_peak_rss_mb"] == 300.0
    assert merged["runs"] == 3 and merged["train_peak_rss_mb_each_run"] == [300.0, 310.0, 290.0]
    assert "runs" not in bench_lm._median_point(runs[:1])
    skipped = [{"model": "mega_lm", "context": 64, "skipped": "exit 1"}] * 2
    assert bench_lm._median_point(skipped) == skipped[0]
