"""reasoning-gym's own ``score_answer`` as a verifier, for any of its datasets.

The sample carries the dataset name (``rg_dataset``, or the verifier's ``dataset`` argument) and the
reasoning-gym entry (``rg_entry``: question, answer, metadata), as the ``reasoning_gym`` task writes
them. The answer is the completion's ``<answer>...</answer>`` (reasoning-gym's convention), else its
``\\boxed{}``, else the text after its last ``#``, else its last non-empty line.

Some of reasoning-gym's scorers hand the answer to ``sympify`` or ``eval`` (countdown, puzzle24, the
integration and polynomial tasks, ...). For those the answer is screened first:
only digits, letters, operators, brackets and spaces, no ``__``, and no call to a name outside a short
list of math functions; anything else scores 0 without reaching the scorer. The verifier pool's
process isolation is the backstop.
"""

from __future__ import annotations

import re
from functools import lru_cache

from rewards import VerifierResult
from rewards.answers import MAX_ANSWER_CHARS, extract_answer, tail

# datasets whose score_answer sympifies or evals the model's answer (reasoning-gym 0.1.25)
EVALUATING = frozenset({"countdown", "puzzle24", "simple_integration", "intermediate_integration", "polynomial_multiplication"})
_SAFE_CHARS = re.compile(r"[0-9A-Za-z+\-*/^().,=\s]*")
_BIG_POWER = re.compile(r"(?:\*\*|\^)\s*\(?\s*\d{4,}")  # x**1000 and up
_TOWER = re.compile(r"(?:\*\*|\^)[^+\-/=,*]*?(?:\*\*|\^)")  # a power inside an exponent
_CALL = re.compile(r"([A-Za-z_][A-Za-z_0-9]*)\s*\(")
_MATH_FUNCS = frozenset({"sin", "cos", "tan", "exp", "log", "ln", "sqrt", "asin", "acos", "atan", "sinh", "cosh", "tanh",
                         "Abs", "abs", "E", "pi"})


def screen(answer: str) -> str | None:
    """Why an answer must not reach an evaluating scorer, or None."""
    if len(answer) > MAX_ANSWER_CHARS * 5:
        return "too_long"
    if "__" in answer or not _SAFE_CHARS.fullmatch(answer):
        return "unsafe_characters"
    if _BIG_POWER.search(answer) or _TOWER.search(answer) or re.search(r"\d{30,}", answer):
        return "huge_power"
    if any(name not in _MATH_FUNCS for name in _CALL.findall(answer)):
        return "unsafe_call"
    return None


@lru_cache(maxsize=64)
def score_fn(name: str):
    import reasoning_gym

    return reasoning_gym.get_score_answer_fn(name)


def final_answer(completion: str) -> str | None:
    text = tail(completion)
    if "<answer>" in text.lower() or "\\boxed{" in text or "#" in text:
        return extract_answer(text)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else None


def entry_of(sample: dict, dataset: str | None = None) -> tuple[str, dict]:
    name = dataset or sample.get("rg_dataset")
    entry = sample.get("rg_entry")
    if not name:
        raise ValueError("no reasoning-gym dataset: give args: {dataset: ...} or an 'rg_dataset' field")
    if not isinstance(entry, dict) or "answer" not in entry:
        entry = {"question": sample.get("prompt", ""), "answer": sample.get("answer"), "metadata": sample.get("metadata") or {}}
    if entry.get("answer") is None:
        raise ValueError("no answer")
    return name, entry


def reasoning_gym_verifier(completion: str, sample: dict, dataset: str | None = None) -> VerifierResult:
    name, entry = entry_of(sample, dataset)
    answer = final_answer(completion)
    if answer is None:
        return VerifierResult(0.0, {"how": "no_answer"})
    if name in EVALUATING:
        why = screen(answer)
        if why:
            return VerifierResult(0.0, {"how": f"screened:{why}"})
    return VerifierResult(float(score_fn(name)(answer, entry)), {"extracted": answer[:100]})


reasoning_gym_verifier.validate = entry_of
