#!/usr/bin/env python3
"""Train, apply and undo a sentencepiece model (a stand-in for the spm_* command-line tools).

    python spm_tool.py train --input a.txt b.txt --model-prefix spm --vocab-size 8000
    python spm_tool.py encode --model spm.model < raw.txt > pieces.txt
    python spm_tool.py decode --model spm.model < pieces.txt > raw.txt

``encode`` writes space-separated pieces (what fairseq-preprocess reads); ``decode`` turns
pieces back into text. ``train`` uses every line of every input (joined vocabulary).
"""
import argparse
import sys

import sentencepiece as spm


def train(args):
    spm.SentencePieceTrainer.train(
        input=",".join(args.input),
        model_prefix=args.model_prefix,
        vocab_size=args.vocab_size,
        character_coverage=args.character_coverage,
        model_type=args.model_type,
        input_sentence_size=args.input_sentence_size,
        shuffle_input_sentence=True,
        # fairseq's dictionary adds its own <s>, <pad>, </s>, <unk>
        bos_id=-1, eos_id=-1, unk_id=0,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    print("wrote {0}.model and {0}.vocab".format(args.model_prefix))


def encode(args):
    sp = spm.SentencePieceProcessor(model_file=args.model)
    for line in sys.stdin:
        sys.stdout.write(" ".join(sp.encode(line.rstrip("\n"), out_type=str)) + "\n")


def decode(args):
    sp = spm.SentencePieceProcessor(model_file=args.model)
    for line in sys.stdin:
        sys.stdout.write(sp.decode(line.split()) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("train", help="train a model on raw text files")
    p.add_argument("--input", nargs="+", required=True)
    p.add_argument("--model-prefix", required=True)
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--model-type", default="unigram", choices=["unigram", "bpe", "char", "word"])
    p.add_argument("--character-coverage", type=float, default=1.0)
    p.add_argument("--input-sentence-size", type=int, default=10000000, help="sample at most this many lines")
    p.set_defaults(run=train)
    for name, run in (("encode", encode), ("decode", decode)):
        p = commands.add_parser(name, help="{} stdin to stdout".format(name))
        p.add_argument("--model", required=True)
        p.set_defaults(run=run)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
