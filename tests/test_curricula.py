"""Curricula: hand-worked values (docs/algorithms.md, "Curricula")."""

import itertools
import math

import pytest

from curricula.knapsack import allocate, p_nonzero_gradient, rollout_value
from curricula.length_budget import budget_schedule, triangular_length_reward
from curricula.sec import softmax_probs, td_update
from rlreason.data.tasks import DataError


def test_triangular_length_reward():
    L = 10
    assert [triangular_length_reward(n, L) for n in (0, L, 2 * L, 2 * L + 1)] == [0.0, 1.0, 0.0, 0.0]
    assert triangular_length_reward(5, L) == 0.5 and triangular_length_reward(15, L) == 0.5


def test_budget_schedule_table():
    table = [budget_schedule(t, 600, "exponential", 256, 87, 3) for t in (0, 149, 150, 300, 450, 599)]
    assert table == [256, 256, 179, 125, 87, 87]
    lin = [budget_schedule(t, 600, "linear", 256, 87, 3) for t in (0, 150, 300, 450)]
    assert lin == [256, 200, 143, 87]
    assert [budget_schedule(t, 100, "custom", 0, 0, 0, [64, 32]) for t in (0, 49, 50, 99)] == [64, 64, 32, 32]
    assert budget_schedule(599, 600, "exponential", 4, 0.001, 3) >= 1


def test_p_nonzero_gradient_values_and_monotone_value():
    assert p_nonzero_gradient(8, 0.5) == pytest.approx(0.9922, abs=1e-4)
    assert p_nonzero_gradient(8, 0.05) == pytest.approx(0.3366, abs=1e-4)
    for p in (0.05, 0.3, 0.7):
        vals = [rollout_value(n, p) for n in range(1, 40)]
        assert all(b >= a for a, b in zip(vals, vals[1:]))
    assert rollout_value(16, 0.0) == 0.0 and rollout_value(16, 1.0) == 0.0


def test_knapsack_equals_brute_force_and_respects_bounds():
    cases = [([0.1, 0.5, 0.9], 9, 1, 5), ([0.3, 0.3, 0.0, 0.6], 10, 2, 4), ([0.05, 0.33, 0.5], 12, 2, 8), ([0.2, 0.8], 3, 1, 3)]
    for rates, total, lo, hi in cases:
        got = allocate(rates, total, lo, hi)
        assert all(lo <= n <= hi for n in got) and sum(got) <= total
        best = max(
            sum(rollout_value(n, p) for n, p in zip(combo, rates))
            for combo in itertools.product(range(lo, hi + 1), repeat=len(rates))
            if sum(combo) <= total
        )
        assert sum(rollout_value(n, p) for n, p in zip(got, rates)) == pytest.approx(best, abs=1e-12)
    assert allocate([0.0, 1.0], 20, 2, 16) == [2, 2]  # no value at p in {0, 1}: the floor
    with pytest.raises(ValueError):
        allocate([0.5] * 5, 8, 2, 4)


def test_sec_td_and_temperature():
    q = td_update([0.0, 0.5, 1.0], {0: 1.0, 2: 0.0}, alpha=0.5)
    assert q == [0.5, 0.5, 0.5]  # arm 1 was not sampled: unchanged
    probs = softmax_probs([0.0, 1.0, 3.0], tau=1e6)
    assert all(math.isclose(p, 1 / 3, rel_tol=1e-5) for p in probs)
    sharp = softmax_probs([0.0, 1.0, 3.0], tau=0.1)
    assert sharp[2] > 0.99
    # mean |A| identity for binary rewards under std-normalised GRPO (population std)
    import torch

    from rlreason.algos.group import group_advantages

    r = torch.tensor([1.0, 0, 0, 0])
    adv = group_advantages(r, torch.zeros(4, dtype=torch.long), std_ddof=0, eps=0.0)
    assert float(adv.abs().mean()) == pytest.approx(2 * math.sqrt(0.25 * 0.75))


def gsm8k_dir():
    """A small folder in GSM8K's format (problems written for these tests: `question`, `answer` ending in
    `#### N`, thousands separators included)."""
    from pathlib import Path

    return Path(__file__).resolve().parent / "data" / "gsm8k"


# -- strategies -------------------------------------------------------------------------------------
def _batch(group_sizes, correct):
    import torch

    from rlreason.batch import RolloutBatch

    gi = torch.arange(len(group_sizes)).repeat_interleave(torch.tensor(group_sizes))
    B = len(gi)
    z = torch.zeros(B, 2, dtype=torch.long)
    return RolloutBatch(prompt_ids=z, prompt_mask=z + 1, response_ids=z, response_mask=z + 1, sampling_logprobs=z.float(),
                        group_index=gi, rewards=torch.tensor(correct, dtype=torch.float32),
                        correct=torch.tensor(correct, dtype=torch.float32))


