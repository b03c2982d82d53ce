"""Training speed and memory of the Mega sequence classifier (``lra``) vs a Transformer sentence encoder.

Prints one JSON object. For each sequence length L (one sequence of L tokens per batch, byte-level
vocabulary, LRA Text sized models) and each model: training sequences/s (forward + backward +
Adam step of the classifier) and the peak resident memory added by that run. The models:

* ``mega_chunk-1``: ``lra`` with the ``mega_lra_imdb`` sizes (D 128, hidden 256, z 64, n 16,
  4 layers), attention over the whole sequence;
* ``mega_chunk<C>``: the same with chunked attention (``--chunk``, default 128, as the paper's
  Mega-chunk);
* ``transformer``: fairseq's ``TransformerSentenceEncoder`` (D 128, 4 layers, 4 heads, sinusoidal
  positions: no position parameters) with its FFN sized so that both models have the same number of
  parameters (printed), the same mean pooling and classifier head.

Every (model, L) point runs in a fresh subprocess so that its peak memory is its own, under an
address-space cap (``--max-memory-gb``): a point that would need more is recorded as skipped with
the reason, instead of swapping the machine. The models alternate at each length, so that the
ratios (Mega / Transformer) come from one interleaved run under the same machine conditions.

    python benchmarks/bench_classification.py                  # 1024 4096 16384
    python benchmarks/bench_classification.py --lengths 64 128 --steps 1   # smoke run
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

from bench_common import DictionaryTask, peak_rss_bytes

VOCAB = 256  # byte-level, as LRA Text (IMDB)
CLASSES = 2
EMBED_DIM, LAYERS, HEADS = 128, 4, 4
MEGA = dict(encoder_layers=LAYERS, encoder_embed_dim=EMBED_DIM, encoder_hidden_dim=256, z_dim=64, n_dim=16,
            classifier_out_dim=256, classifier_layers=1, sentence_class_num=CLASSES, activation_fn="silu",
            attention_activation_fn="softmax", norm_type="scalenorm", truncation_length=None, dropout=0.0,
            attention_dropout=0.0, act_dropout=0.0, apply_bert_init=False, input_type="text")
#: the paper's LRA Text figures at 4k tokens (Mega-chunk relative to the Transformer)
PAPER_4K = {"mega_chunk_speed_over_transformer": 5.5, "mega_chunk_memory_over_transformer": 0.13}


def build_mega(length: int, chunk: int):
    from mega_fairseq.models.lra import LRAModel

    settings = argparse.Namespace(**MEGA, chunk_size=chunk, max_positions=length)
    return LRAModel.build_model(settings, DictionaryTask(VOCAB, prefix="b"))


class TransformerClassifier:
    """Built lazily (torch is imported in the point's process only)."""

    @staticmethod
    def build(length: int, ffn_dim: int):
        import torch.nn as nn
        from fairseq.modules.transformer_sentence_encoder import TransformerSentenceEncoder

        class Model(nn.Module):
            def __init__(self):
                super().__init__()
                self.encoder = TransformerSentenceEncoder(
                    padding_idx=1, vocab_size=VOCAB, num_encoder_layers=LAYERS, embedding_dim=EMBED_DIM,
                    ffn_embedding_dim=ffn_dim, num_attention_heads=HEADS, dropout=0.0, attention_dropout=0.0,
                    activation_dropout=0.0, max_seq_len=length, num_segments=0, encoder_normalize_before=True,
                    apply_bert_init=False, activation_fn="gelu", learned_pos_embedding=False)
                self.classifier = nn.Sequential(nn.Linear(EMBED_DIM, MEGA["classifier_out_dim"]), nn.GELU())
                self.sentence_projection_layer = nn.Linear(MEGA["classifier_out_dim"], CLASSES, bias=False)

            def forward(self, sample):
                states, _ = self.encoder(sample["net_input"]["src_tokens"], last_state_only=True)
                rep = states[-1].mean(dim=0)
                return {"encoder_out": self.sentence_projection_layer(self.classifier(rep))}

        return Model()


def count(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def matched_ffn_dim(target_params: int) -> int:
    """The Transformer FFN width whose trained parameter count is closest to ``target_params``."""
    base = count(TransformerClassifier.build(64, 1))
    per_unit = count(TransformerClassifier.build(64, 2)) - base  # parameters per FFN unit (all layers)
    return max(1, 1 + round((target_params - base) / per_unit))


def build(kind: str, length: int, chunk: int):
    """``kind`` at length ``length``; the Transformer matches the chunked Mega's parameter count
    (the unchunked one has ``2 L - 1`` more relative-position biases per layer)."""
    if kind.startswith("mega_chunk"):
        return build_mega(length, int(kind[len("mega_chunk"):]))
    return TransformerClassifier.build(length, matched_ffn_dim(count(build_mega(length, chunk))))


def run_point(kind: str, length: int, chunk: int, steps: int, threads: int, max_memory_gb: float) -> dict:
    limit = int(max_memory_gb * 2 ** 30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build(kind, length, chunk).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    tokens = torch.randint(4, VOCAB, (1, length))
    tokens[0, -1] = 2
    sample = {"net_input": {"src_tokens": tokens, "src_lengths": torch.tensor([length])},
              "target": torch.tensor([1])}
    base_rss = peak_rss_bytes()

    def train_step():
        logits = model(sample)["encoder_out"]
        loss = torch.nn.functional.cross_entropy(logits, sample["target"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    train_step()  # warm-up (allocations)
    start = time.perf_counter()
    for _ in range(steps):
        train_step()
    seconds = (time.perf_counter() - start) / steps
    return {"model": kind, "length": length, "params": count(model),
            "train_sequences_per_s": round(1.0 / seconds, 4), "train_tokens_per_s": round(length / seconds, 1),
            "train_peak_rss_mb": round((peak_rss_bytes() - base_rss) / 2 ** 20, 1)}


def ratios(points, chunk_kind: str) -> dict:
    out = {}
    by_key = {(p["model"], p["length"]): p for p in points if "train_sequences_per_s" in p}
    for length in sorted({p["length"] for p in points}):
        transformer = by_key.get(("transformer", length))
        for kind in ("mega_chunk-1", chunk_kind):
            mega = by_key.get((kind, length))
            if mega is None or transformer is None:
                continue
            label = "chunked" if kind == chunk_kind else "unchunked"
            out["{}_speed_over_transformer_L{}".format(label, length)] = round(
                mega["train_sequences_per_s"] / transformer["train_sequences_per_s"], 3)
            if transformer["train_peak_rss_mb"] > 0:
                out["{}_memory_over_transformer_L{}".format(label, length)] = round(
                    mega["train_peak_rss_mb"] / transformer["train_peak_rss_mb"], 3)
    return out


#: what a process that hit its address-space cap reports (allocation or mapping failures, a kill)
MEMORY_FAILURES = ("MemoryError", "alloc", "failed to map", "Cannot allocate memory", "std::bad_alloc")


def over_memory_budget(stderr: str, returncode: int) -> bool:
    return returncode in (-9, 137) or any(marker.lower() in stderr.lower() for marker in MEMORY_FAILURES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--chunk", type=int, default=128, help="chunk size of the chunked Mega (default 128)")
    parser.add_argument("--steps", type=int, default=2, help="timed training steps per point (after 1 warm-up)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per point (default 1: more threads on a busy small machine measure the "
                             "other jobs)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per point before it is recorded as skipped")
    parser.add_argument("--max-memory-gb", type=float, default=8.0,
                        help="address-space cap of each point's process (a point needing more is skipped)")
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_point(args.one[0], int(args.one[1]), args.chunk, args.steps, args.threads,
                                   args.max_memory_gb)))
        return

    chunk_kind = "mega_chunk{}".format(args.chunk)
    points = []
    for length in args.lengths:
        for kind in ("mega_chunk-1", chunk_kind, "transformer"):
            cmd = [sys.executable, os.path.abspath(__file__), "--one", kind, str(length), "--chunk", str(args.chunk),
                   "--steps", str(args.steps),
                   "--threads", str(args.threads), "--max-memory-gb", str(args.max_memory_gb)]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
                line = proc.stdout.strip().splitlines()[-1] if proc.returncode == 0 and proc.stdout.strip() else None
                if line:
                    point = json.loads(line)
                else:
                    reason = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "no output"
                    if over_memory_budget(proc.stderr, proc.returncode):
                        reason = "exceeds the {} GB memory budget (--max-memory-gb): {}".format(
                            args.max_memory_gb, reason[-200:])
                    point = {"model": kind, "length": length, "skipped": "exit {}: {}".format(proc.returncode,
                                                                                           reason[-300:])}
            except subprocess.TimeoutExpired:
                point = {"model": kind, "length": length, "skipped": "took over {} s (--timeout)".format(args.timeout)}
            points.append(point)
            print(json.dumps(point), file=sys.stderr, flush=True)

    report = {
        "config": {"lengths": args.lengths, "chunk": args.chunk, "steps": args.steps, "threads": args.threads,
                   "max_memory_gb": args.max_memory_gb, "mega": MEGA, "transformer_layers": LAYERS,
                   "transformer_heads": HEADS, "batch": "1 sequence of L tokens"},
        "train": points,
        "ratios": ratios(points, chunk_kind),
        "paper_lra_text_4k": PAPER_4K,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
