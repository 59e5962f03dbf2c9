"""Arithmetic a calculator helps with: the problems of `task=arith_tools`.

A problem is two numbers and an operation, ``347*29=`` (or, for an instruct model, whatever
``task.instruction`` puts before ``What is 347 * 29?``), beyond what a small policy computes reliably in
its head. Its reference solution calls the calculator with the `paren` tool-call format and states the
answer after the tool's reply, ``calculator(347*29)=10063 #10063``: the warm start of the tiny policy
learns that shape, with the direct answer (``#10063``) mixed in by ``warmstart.direct_answer_fraction``,
so RL can be seen to move the policy towards (or away from) the tool. Splits are by a hash of the text,
as in `arithmetic.py`.
"""

from __future__ import annotations

import hashlib
import random

from rlreason.data.arithmetic import Problem

OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def make_problem(rng: random.Random, max_value: int, ops: str, instruction: str) -> Problem:
    op = rng.choice(ops)
    a, b = rng.randint(10, max_value), rng.randint(2, max_value)
    if op == "-" and b > a:
        a, b = b, a
    expr, value = f"{a}{op}{b}", OPS[op](a, b)
    prompt = f"{instruction}What is {a} {op} {b}?" if instruction else f"{expr}="
    return Problem(prompt=prompt, solution=f"calculator({expr})={value} #{value}", answer=str(value), category=op)


def make_splits(seed: int, num_train: int, num_eval: int, max_value: int, ops: str = "+-*", instruction: str = "",
                eval_fraction: float = 0.1) -> tuple[list[Problem], list[Problem]]:
    if max_value < 10 or any(op not in OPS for op in ops) or not ops:
        raise ValueError(f"task=arith_tools needs task.max_value >= 10 and task.ops from {''.join(OPS)}")
    rng = random.Random(seed)
    train, evals, seen = [], [], set()
    for _ in range(50 * (num_train + num_eval) + 1000):
        if len(train) >= num_train and len(evals) >= num_eval:
            break
        p = make_problem(rng, max_value, ops, instruction)
        held = int.from_bytes(hashlib.sha1(p.prompt.encode()).digest()[:8], "big") % 1000 < eval_fraction * 1000
        if held and len(evals) < num_eval and p.prompt not in seen:
            seen.add(p.prompt)
            evals.append(p)
        elif not held and len(train) < num_train:
            train.append(p)
    return train, evals
