"""examples/lra/make_listops.py: expressions within the limits, correct answers, seeded, distinct."""
import statistics
import sys

import pytest

from helpers import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "examples" / "lra"))
import make_listops  # noqa: E402


def solve(tokens):
    """Value of a bracketed ListOps expression, by an explicit stack (independent of the generator)."""
    stack = []
    for token in tokens:
        if token.startswith("["):
            stack.append((token[1:], []))
        elif token == "]":
            operator, values = stack.pop()
            value = {"MIN": min, "MAX": max, "MED": lambda v: int(statistics.median(v)),
                     "SM": lambda v: sum(v) % 10}[operator](values)
            if not stack:
                return value
            stack[-1][1].append(value)
        else:
            stack[-1][1].append(int(token))
    raise AssertionError("unbalanced expression")


def depth_and_arguments(tokens):
    depth = deepest = 0
    counts, widest = [], 0
    for token in tokens:
        if token.startswith("["):
            if counts:
                counts[-1] += 1
            depth += 1
            deepest = max(deepest, depth)
            counts.append(0)
        elif token == "]":
            depth -= 1
            widest = max(widest, counts.pop())
        else:
            counts[-1] += 1
    return deepest, widest


def test_expressions_respect_lengths_depth_arguments_and_have_the_right_answer():
    splits = make_listops.generate([("train", 150), ("valid", 20), ("test", 20)], seed=3, min_length=30,
                                   max_length=120, max_depth=4, max_args=5)
    texts = [text for rows in splits.values() for text, _ in rows]
    assert [len(rows) for rows in splits.values()] == [150, 20, 20]
    assert len(set(texts)) == len(texts)  # distinct across all splits
    for rows in splits.values():
        for text, value in rows:
            tokens = text.split()
            assert 30 <= len(tokens) <= 120
            depth, arguments = depth_and_arguments(tokens)
            assert depth <= 4 and 2 <= arguments <= 5
            assert set(tokens) <= {"[MIN", "[MAX", "[MED", "[SM", "]"} | {str(d) for d in range(10)}
            assert solve(tokens) == value
    assert len({value for rows in splits.values() for _, value in rows}) == 10


def test_default_limits_give_long_expressions_with_all_four_operators():
    splits = make_listops.generate([("train", 6), ("valid", 1), ("test", 1)], seed=0, min_length=500,
                                   max_length=2000)
    tokens = [t for rows in splits.values() for text, _ in rows for t in text.split()]
    assert {"[MIN", "[MAX", "[MED", "[SM"} <= set(tokens)
    assert all(500 <= len(text.split()) <= 2000 for rows in splits.values() for text, _ in rows)


def test_same_seed_same_data_other_seed_other_data():
    def draw(seed):
        return make_listops.generate([("train", 20), ("valid", 2), ("test", 2)], seed, 5, 40)

    assert draw(1) == draw(1) != draw(2)


def test_evaluate_and_bad_settings():
    assert make_listops.evaluate("MED", [1, 8, 2, 9]) == 5 and make_listops.evaluate("SM", [9, 9, 5]) == 3
    with pytest.raises(ValueError, match=r"operator must be one of MIN, MAX, MED, SM"):
        make_listops.evaluate("FIRST", [1])
    with pytest.raises(ValueError, match=r"need 1 <= --min-length <= --max-length"):
        make_listops.generate([("train", 1)], 1, 50, 10)
    with pytest.raises(SystemExit, match=r"distinct expressions"):
        make_listops.generate([("train", 50)], 1, 3, 3, max_attempts=2000)
