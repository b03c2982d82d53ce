#!/usr/bin/env python3
"""Write a small made-up text corpus for the character-level language-model demo.

The text is generated from a tiny story grammar, so a model can learn it and the numbers mean
something: spelling of a fixed vocabulary, sentence patterns, and one long-range rule: each
story introduces a hero whose (made-up) name recurs in later sentences of the same story, so
predicting the name well needs context from far back, across attention chunks.

Files (one sentence per line, an empty line between stories, as fairseq-preprocess expects):

* ``{split}.txt``: characters separated by spaces, ``_`` for a space (enwik8-style tokens);
* ``{split}.plain.txt``: the same text, readable.

Usage: ``python make_demo_text.py OUT_DIR [--train N] [--valid N] [--test N] [--seed S]``
(N = number of stories). The same seed writes the same files.
"""
import argparse
import os
import random

SYLLABLES = ["ka", "lo", "mi", "ra", "ten", "vo", "su", "del", "an", "ri", "po", "zu"]
PLACES = ["the river", "the old mill", "the market", "the forest", "the tower", "the harbour"]
THINGS = ["a lamp", "a red box", "an apple", "a map", "a small key", "a letter"]
FRIENDS = ["the baker", "the fisher", "a tall girl", "the old man", "a young boy"]
OPENINGS = ["once there was a traveller called {hero} .", "long ago a child named {hero} lived near {place} ."]
MIDDLES = [
    "one day {hero} went to {place} .",
    "{hero} found {thing} near {place} .",
    "{friend} asked {hero} for {thing} .",
    "{hero} gave {thing} to {friend} .",
    "at night {hero} walked back from {place} .",
    "{friend} and {hero} talked about {place} .",
]
ENDINGS = ["and so {hero} was happy .", "after that {hero} never went to {place} again ."]


def hero_name(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3)))


def story(rng: random.Random):
    """A list of sentences about one hero."""
    slots = {"hero": hero_name(rng)}

    def fill(pattern):
        values = dict(slots, place=rng.choice(PLACES), thing=rng.choice(THINGS), friend=rng.choice(FRIENDS))
        return pattern.format(**values)

    sentences = [fill(rng.choice(OPENINGS))]
    sentences += [fill(rng.choice(MIDDLES)) for _ in range(rng.randint(3, 8))]
    sentences.append(fill(rng.choice(ENDINGS)))
    return sentences


def characters(sentence: str) -> str:
    return " ".join("_" if c == " " else c for c in sentence)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("--train", type=int, default=1500)
    parser.add_argument("--valid", type=int, default=40)
    parser.add_argument("--test", type=int, default=80)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    os.makedirs(args.out_dir, exist_ok=True)
    for split in ("train", "valid", "test"):
        stories = [story(rng) for _ in range(getattr(args, split))]
        with open(os.path.join(args.out_dir, split + ".txt"), "w") as tokens, \
                open(os.path.join(args.out_dir, split + ".plain.txt"), "w") as plain:
            for sentences in stories:
                tokens.write("".join(characters(s) + "\n" for s in sentences) + "\n")
                plain.write("".join(s + "\n" for s in sentences) + "\n")
        chars = sum(len(s) + 1 for sentences in stories for s in sentences)
        print("[demo-text] {}: {} stories, {} characters".format(split, len(stories), chars))


if __name__ == "__main__":
    main()
