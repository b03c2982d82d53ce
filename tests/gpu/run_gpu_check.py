"""``make gpu-check``: run the GPU tests (``tests/gpu``) and write a JSON summary.

The summary (default ``gpu-check.json``) holds the device (name, capability, memory), the torch
and CUDA versions, and each test's outcome (passed / failed / skipped, with the skip reason or
the first line of the failure). Without a CUDA device every test is skipped, the summary says so
(``"cuda_available": false`` and why) and the exit status is 0; with one, the exit status is
pytest's (non-zero when a test failed).

A CUDA build of torch 2.13.0 is needed for the tests to run (``make install`` keeps a torch
2.13.0 already in ``.venv``, whatever its build): see the README, "Training on many GPUs / nodes".
"""
import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import pytest
import torch

TESTS_DIR = Path(__file__).resolve().parent


class OutcomeRecorder:
    """pytest plugin: the outcome of every test (call phase, or setup when skipped/errored there)."""

    def __init__(self):
        self.tests = {}

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            entry = {"outcome": report.outcome, "seconds": round(report.duration, 3)}
            if report.skipped and isinstance(report.longrepr, tuple):
                entry["reason"] = report.longrepr[2]
            elif report.failed:
                entry["outcome"] = "failed" if report.when == "call" else "error"
                entry["message"] = str(report.longrepr).strip().splitlines()[-1][:500]
            self.tests[report.nodeid] = entry


def device_summary() -> dict:
    summary = {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "python": platform.python_version(),
               "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        summary.update(device=props.name, capability="{}.{}".format(props.major, props.minor),
                       memory_gib=round(props.total_memory / 2 ** 30, 1), device_count=torch.cuda.device_count(),
                       bf16_supported=torch.cuda.is_bf16_supported())
    else:
        summary["reason"] = ("no CUDA device: torch.cuda.is_available() is False" +
                             (" (this torch is a CPU build: install a CUDA build of torch 2.13.0)"
                              if torch.version.cuda is None else ""))
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="gpu-check.json", help="where to write the JSON summary")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (e.g. -k models)")
    args = parser.parse_args(argv)
    recorder = OutcomeRecorder()
    started = time.time()
    status = pytest.main([str(TESTS_DIR), "-m", "gpu", "-ra", "-p", "no:cacheprovider", *args.pytest_args],
                         plugins=[recorder])
    outcomes = [entry["outcome"] for entry in recorder.tests.values()]
    summary = device_summary()
    summary.update(
        seconds=round(time.time() - started, 1),
        counts={name: outcomes.count(name) for name in ("passed", "failed", "error", "skipped")},
        pytest_exit_status=int(status),
        tests=recorder.tests,
    )
    Path(args.output).write_text(json.dumps(summary, indent=2) + "\n")
    print("gpu-check: wrote {} ({})".format(args.output, ", ".join(
        "{} {}".format(count, name) for name, count in summary["counts"].items() if count)))
    dry_run = os.environ.get("MEGA_GPU_TEST_DEVICE", "cuda") != "cuda"  # see tests/gpu/cuda_support.py
    summary_note = "" if not dry_run else " (dry run on {})".format(os.environ["MEGA_GPU_TEST_DEVICE"])
    if not torch.cuda.is_available() and not dry_run:
        print("gpu-check: " + summary["reason"] + "; every GPU test was skipped")
        return 0
    print("gpu-check: done" + summary_note)
    return int(status)


if __name__ == "__main__":
    sys.exit(main())
