"""torch.compile of the Mega blocks (``--compile-layers``) against eager, on this machine's CPU.

Prints one JSON object, both measured in the same process, eager first:

* ``train``: one training step (forward + backward + Adam) of a ``mega_lm`` on one sequence of
  ``--tokens`` tokens (default 2048): eager ms, compiled ms (after the compiling steps), the
  time the first compiled steps took (compilation), and ``eager_over_compiled`` (> 1: compiled
  is faster);
* ``decode``: one-token incremental decoding steps of a batch of ``--batch`` sequences after a
  prefix of ``--prefix`` tokens: eager ms per step, compiled ms per step, same ratio;
* ``graph_breaks``: how many graph breaks dynamo counted (0 when every block is one graph),
  and the distinct reasons.

The blocks are compiled as ``--compile-layers`` does (``nn.Module.compile`` per block, inductor,
C++ on CPU). ``--threads`` defaults to 1 (more threads on a busy small machine measure the
other jobs).

    python benchmarks/bench_compile.py
    python benchmarks/bench_compile.py --tokens 4096 --steps 5
"""
import argparse
import json
import time

import torch

from bench_common import DictionaryTask

VOCAB = 256
MEGA = dict(decoder_embed_dim=128, decoder_hidden_dim=256, decoder_ffn_embed_dim=256, decoder_z_dim=64,
            decoder_n_dim=16, decoder_layers=2, decoder_chunk_size=128, truncation_length=None, dropout=0.0,
            normalize_before=True)


def build(length: int, compiled: bool):
    from mega_fairseq.models.mega_lm import MegaLanguageModel

    args = argparse.Namespace(**MEGA, max_target_positions=length, tokens_per_sample=length, compile_layers=compiled)
    torch.manual_seed(0)
    return MegaLanguageModel.build_model(args, DictionaryTask(VOCAB))


def time_calls(fn, count: int) -> float:
    """Mean seconds of ``count`` calls of ``fn``."""
    start = time.perf_counter()
    for _ in range(count):
        fn()
    return (time.perf_counter() - start) / count


def train_point(tokens_per_step: int, steps: int, compiled: bool) -> dict:
    model = build(tokens_per_step, compiled).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(4, VOCAB, (1, tokens_per_step), generator=generator)
    target = torch.randint(4, VOCAB, (1, tokens_per_step), generator=generator)
    losses = []

    def step():
        logits = model(tokens)[0]
        loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), target.view(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())

    warm_up = time_calls(step, 2) * 2  # the compiling steps (eager: allocations)
    seconds = time_calls(step, steps)
    return {"ms": round(1000 * seconds, 1), "first_two_steps_s": round(warm_up, 1), "losses": losses}


def decode_point(batch: int, prefix: int, steps: int, compiled: bool) -> dict:
    model = build(prefix + 4 * steps + 8, compiled).eval()
    generator = torch.Generator().manual_seed(2)
    tokens = torch.randint(4, VOCAB, (batch, prefix + 4 * steps), generator=generator)
    state = {}
    position = [prefix]

    def step():
        position[0] += 1
        model.decoder(tokens[:, : position[0]], incremental_state=state)

    with torch.no_grad():
        model.decoder(tokens[:, :prefix], incremental_state=state)  # prefill (eager or compiled)
        warm_up = time_calls(step, 2 * steps) * 2 * steps  # compiles (a few shapes), then settles
        seconds = time_calls(step, steps)
    return {"ms_per_step": round(1000 * seconds, 3), "warm_up_s": round(warm_up, 1), "position": position[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=2048, help="tokens of the training step (one sequence)")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps / decode steps x 10")
    parser.add_argument("--batch", type=int, default=4, help="sequences decoded together (e.g. a beam of 4)")
    parser.add_argument("--prefix", type=int, default=200, help="tokens before the timed decoding steps")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from torch._dynamo.utils import counters

    result = {"threads": args.threads, "torch": torch.__version__, "mega_config": MEGA}
    eager = train_point(args.tokens, args.steps, compiled=False)
    compiled = train_point(args.tokens, args.steps, compiled=True)
    result["train"] = {"tokens": args.tokens, "eager_ms": eager["ms"], "compiled_ms": compiled["ms"],
                       "compile_s": compiled["first_two_steps_s"],
                       "eager_over_compiled": round(eager["ms"] / compiled["ms"], 2),
                       "loss_difference": round(max(abs(a - b) for a, b in zip(eager["losses"], compiled["losses"])), 6)}
    eager = decode_point(args.batch, args.prefix, 10 * args.steps, compiled=False)
    compiled = decode_point(args.batch, args.prefix, 10 * args.steps, compiled=True)
    result["decode"] = {"batch": args.batch, "position": eager["position"], "eager_ms": eager["ms_per_step"],
                        "compiled_ms": compiled["ms_per_step"], "compile_s": compiled["warm_up_s"],
                        "eager_over_compiled": round(eager["ms_per_step"] / compiled["ms_per_step"], 2)}
    breaks = counters.get("graph_break", {})
    result["graph_breaks"] = {"count": sum(breaks.values()),
                              "reasons": sorted({str(reason).splitlines()[0][:160] for reason in breaks})}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
