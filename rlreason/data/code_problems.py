"""Small programming problems, generated: the training set of `task=code_tests`; HumanEval is its held-out
eval (`humaneval`).

Each problem is a one-function task from a family of templates with a parameter (the divisor, the
character, the offset...), e.g.::

    Write a Python function `sum_divisible(xs)` that returns the sum of the numbers in the list xs that
    are divisible by 3.

Its tests are six argument lists drawn from a generator seeded by the problem's text, and their expected
values are the reference solution's, computed here (in the trainer; never in the sandbox). A problem's
split depends only on a hash of its text, so every seed agrees on which problems are held out.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import string
from importlib import resources
from typing import Callable

from rlreason.data.arithmetic import Problem

TESTS_PER_PROBLEM = 6


def _ints(rng: random.Random, n: int = 8, lo: int = -20, hi: int = 40) -> list[int]:
    return [rng.randint(lo, hi) for _ in range(rng.randint(0, n))]


def _word(rng: random.Random) -> str:
    return "".join(rng.choice("abcdeilnorst") for _ in range(rng.randint(1, 6)))


def _text(rng: random.Random) -> str:
    return " ".join(_word(rng) for _ in range(rng.randint(0, 5)))


# family -> (parameter values, signature, description with {k}, reference solution of k, argument generator)
FAMILIES: dict[str, tuple[list, str, str, Callable, Callable]] = {
    "sum_divisible": (list(range(2, 10)), "sum_divisible(xs)",
                      "returns the sum of the numbers in the list xs that are divisible by {k}",
                      lambda k: lambda xs: sum(x for x in xs if x % k == 0), lambda rng: [_ints(rng)]),
    "count_char": (list("aeilnorst"), "count_char(s)", "returns how many times the character '{k}' appears in the string s",
                   lambda k: lambda s: s.count(k), lambda rng: [_text(rng)]),
    "add_to_all": (list(range(1, 21)), "add_to_all(xs)", "returns a new list with {k} added to every number in the list xs",
                   lambda k: lambda xs: [x + k for x in xs], lambda rng: [_ints(rng)]),
    "greater_than": (list(range(0, 21)), "greater_than(xs)",
                     "returns the numbers in the list xs that are greater than {k}, in their order",
                     lambda k: lambda xs: [x for x in xs if x > k], lambda rng: [_ints(rng)]),
    "power_sum": (list(range(1, 5)), "power_sum(n)", "returns the sum of i**{k} for every integer i from 1 to n inclusive",
                  lambda k: lambda n: sum(i ** k for i in range(1, n + 1)), lambda rng: [rng.randint(0, 30)]),
    "repeat": (list(range(2, 6)), "repeat(s)", "returns the string s repeated {k} times",
               lambda k: lambda s: s * k, lambda rng: [_word(rng)]),
    "index_of": (list(range(0, 10)), "index_of(xs)",
                 "returns the index of the first number equal to {k} in the list xs, or -1 if there is none",
                 lambda k: lambda xs: xs.index(k) if k in xs else -1, lambda rng: [_ints(rng, 8, 0, 9)]),
    "clamp_above": (list(range(5, 31, 5)), "clamp_above(xs)",
                    "returns the list xs with every number larger than {k} replaced by {k}",
                    lambda k: lambda xs: [min(x, k) for x in xs], lambda rng: [_ints(rng)]),
    "multiply_digits": (list(range(2, 10)), "scaled_digit_sum(n)",
                        "returns the sum of the decimal digits of the non-negative integer n, multiplied by {k}",
                        lambda k: lambda n: k * sum(map(int, str(n))), lambda rng: [rng.randint(0, 10**6)]),
    "longest_word": ([None], "longest_word(s)",
                     "returns the longest word of the string s (words are separated by spaces; the first one on a tie; "
                     "'' when there is none)",
                     lambda k: lambda s: max(s.split(), key=len, default=""), lambda rng: [_text(rng)]),
    "reverse_words": ([None], "reverse_words(s)", "returns the words of the string s in reverse order, joined by single spaces",
                      lambda k: lambda s: " ".join(reversed(s.split())), lambda rng: [_text(rng)]),
    "is_palindrome": ([None], "is_palindrome(s)", "returns True if the string s reads the same backwards, else False",
                      lambda k: lambda s: s == s[::-1], lambda rng: [rng.choice([_word(rng), "abba", "racecar", "level", "ab"])]),
    "shift_letters": (list(range(1, 6)), "shift_letters(s)",
                      "returns s with every lowercase letter moved {k} places forward in the alphabet (z wraps to a); "
                      "other characters unchanged",
                      lambda k: lambda s: "".join(string.ascii_lowercase[(string.ascii_lowercase.index(c) + k) % 26]
                                                  if c in string.ascii_lowercase else c for c in s),
                      lambda rng: [_text(rng)]),
}


def _problem(family: str, k, instruction: str) -> Problem:
    _, signature, description, solution, make_args = FAMILIES[family]
    text = f"Write a Python function `{signature}` that {description.format(k=k)}."
    rng = random.Random(int.from_bytes(hashlib.sha1(text.encode()).digest()[:8], "big"))
    reference = solution(k)
    tests = [make_args(rng) for _ in range(TESTS_PER_PROBLEM)]
    entry = signature.split("(")[0]
    code_prompt = f"def {signature}:\n    \"\"\"{description.format(k=k)[0].upper()}{description.format(k=k)[1:]}.\"\"\"\n"
    meta = {"entry_point": entry, "tests": tests, "expected": [reference(*a) for a in tests], "code_prompt": code_prompt}
    prompt = f"{instruction}{text}" if instruction else text
    return Problem(prompt=prompt, solution="", answer=entry, category=family, meta=meta)


def _held_out(text: str, fraction: float) -> bool:
    return int.from_bytes(hashlib.sha1(text.encode()).digest()[:8], "big") % 1000 < fraction * 1000


def make_splits(num_train: int, num_eval: int, seed: int, instruction: str = "",
                eval_set: str = "procedural") -> tuple[list[Problem], list[Problem]]:
    """(train, eval): every generated problem is in one split by its text (a quarter held out); the train
    split is cycled in a seeded order up to `num_train`. eval_set=humaneval evaluates on HumanEval instead
    (every generated problem is then free to train on)."""
    problems = [_problem(f, k, instruction) for f, (ks, *_) in FAMILIES.items() for k in ks]
    held = [p for p in problems if _held_out(p.prompt, 0.25)] if eval_set == "procedural" else []
    pool = [p for p in problems if p not in held]
    random.Random(seed).shuffle(pool)
    train = [pool[i % len(pool)] for i in range(num_train)]
    evals = held[:num_eval] if eval_set == "procedural" else humaneval(instruction)[:num_eval]
    return train, evals


def humaneval(instruction: str = "") -> list[Problem]:
    """The 164 HumanEval problems (MIT, shipped in rlreason/data/humaneval/), graded by their own check()."""
    with resources.files("rlreason.data").joinpath("humaneval/HumanEval.jsonl.gz").open("rb") as f:
        rows = [json.loads(line) for line in gzip.open(f, "rt")]
    out = []
    for r in rows:
        text = f"Complete this Python function:\n```python\n{r['prompt']}```"
        meta = {"entry_point": r["entry_point"], "test": r["test"], "code_prompt": r["prompt"], "task_id": r["task_id"]}
        out.append(Problem(prompt=f"{instruction}{text}", solution=r["canonical_solution"], answer=r["entry_point"],
                           category="humaneval", meta=meta))
    return out
