#!/usr/bin/env python3
"""Mega vs the stock fairseq ``transformer`` on the same translation data, same run.

Both models have about the same number of parameters (printed). For each model it runs
``fairseq-train`` for ``--updates`` updates and reads the training speed (words/s, fairseq's
``wps``, averaged over the logging intervals after the first), then ``fairseq-generate`` with
beam 5 on the test split and reads sentences/s and tokens/s. Prints one JSON object, with
Mega / transformer ratios (targets: training >= 0.9, generation >= 1.0).

    python benchmarks/bench_translation.py [--updates 300] [--train-pairs 10000] [--work-dir DIR]

The data is the demo's made-up corpus (examples/translation/make_demo_corpus.py), so nothing
is downloaded. Threads: OMP_NUM_THREADS (default 1) for both models.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(REPO, "examples", "translation")
BIN = os.path.dirname(sys.executable)

COMMON = ["--share-all-embeddings", "--encoder-layers", "2", "--decoder-layers", "2", "--encoder-embed-dim", "64",
          "--dropout", "0.1", "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--lr", "3e-3",
          "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "100", "--clip-norm", "1.0",
          "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1", "--max-tokens", "4096",
          "--seed", "1", "--cpu", "--num-workers", "0", "--log-format", "simple", "--no-progress-bar",
          "--disable-validation", "--no-epoch-checkpoints", "-s", "en", "-t", "zed"]
MODELS = {
    # ~284k parameters with the demo's 132-symbol joined dictionary
    "mega": ["--arch", "mega", "--encoder-hidden-dim", "128", "--encoder-ffn-embed-dim", "128",
             "--encoder-z-dim", "32", "--encoder-n-dim", "8"],
    # ~292k parameters
    "transformer": ["--arch", "transformer", "--encoder-ffn-embed-dim", "192", "--decoder-ffn-embed-dim", "192",
                    "--decoder-embed-dim", "64", "--encoder-attention-heads", "4", "--decoder-attention-heads", "4"],
}


def run(cmd, env):
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit("command failed: {}\n{}".format(" ".join(cmd), proc.stderr[-4000:]))
    return proc.stdout + proc.stderr


def prepare(work, train_pairs, env):
    raw, prep = os.path.join(work, "raw"), os.path.join(work, "prep")
    run([sys.executable, os.path.join(EXAMPLES, "make_demo_corpus.py"), raw, "--train", str(train_pairs),
         "--valid", "100", "--test", "500"], env)
    run(["bash", os.path.join(EXAMPLES, "prepare.sh"), raw, prep],
        dict(env, SRC="en", TGT="zed", VOCAB_SIZE="200", WORKERS="1", PYTHON=sys.executable))
    return os.path.join(prep, "data-bin")


def bench_model(name, data, work, updates, env):
    save = os.path.join(work, "ckpt_" + name)
    log = run([os.path.join(BIN, "fairseq-train"), data, "--user-dir", os.path.join(REPO, "mega_fairseq"),
               *COMMON, *MODELS[name], "--max-update", str(updates), "--log-interval", str(max(updates // 6, 1)),
               "--save-dir", save], env)
    params = int(re.search(r"num\. shared model params: ([0-9,]+)", log).group(1).replace(",", ""))
    wps = [float(x) for x in re.findall(r"train_inner \|.* wps=([0-9.]+)", log)]
    gen = run([os.path.join(BIN, "fairseq-generate"), data, "--user-dir", os.path.join(REPO, "mega_fairseq"),
               "--path", os.path.join(save, "checkpoint_last.pt"), "--gen-subset", "test", "--beam", "5",
               "--batch-size", "64", "--cpu", "-s", "en", "-t", "zed", "--remove-bpe", "sentencepiece"], env)
    match = re.search(r"Translated ([0-9,]+) sentences \(([0-9,]+) tokens\) in ([0-9.]+)s "
                      r"\(([0-9.]+) sentences/s, ([0-9.]+) tokens/s\)", gen)
    bleu = re.search(r"BLEU4? = ([0-9.]+)", gen)
    return {
        "parameters": params,
        "train_words_per_s": sum(wps[1:]) / max(len(wps) - 1, 1) if len(wps) > 1 else (wps[0] if wps else None),
        "generate_sentences_per_s": float(match.group(4)),
        "generate_tokens_per_s": float(match.group(5)),
        "generated_tokens": int(match.group(2).replace(",", "")),
        "test_bleu_tokenized": float(bleu.group(1)) if bleu else None,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=300)
    parser.add_argument("--train-pairs", type=int, default=10000)
    parser.add_argument("--work-dir", default=None)
    args = parser.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    env["PATH"] = BIN + os.pathsep + env["PATH"]
    work = args.work_dir or tempfile.mkdtemp(prefix="bench_translation_")
    data = prepare(work, args.train_pairs, env)
    results = {name: bench_model(name, data, work, args.updates, env) for name in ("mega", "transformer")}
    mega, transformer = results["mega"], results["transformer"]
    report = {
        "benchmark": "translation, made-up en->zed corpus, CPU",
        "threads": int(env["OMP_NUM_THREADS"]),
        "updates": args.updates,
        "models": results,
        "ratio_mega_over_transformer": {
            "train_words_per_s": mega["train_words_per_s"] / transformer["train_words_per_s"],
            "generate_sentences_per_s": mega["generate_sentences_per_s"] / transformer["generate_sentences_per_s"],
            "generate_tokens_per_s": mega["generate_tokens_per_s"] / transformer["generate_tokens_per_s"],
        },
        "targets": {"train_words_per_s": 0.9, "generate_sentences_per_s": 1.0},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
