"""GSM8K final-answer verifier: the number after the completion's last ``####``.

Strict about the marker (GSM8K's own convention): a completion without ``####`` scores 0 even if it
states the right number elsewhere. The number is read with `rewards.answers.parse_number` (thousands
separators, ``$``, decimals, fractions and percentages allowed) and compared exactly with the gold,
which may be a bare number or a whole GSM8K solution ending in ``#### N``.
"""

from __future__ import annotations

from rewards import VerifierResult
from rewards.answers import normalize, numbers_equal, parse_number, tail


def final_number(text: str) -> str | None:
    text = tail(text)
    if "####" not in text:
        return None
    after = text.rsplit("####", 1)[1].strip()
    return after.split("\n", 1)[0].strip() or None


def _gold(sample: dict) -> str:
    gold = sample.get("answer")
    if gold is None or isinstance(gold, bool) or not isinstance(gold, (str, int, float)):
        raise ValueError("no answer" if gold is None else f"answer has type {type(gold).__name__}, expected a string or a number")
    gold = str(gold)
    return final_number(gold) or gold


def gsm8k_verifier(completion: str, sample: dict) -> VerifierResult:
    gold = parse_number(_gold(sample))
    if gold is None:
        raise ValueError(f"gold answer {sample.get('answer')!r} is not a number")
    answer = final_number(completion)
    if answer is None:
        return VerifierResult(0.0, {"how": "no_marker"})
    # "18 dollars", "18 eggs.": the number is the first word after the marker
    pred = parse_number(answer) or parse_number(normalize(answer).split(" ", 1)[0])
    if pred is None:
        return VerifierResult(0.0, {"how": "unparsed", "extracted": answer[:100]})
    return VerifierResult(1.0 if numbers_equal(pred, gold) else 0.0, {"how": "numeric", "extracted": answer[:100]})


def _validate(sample: dict) -> None:
    if parse_number(_gold(sample)) is None:
        raise ValueError(f"answer {str(sample.get('answer'))[:60]!r} is not a number")


gsm8k_verifier.validate = _validate
