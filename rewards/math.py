"""Math answer verifier built on math-verify.

The final answer of a completion is, in order of preference: the last ``\\boxed{...}``; the text after
the last ``####`` or ``#`` marker; else the last number in the completion. It is compared with
``sample["answer"]`` by math-verify, so equivalent forms (``0.5``, ``1/2``, ``\\frac{1}{2}``) agree.
Score 1.0 when equivalent, else 0.0. math-verify's own timeout uses ``signal.alarm``, which works
only on a main thread: `rewards.pool.VerifierPool` calls verifiers on its worker processes' main
threads, and wraps them in its own hard timeout as well.
"""

from __future__ import annotations

import re

from rewards import VerifierResult

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:/\d+)?")


def _last_boxed(text: str) -> str | None:
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth = start + len("\\boxed{"), 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None


def extract_answer(completion: str) -> str | None:
    boxed = _last_boxed(completion)
    if boxed is not None:
        return boxed.strip()
    if "#" in completion:
        tail = completion.rsplit("#", 1)[1].strip()
        return tail or None
    numbers = _NUMBER.findall(completion)
    return numbers[-1] if numbers else None


def _parse(text: str):
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    return parse(text, extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()])


def math_verifier(completion: str, sample: dict) -> VerifierResult:
    answer = extract_answer(completion)
    if answer is None:
        return VerifierResult(0.0, {"extracted": None})
    gold = str(sample["answer"])
    if answer == gold:  # exact string match: skip sympy
        return VerifierResult(1.0, {"extracted": answer})
    from math_verify import verify

    ok = verify(_parse(gold), _parse(answer))
    return VerifierResult(1.0 if ok else 0.0, {"extracted": answer})
