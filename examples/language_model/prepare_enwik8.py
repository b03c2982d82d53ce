#!/usr/bin/env python3
"""Split the raw ``enwik8`` file into character-level train/valid/test token files.

The standard enwik8 protocol (as in the Transformer-XL and Mega papers): the first 90M bytes are
the training set, the next 5M the validation set, the last 5M the test set. Every byte becomes a
token written as its decimal value, space separated, one text line per line. A newline byte is
not written as a token: fairseq-preprocess ends every line with ``</s>``, which then stands for
the newline, so the number of tokens equals the number of bytes (plus one ``</s>`` when a split
ends inside a line) and the base-2 loss of fairseq-eval-lm is the bits per character.

Usage: ``python prepare_enwik8.py ENWIK8_FILE OUT_DIR [--valid-bytes N] [--test-bytes N]``
writes ``OUT_DIR/{train,valid,test}.txt``. The sizes can be reduced to try the recipe on
stand-in data.
"""
import argparse
import os

FIVE_MILLION = 5_000_000


def write_tokens(data: bytes, path: str) -> None:
    lines = data.split(b"\n")
    if data.endswith(b"\n"):
        lines = lines[:-1]  # the final newline ends the last line; it opens no new one
    with open(path, "w") as out:
        for line in lines:
            out.write(" ".join(str(b) for b in line) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("enwik8_file")
    parser.add_argument("out_dir")
    parser.add_argument("--valid-bytes", type=int, default=FIVE_MILLION)
    parser.add_argument("--test-bytes", type=int, default=FIVE_MILLION)
    args = parser.parse_args()
    with open(args.enwik8_file, "rb") as f:
        data = f.read()
    held_out = args.valid_bytes + args.test_bytes
    if args.valid_bytes <= 0 or args.test_bytes <= 0 or len(data) <= held_out:
        raise SystemExit("{}: {} bytes cannot hold --valid-bytes {} + --test-bytes {} and a training set".format(
            args.enwik8_file, len(data), args.valid_bytes, args.test_bytes))
    os.makedirs(args.out_dir, exist_ok=True)
    splits = {
        "train": data[:-held_out],
        "valid": data[-held_out:-args.test_bytes],
        "test": data[-args.test_bytes:],
    }
    for name, chunk in splits.items():
        write_tokens(chunk, os.path.join(args.out_dir, name + ".txt"))
        print("[prepare] {} {}: {} bytes".format(os.path.basename(args.enwik8_file), name, len(chunk)), flush=True)


if __name__ == "__main__":
    main()
