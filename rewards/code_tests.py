"""Code-execution verifier: run the model's Python against test cases in a fresh confined process
(`rewards/code_exec.py`); the score is the fraction of tests passed.

Two kinds of sample:

- **I/O tests** (``task=code_tests``'s problems): ``entry_point``, ``tests`` (a list of argument lists) and
  ``expected`` (the reference solution's return values, computed by the task). The program is the model's
  code and a driver that calls ``entry_point(*args)`` on each test's arguments and prints each result as
  JSON on its own line after a marker. The expected values never enter the program: this process
  compares them, so a program can pass a test only by returning the right value (printing, exiting 0
  early or reading files gets nothing). A test whose call raises, or that the timeout cut off, fails.
- **check tests** (HumanEval): ``code_prompt`` (the function's signature and docstring), ``test`` (a
  ``check(candidate)`` function of asserts) and ``entry_point``. The program is the prompt with the completion,
  the test and ``check(entry_point)``, then a marker printed only if check returned; score 1 when the marker
  appears and the program exited 0, else 0. (Here the asserts, expected values included, are in the program: HumanEval is for evaluation.)

What the model wrote (`code_of`): its last fenced Python block when it has one, else its raw text. A
block that defines the entry point is a whole function; anything else continues the prompt (the body
of the function ``code_prompt`` opened), as HumanEval completions are written. The imports of
``code_prompt`` are kept before a whole function.
"""

from __future__ import annotations

import json
import re
import secrets

from rewards import VerifierResult
from rewards.code_exec import run_python

_BLOCK = re.compile(r"```(?:python|py|Python)?[ \t]*\n(.*?)(?:```|$)", re.S)


def code_of(completion: str, sample: dict) -> str:
    """The program text before the tests: a whole function, or the prompt continued by the completion."""
    blocks = _BLOCK.findall(completion)
    code = blocks[-1] if blocks else completion
    prompt = sample.get("code_prompt", "")
    if re.search(rf"^\s*def\s+{re.escape(sample['entry_point'])}\s*\(", code, re.M):
        imports = [line for line in prompt.splitlines() if re.match(r"\s*(import|from)\s", line) and not line.startswith(" ")]
        return "\n".join([*imports, code])
    return prompt + code


def _driver(entry_point: str, tests: list, marker: str) -> str:
    return f"""

def __rlreason_run_tests():
    import json as _json
    import sys as _sys
    for _args in _json.loads({json.dumps(json.dumps(tests))}):
        try:
            _value = _json.dumps({entry_point}(*_args))
        except BaseException as _e:
            _value = _json.dumps({{"__error__": type(_e).__name__}})
        _sys.stdout.write("\\n{marker}" + _value + "\\n")
        _sys.stdout.flush()

__rlreason_run_tests()
"""


def _normal(value):
    """A value as JSON would give it back (tuples become lists), to compare with what the program printed."""
    return json.loads(json.dumps(value))


def code_tests_verifier(completion: str, sample: dict, timeout_s: float = 5.0, memory_mb: int = 512) -> VerifierResult:
    marker = f"@@rlreason-{secrets.token_hex(8)}@@"
    program = code_of(completion, sample)
    if "tests" in sample:
        run = run_python(program + _driver(sample["entry_point"], sample["tests"], marker), timeout_s=timeout_s,
                         memory_mb=memory_mb, max_output_chars=1 << 20)
        got = [line[len(marker):] for line in run.stdout.splitlines() if line.startswith(marker)]
        passed = 0
        for out, want in zip(got, sample["expected"]):
            try:
                passed += json.loads(out) == _normal(want)
            except ValueError:
                pass
        score = passed / max(len(sample["expected"]), 1)
    else:
        program += f"\n\n{sample['test']}\n\ncheck({sample['entry_point']})\nprint({marker!r})\n"
        run = run_python(program, timeout_s=timeout_s, memory_mb=memory_mb)
        passed = int(run.returncode == 0 and marker in run.stdout.splitlines())
        score = float(passed)
    return VerifierResult(score, {"status": run.status, "passed": passed, "run_s": round(run.seconds, 3),
                                  "error": run.stderr.strip().splitlines()[-1][:200] if run.stderr.strip() else ""})


def _validate(sample: dict) -> None:
    if not isinstance(sample.get("entry_point"), str) or not sample["entry_point"].isidentifier():
        raise ValueError("a code sample needs an 'entry_point' (the function's name)")
    if "tests" in sample:
        if not isinstance(sample["tests"], list) or not isinstance(sample.get("expected"), list) \
                or len(sample["tests"]) != len(sample["expected"]) or not sample["tests"]:
            raise ValueError("'tests' (argument lists) and 'expected' (return values) must be lists of one length")
    elif not isinstance(sample.get("test"), str):
        raise ValueError("a code sample needs 'tests' and 'expected', or a HumanEval-style 'test' (check(candidate))")


code_tests_verifier.validate = _validate
