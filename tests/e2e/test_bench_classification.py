"""Smoke run of ``benchmarks/bench_classification.py`` at tiny lengths so that the benchmark cannot rot.

Only the structure of the JSON is checked (no timing assertions): every model measured at every
length, equal parameter counts, the ratios and the paper's figures present.
"""
import json
import os
import subprocess
import sys

from helpers import REPO_ROOT

SCRIPT = REPO_ROOT / "benchmarks" / "bench_classification.py"


def run(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_bench_classification_tiny_prints_complete_json():
    report = run("--lengths", "32", "64", "--chunk", "16", "--steps", "1")
    assert set(report) == {"config", "train", "ratios", "paper_lra_text_4k"}
    models = {"mega_chunk-1", "mega_chunk16", "transformer"}
    measured = {(row["model"], row["length"]) for row in report["train"] if "train_sequences_per_s" in row}
    assert measured == {(model, length) for model in models for length in (32, 64)}
    for row in report["train"]:
        assert row["train_sequences_per_s"] > 0 and row["train_peak_rss_mb"] >= 0
    params = {row["model"]: row["params"] for row in report["train"] if row["length"] == 64}
    assert abs(params["transformer"] - params["mega_chunk16"]) / params["mega_chunk16"] < 0.001
    for label in ("chunked", "unchunked"):
        assert report["ratios"]["{}_speed_over_transformer_L64".format(label)] > 0
    assert report["paper_lra_text_4k"] == {"mega_chunk_speed_over_transformer": 5.5,
                                           "mega_chunk_memory_over_transformer": 0.13}


def test_points_over_the_memory_budget_are_skipped_and_say_so():
    report = run("--lengths", "64", "--chunk", "16", "--steps", "1", "--max-memory-gb", "0.3")
    assert all("skipped" in row for row in report["train"])
    assert all("memory budget" in row["skipped"] for row in report["train"])
    assert report["ratios"] == {}
