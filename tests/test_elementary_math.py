"""The elementary_math task and the held-out eval metrics (pass@1, pass@k, per category)."""

import math

import pytest

from rewards.math import math_verifier
from rlreason.data.elementary_math import CATEGORIES, category_split, make_splits
from rlreason.evaluation import binomial_std, eval_metrics, pass_at_k

ALL = list(CATEGORIES)


def test_every_problem_is_right_by_its_own_arithmetic():
    import re

    for name in ALL:
        train, held = category_split(name, 32)
        for p in train + held:
            a, b = map(int, re.findall(r"\d+", p.prompt)[:2])
            want = {"add1": a + b, "add2": a + b, "sub2": a - b, "compare": max(a, b), "mul1": a * b}[name]
            assert int(p.answer) == want and p.category == name
            assert math_verifier(f"The answer is {p.answer}.", p.as_sample()).score == 1.0
    assert category_split("sub2", 1)[0][0].answer != "0"  # a > b: no zero answers


def test_problem_spaces_and_phrasings():
    sizes = {name: sum(len(part) for part in category_split(name, 1)) for name in ALL}
    assert sizes == {"add1": 81, "add2": 8100, "sub2": 90 * 89 // 2, "compare": 90 * 89, "mul1": 64}
    held = {name: category_split(name, 1)[1][0].prompt for name in ALL}
    assert held["sub2"].startswith("Compute ") and held["sub2"].endswith(". Give the final answer as a number.")
    assert held["compare"].startswith("Which number is larger, ")
    assert held["add2"].endswith("? Answer with just the number.")


def test_split_is_disjoint_fixed_by_text_and_balanced():
    train, evals = make_splits(ALL, 1000, 32, seed=0)
    assert len(evals) == 5 * 32 and len(train) == 1000
    assert not {p.prompt for p in train} & {p.prompt for p in evals}
    assert [p.category for p in evals] == [c for c in ALL for _ in range(32)]
    assert {c: sum(p.category == c for p in train) for c in ALL} == {c: 200 for c in ALL}
    # mul1 has 64 - 32 = 32 train problems: its 200 entries repeat them; add2 has thousands: no repeats
    assert len({p.prompt for p in train if p.category == "mul1"}) == 32
    assert len({p.prompt for p in train if p.category == "add2"}) == 200
    # another seed reorders the train split; the held-out split does not move, nor with fewer categories
    train2, evals2 = make_splits(ALL, 1000, 32, seed=1)
    assert evals2 == evals and [p.prompt for p in train2] != [p.prompt for p in train]
    assert make_splits(["sub2"], 10, 32, seed=5)[1] == [p for p in evals if p.category == "sub2"]


def test_split_errors():
    with pytest.raises(ValueError, match="at most once"):
        make_splits(["add1", "div3"], 10, 4, 0)
    with pytest.raises(ValueError, match="not more than task.eval_per_category"):
        make_splits(["mul1"], 10, 64, 0)


def test_pass_at_k_by_hand():
    assert pass_at_k(4, 0, 4) == 0.0
    assert pass_at_k(4, 1, 4) == 1.0  # k = n: any correct
    assert pass_at_k(4, 1, 1) == 0.25  # k = 1: c / n
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # 1 - C(3,2)/C(4,2)
    assert pass_at_k(5, 2, 3) == pytest.approx(1 - 1 / 10)  # 1 - C(3,3)/C(5,3)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_eval_metrics_by_hand():
    # problem 0 (add1): greedy right, samples 1,1,0,0; problem 1 (add1): wrong, 0,0,0,0; problem 2 (sub2): right, 1,0,0,0
    m = eval_metrics(["add1", "add1", "sub2"], [1.0, 0.0, 1.0], [[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]])
    assert m["accuracy/eval"] == pytest.approx(2 / 3)
    assert m["accuracy/eval_sampled"] == pytest.approx((0.5 + 0 + 0.25) / 3)
    assert m["accuracy/eval_pass_at_k"] == pytest.approx(2 / 3)
    assert m["accuracy/eval/add1"] == 0.5 and m["accuracy/eval_sampled/add1"] == 0.25
    assert m["accuracy/eval_pass_at_k/add1"] == 0.5
    assert m["accuracy/eval/sub2"] == 1.0 and m["accuracy/eval_sampled/sub2"] == 0.25
    assert m["eval/k"] == 4
    assert m["eval/binomial_std"] == pytest.approx(math.sqrt(2 / 3 * 1 / 3 / 3))
    assert m["eval/binomial_std_sampled/add1"] == pytest.approx(binomial_std(0.25, 2))
    # k below n uses the unbiased estimator; one category: no per-category keys; greedy only
    assert eval_metrics(["a"], [1.0], [[1, 0, 0, 0]], k=2)["accuracy/eval_pass_at_k"] == pytest.approx(0.5)
    greedy_only = eval_metrics(["a", "a"], [1.0, 0.0], None)
    assert set(greedy_only) == {"accuracy/eval", "eval/binomial_std"}


def test_initial_eval_cache_key_and_store(tmp_path):
    """The key moves with anything that changes the initial evaluation; a stored result reads back."""
    from rlreason import eval_cache

    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "model.safetensors").write_bytes(b"x" * 10)
    args = (policy, ["What is 1 + 2?"], [{"answer": "3"}], {"k": 8, "rollout": {"temperature": 1.0}})
    key = eval_cache.initial_eval_key(*args)
    assert eval_cache.initial_eval_key(*args) == key
    assert eval_cache.initial_eval_key(policy, ["What is 1 + 3?"], *args[2:]) != key
    assert eval_cache.initial_eval_key(*args[:3], {"k": 4, "rollout": {"temperature": 1.0}}) != key
    assert eval_cache.initial_eval_key(policy, args[1], [{"answer": "4"}], args[3]) != key
    (policy / "model.safetensors").write_bytes(b"y" * 11)  # new weights
    assert eval_cache.initial_eval_key(*args) != key
    assert eval_cache.load(tmp_path / "c", key) is None
    eval_cache.store(tmp_path / "c", key, {"accuracy/eval": 0.5})
    assert eval_cache.load(tmp_path / "c", key) == {"accuracy/eval": 0.5}
    assert [p.name for p in (tmp_path / "c").iterdir()] == [f"{key}.json"]  # no temporary file left
