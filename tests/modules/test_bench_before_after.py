"""Smoke runs of the benchmarks' before/after modes (``--baseline-rev``), so that they cannot rot.

Structure only, no timing assertions, except that the old and the new layer compute the same
output (the before/after comparison is between equal functions).
"""
import json
import os
import subprocess
import sys

import pytest

from helpers import REPO_ROOT

BASELINE = "c5153e8"  # the attention layer before the copy-free, fused rewrite


def _history_available() -> bool:
    try:
        return subprocess.run(["git", "-C", str(REPO_ROOT), "cat-file", "-e", BASELINE + "^{commit}"],
                              capture_output=True).returncode == 0
    except OSError:
        return False


pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not _history_available(), reason="git history with the baseline needed")]


def run_script(name, *args, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / name), *args], capture_output=True,
                          text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_bench_layers_baseline_rev_quick():
    report = run_script("bench_layers.py", "--quick", "--baseline-rev", BASELINE, "--reps", "1")
    assert report["config"]["baseline_rev"] == BASELINE and report["config"]["threads"] == 1
    assert report["max_abs_output_diff"] < 1e-5
    assert set(report["train_fwd_bwd_ms"]) == {"before", "after", "matmuls"}
    assert all(value > 0 for value in report["train_fwd_bwd_ms"].values())
    assert set(report["decode_step_ms"]) == {"before", "after"}
    assert report["ratios"]["train_speedup_before_over_after"] > 0
    assert report["ratios"]["decode_step_after_over_before"] > 0
    assert 0 < report["percent_of_matmul_peak"]["after"]


def test_bench_lm_baseline_rev_adds_the_old_layer_row():
    report = run_script("bench_lm.py", "--lengths", "64", "--steps", "1", "--baseline-rev", BASELINE)
    assert report["threads"] == 1
    models = {point["model"] for point in report["points"]}
    assert {"mega_lm", "mega_lm@" + BASELINE, "transformer_lm"} <= models
    ratios = report["mega_over_transformer"]["64"]
    assert ratios["train_peak_memory"] > 0 and ratios["baseline_train_peak_memory"] > 0
