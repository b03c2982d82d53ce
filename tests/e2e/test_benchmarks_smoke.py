"""Smoke run of ``benchmarks/bench_layers.py --quick`` so that the benchmark cannot rot.

Only the structure of the JSON is checked (no timing assertions).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

from helpers import REPO_ROOT

SCRIPT = REPO_ROOT / "benchmarks" / "bench_layers.py"


def test_bench_layers_quick_prints_complete_json():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert set(report) == {"config", "train", "decode", "ratios"}
    models = {"mega_chunk128", "mega_chunk-1", "transformer"}
    lengths = report["config"]["lengths"]
    measured = {(row["model"], row["length"]) for row in report["train"] if "ms_per_token" in row}
    assert measured == {(model, length) for model in models for length in lengths}
    for row in report["train"]:
        assert row["fwd_bwd_ms"] > 0 and row["peak_mb"] >= 0
    positions = report["config"]["positions"]
    decoded = {(row["model"], row["position"]) for row in report["decode"] if "step_ms" in row}
    assert decoded == {(model, p) for model in ("mega_chunk128", "mega_chunk-1") for p in positions}
    ratios = report["ratios"]
    time_key = "chunk128_ms_per_token_L{}_over_L{}".format(lengths[-1], lengths[0])
    decode_key = "chunk128_decode_step_pos{}_over_pos{}".format(positions[-1], positions[0])
    assert ratios[time_key] > 0 and ratios[decode_key] > 0
    assert ratios["chunk128_ms_per_token_target"] == 1.25 and ratios["chunk128_decode_step_target"] == 1.2
