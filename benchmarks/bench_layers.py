"""Layer benchmark: Mega gated attention against a stock fairseq Transformer layer.

Prints one JSON object on stdout:

* ``train``: forward + backward time and peak memory of
  ``MovingAverageGatedAttention`` (causal, ``chunk_size`` -1 and 128) and of
  fairseq's ``TransformerEncoderLayer`` (causal mask, same width, 4 heads, FFN
  4x width), for L = 512 ... 16384. Every row uses the same number of tokens
  per call (batch = tokens // L), so ``ms_per_token`` compares equal work.
* ``decode``: one-token incremental step time of the causal Mega layer against
  the position: median (``step_ms``, robust to other processes) and mean over
  ``decode_window`` consecutive steps that start at the position (a whole chunk
  cycle, so every cache fill level counts once).
* ``ratios``: chunk-128 time per token at the longest length over the shortest
  (target <= 1.25 for 16384 / 512), decode step at the last position over the
  first (target <= 1.2 for 4096 / 16), and Transformer / Mega speed-ups.

How it measures:

* each configuration runs in its own subprocess (clean allocator, clean peak);
  ``--quick`` runs everything in-process instead (a smoke run, figures rough);
* time: one warm-up call, then the minimum over ``--reps`` timed calls;
* memory: peak resident set size during the warm-up forward + backward minus
  the resident size just before it (Linux: the peak counter ``VmHWM`` is reset
  through ``/proc/self/clear_refs``; elsewhere ``ru_maxrss`` is used and the
  figure is an upper bound). It therefore counts activations, gradients and
  allocator slack, i.e. what the process really needed.
* configurations whose attention matrices alone would exceed ``--mem-budget-gb``
  are skipped and reported as such.

Run ``python benchmarks/bench_layers.py`` (a few minutes on 2 cores) or with
``--quick`` for a small smoke run. Every worker runs at ``--threads`` threads (default 1: two
threads on a busy 2-core machine measure the other jobs, not the layer).

``--baseline-rev REV`` measures before/after in one process instead: the layer as it was at git
revision ``REV`` (its source is read with ``git show`` at run time and loaded next to the
package's other modules; no old copy is kept in the package) against the current one, with the
same weights, at d=512 z=128 h=1024 n=16, chunk 128, L=2048 x 4 sequences by default. The two
layers and a matmul-only reference (the three projections' forward + backward GEMMs of the same
shapes, i.e. the machine's matmul speed for this layer) are timed interleaved (the order alternating), best of
``--reps``; so is the one-token decode step. Prints the time ratio old / new, the share of the
layer time the projection GEMMs would take at the measured matmul speed ("% of matmul peak") and
the decode step ratio, from the best times and (``paired_median``) as the median of each round's own
ratio, which a machine whose load changes between rounds disturbs less. A fourth function, timed in
the same rounds, runs the layer's other GEMMs (the chunked attention's batched matmuls, and the EMA
blocked scan's when the layer's EMA runs it rather than the compiled recurrence, which has none;
forward and backward, at the layer's shapes, random operands): with the projections it gives
``gemm_floor_ms``, the time the GEMMs of the layer take at the measured speed, and
``max_speedup_at_gemm_floor`` = before / floor.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time
import types

from bench_common import median

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYER_PATH = "mega_fairseq/modules/moving_average_gated_attention.py"
COMPARE = dict(width=512, zdim=128, hdim=1024, ndim=16, chunk=128, length=2048, batch=4, reps=5,
               decode_position=1000, decode_window=64)

FULL = dict(width=128, zdim=64, hdim=256, ndim=16, tokens=16384, lengths=[512, 1024, 2048, 4096, 8192, 16384],
            positions=[16, 64, 256, 1024, 4096], decode_window=128, reps=3)
QUICK = dict(width=32, zdim=16, hdim=64, ndim=4, tokens=256, lengths=[64, 128], positions=[4, 16],
             decode_window=8, reps=1)
MODELS = {"mega_chunk128": 128, "mega_chunk-1": -1, "transformer": None}


# ------------------------------------------------------------------ workers
def _rss_bytes():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _peak_bytes(reset_ok):
    if reset_ok:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _build_layer(name, spec, length):
    import torch
    from argparse import Namespace

    if name == "transformer":
        from fairseq.modules import TransformerEncoderLayer

        args = Namespace(encoder_embed_dim=spec["width"], encoder_attention_heads=4,
                         encoder_ffn_embed_dim=4 * spec["width"], dropout=0.0, attention_dropout=0.0,
                         activation_dropout=0.0, activation_fn="relu", encoder_normalize_before=True)
        layer = TransformerEncoderLayer(args)
        mask = torch.triu(torch.full((length, length), float("-inf")), 1)
        return layer, lambda x: layer(x, None, attn_mask=mask)

    from mega_fairseq.modules.moving_average_gated_attention import MovingAverageGatedAttention

    chunk = MODELS[name]
    layer = MovingAverageGatedAttention(spec["width"], spec["zdim"], spec["hdim"], spec["ndim"],
                                        chunk_size=chunk, max_positions=max(length, 1))
    span = chunk if 0 < chunk < length else length
    mask = torch.triu(torch.full((span, span), float("-inf")), 1)
    return layer, lambda x: layer(x, attn_mask=mask)[0]


def worker_train(spec):
    import torch

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    length, name = spec["length"], spec["model"]
    batch = max(1, spec["tokens"] // length)
    layer, run = _build_layer(name, spec, length)
    layer.train()
    x = torch.randn(length, batch, spec["width"], requires_grad=True)
    reset_ok = _reset_peak()
    # read the baseline after the reset: the high-water mark then covers this moment, so the
    # difference cannot go negative when the allocator returns memory in between
    before = _rss_bytes()
    run(x).sum().backward()
    peak = _peak_bytes(reset_ok) - before
    times = []
    for _ in range(spec["reps"]):
        layer.zero_grad(set_to_none=True)
        x.grad = None
        start = time.perf_counter()
        run(x).sum().backward()
        times.append(time.perf_counter() - start)
    best = min(times)
    return dict(model=name, length=length, batch=batch, fwd_bwd_ms=best * 1e3,
                ms_per_token=best * 1e3 / (length * batch), peak_mb=peak / 2 ** 20,
                peak_is_upper_bound=not reset_ok)


def worker_decode(spec):
    import torch
    from mega_fairseq.modules.moving_average_gated_attention import MovingAverageGatedAttention

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    chunk, window = MODELS[spec["model"]], spec["decode_window"]
    last = max(spec["positions"]) + window
    layer = MovingAverageGatedAttention(spec["width"], spec["zdim"], spec["hdim"], spec["ndim"],
                                        chunk_size=chunk, max_positions=last).eval()
    x = torch.randn(last, 1, spec["width"])
    rows = []
    with torch.no_grad():
        for position in spec["positions"]:
            state = {}
            layer(x[:position], incremental_state=state)  # prefill in one multi-token step
            layer(x[position : position + 1], incremental_state={})  # warm-up on a throw-away state
            times = []
            for t in range(position, position + window):
                start = time.perf_counter()
                layer(x[t : t + 1], incremental_state=state)
                times.append(time.perf_counter() - start)
            times.sort()
            rows.append(dict(model=spec["model"], position=position,
                             step_ms=times[len(times) // 2] * 1e3, mean_step_ms=sum(times) * 1e3 / window))
    return rows


# ------------------------------------------------------- before / after
def load_baseline_layer_class(rev, scope="modules"):
    """``MovingAverageGatedAttention`` as it was at git revision ``rev``, loaded from git.

    ``scope="modules"``: the whole ``mega_fairseq/modules`` package of ``rev`` (its EMA, attention
    weights, norms...) is extracted to a temporary folder and imported under another name, so the
    comparison covers everything the layer runs. ``scope="layer"``: only the layer file of ``rev``
    runs, as a module of the current package (its relative imports resolve to today's EMA etc.),
    which isolates that file.
    """
    if scope == "modules":
        return _load_baseline_package(rev).MovingAverageGatedAttention
    source = subprocess.run(["git", "-C", REPO_ROOT, "show", "{}:{}".format(rev, LAYER_PATH)],
                            capture_output=True, text=True, check=True).stdout
    import mega_fairseq.modules  # noqa: F401  (the package the old file's relative imports need)

    name = "mega_fairseq.modules._baseline_at_{}".format(rev.replace("~", "_").replace("^", "_"))
    module = types.ModuleType(name)
    module.__package__ = "mega_fairseq.modules"
    module.__file__ = "{}:{}".format(rev, LAYER_PATH)
    sys.modules[name] = module
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module.MovingAverageGatedAttention


def _load_baseline_package(rev):
    import importlib
    import tempfile

    package = "mega_modules_at_{}".format("".join(c if c.isalnum() else "_" for c in rev))
    root = tempfile.mkdtemp(prefix="bench-baseline-")
    folder = os.path.join(root, package)
    os.makedirs(folder)
    archive = subprocess.run(["git", "-C", REPO_ROOT, "archive", rev, "mega_fairseq/modules"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", folder, "--strip-components", "2"], input=archive, check=True)
    sys.path.insert(0, root)
    return importlib.import_module(package)


def _interleaved_rounds(functions, reps):
    """Run each function once (warm-up), then ``reps`` rounds of all of them in turn (the order
    reversed every other round, so that none always runs first); every time (s), per function."""
    for run in functions.values():
        run()
    times = {name: [] for name in functions}
    for round_index in range(reps):
        items = list(functions.items())
        for name, run in items if round_index % 2 == 0 else items[::-1]:
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def _attention_and_ema_gemms(length, batch, width, zdim, hdim, ndim, chunk, scan_block, with_ema=True):
    """The layer's GEMMs besides the projections, forward + backward, at its shapes (random
    operands, no other work): the chunked attention (scores ``q k^T``, ``weights @ v`` and their
    four gradient products) and, ``with_ema`` (the EMA runs its blocked scan), the blocked scan's
    (in-block matmul with the block matrix and boundary projections, the carried states' read-out,
    and their gradient products). The compiled recurrence runs no GEMM."""
    import torch

    frames = batch * (length // chunk)
    q, k = torch.randn(frames, chunk, zdim), torch.randn(frames, chunk, zdim)
    weights, values, grad_out = torch.randn(frames, chunk, chunk), torch.randn(frames, chunk, hdim), torch.randn(frames, chunk, hdim)
    if with_ema:
        blocks = batch * (length // scan_block)
        x_blocks = torch.randn(width, blocks, scan_block)
        matrix = torch.randn(width, scan_block, scan_block + ndim)
        states, read_out = torch.randn(width, blocks, ndim), torch.randn(width, ndim, scan_block)
        grad_product, grad_scan = torch.randn(width, blocks, scan_block + ndim), torch.randn(width, blocks, scan_block)

    def run():
        # attention: forward, then the gradients of weights @ v and of the scores
        torch.bmm(q, k.transpose(1, 2)), torch.bmm(weights, values)
        torch.bmm(grad_out, values.transpose(1, 2)), torch.bmm(weights.transpose(1, 2), grad_out)
        torch.bmm(weights, k), torch.bmm(weights.transpose(1, 2), q)
        if not with_ema:
            return
        # EMA: forward, then the gradients of both products
        product = torch.bmm(x_blocks, matrix)
        torch.baddbmm(product[..., :scan_block], states, read_out)
        torch.bmm(grad_product, matrix.transpose(1, 2)), torch.bmm(x_blocks.transpose(1, 2), grad_product)
        torch.bmm(grad_scan, read_out.transpose(1, 2)), torch.bmm(states.transpose(1, 2), grad_scan)

    return run


def _paired_median_ratio(numerator, denominator):
    """Median over rounds of ``numerator[i] / denominator[i]``: two runs of one round ran back to back, so
    their ratio is robust to load that changes between rounds (best-of-N of each is not)."""
    return median([a / b for a, b in zip(numerator, denominator)])


def compare_with_baseline(rev, spec, threads, scope="modules"):
    import torch
    import torch.nn.functional as F
    from mega_fairseq.modules.moving_average_gated_attention import MovingAverageGatedAttention

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    width, zdim, hdim, ndim, chunk = spec["width"], spec["zdim"], spec["hdim"], spec["ndim"], spec["chunk"]
    length, batch = spec["length"], spec["batch"]
    decode_end = spec["decode_position"] + spec["decode_window"]
    kwargs = dict(chunk_size=chunk, max_positions=max(length, decode_end))
    new = MovingAverageGatedAttention(width, zdim, hdim, ndim, **kwargs)
    old = load_baseline_layer_class(rev, scope)(width, zdim, hdim, ndim, **kwargs)
    old.load_state_dict(new.state_dict())
    mask = torch.triu(torch.full((chunk, chunk), float("-inf")), 1)
    x = torch.randn(length, batch, width, requires_grad=True)
    grad_out = torch.randn(length, batch, width)

    with torch.no_grad():
        same_output = (old(x, attn_mask=mask)[0] - new(x, attn_mask=mask)[0]).abs().max().item()

    def train_step(layer):
        def run():
            layer.zero_grad(set_to_none=True)
            x.grad = None
            layer(x, attn_mask=mask)[0].backward(grad_out)
        return run

    # the projections' GEMMs alone, forward + backward, same shapes as inside the layer
    tokens = torch.randn(length * batch, width, requires_grad=True)
    attended = torch.randn(length * batch, hdim, requires_grad=True)
    weights = [new.v_proj.weight, new.mx_proj.weight, new.h_proj.weight]
    biases = [new.v_proj.bias, new.mx_proj.bias, new.h_proj.bias]

    def matmuls():
        outs = [F.linear(tokens, weights[0], biases[0]), F.linear(tokens, weights[1], biases[1]),
                F.linear(attended, weights[2], biases[2])]
        torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])

    from mega_fairseq.modules import ema_recurrence
    from mega_fairseq.modules.ema_op import DEFAULT_SCAN_BLOCK

    scan_block = new.move.scan_block or DEFAULT_SCAN_BLOCK
    # the new layer's EMA ("auto") runs the compiled recurrence when installed: no GEMM of its own
    ema_gemms = not ema_recurrence.applies(x.detach())
    other_gemms = _attention_and_ema_gemms(length, batch, width, zdim, hdim, ndim, chunk, scan_block, ema_gemms)
    rounds = _interleaved_rounds({"before": train_step(old), "after": train_step(new), "matmuls": matmuls,
                                  "other_gemms": other_gemms}, spec["reps"])
    train = {name: min(times) for name, times in rounds.items()}
    flops = 6 * length * batch * (width * hdim + width * (2 * width + zdim + hdim) + hdim * width)

    old.eval(), new.eval()
    sequence = torch.randn(decode_end, 1, width)
    with torch.no_grad():
        states = {"before": {}, "after": {}}
        old(sequence[: spec["decode_position"]], incremental_state=states["before"])
        new(sequence[: spec["decode_position"]], incremental_state=states["after"])
        steps = {"before": [], "after": []}
        for t in range(spec["decode_position"], decode_end):
            pair = (("before", old), ("after", new))
            for name, layer in pair if t % 2 == 0 else pair[::-1]:
                start = time.perf_counter()
                layer(sequence[t : t + 1], incremental_state=states[name])
                steps[name].append(time.perf_counter() - start)
    step_median = {name: median(times) for name, times in steps.items()}
    return dict(
        config=dict(spec, baseline_rev=rev, baseline_scope=scope, threads=threads, torch=torch.__version__,
                    ema="blocked_scan" if ema_gemms else "recurrence (compiled)"),
        max_abs_output_diff=same_output,
        train_fwd_bwd_ms={name: round(value * 1e3, 3) for name, value in train.items()},
        matmul_gflops=round(flops / train["matmuls"] / 1e9, 1),
        percent_of_matmul_peak={"before": round(100 * train["matmuls"] / train["before"], 1),
                                "after": round(100 * train["matmuls"] / train["after"], 1)},
        # the layer's GEMMs (projections, chunked attention, and the EMA's blocked scan where it runs)
        # at the measured matmul speed
        gemm_floor_ms=round((train["matmuls"] + train["other_gemms"]) * 1e3, 3),
        gemm_floor_share_of_after=round((train["matmuls"] + train["other_gemms"]) / train["after"], 3),
        max_speedup_at_gemm_floor=round(train["before"] / (train["matmuls"] + train["other_gemms"]), 3),
        # the speed-up and the matmul share as medians of each round's own ratio (runs of one round
        # are back to back)
        paired_median={
            "train_speedup_before_over_after": round(_paired_median_ratio(rounds["before"], rounds["after"]), 3),
            "percent_of_matmul_peak": {
                "before": round(100 * _paired_median_ratio(rounds["matmuls"], rounds["before"]), 1),
                "after": round(100 * _paired_median_ratio(rounds["matmuls"], rounds["after"]), 1)},
            "decode_step_after_over_before": round(_paired_median_ratio(steps["after"], steps["before"]), 3),
        },
        decode_step_ms={name: round(value * 1e3, 3) for name, value in step_median.items()},
        ratios={"train_speedup_before_over_after": round(train["before"] / train["after"], 3),
                "train_speedup_target": 1.2,
                "decode_step_after_over_before": round(step_median["after"] / step_median["before"], 3),
                "decode_step_target": "<= 1.0 (no slowdown)"},
    )


# ------------------------------------------------------------------- driver
def run_worker(kind, spec, timeout, in_process=False):
    if in_process:
        return worker_train(spec) if kind == "train" else worker_decode(spec)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": "timeout after {} s".format(timeout)}
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "exit {}".format(proc.returncode)}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def attention_bytes(name, length, batch):
    """Rough size of the score matrices a forward + backward holds (scores, weights, their grads)."""
    heads = 4 if name == "transformer" else 1
    span = length if MODELS[name] is None or MODELS[name] < 0 else min(MODELS[name], length)
    return 4 * 4 * batch * heads * length * span


def _ratio(rows, key, model, field, first, last):
    values = {r[key]: r[field] for r in rows if r.get("model") == model and field in r}
    if first in values and last in values and values[first] > 0:
        return values[last] / values[first]
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--mem-budget-gb", type=float, default=6.0)
    parser.add_argument("--timeout", type=int, default=600, help="seconds per configuration")
    parser.add_argument("--only", choices=["train", "decode"],
                        help="run one part only (not with --baseline-rev, which always measures both)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every measurement")
    parser.add_argument("--baseline-rev", metavar="REV",
                        help="measure the layer at git revision REV against the current one, in one process")
    parser.add_argument("--baseline-scope", choices=["modules", "layer"], default="modules",
                        help="with --baseline-rev: the whole modules package of REV (the layer with its EMA, "
                             "default) or only the layer file on today's EMA")
    parser.add_argument("--reps", type=int, help="timed repetitions (default: 3, or 5 with --baseline-rev)")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_rev:
        if args.only:
            parser.error("--only does not apply with --baseline-rev: the comparison always measures training and decoding")
        spec = dict(COMPARE, reps=args.reps or COMPARE["reps"])
        if args.quick:
            spec.update(width=32, zdim=16, hdim=64, ndim=4, chunk=16, length=64, batch=2, decode_position=20,
                        decode_window=8)
        print(json.dumps(compare_with_baseline(args.baseline_rev, spec, args.threads, args.baseline_scope), indent=1))
        return
    if args.worker:
        kind, spec = args.worker[0], json.loads(args.worker[1])
        print(json.dumps(worker_train(spec) if kind == "train" else worker_decode(spec)))
        return

    import torch

    spec = dict(QUICK if args.quick else FULL, threads=args.threads)
    if args.reps:
        spec["reps"] = args.reps
    train = []
    for length in spec["lengths"] if args.only != "decode" else []:
        for name in MODELS:
            batch = max(1, spec["tokens"] // length)
            need = attention_bytes(name, length, batch)
            if need > args.mem_budget_gb * 2 ** 30:
                train.append(dict(model=name, length=length, batch=batch,
                                  skipped="attention alone needs ~{:.1f} GB > budget {} GB".format(
                                      need / 2 ** 30, args.mem_budget_gb)))
                continue
            row = run_worker("train", dict(spec, model=name, length=length), args.timeout, args.quick)
            train.append(dict(row, model=name, length=length))
    decode = []
    for name in ("mega_chunk128", "mega_chunk-1") if args.only != "train" else ():
        result = run_worker("decode", dict(spec, model=name), args.timeout, args.quick)
        decode.extend(result if isinstance(result, list) else [dict(result, model=name)])

    lengths, positions = spec["lengths"], spec["positions"]
    ratios = {
        "chunk128_ms_per_token_L{}_over_L{}".format(lengths[-1], lengths[0]):
            _ratio(train, "length", "mega_chunk128", "ms_per_token", lengths[0], lengths[-1]),
        "chunk128_ms_per_token_target": 1.25,
        "chunk128_decode_step_pos{}_over_pos{}".format(positions[-1], positions[0]):
            _ratio(decode, "position", "mega_chunk128", "step_ms", positions[0], positions[-1]),
        "chunk128_decode_step_target": 1.2,
        "chunk-1_decode_step_pos{}_over_pos{}".format(positions[-1], positions[0]):
            _ratio(decode, "position", "mega_chunk-1", "step_ms", positions[0], positions[-1]),
    }
    for length in lengths:
        per_token = {r["model"]: r["ms_per_token"] for r in train if r["length"] == length and "ms_per_token" in r}
        if "transformer" in per_token and "mega_chunk128" in per_token:
            ratios["transformer_over_chunk128_time_L{}".format(length)] = (
                per_token["transformer"] / per_token["mega_chunk128"])
    report = dict(
        config=dict(spec, quick=args.quick, torch=torch.__version__, threads=torch.get_num_threads(),
                    mem_budget_gb=args.mem_budget_gb),
        train=train, decode=decode, ratios=ratios,
    )
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
