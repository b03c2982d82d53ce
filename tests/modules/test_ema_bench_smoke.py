"""Smoke runs of ``benchmarks/bench_ema.py`` (both modes) so that the benchmark cannot rot.

Only the structure of the JSON is checked (no timing assertions). Subprocesses: marked e2e.
"""
import json
import os
import subprocess
import sys

import pytest

from helpers import REPO_ROOT

SCRIPT = REPO_ROOT / "benchmarks" / "bench_ema.py"


def run_bench(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--reps", "1", *args], capture_output=True,
                          text=True, timeout=300, env=env, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.mark.e2e
def test_bench_ema_quick_times_every_path():
    report = run_bench()
    assert [row["length"] for row in report["rows"]] == [32, 128]
    for row in report["rows"]:
        for path in ("toeplitz", "fft", "blocked_scan_32", "blocked_scan_64", "blocked_scan_128", "auto"):
            assert row[path + "_us_per_token"] > 0


@pytest.mark.e2e
def test_bench_ema_baseline_rev_compares_same_weights():
    report = run_bench("--baseline-rev", "HEAD")
    assert report["config"]["baseline_rev"] == "HEAD"
    for direction in ("causal", "bidirectional"):
        assert set(report[direction]["fwd_bwd_ms"]) == {"before", "after"}
        assert report[direction]["max_abs_output_diff"] < 1e-4  # same weights, same math
    assert report["prefill_64_then_16_steps"]["before_over_after"] > 0
