import time

import pytest

from rewards import VerifierNotFound, VerifierResult, import_path, register, registry_names, resolve, to_score
from rewards.format import format_verifier
from rewards.math import extract_answer, math_verifier
from rewards.pool import InlineRunner, Job, VerifierPool


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


def test_pool_batches_a_batched_verifier():
    completions = ["a" * k for k in range(1, 8)]
    with VerifierPool(num_workers=2, timeout_s=10) as pool:
        res = pool.score([Job("tests.verifiers_fixture:length_batch", completions, [{}] * 7)])[0]
    assert [r.score for r in res] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    assert [r.extras["batch"] for r in res] == [3, 3, 3, 3, 3, 3, 1]  # batch_size=3: three calls
    assert pool.calls == 3 and all(r.status == "ok" for r in res)


def test_pool_awaits_async_verifiers_together_with_a_timeout_each():
    samples = [{"answer": "3", "wait": 0.3} for _ in range(6)] + [{"answer": "3", "wait": 60}]
    completions = ["#3"] * 5 + ["#4", "#3"]
    with VerifierPool(num_workers=1, timeout_s=2, async_concurrency=8) as pool:
        res = pool.score([Job("tests.verifiers_fixture:slow_async", completions, samples)])[0]
        assert [r.status for r in res] == ["ok"] * 6 + ["timeout"]
        assert [r.score for r in res] == [1.0] * 5 + [0.0, 0.0]
        assert "TimeoutError" in res[6].error
        assert pool.restarts == 0 and pool.calls == 1  # one chunk of 7, awaited together; the worker survives
        # the same through the inline runner (no process): identical scores and statuses
        inline = InlineRunner(timeout_s=2, async_concurrency=8).score([Job("tests.verifiers_fixture:slow_async", completions, samples)])[0]
        assert [(r.score, r.status) for r in inline] == [(r.score, r.status) for r in res]


def test_pool_cpu_limit_stops_a_spinning_verifier_that_swallows_exceptions():
    with VerifierPool(num_workers=1, timeout_s=120, cpu_limit_s=1) as pool:
        pid = pool.pids()[0]
        res = pool.run([("tests.verifiers_fixture:spin", "x", {}), ("math", "#3", {"answer": "3"})])
        assert [r.status for r in res] == ["timeout", "ok"]
        assert "CPU time limit" in res[0].error and res[0].score == 0.0
        assert pool.restarts == 0 and pool.pids() == [pid]  # the signal, not the wall clock, ended the call


def test_pool_memory_limit_fails_the_call_and_replaces_the_worker():
    with VerifierPool(num_workers=1, timeout_s=60, memory_limit_mb=512) as pool:
        pid = pool.pids()[0]
        res = pool.run([("tests.verifiers_fixture:hog", "x", {})])
        assert res[0].status == "error" and res[0].error.startswith("MemoryError")
        assert pool.restarts == 1 and pool.pids() != [pid]
        assert [r.score for r in pool.run([("math", "#3", {"answer": "3"})] * 2)] == [1.0, 1.0]


def test_pool_streams_chunks_and_resends_the_rest_after_a_failure():
    """40 completions of one plain verifier travel in chunks of 5; hangs, exceptions and process deaths
    inside a chunk fail only their own call, and the rest of the chunk is scored on another worker."""
    import zlib

    completions = [f"run {k}: #{k % 7}" for k in range(40)]
    samples = [{"answer": "3"}] * 40
    kinds = [zlib.crc32(c.encode()) % 4 for c in completions]
    assert {0, 1, 2, 3} <= set(kinds)
    with VerifierPool(num_workers=2, timeout_s=1.0) as pool:
        res = pool.score([Job("tests.verifiers_fixture:chaos", completions, samples)])[0]
    expect = {0: "timeout", 1: "error", 2: "error", 3: "ok"}
    assert [r.status for r in res] == [expect[k] for k in kinds]
    assert [r.score for r in res] == [float(k == 3 and c.endswith("#3")) for k, c in zip(kinds, completions)]
    assert all("verifier process died" in r.error for r, k in zip(res, kinds) if k == 2)
    assert pool.restarts == kinds.count(0) + kinds.count(2)  # one replacement per hang and per death
    assert pool.calls == 40  # every completion was one call, none scored twice or lost
