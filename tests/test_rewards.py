import time

import pytest

from rewards import VerifierNotFound, VerifierResult, import_path, register, registry_names, resolve, to_score
from rewards.format import format_verifier
from rewards.math import extract_answer, math_verifier
from rewards.pool import VerifierPool


@pytest.mark.parametrize(
    "completion,answer,score",
    [
        ("7+12=19 19-5=14 #14", "14", 1.0),
        ("7+12=19 19-5=14 #15", "14", 0.0),
        ("so the answer is \\boxed{\\frac{1}{2}}", "0.5", 1.0),
        ("half: #1/2", "0.5", 1.0),
        ("\\boxed{0.5}", "\\frac{1}{2}", 1.0),
        ("the result is 0.5", "1/2", 1.0),
        ("no number here", "3", 0.0),
        ("", "3", 0.0),
    ],
)
def test_math_verifier_equivalent_forms(completion, answer, score):
    assert math_verifier(completion, {"answer": answer}).score == score


def test_extract_answer_prefers_boxed_then_marker_then_last_number():
    assert extract_answer("1 2 \\boxed{3} #4") == "3"
    assert extract_answer("1 2 #4") == "4"
    assert extract_answer("1 then 2") == "2"
    assert extract_answer("\\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"


def test_format_verifier():
    assert format_verifier("1+2=3 #3", {}) == 1.0
    assert format_verifier("\\boxed{3}", {}) == 1.0
    assert format_verifier("1+2=3 #3 #3", {}) == 0.0
    assert format_verifier("#3 and more", {}) == 0.0
    assert format_verifier("3", {}) == 0.0


def test_registry_and_import_paths():
    assert {"math", "format"} <= set(registry_names())
    assert resolve("math") is math_verifier
    assert resolve("rewards.format:format_verifier") is format_verifier
    with pytest.raises(VerifierNotFound, match="registered verifiers"):
        resolve("maths")
    with pytest.raises(VerifierNotFound, match="cannot import"):
        resolve("no_such_module_xyz:fn")
    with pytest.raises(VerifierNotFound, match="no attribute"):
        resolve("rewards.math:nope")

    @register("test-always-one")
    def always_one(completion, sample):
        return 1.0

    assert import_path("test-always-one").endswith(":test_registry_and_import_paths.<locals>.always_one")


def test_to_score_accepts_floats_and_result_objects():
    assert to_score(1) == (1.0, {})
    assert to_score(VerifierResult(0.5, {"why": "x"})) == (0.5, {"why": "x"})
    with pytest.raises(TypeError):
        to_score("high")


def test_pool_contains_hanging_raising_and_dying_verifiers():
    sample = {"answer": "3"}
    tasks = [
        ("rewards.math:math_verifier", "1+2=3 #3", sample),
        ("tests.verifiers_fixture:sleep_forever", "x", sample),
        ("tests.verifiers_fixture:boom", "x", sample),
        ("tests.verifiers_fixture:die", "x", sample),
        ("tests.verifiers_fixture:not_a_number", "x", sample),
        ("rewards.math:math_verifier", "#4", sample),
    ]
    with VerifierPool(num_workers=2, timeout_s=2.0) as pool:
        t0 = time.monotonic()
        results = pool.run(tasks)
        elapsed = time.monotonic() - t0
        assert [r.status for r in results] == ["ok", "timeout", "error", "error", "error", "ok"]
        assert [r.score for r in results] == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
        assert "RuntimeError: verifier exploded" in results[2].error
        assert pool.restarts == 2  # the hung worker and the dead one were replaced
        assert elapsed < 60  # the hang cost one timeout, not forever
        # the pool still works after replacing workers
        again = pool.run([("math", "#3", sample)] * 4)
        assert [r.score for r in again] == [1.0] * 4
