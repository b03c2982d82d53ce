#!/usr/bin/env python3
"""Write a small made-up parallel corpus that a model can learn: "English-like" -> "Zed".

Zed is a rule-based language, so a good model can translate the test set almost perfectly and
BLEU means something:

* every word has exactly one Zed translation (a fixed, made-up lexicon);
* adjectives follow their noun (``the big red dog`` -> ``ka dogu ral bix``);
* the verb goes to the end of the clause (subject-object-verb order);
* a plural noun takes the suffix ``-en`` and its determiner becomes ``ki``.

Usage: ``python make_demo_corpus.py OUT_DIR [--train N] [--valid N] [--test N] [--seed S]``
writes ``{train,valid,test}.{en,zed}``, one sentence per line. The same seed gives the same files.
"""
import argparse
import os
import random

DETERMINERS = {"the": "ka", "a": "mo"}
PLURAL_DETERMINER = "ki"
ADJECTIVES = {
    "big": "bix", "small": "tan", "red": "ral", "blue": "vos", "old": "gem", "young": "lur",
    "happy": "sif", "angry": "drok", "quiet": "pum", "fast": "zet", "green": "nol", "tall": "hib",
}
NOUNS = {
    "dog": "dogu", "cat": "mira", "bird": "pelo", "child": "tavi", "farmer": "gorn", "teacher": "lesko",
    "river": "aqa", "house": "domi", "tree": "arbo", "car": "vetra", "book": "libo", "apple": "pomi",
    "friend": "kamo", "king": "regu", "horse": "kaval", "boat": "navi",
}
VERBS = {
    "sees": "vidat", "likes": "amat", "finds": "trovat", "follows": "sekat", "carries": "portat",
    "paints": "pintat", "watches": "gardat", "helps": "adjat", "builds": "konstat", "eats": "mangat",
}
CONJUNCTIONS = {"and": "e", "but": "sed"}


def noun_phrase(rng: random.Random):
    """A (source words, target words) noun phrase: determiner, 0-2 adjectives, noun."""
    plural = rng.random() < 0.3
    determiner = "the" if plural else rng.choice(sorted(DETERMINERS))
    adjectives = rng.sample(sorted(ADJECTIVES), rng.choice([0, 0, 1, 1, 2]))
    noun = rng.choice(sorted(NOUNS))
    source = [determiner] + adjectives + [noun + ("s" if plural else "")]
    target_det = PLURAL_DETERMINER if plural else DETERMINERS[determiner]
    target = [target_det, NOUNS[noun] + ("en" if plural else "")] + [ADJECTIVES[a] for a in adjectives]
    return source, target


def clause(rng: random.Random):
    subject_src, subject_tgt = noun_phrase(rng)
    object_src, object_tgt = noun_phrase(rng)
    verb = rng.choice(sorted(VERBS))
    return subject_src + [verb] + object_src, subject_tgt + object_tgt + [VERBS[verb]]


def sentence_pair(rng: random.Random):
    source, target = clause(rng)
    if rng.random() < 0.35:
        conjunction = rng.choice(sorted(CONJUNCTIONS))
        more_src, more_tgt = clause(rng)
        source, target = source + [conjunction] + more_src, target + [CONJUNCTIONS[conjunction]] + more_tgt
    return " ".join(source), " ".join(target)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("--train", type=int, default=20000, help="training sentence pairs")
    parser.add_argument("--valid", type=int, default=500)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    os.makedirs(args.out_dir, exist_ok=True)
    seen = set()
    for split, count in (("train", args.train), ("valid", args.valid), ("test", args.test)):
        pairs = []
        while len(pairs) < count:
            pair = sentence_pair(rng)
            if split != "train" and pair[0] in seen:
                continue  # keep valid/test sentences out of the training data
            seen.add(pair[0])
            pairs.append(pair)
        for lang, column in (("en", 0), ("zed", 1)):
            with open(os.path.join(args.out_dir, "{}.{}".format(split, lang)), "w", encoding="utf-8") as f:
                f.writelines(pair[column] + "\n" for pair in pairs)
        print("wrote {} {} sentence pairs to {}".format(count, split, args.out_dir))


if __name__ == "__main__":
    main()