def test_sec_state_roundtrip_reproduces_choices_and_learns_toward_signal():
    from curricula.strategies import SEC
    from rlreason.data.sampler import PromptSampler

    cats = ["easy"] * 10 + ["mid"] * 10 + ["hard"] * 10
    a = SEC(PromptSampler(30, 4, 0), cats, seed=0, alpha=0.5, tau=0.2, batch_size=4)
    first = a.prompts(1)
    assert first == SEC(PromptSampler(30, 4, 0), cats, seed=0, alpha=0.5, tau=0.2, batch_size=4).prompts(1)
    # mixed outcomes on 'mid' problems (signal), all-correct elsewhere (none)
    correct = []
    for i in first:
        correct += [1, 0] if cats[i] == "mid" else [1, 1]
    m = a.observe(1, first, _batch([2] * 4, correct))
    q = dict(zip(a.arms, a.q))
    if "mid" in {cats[i] for i in first}:
        assert q["mid"] > 0 and m["curriculum/q/mid"] == q["mid"]
    assert q["easy"] == 0.0 and q["hard"] == 0.0
    b = SEC(PromptSampler(30, 4, 0), cats, seed=0, alpha=0.5, tau=0.2, batch_size=4)
    b.load_state_dict(a.state_dict())
    assert b.q == a.q and b.prompts(2) == a.prompts(2) and b.prompts(2, 1) != b.prompts(2, 0)


def test_knapsack_strategy_tracks_rates_and_spends_the_budget():
    from curricula.strategies import Knapsack
    from rlreason.data.sampler import PromptSampler

    k = Knapsack(PromptSampler(8, 4, 0), total=16, n_low=2, n_up=8, prior=0.5)
    idx = k.prompts(1)
    assert k.rollouts(1, idx) == [4, 4, 4, 4]  # every prompt at the prior: the even split
    m = k.observe(1, idx, _batch([4] * 4, [1, 1, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 1, 1, 0, 0]))
    assert m["curriculum/alloc_n4"] == 4 and m["curriculum/prompts_tracked"] == 4
    counts = k.rollouts(2, idx)
    assert sum(counts) <= 16 and min(counts) >= 2
    assert counts[0] == 2 and counts[1] == 2  # p = 1 and p = 0: no value, the floor
    k2 = Knapsack(PromptSampler(8, 4, 0), total=16, n_low=2, n_up=8, prior=0.5)
    k2.load_state_dict(k.state_dict())
    assert k2.rollouts(2, idx) == counts and k2.prompts(2) == k.prompts(2)


def test_length_budget_strategy_reward_and_cap():
    import torch

    from curricula.strategies import LengthBudget
    from rlreason.data.sampler import PromptSampler

    lb = LengthBudget(PromptSampler(8, 4, 0), 600, "exponential", 256, 87, 3, None, 0.6, 0.3, 0.1, 2.0)
    assert [lb.budget(s) for s in (1, 151, 301, 451)] == [256, 179, 125, 87]
    assert lb.cap(87) == 174
    r = lb.shape_rewards(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]), torch.tensor([87, 200]), 87)
    assert r.tolist() == pytest.approx([0.6 + 0.3 + 0.1, 0.0 + 0.0 + 0.1])


def test_gsm8k_loader_reads_a_local_folder_and_reports_bad_rows(tmp_path):

    from rlreason.data.tasks import gsm8k_answer, gsm8k_split

    folder = gsm8k_dir()
    train = gsm8k_split(str(folder), "train")
    assert len(train) == 8 and len(gsm8k_split(str(folder), "test")) == 4
    assert train[0].answer == "19" and train[0].solution.endswith("#19")
    assert train[5].answer == "850"  # "#### 850" after "1,200 - 350"
    assert all(p.category == "gsm8k" and p.prompt.startswith("Question: ") for p in train)
    assert gsm8k_answer("so 1,234 #### 1,234") == "1234"
    (tmp_path / "train.jsonl").write_text('{"question": "q", "answer": "a #### 3"}\n{"question": "q2", "answer": "no final"}\n')
    with pytest.raises(ValueError, match=r"train.jsonl:2"):
        gsm8k_split(str(tmp_path), "train")
    with pytest.raises(DataError, match="test.jsonl"):
        gsm8k_split(str(tmp_path), "test")


def test_arithmetic_levels_label_categories():
    from rlreason.data.arithmetic import make_splits

    train, evals = make_splits(1, 300, 20, 3, 9, levels=[2, 4])
    cats = {p.category for p in train}
    assert cats == {"terms2", "terms4"}
    for p in train[:50]:
        assert p.prompt.count("+") + p.prompt.count("-") == int(p.category[5:]) - 1
    # without levels the default task is unchanged (same problems as before levels existed)
    assert make_splits(1234, 50, 5, 3, 9)[0][0].category == "terms3"


def test_gsm8k_task_loads_from_a_local_folder_and_a_missing_one_is_a_config_error(tmp_path, capsys):
    """What task=gsm8k adds to a run is its loader and its check; training is the same for every task."""
    from rlreason.orchestrator.scorer import RewardPlan
    from rlreason.orchestrator.task_data import load_task_data
    from rlreason.run import compose, main

    cfg, _ = compose(["task=gsm8k", f"task.path={gsm8k_dir()}", "task.num_train=8", "task.num_eval=4"])
    data = load_task_data(cfg.task, RewardPlan.from_config(cfg.reward).validators(), tmp_path)
    assert len(data.train) == 8 and len(data.evals) == 4 and not data.bad_rows
    assert data.evals[0].answer == "33" and data.train[0].prompt.startswith("Question: ")
    assert main(["task=gsm8k", f"task.path={tmp_path / 'nowhere'}", f"run_dir={tmp_path / 'x'}"]) == 2
    assert "train.jsonl" in capsys.readouterr().err and not (tmp_path / "x").exists()
