"""String verifiers: exact match and regular expressions.

`exact_verifier` compares the completion's final answer (`rewards.answers.extract_answer`, or the
whole completion with ``extract=False``) with ``sample["answer"]`` (a string, or a list of accepted
strings) after stripping notation (``$``, ``\\boxed{}``, a trailing period) and, with
``ignore_case=True``, case. It is exact on purpose: ``1/2`` and ``0.5`` differ; use ``math`` for
equivalence.

`regex_verifier` scores 1.0 when ``pattern`` (from the verifier's ``args``, else
``sample["pattern"]``) matches: ``mode="search"`` anywhere in the completion (its last 100,000
characters), ``mode="fullmatch"`` against the extracted final answer. ``{answer}`` in the pattern is
replaced by the escaped gold answer. Patterns are trusted configuration; the completion is not: a
pattern that backtracks catastrophically on a crafted completion is stopped by the pool's timeout.
"""

from __future__ import annotations

import re
from functools import lru_cache

from rewards import VerifierResult
from rewards.answers import extract_answer, normalize, tail


def _golds(sample: dict) -> list[str]:
    gold = sample.get("answer")
    if isinstance(gold, (list, tuple)) and gold and all(isinstance(g, (str, int, float)) for g in gold):
        return [str(g) for g in gold]
    if isinstance(gold, (str, int, float)) and not isinstance(gold, bool):
        return [str(gold)]
    raise ValueError("no answer" if gold is None else f"answer has type {type(gold).__name__}, expected a string or a list of strings")


def exact_verifier(completion: str, sample: dict, extract: bool = True, ignore_case: bool = False) -> VerifierResult:
    answer = extract_answer(completion) if extract else tail(completion)
    if answer is None:
        return VerifierResult(0.0, {"how": "no_answer"})
    fold = str.casefold if ignore_case else (lambda s: s)
    got = fold(normalize(answer))
    ok = any(got == fold(normalize(g)) for g in _golds(sample))
    return VerifierResult(1.0 if ok else 0.0, {"extracted": answer[:100]})


@lru_cache(maxsize=256)
def _compile(pattern: str, flags: int) -> re.Pattern:
    return re.compile(pattern, flags)


def regex_verifier(completion: str, sample: dict, pattern: str | None = None, mode: str = "search",
                   ignore_case: bool = False) -> VerifierResult:
    pattern = pattern if pattern is not None else sample.get("pattern")
    if not isinstance(pattern, str) or not pattern:
        raise ValueError("regex verifier: no pattern (give args: {pattern: ...} or a 'pattern' field in the data)")
    if mode not in ("search", "fullmatch"):
        raise ValueError(f"regex verifier: mode must be search or fullmatch, got {mode!r}")
    if "{answer}" in pattern:
        pattern = pattern.replace("{answer}", re.escape(normalize(_golds(sample)[0])))
    rx = _compile(pattern, re.I if ignore_case else 0)
    if mode == "search":
        ok = rx.search(tail(completion)) is not None
    else:
        answer = extract_answer(completion)
        ok = answer is not None and rx.fullmatch(normalize(answer)) is not None
    return VerifierResult(1.0 if ok else 0.0)


exact_verifier.validate = _golds
