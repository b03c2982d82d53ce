"""MultiHeadEMA whole-sequence paths: dense Toeplitz, FFT and blocked scan (forward + backward).

Prints JSON: for each length, the time per token of ``conv_algorithm="toeplitz"`` (lengths up
to 256), ``"fft"``, ``"blocked_scan"`` at several ``scan_block`` lengths and ``"auto"`` (what the module
picks). Used to choose the automatic rule in ``ema_op.py``.
Time is the minimum over ``--reps`` calls after one warm-up call.

    python benchmarks/bench_ema.py [--width 256] [--ndim 16] [--tokens 8192] [--quick]
    python benchmarks/bench_ema.py --width 64 --ndim 8 --tokens 4096 --lengths 16 32 64 96 128 --bidirectional
"""
import argparse
import json
import time

import torch

from mega_fairseq.modules.exponential_moving_average import MultiHeadEMA


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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--ndim", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=8192, help="tokens per call (batch = tokens // length)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--lengths", type=int, nargs="+", default=None)
    parser.add_argument("--bidirectional", action="store_true")
    args = parser.parse_args()
    lengths = [32, 128] if args.quick else [32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
    lengths = args.lengths or lengths
    width = 16 if args.quick else args.width
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
        for algorithm, block in paths:
            module.conv_algorithm, module.scan_block = algorithm, block
            name = algorithm if block is None else "{}_{}".format(algorithm, block)
            row[name + "_us_per_token"] = time_per_token(module, x, args.reps)
        rows.append(row)
    print(json.dumps({"width": width, "ndim": args.ndim, "bidirectional": args.bidirectional, "threads": torch.get_num_threads(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
