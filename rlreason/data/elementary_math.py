"""Elementary math for a small instruct model: five skills, each a category, with a fixed held-out split.

The task a real pretrained model (SmolLM2-135M-Instruct) can partly do, so GRPO has signal from the
first step. Each category is one question template over a finite problem space, phrased as a new user
would ask it (phrasings the model was measured to answer in its own words; docs/real-models.md)::

    add1     What is 7 + 5?                                              one-digit operands 1..9
    add2     What is 43 + 28? Answer with just the number.               two-digit operands 10..99
    sub2     Compute 57 - 12. Give the final answer as a number.         two-digit, a > b (answer >= 1)
    compare  Which number is larger, 37 or 73? Answer with the number.   two distinct two-digit numbers
    mul1     What is 6 times 8?                                          one-digit operands 2..9

The answer is an integer; the `math` verifier takes the reply's final answer (after `#`, in
`\\boxed{}`, else its last number), so a reply that ends on the right number is correct.

The split: every problem of a category is ranked by a hash of its prompt text, and the first
`eval_per_category` of that ranking are the held-out split; the rest are the train pool. The split
depends only on the text, never on a seed or a size, so every run and every seed is evaluated on the
same problems, and no held-out problem is ever drawn for training. The train split gives every
category the same share, `num_train / len(categories)` entries: each category's pool in a seeded
shuffle, cycled when it is smaller than its share (add1 has 81 problems and mul1 64 in all, so their
train problems repeat; the two-digit categories have thousands), so that training practises each
skill equally often.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from typing import Callable, Iterator

from rlreason.data.arithmetic import Problem


def _add1() -> Iterator[tuple[str, int]]:
    for a, b in itertools.product(range(1, 10), repeat=2):
        yield f"What is {a} + {b}?", a + b


def _add2() -> Iterator[tuple[str, int]]:
    for a, b in itertools.product(range(10, 100), repeat=2):
        yield f"What is {a} + {b}? Answer with just the number.", a + b


def _sub2() -> Iterator[tuple[str, int]]:
    for a, b in itertools.product(range(10, 100), repeat=2):
        if a > b:
            yield f"Compute {a} - {b}. Give the final answer as a number.", a - b


def _compare() -> Iterator[tuple[str, int]]:
    for a, b in itertools.product(range(10, 100), repeat=2):
        if a != b:
            yield f"Which number is larger, {a} or {b}? Answer with the number.", max(a, b)


def _mul1() -> Iterator[tuple[str, int]]:
    for a, b in itertools.product(range(2, 10), repeat=2):
        yield f"What is {a} times {b}?", a * b


CATEGORIES: dict[str, Callable[[], Iterator[tuple[str, int]]]] = {
    "add1": _add1, "add2": _add2, "sub2": _sub2, "compare": _compare, "mul1": _mul1,
}


def _rank(prompt: str) -> int:
    return int.from_bytes(hashlib.sha1(prompt.encode()).digest()[:8], "big")


def category_split(name: str, eval_per_category: int) -> tuple[list[Problem], list[Problem]]:
    """(train pool, held-out) of one category: held-out = the `eval_per_category` lowest-ranked prompts."""
    problems = [Problem(prompt=q, solution=f" {a}", answer=str(a), category=name) for q, a in CATEGORIES[name]()]
    problems.sort(key=lambda p: _rank(p.prompt))
    if eval_per_category >= len(problems):
        raise ValueError(f"task=elementary_math: category {name!r} has {len(problems)} problems, "
                         f"not more than task.eval_per_category={eval_per_category}")
    return problems[eval_per_category:], problems[:eval_per_category]


def make_splits(categories: list[str], num_train: int, eval_per_category: int, seed: int) -> tuple[list[Problem], list[Problem]]:
    """Train (`num_train // len(categories)` entries per category, interleaved; small pools repeat)
    and held-out (`eval_per_category` of each category, in category order) splits."""
    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown or not categories or len(set(categories)) != len(categories):
        raise ValueError(f"task.categories={list(categories)}: name each of {', '.join(CATEGORIES)} at most once")
    share = num_train // len(categories)
    if share < 1:
        raise ValueError(f"task.num_train={num_train} gives no train problem to each of {len(categories)} categories")
    rng = random.Random(seed)
    shares, evals = [], []
    for name in categories:
        pool, held = category_split(name, eval_per_category)
        rng.shuffle(pool)
        shares.append(list(itertools.islice(itertools.cycle(pool), share)))
        evals.extend(held)
    train = [p for row in zip(*shares) for p in row]
    return train, evals
