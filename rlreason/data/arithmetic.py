"""Procedural multi-step arithmetic: the embedded default task.

A problem is a chain of `num_terms` non-negative integers joined by `+` and `-`, e.g. ``7+12-5=``.
The reference solution evaluates it left to right, one step per intermediate result, then states the
answer after ``#``::

    prompt:   7+12-5=
    solution: 7+12=19 19-5=14 #14

Every intermediate value stays in ``[0, max_value * num_terms]`` (a subtraction is only drawn when
it keeps the running value non-negative), so the character vocabulary stays tiny. A problem can also
be answered directly (``#14``, `Problem.direct_solution`); the warm start mixes the two styles (see
`warmstart.direct_answer_fraction`). The train and eval splits are disjoint by construction: a
problem whose text lands in the eval split is never drawn for training.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Problem:
    prompt: str
    solution: str
    answer: str
    category: str = ""  # a difficulty level or task type, for curricula that choose among them
    meta: dict | None = field(default=None, compare=False, hash=False)  # more sample fields (options, rg_entry)

    @property
    def direct_solution(self) -> str:
        """The bare answer with no worked steps: a guess for a small model, not a derivation."""
        return f"#{self.answer}"

    def as_sample(self) -> dict:
        return {"prompt": self.prompt, "answer": self.answer, "solution": self.solution, **(self.meta or {})}


def make_problem(rng: random.Random, num_terms: int, max_value: int) -> Problem:
    if num_terms < 2:
        raise ValueError(f"task.num_terms must be >= 2, got {num_terms}")
    value = rng.randint(0, max_value)
    prompt = str(value)
    steps = []
    for _ in range(num_terms - 1):
        operand = rng.randint(0, max_value)
        if operand <= value and rng.random() < 0.5:
            op, new = "-", value - operand
        else:
            op, new = "+", value + operand
        prompt += f"{op}{operand}"
        steps.append(f"{value}{op}{operand}={new}")
        value = new
    solution = " ".join(steps) + f" #{value}"
    return Problem(prompt=prompt + "=", solution=solution, answer=str(value), category=f"terms{num_terms}")


def _in_eval(prompt: str, eval_fraction: float) -> bool:
    h = int.from_bytes(hashlib.sha1(prompt.encode()).digest()[:8], "big")
    return (h % 1_000_000) < eval_fraction * 1_000_000


def make_splits(
    seed: int, num_train: int, num_eval: int, num_terms: int, max_value: int, eval_fraction: float = 0.1,
    levels: list[int] | None = None,
) -> tuple[list[Problem], list[Problem]]:
    """Disjoint train/eval splits. The split of a problem depends only on its text (a hash), so
    every seed and size agrees on which problems are held out. With `levels`, each problem draws
    its number of terms uniformly from them (category "terms<k>")."""
    rng = random.Random(seed)
    train: list[Problem] = []
    evals: list[Problem] = []
    seen_eval: set[str] = set()
    attempts = 0
    limit = 50 * (num_train + num_eval) + 1000
    while (len(train) < num_train or len(evals) < num_eval) and attempts < limit:
        attempts += 1
        p = make_problem(rng, rng.choice(levels) if levels else num_terms, max_value)
        if _in_eval(p.prompt, eval_fraction):
            if len(evals) < num_eval and p.prompt not in seen_eval:
                seen_eval.add(p.prompt)
                evals.append(p)
        elif len(train) < num_train:
            train.append(p)
    if len(evals) < num_eval or len(train) < num_train:
        raise ValueError(
            f"task: could only draw {len(train)} train / {len(evals)} eval problems with num_terms={num_terms}, "
            f"max_value={max_value}; lower task.num_train/num_eval or raise task.max_value"
        )
    return train, evals
