"""Math answer verifier: the completion's final answer against ``sample["answer"]``.

The final answer is `rewards.answers.extract_answer`'s: the last ``<answer>`` tag, else the last
``\\boxed{...}``, else the text after the last ``#``/``####``, else the last number. Comparison is
`rewards.answers.math_equal`: equivalent forms agree (``1/2``, ``0.5``, ``\\frac{1}{2}``, ``50%``,
``\\boxed{\\frac12}``), and the model's text is never evaluated: numbers go through a safe reader,
LaTeX through math-verify's grammar after size bounds. Score 1.0 when equivalent, else 0.0; the
extras say how it was decided.
"""

from __future__ import annotations

import math_verify  # noqa: F401  (imported with the verifier, so a worker's first call does not pay for it)

from rewards import VerifierResult
from rewards.answers import check_math_gold, extract_answer, math_equal

__all__ = ["extract_answer", "math_verifier"]


def math_verifier(completion: str, sample: dict) -> VerifierResult:
    answer = extract_answer(completion)
    if answer is None:
        return VerifierResult(0.0, {"how": "no_answer"})
    ok, how = math_equal(answer, str(sample["answer"]))
    return VerifierResult(1.0 if ok else 0.0, {"how": how, "extracted": answer[:100]})


math_verifier.validate = lambda sample: check_math_gold(sample.get("answer"))
