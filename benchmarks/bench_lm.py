"""Training and eval-lm throughput of ``mega_lm`` (chunk 128) vs stock ``transformer_lm``.

Prints one JSON object. For each context length L (one sequence of L tokens per batch) and each
model: training tokens/s (forward + backward + Adam step) and the peak resident memory added by
that run, plus eval tokens/s (no-grad scoring of one L-token block). Every (model, L) point runs
in a fresh subprocess so that its peak memory is its own; the two models alternate so they share
the machine's conditions. Both models have about the same parameter count (printed).

    python benchmarks/bench_lm.py                       # 512 ... 16384
    python benchmarks/bench_lm.py --lengths 1024 4096 --steps 3

``--baseline-rev REV`` adds a ``mega_lm@REV`` row per length: the same model whose
``MovingAverageGatedAttention`` layers run the code of git revision ``REV`` (read with ``git show``
at run time, see ``bench_layers.py``), for before/after figures from one run.

Two memory figures per training point: ``train_peak_rss_mb``, the peak resident size above the
built model (what the machine had to provide), and ``train_peak_live_mb``, the peak of the bytes
the allocator had handed out during the warm-up step (glibc's ``mallinfo2``, sampled from a
thread; see ``bench_common.LiveMemorySampler``), which leaves out freed memory a fragmented heap
keeps. ``train_saved_mb`` is what autograd keeps between the forward and the backward (the
tensors saved for the backward, each storage once, parameters excluded). Peak resident memory of
one run depends on how glibc's allocator happened to place its buffers (a heap that fragments
stays large): ``--repeats K`` runs every point K times (each in a fresh process, the models
alternating) and reports the median of each figure, with every run's peak listed.
``--mmap-threshold BYTES`` runs the points with glibc's ``MALLOC_MMAP_THRESHOLD_`` fixed (e.g.
1048576): every larger buffer is then mapped and unmapped on its own, so the peak follows the live
tensors instead of the heap's high-water mark (page faults make the speed figures of such a run
lower; compare memory only).

Two extra rows per length measure scoring alone (a fresh process, no training first):
``mega_lm:eval`` (one full forward) and ``mega_lm:eval-stream1024`` (the same block streamed
1024 tokens at a time, as fairseq-eval-lm --test-chunk-size does), with their peak memory.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

from bench_common import DictionaryTask, LiveMemorySampler, median, peak_rss_bytes

VOCAB = 256  # byte-level sized vocabulary
MEGA = dict(decoder_embed_dim=256, decoder_hidden_dim=512, decoder_ffn_embed_dim=512, decoder_z_dim=64,
            decoder_n_dim=16, decoder_layers=4, decoder_chunk_size=128, truncation_length=None, dropout=0.0,
            normalize_before=True)
#: mega_lm with --checkpoint-activations (each block's activations recomputed in the backward)
CHECKPOINTED = "mega_lm:checkpoint-activations"
TRANSFORMER = dict(decoder_embed_dim=256, decoder_ffn_embed_dim=1024, decoder_attention_heads=4, decoder_layers=4,
                   dropout=0.0)


def build(kind: str, length: int):
    from fairseq.dataclass.utils import gen_parser_from_dataclass  # noqa: F401 (import check)

    task = DictionaryTask(VOCAB)
    if kind in ("mega_lm", CHECKPOINTED):
        from mega_fairseq.models.mega_lm import MegaLanguageModel

        args = argparse.Namespace(**MEGA, max_target_positions=length, tokens_per_sample=length,
                                  checkpoint_activations=kind == CHECKPOINTED)
        return MegaLanguageModel.build_model(args, task)
    from fairseq.models.transformer_lm import TransformerLanguageModel, TransformerLanguageModelConfig, base_lm_architecture

    values = {}
    for name, fld in TransformerLanguageModelConfig.__dataclass_fields__.items():
        default = fld.default
        if isinstance(default, str) and default.startswith("${"):
            default = None
        values[name] = getattr(default, "value", default)
    values.update(TRANSFORMER, max_target_positions=length, tokens_per_sample=length, add_bos_token=False,
                  character_embeddings=False, tpu=False)
    args = argparse.Namespace(**values)
    base_lm_architecture(args)
    return TransformerLanguageModel.build_model(args, task)


def use_baseline_attention(model, rev: str) -> int:
    """Run every ``MovingAverageGatedAttention`` of ``model`` with the class as it was at ``rev``.

    The instances keep their weights and attributes; only their class (their code) changes.
    Returns how many layers were switched.
    """
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_layers import load_baseline_layer_class
    from mega_fairseq.modules.moving_average_gated_attention import MovingAverageGatedAttention

    baseline = load_baseline_layer_class(rev)
    switched = 0
    for module in model.modules():
        if type(module) is MovingAverageGatedAttention:
            module.__class__ = baseline
            switched += 1
    return switched


def run_point(kind: str, length: int, steps: int, threads: int, max_memory_gb: float) -> dict:
    # Cap this process's address space: a point that needs more fails here with an allocation
    # error (recorded as skipped) instead of pushing the machine into the OOM killer.
    limit = int(max_memory_gb * 2 ** 30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if kind.startswith("mega_lm:eval"):
        return run_eval_memory_point(kind, length, steps)
    model_kind, _, rev = kind.partition("@")
    model = build(model_kind, length)
    if rev and use_baseline_attention(model, rev) == 0:
        raise RuntimeError("no MovingAverageGatedAttention layer found to run at revision {}".format(rev))
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    tokens = torch.randint(4, VOCAB, (1, length))
    target = torch.randint(4, VOCAB, (1, length))
    base_rss = peak_rss_bytes()

    saved = {}
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def keep(tensor):  # what autograd keeps for the backward: each storage once, parameters excluded
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    def train_step(count_saved=False):
        if count_saved:
            with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
                logits = model(tokens)[0]
        else:
            logits = model(tokens)[0]
        loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), target.view(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    model.train()
    with LiveMemorySampler() as live:
        train_step(count_saved=True)  # warm-up (allocations, kernels)
    start = time.perf_counter()
    for _ in range(steps):
        train_step()
    train_time = (time.perf_counter() - start) / steps
    train_peak = peak_rss_bytes() - base_rss

    model.eval()
    with torch.no_grad():
        model(tokens)
        start = time.perf_counter()
        for _ in range(steps):
            model(tokens)
        eval_time = (time.perf_counter() - start) / steps
    return {
        "model": kind, "context": length, "params": params,
        "train_tokens_per_s": round(length / train_time, 1),
        "train_peak_rss_mb": round(train_peak / 2 ** 20, 1),
        "train_saved_mb": round(sum(saved.values()) / 2 ** 20, 1),
        # the warm-up step's peak of allocated bytes (its own thread samples it, so it is not timed)
        "train_peak_live_mb": None if live.peak_bytes is None else round(live.peak_bytes / 2 ** 20, 1),
        "eval_tokens_per_s": round(length / eval_time, 1),
    }


def run_eval_memory_point(kind: str, length: int, steps: int) -> dict:
    """Scoring only (no training in this process), so the peak memory is the evaluation's own:
    ``mega_lm:eval`` = one full forward, ``mega_lm:eval-streamN`` = streamed in pieces of N tokens."""
    import torch

    model = build("mega_lm", length).eval()
    stream = int(kind.split("stream")[1]) if "stream" in kind else 0
    model.decoder.stream_size = stream
    tokens = torch.randint(4, VOCAB, (1, length))
    base_rss = peak_rss_bytes()
    with torch.no_grad():
        model(tokens)
        start = time.perf_counter()
        for _ in range(steps):
            model(tokens)
        eval_time = (time.perf_counter() - start) / steps
    return {"model": kind, "context": length, "eval_tokens_per_s": round(length / eval_time, 1),
            "eval_peak_rss_mb": round((peak_rss_bytes() - base_rss) / 2 ** 20, 1)}


def _median_point(points: list) -> dict:
    """One point from the runs of one (model, length): the median of every figure, and each run's peak."""
    done = [p for p in points if "skipped" not in p]
    if not done:
        return points[0]
    merged = dict(done[0])
    for key, value in done[0].items():
        if isinstance(value, float):
            merged[key] = round(median(p[key] for p in done), 1)
    if len(points) > 1:
        peak_key = "train_peak_rss_mb" if "train_peak_rss_mb" in merged else "eval_peak_rss_mb"
        merged["runs"] = len(done)
        merged[peak_key + "_each_run"] = [p.get(peak_key) for p in done]
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--steps", type=int, default=2, help="timed training steps per point (after 1 warm-up)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per point (default 1: more threads on a busy small machine measure the other jobs)")
    parser.add_argument("--stream", type=int, default=1024, help="piece length of the streamed-eval points")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per point before it is recorded as skipped")
    parser.add_argument("--max-memory-gb", type=float, default=10.0,
                        help="address-space cap of each point's process (beyond it the point is skipped)")
    parser.add_argument("--baseline-rev", metavar="REV",
                        help="also train mega_lm with its attention layers as they were at git revision REV")
    parser.add_argument("--checkpoint-activations", action="store_true",
                        help="also train mega_lm with --checkpoint-activations (row {!r}; ratio of peak memories)".format(
                            CHECKPOINTED))
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs per point, each in a fresh process; the medians are reported (default 1)")
    parser.add_argument("--mmap-threshold", type=int, metavar="BYTES",
                        help="run the points with glibc's MALLOC_MMAP_THRESHOLD_=BYTES (peak follows the live tensors)")
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_point(args.one[0], int(args.one[1]), args.steps, args.threads, args.max_memory_gb)))
        return

    env = dict(os.environ)
    if args.mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    runs = {}
    for length in args.lengths:
        kinds = ["mega_lm", "transformer_lm", "mega_lm:eval", "mega_lm:eval-stream{}".format(args.stream)]
        if args.baseline_rev:
            kinds.insert(1, "mega_lm@{}".format(args.baseline_rev))
        if args.checkpoint_activations:
            kinds.insert(1, CHECKPOINTED)
        for repeat in range(args.repeats):
            for kind in kinds if repeat % 2 == 0 else kinds[::-1]:
                cmd = [sys.executable, os.path.abspath(__file__), "--one", kind, str(length), "--steps", str(args.steps),
                       "--threads", str(args.threads), "--max-memory-gb", str(args.max_memory_gb)]
                try:
                    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
                    line = proc.stdout.strip().splitlines()[-1] if proc.returncode == 0 else None
                    point = json.loads(line) if line else {"model": kind, "context": length,
                                                           "skipped": "exit {}: {}".format(proc.returncode,
                                                                                          proc.stderr.strip()[-300:])}
                except subprocess.TimeoutExpired:
                    point = {"model": kind, "context": length, "skipped": "timeout after {} s".format(args.timeout)}
                runs.setdefault((kind, length), []).append(point)
                print(json.dumps(point), file=sys.stderr, flush=True)
    results = [_median_point(points) for points in runs.values()]

    ratios = {}
    for length in args.lengths:
        mega = next((r for r in results if r["model"] == "mega_lm" and r["context"] == length), {})
        trans = next((r for r in results if r["model"] == "transformer_lm" and r["context"] == length), {})
        if "train_tokens_per_s" in mega and "train_tokens_per_s" in trans:
            ratios[str(length)] = {
                "train_speedup": round(mega["train_tokens_per_s"] / trans["train_tokens_per_s"], 2),
                "eval_speedup": round(mega["eval_tokens_per_s"] / trans["eval_tokens_per_s"], 2),
                "train_peak_memory": round(mega["train_peak_rss_mb"] / max(trans["train_peak_rss_mb"], 1e-9), 2),
            }
            ratios[str(length)]["train_saved"] = round(mega["train_saved_mb"] / trans["train_saved_mb"], 2)
            if mega.get("train_peak_live_mb") and trans.get("train_peak_live_mb"):
                ratios[str(length)]["train_peak_live_memory"] = round(
                    mega["train_peak_live_mb"] / trans["train_peak_live_mb"], 2)
            checkpointed = next((r for r in results if r["model"] == CHECKPOINTED and r["context"] == length), {})
            if "train_peak_rss_mb" in checkpointed:
                ratios[str(length)]["checkpointed_over_plain_train_peak_memory"] = round(
                    checkpointed["train_peak_rss_mb"] / max(mega["train_peak_rss_mb"], 1e-9), 2)
                ratios[str(length)]["checkpointed_over_plain_train_speed"] = round(
                    checkpointed["train_tokens_per_s"] / mega["train_tokens_per_s"], 2)
            before = next((r for r in results if r["model"] == "mega_lm@{}".format(args.baseline_rev)
                           and r["context"] == length), {})
            if "train_peak_rss_mb" in before:
                ratios[str(length)]["baseline_train_peak_memory"] = round(
                    before["train_peak_rss_mb"] / max(trans["train_peak_rss_mb"], 1e-9), 2)
                ratios[str(length)]["baseline_train_speedup"] = round(
                    before["train_tokens_per_s"] / trans["train_tokens_per_s"], 2)
    print(json.dumps({"threads": args.threads, "steps": args.steps, "repeats": args.repeats,
                      "malloc_mmap_threshold": args.mmap_threshold, "mega_config": MEGA,
                      "transformer_config": TRANSFORMER, "points": results, "mega_over_transformer": ratios}, indent=1))


if __name__ == "__main__":
    main()
