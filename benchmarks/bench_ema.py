"""MultiHeadEMA whole-sequence paths: dense Toeplitz, FFT, blocked scan and the compiled
recurrence (forward + backward).

Prints JSON: for each length, the time per token of ``conv_algorithm="toeplitz"`` (lengths up
to 256), ``"fft"``, ``"blocked_scan"`` at several ``scan_block`` lengths, ``"recurrence"`` (when
the kernel is installed) and ``"auto"`` (what the module picks). Used to choose the automatic rule in ``ema_op.py``.
Time is the minimum over ``--reps`` calls after one warm-up call.

    python benchmarks/bench_ema.py [--width 256] [--ndim 16] [--tokens 8192] [--quick]
    python benchmarks/bench_ema.py --width 64 --ndim 8 --tokens 4096 --lengths 16 32 64 96 128 --bidirectional

``--baseline-rev REV`` compares with the EMA as it was at git revision ``REV`` instead, in one
process: the EMA's files at ``REV`` (``exponential_moving_average.py``, ``ema_*.py``,
``toeplitz_matrix.py``, read with ``git show``) are loaded as a separate package from a temporary
directory, given the same weights, and timed interleaved with today's module (best of ``--reps``):
forward + backward of ``sum(out * w)`` at ``--width`` x ``--ndim``, ``L = --lengths[0]`` (default
d=512, N=16, L=2048, B=4 = ``--tokens`` / L), causal and bidirectional; and an eval prefill of
``L/2`` tokens followed by 16 one-token steps (causal).

    python benchmarks/bench_ema.py --baseline-rev c5153e8 --reps 8

Every measurement runs at ``--threads`` torch threads (default 1).
"""
import argparse
import importlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from mega_fairseq.modules import ema_recurrence
from mega_fairseq.modules.exponential_moving_average import MultiHeadEMA

REPO_ROOT = Path(__file__).resolve().parent.parent
MODULES_DIR = "mega_fairseq/modules"


def time_per_token(module, x, reps):
    best = float("inf")
    for index in range(reps + 1):
        x.grad = None
        start = time.perf_counter()
        module(x).sum().backward()
        elapsed = time.perf_counter() - start
        if index:
            best = min(best, elapsed)
    return best * 1e6 / (x.size(0) * x.size(1))


def load_baseline_ema_class(rev, directory):
    """``MultiHeadEMA`` as it was at ``rev``: its files written to ``directory`` as a package and imported."""
    listing = subprocess.run(["git", "-C", str(REPO_ROOT), "ls-tree", "--name-only", "{}:{}".format(rev, MODULES_DIR)],
                             capture_output=True, text=True, check=True).stdout.split()
    # the EMA's files and the helpers they import
    helpers = ("exponential_moving_average.py", "toeplitz_matrix.py", "recomputed_activations.py", "fusion_guard.py")
    names = [n for n in listing if n in helpers or (n.startswith("ema_") and n.endswith(".py"))]
    package = "ema_at_{}".format("".join(c if c.isalnum() else "_" for c in rev))
    (Path(directory) / package).mkdir()
    (Path(directory) / package / "__init__.py").write_text("")
    for name in names:
        source = subprocess.run(["git", "-C", str(REPO_ROOT), "show", "{}:{}/{}".format(rev, MODULES_DIR, name)],
                                capture_output=True, text=True, check=True).stdout
        (Path(directory) / package / name).write_text(source)
    sys.path.insert(0, str(directory))
    return importlib.import_module(package + ".exponential_moving_average").MultiHeadEMA


def best_interleaved(functions, reps):
    """Each function once (warm-up), then ``reps`` rounds of all in turn; best time in ms."""
    for run in functions.values():
        run()
    best = {name: float("inf") for name in functions}
    for _ in range(reps):
        for name, run in functions.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: round(value * 1e3, 1) for name, value in best.items()}


