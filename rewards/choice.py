"""Multiple-choice verifier (MedQA/MMLU style): the chosen option's letter against the gold.

``sample["options"]`` is a dict ``{"A": "text", ...}``, a list of texts (lettered A, B, ...), or
MedQA's string ``"A. text\\nB. text..."``. ``sample["answer"]`` is a letter (``"C"``), MedQA's
``"C. text"``, or an option's text. The completion may answer with a letter (``\\boxed{C}``,
``<answer>C</answer>``, ``(C)``, ``Answer: C``, ``the answer is C``) or with an option's text;
option texts compare case-insensitively, and numerically when both are numbers (so ``0.5`` picks the
option ``1/2``). Score 1.0 when the chosen letter is the gold letter.
"""

from __future__ import annotations

import re

from rewards import VerifierResult
from rewards.answers import extract_answer, normalize, numbers_equal, parse_number, tail

_OPTION_LINE = re.compile(r"^\s*\(?([A-Z])[.):]\s*(.*)$")
_LETTER = re.compile(r"^\(?([A-Z])\)?(?:[.:)]\s*(.*))?$", re.S)
_SAYS_TEXT = re.compile(r"answer\s*(?:is|:)\s*([^\n]+)", re.I)
_SAYS = re.compile(r"(?:answer|choice|option)\s*(?:is|:)?\s*(?:option\s*)?\(?([A-Z])\)?(?![A-Za-z])", re.I)


def options_of(sample: dict) -> dict[str, str]:
    opts = sample.get("options")
    if isinstance(opts, dict):
        out = {str(k).strip().upper(): str(v) for k, v in opts.items()}
    elif isinstance(opts, (list, tuple)):
        out = {chr(ord("A") + i): str(v) for i, v in enumerate(opts)}
    elif isinstance(opts, str):
        out = {}
        for line in opts.splitlines():
            m = _OPTION_LINE.match(line)
            if m:
                out[m.group(1)] = m.group(2).strip()
    else:
        raise ValueError("no options" if opts is None else f"options has type {type(opts).__name__}")
    if len(out) < 2 or not all(len(k) == 1 and "A" <= k <= "Z" for k in out):
        raise ValueError(f"options must name at least two choices lettered A-Z, got {list(out)[:8]}")
    return out


def _same(a: str, b: str) -> bool:
    a, b = normalize(a).casefold(), normalize(b).casefold()
    if a == b:
        return bool(a)
    na, nb = parse_number(a), parse_number(b)
    return na is not None and nb is not None and numbers_equal(na, nb)


def to_letter(answer: str, options: dict[str, str]) -> str | None:
    """The option letter `answer` names: a letter (with optional option text) or an option's text."""
    s = normalize(answer)
    m = _LETTER.match(s)
    if m and m.group(1) in options:
        return m.group(1)
    hits = [k for k, text in options.items() if _same(s, text)]
    return hits[0] if len(hits) == 1 else None


def gold_letter(sample: dict) -> str:
    options = options_of(sample)
    gold = sample.get("answer")
    if gold is None or not isinstance(gold, (str, int)) or isinstance(gold, bool):
        raise ValueError("no answer" if gold is None else f"answer has type {type(gold).__name__}")
    if isinstance(gold, int):  # an index into the options
        letter = chr(ord("A") + gold) if 0 <= gold < 26 else None
    else:
        letter = to_letter(gold, options)
    if letter not in options:
        raise ValueError(f"answer {str(gold)[:60]!r} is not one of the options {sorted(options)}")
    return letter


def choice_verifier(completion: str, sample: dict) -> VerifierResult:
    options, gold = options_of(sample), gold_letter(sample)
    text = tail(completion)
    answer = extract_answer(text)
    letter = to_letter(answer, options) if answer else None
    if letter is None:
        said = [to_letter(x, options) for x in _SAYS_TEXT.findall(text[-5000:])]
        said = [x for x in said if x]
        letter = said[-1] if said else None
    if letter is None:
        said = _SAYS.findall(text[-5000:])
        said = [x.upper() for x in said if x.upper() in options]
        if said:
            letter = said[-1]
    if letter is None:
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        letter = to_letter(lines[-1], options) if lines else None
    return VerifierResult(1.0 if letter == gold else 0.0, {"chosen": letter or ""})


choice_verifier.validate = gold_letter
