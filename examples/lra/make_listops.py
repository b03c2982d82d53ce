"""Generate ListOps (Long Range Arena) offline and write the official processed layout.

Written from the task's description in the LRA paper (Tay et al., 2021, section 3.1; after Nangia &
Bowman, 2018): nested lists of the operators MIN, MAX, MED (median) and SM (sum modulo 10) over the
digits 0-9, e.g. ``[MAX 4 3 [MIN 2 3 ] 1 0 [MED 1 5 8 9 2 ] ]`` -> 5; at most 10 levels deep, at
most 10 arguments per operator, sequences of 500 to 2,000 tokens, 96,000 / 2,000 / 2,000 train /
valid / test examples; the answer (0-9) is the class. Brackets as in the official processed data:
the operator token opens a list (``[MAX``), ``]`` closes it, parentheses are not written.

Each operator node draws 2..max-args children; a child is itself an operator with probability
``--operator-probability`` (0.25, the release generator's value) unless the depth limit is reached,
else a digit. Trees longer than ``--max-length`` are abandoned while being drawn; accepted trees are
deduplicated across all splits. The same ``--seed`` gives the same files.

    python make_listops.py OUT [--max-length 2000 --min-length 500 --train 96000 ...]

writes ``OUT/raw/{split}.input|.label`` and, through ``fairseq-preprocess``,
``OUT/src-bin`` + ``OUT/label-bin`` (skip with ``--raw-only``). ``--max-length`` (with
``--min-length``) makes small, quick variants, e.g. ``--min-length 10 --max-length 60``.
"""
import argparse
import random
import statistics
from pathlib import Path

OPERATORS = ("MIN", "MAX", "MED", "SM")
DIGITS = 10


class TooLong(Exception):
    """The tree being drawn has passed the length limit."""


def evaluate(operator: str, values) -> int:
    """The value of one list: MIN, MAX, MED (median, rounded down) or SM (sum modulo 10)."""
    if operator == "MIN":
        return min(values)
    if operator == "MAX":
        return max(values)
    if operator == "MED":
        return int(statistics.median(values))
    if operator == "SM":
        return sum(values) % DIGITS
    raise ValueError("operator must be one of {}, got {!r}".format(", ".join(OPERATORS), operator))


class ListOpsSampler:
    """Draws ListOps expressions as token lists with their values."""

    def __init__(self, rng: random.Random, max_depth: int = 10, max_args: int = 10,
                 operator_probability: float = 0.25, max_length: int = 2000):
        if max_depth < 1 or max_args < 2:
            raise ValueError("--max-depth must be >= 1 and --max-args >= 2")
        self.rng, self.max_depth, self.max_args = rng, max_depth, max_args
        self.operator_probability, self.max_length = operator_probability, max_length

    def _list(self, depth: int, tokens: list) -> int:
        operator = self.rng.choice(OPERATORS)
        tokens.append("[" + operator)
        values = []
        for _ in range(self.rng.randint(2, self.max_args)):
            if depth < self.max_depth and self.rng.random() < self.operator_probability:
                values.append(self._list(depth + 1, tokens))
            else:
                digit = self.rng.randrange(DIGITS)
                tokens.append(str(digit))
                values.append(digit)
            if len(tokens) + depth > self.max_length:  # room for the ``]`` of every open list
                raise TooLong
        tokens.append("]")
        return evaluate(operator, values)

    def sample(self):
        """``(tokens, value)`` of one expression (its root is a list), or ``None`` if it grew too long."""
        tokens = []
        try:
            value = self._list(1, tokens)
        except TooLong:
            return None
        return tokens, value


def generate(counts, seed: int, min_length: int, max_length: int, max_depth: int = 10, max_args: int = 10,
             operator_probability: float = 0.25, max_attempts: int = 0):
    """``{split: [(text, value), ...]}`` with distinct texts of ``min_length..max_length`` tokens."""
    if not 1 <= min_length <= max_length:
        raise ValueError("need 1 <= --min-length <= --max-length, got {} and {}".format(min_length, max_length))
    total = sum(count for _, count in counts)
    sampler = ListOpsSampler(random.Random(seed), max_depth, max_args, operator_probability, max_length)
    seen, examples, attempts = set(), [], 0
    limit = max_attempts or 2000 * total + 100000
    while len(examples) < total:
        attempts += 1
        if attempts > limit:
            raise SystemExit("only {} distinct expressions of {}..{} tokens after {} attempts; widen the "
                             "lengths or lower the counts".format(len(examples), min_length, max_length, limit))
        drawn = sampler.sample()
        if drawn is None or not min_length <= len(drawn[0]) <= max_length:
            continue
        text = " ".join(drawn[0])
        if text in seen:
            continue
        seen.add(text)
        examples.append((text, drawn[1]))
    splits, start = {}, 0
    for split, count in counts:
        splits[split] = examples[start:start + count]
        start += count
    return splits


def write_raw(splits, raw: Path) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        (raw / (split + ".input")).write_text("".join(text + "\n" for text, _ in rows))
        (raw / (split + ".label")).write_text("".join("{}\n".format(value) for _, value in rows))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="output data folder")
    parser.add_argument("--train", type=int, default=96000)
    parser.add_argument("--valid", type=int, default=2000)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--min-length", type=int, default=500, help="fewest tokens of an expression")
    parser.add_argument("--max-length", type=int, default=2000, help="most tokens of an expression")
    parser.add_argument("--max-depth", type=int, default=10)
    parser.add_argument("--max-args", type=int, default=10)
    parser.add_argument("--operator-probability", type=float, default=0.25,
                        help="chance that an argument is itself a list")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--raw-only", action="store_true", help="write raw/ only, no fairseq-preprocess")
    parser.add_argument("--workers", type=int, default=1, help="fairseq-preprocess workers")
    args = parser.parse_args(argv)
    counts = [("train", args.train), ("valid", args.valid), ("test", args.test)]
    if min(count for _, count in counts) < 1:
        raise SystemExit("--train, --valid and --test must each be at least 1")
    splits = generate(counts, args.seed, args.min_length, args.max_length, args.max_depth, args.max_args,
                      args.operator_probability)
    out = Path(args.out)
    write_raw(splits, out / "raw")
    if not args.raw_only:
        from fairseq_binarize import binarize

        binarize(out / "raw", out, args.workers)
    lengths = [len(text.split()) for rows in splits.values() for text, _ in rows]
    print("wrote {}: {} expressions, {}..{} tokens (mean {:.0f})".format(
        out, len(lengths), min(lengths), max(lengths), sum(lengths) / len(lengths)))


if __name__ == "__main__":
    main()
