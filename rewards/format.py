"""Format verifier: does the completion end in exactly one final-answer marker?

Score 1.0 when the completion holds exactly one final answer, stated as ``#<number>`` or
``\\boxed{...}`` at its very end (trailing whitespace allowed), else 0.0. It rewards a
parseable answer, not a correct one; weight it with ``reward.format_weight``.
"""

from __future__ import annotations

import re

_HASH_END = re.compile(r"#\s*-?\d+(?:\.\d+)?(?:/\d+)?\s*$")
_BOXED_END = re.compile(r"\\boxed\{[^{}]*\}\s*$")


def format_verifier(completion: str, sample: dict) -> float:
    markers = completion.count("#") + completion.count("\\boxed{")
    if markers != 1:
        return 0.0
    return 1.0 if (_HASH_END.search(completion) or _BOXED_END.search(completion)) else 0.0