def compare_with_baseline(rev, width, ndim, length, batch, reps):
    with tempfile.TemporaryDirectory() as directory:
        old_class = load_baseline_ema_class(rev, directory)
        report = dict(config=dict(baseline_rev=rev, width=width, ndim=ndim, length=length, batch=batch, reps=reps,
                                  threads=torch.get_num_threads(), torch=torch.__version__))
        for bidirectional in (False, True):
            torch.manual_seed(0)
            new = MultiHeadEMA(width, ndim=ndim, bidirectional=bidirectional).train()
            old = old_class(width, ndim=ndim, bidirectional=bidirectional).train()
            old.load_state_dict(new.state_dict())
            x = torch.randn(length, batch, width, requires_grad=True)
            weights = torch.randn(length, batch, width)
            with torch.no_grad():
                diff = (old(x) - new(x)).abs().max().item()

            def train_step(module):
                def run():
                    module.zero_grad(set_to_none=True)
                    x.grad = None
                    (module(x) * weights).sum().backward()
                return run

            times = best_interleaved({"before": train_step(old), "after": train_step(new)}, reps)
            report["bidirectional" if bidirectional else "causal"] = dict(
                fwd_bwd_ms=times, before_over_after=round(times["before"] / times["after"], 2), max_abs_output_diff=diff
            )
        torch.manual_seed(0)
        new, old = MultiHeadEMA(width, ndim=ndim).eval(), old_class(width, ndim=ndim).eval()
        old.load_state_dict(new.state_dict())
        prefill = length // 2
        sequence = torch.randn(prefill + 16, batch, width)

        def decode(module):
            def run():
                state = {}
                with torch.no_grad():
                    module(sequence[:prefill], incremental_state=state)
                    for t in range(prefill, prefill + 16):
                        module(sequence[t : t + 1], incremental_state=state)
            return run

        times = best_interleaved({"before": decode(old), "after": decode(new)}, reps)
        report["prefill_{}_then_16_steps".format(prefill)] = dict(
            ms=times, before_over_after=round(times["before"] / times["after"], 2)
        )
        return report


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=None, help="channels D (default 256, or 512 with --baseline-rev)")
    parser.add_argument("--ndim", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=8192, help="tokens per call (batch = tokens // length)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--lengths", type=int, nargs="+", default=None)
    parser.add_argument("--bidirectional", action="store_true")
    parser.add_argument("--baseline-rev", metavar="REV", help="compare with the EMA at this git revision")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: more threads on a busy small machine measure the other jobs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.baseline_rev:
        width = args.width or (16 if args.quick else 512)
        length = (args.lengths or [128 if args.quick else 2048])[0]
        print(json.dumps(compare_with_baseline(args.baseline_rev, width, args.ndim, length,
                                               max(1, args.tokens // length), args.reps), indent=1))
        return
    lengths = [32, 128] if args.quick else [32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
    lengths = args.lengths or lengths
    width = 16 if args.quick else (args.width or 256)
    torch.manual_seed(0)
    module = MultiHeadEMA(width, ndim=args.ndim, bidirectional=args.bidirectional).train()
    rows = []
    for length in lengths:
        batch = max(1, args.tokens // length)
        x = torch.randn(length, batch, width, requires_grad=True)
        row = {"length": length, "batch": batch}
        paths = [("fft", None), ("blocked_scan", 32), ("blocked_scan", 64), ("blocked_scan", 128), ("auto", None)]
        if length <= 256:
            paths.insert(0, ("toeplitz", None))
        if ema_recurrence.available():
            paths.insert(-1, ("recurrence", None))
        for algorithm, block in paths:
            module.conv_algorithm, module.scan_block = algorithm, block
            name = algorithm if block is None else "{}_{}".format(algorithm, block)
            row[name + "_us_per_token"] = time_per_token(module, x, args.reps)
        rows.append(row)
    print(json.dumps({"width": width, "ndim": args.ndim, "bidirectional": args.bidirectional, "threads": torch.get_num_threads(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
