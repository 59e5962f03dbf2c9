"""Model-written code, run confined: the sandboxed runner, the code-execution verifier, the Python tool."""

import os
import time

import pytest

from rewards.code_exec import run_python
from rewards.sandbox import privileged

SAMPLE = {"entry_point": "add_to_all", "tests": [[[1, 2]], [[]], [[-5]]], "expected": [[4, 5], [], [-2]],
          "code_prompt": "def add_to_all(xs):\n    \"\"\"Returns xs with 3 added to every number.\"\"\"\n"}


def test_a_program_runs_with_its_stdin_and_only_the_standard_library():
    run = run_python("import sys, json\nprint(json.dumps(sys.stdin.read().split()))", stdin="a b")
    assert (run.status, run.stdout) == ("ok", '["a", "b"]\n')
    run = run_python("import numpy")
    assert run.status == "error" and "No module named 'numpy'" in run.stderr


@pytest.mark.parametrize("program, status, why", [
    ("while True: pass", "timeout", ""),
    ("x = bytearray(3 * 1024**3)", "oom", "MemoryError"),
    ("import sys\nwhile True: sys.stdout.write('x' * 65536)", "output_limit", ""),
    ("import socket\ns = socket.socket()\ns.settimeout(1)\ns.connect(('1.1.1.1', 80))", "error", ""),
    ("open('/etc/rlreason-was-here', 'w').write('x')", "error", ""),
])
def test_adversarial_programs_are_contained(program, status, why):
    t0 = time.perf_counter()
    run = run_python(program, timeout_s=2)
    assert run.status == status and why in run.stderr
    assert time.perf_counter() - t0 < 10
    assert len(run.stdout) <= 1 << 16
    assert not os.path.exists("/etc/rlreason-was-here")


def test_a_fork_bomb_stops_at_the_process_limit_and_nothing_outlives_the_run():
    bomb = ("import os, time\nn = 0\nfor _ in range(200):\n    try:\n        if os.fork() == 0:\n            os.setsid()\n"
            "            time.sleep(60)\n            os._exit(0)\n        n += 1\n    except OSError:\n        break\n"
            "print(n, flush=True)\n")
    run = run_python(bomb, timeout_s=5, max_processes=8)
    assert run.status == "ok" and int(run.stdout) < 8
    if privileged():  # children that left the process group (setsid) are killed by uid
        time.sleep(0.2)
        assert not [p for p in os.listdir("/proc") if p.isdigit() and _is_sleeping_child(p)]


def _is_sleeping_child(pid: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"confined_run.py" in f.read()
    except OSError:
        return False


def test_the_verifier_scores_the_fraction_of_tests_passed():
    from rewards.code_tests import code_tests_verifier

    right = "```python\ndef add_to_all(xs):\n    return [x + 3 for x in xs]\n```"
    assert code_tests_verifier(right, SAMPLE).score == 1.0
    body_only = "    return [x + 3 for x in xs]\n"  # continues the prompt's def
    assert code_tests_verifier(body_only, SAMPLE).score == 1.0
    half = "def add_to_all(xs):\n    return [x + 3 for x in xs] if xs else None\n"  # [] -> None: 2 of 3
    assert code_tests_verifier(half, SAMPLE).score == pytest.approx(2 / 3)
    assert code_tests_verifier("def add_to_all(xs):\n    raise ValueError\n", SAMPLE).score == 0.0


@pytest.mark.parametrize("cheat", [
    "import os\nos._exit(0)",  # exit 0 before any test ran
    "import sys\nprint('[4, 5]')\nprint('[]')\nsys.exit(0)",  # plausible output without the marker
    # look for the expected values anywhere the program can read (the key built so its own source lacks it)
    "import os\ndef add_to_all(xs):\n    key = chr(34) + 'expected' + chr(34)\n"
    "    for root, _, files in os.walk('.'):\n        for f in files:\n"
    "            if key in open(os.path.join(root, f)).read():\n                return [4, 5]\n    return None\n",
    "def add_to_all(xs):\n    while True:\n        pass\n",  # a loop: the timeout fails every test
])
def test_cheats_score_nothing(cheat):
    from rewards.code_tests import code_tests_verifier

    assert code_tests_verifier(cheat, SAMPLE, timeout_s=2).score == 0.0


def test_every_humaneval_canonical_solution_passes_and_an_empty_body_fails():
    from concurrent.futures import ThreadPoolExecutor

    from rewards.code_tests import code_tests_verifier
    from rlreason.data.code_problems import humaneval

    problems = humaneval()
    assert len(problems) == 164
    samples = [p.as_sample() for p in problems]
    with ThreadPoolExecutor(2) as pool:
        canonical = list(pool.map(lambda p: code_tests_verifier(p[0].solution, p[1]).score, zip(problems, samples)))
        empty = list(pool.map(lambda s: code_tests_verifier("", s).score, samples))
    assert sum(canonical) == 164 and sum(empty) == 0


def test_generated_problems_split_by_text_and_carry_the_reference_values():
    from rewards.code_tests import code_tests_verifier
    from rlreason.data.code_problems import make_splits

    train, evals = make_splits(200, 100, seed=1)
    assert not {p.prompt for p in train} & {p.prompt for p in evals} and evals
    p = next(q for q in train + evals if q.meta["entry_point"] == "repeat")
    k = int(p.prompt.split("repeated ")[1].split()[0])
    assert code_tests_verifier(f"```python\ndef repeat(s):\n    return s * {k}\n```", p.as_sample()).score == 1.0


def test_the_python_tool_answers_with_output_or_the_error():
    from rlreason.envs.base import ENVS, Turn

    env = ENVS.get("python")(max_turns=3, timeout_s=2)
    env.reset({})
    result = env.step(Turn("Let me compute.\n```python\nprint(347 * 29)\n```", [1], "stop_string", 0))
    assert result.observations == ["10063\n"] and not result.done and result.info["tool_errors"] == 0
    result = env.step(Turn("```python\n1/0\n```", [1], "stop", 1))
    assert result.observations[0].startswith("error: ZeroDivisionError") and result.info["tool_errors"] == 1
    result = env.step(Turn("```python\nwhile True: pass\n```", [1], "stop", 1))
    assert "did not finish" in result.observations[0] and result.info["tool_errors"] == 1
    env.close()
