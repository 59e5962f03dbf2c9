"""The pieces `Trainer.fit` coordinates, each on its own: the scorer, the batch builder, the evaluator,
the checkpointer, the prompt format and the thread shares. Real engines and real verifiers (inline);
only the learner group in the checkpointer test is a stand-in (what it saves is the learner's
business, tested in test_learner.py). The fleet and learner group need Ray: test_distributed.py and
test_actors.py exercise them."""

import json

import pytest
import torch

from curricula.strategies import Uniform
from rlreason.batch import RolloutBatch
from rlreason.config import RewardConfig, VerifierEntry
from rlreason.data.arithmetic import make_splits
from rlreason.data.sampler import PromptSampler
from rlreason.orchestrator.batches import BatchBuilder, PromptFormat
from rlreason.orchestrator.checkpoints import Checkpointer
from rlreason.orchestrator.evaluator import Evaluator
from rlreason.orchestrator.placement import threads_per_actor
from rlreason.orchestrator.scorer import RewardPlan, Scorer, pass_rate_histogram
from rlreason.run import compose


class InProcessFleet:
    """The fleet's `generate` over one in-process RolloutWorker (a real HF engine, no Ray)."""

    def __init__(self, worker, rollout_cfg):
        self.worker, self.cfg, self.pad_id = worker, rollout_cfg, worker.engine.pad_id

    def generate(self, prompts, seed, greedy=False, n=None, max_new_tokens=None, samples=None):
        n = n or (1 if greedy else self.cfg.group_size)
        counts = n if isinstance(n, list) else [n] * len(prompts)
        return self.worker.generate(prompts, 0, counts, max_new_tokens or self.cfg.max_new_tokens, self.cfg.temperature,
                                    self.cfg.top_p, greedy, seed, samples)


def _batch(lengths: list[int], groups: list[int]) -> RolloutBatch:
    T = max(lengths)
    mask = torch.tensor([[1] * n + [0] * (T - n) for n in lengths])
    B = len(lengths)
    return RolloutBatch(torch.ones(B, 2, dtype=torch.long), torch.ones(B, 2, dtype=torch.long), mask.clone(), mask,
                        torch.zeros(B, T), torch.tensor(groups), truncated=torch.zeros(B, dtype=torch.bool))


def test_reward_plan_from_the_two_ways_of_naming_verifiers():
    plan = RewardPlan.from_config(RewardConfig(verifier="math", format_weight=0.1))
    assert [(e.name, e.weight) for e in plan.entries] == [("math", 1.0), ("format", 0.1)] and plan.accuracy.name == "math"
    plan = RewardPlan.from_config(RewardConfig(verifiers=[VerifierEntry("format", 0.5), VerifierEntry("exact", 2.0, accuracy=True)]))
    assert plan.accuracy.name == "exact" and plan.format_entry.weight == 0.5


def test_scorer_sums_weighted_verifiers_shapes_and_penalises_overlong():
    from rlreason.config import AlgoConfig

    cfg = RewardConfig(verifiers=[VerifierEntry("math", 1.0), VerifierEntry("format", 0.5)], isolation="inline")
    texts = ["so #4", "it is 4", "#5", "#4 or #5"]  # math: 1 1 0 0 (the last answer counts); format: 1 0 1 0
    samples = [{"answer": "4"}] * 4
    scorer = Scorer(cfg, AlgoConfig(), max_new_tokens=8)
    b = _batch([2, 3, 4, 5], [0, 0, 1, 1])
    m = scorer.score(b, texts, samples)
    assert b.correct.tolist() == [1.0, 1.0, 0.0, 0.0]
    assert b.rewards.tolist() == [1.5, 1.0, 0.5, 0.0]
    assert m["accuracy/train"] == 0.5 and m["reward/format/mean"] == 0.5 and m["verifier/error_rate"] == 0.0
    assert m["reward/zero_std_group_frac"] == 0.0 and m["reward/nonzero_grad_sample_frac"] == 1.0
    # a curriculum's shape replaces accuracy and format (there are no other verifiers to add)
    scorer.score(b, texts, samples, shape=lambda correct, fmt, lengths: 10 * correct + lengths)
    assert b.rewards.tolist() == [12.0, 13.0, 4.0, 5.0]
    # DAPO's overlong penalty: 8 tokens at most, the last 4 penalised linearly (length 5: -1/4)
    over = Scorer(cfg, AlgoConfig(overlong_shaping=True, overlong_cache=4), max_new_tokens=8)
    over.score(b, texts, samples)
    assert b.rewards.tolist() == [1.5, 1.0, 0.5, -0.25]
    for s in (scorer, over):
        s.close()


def test_pass_rate_histogram_bins():
    correct = torch.tensor([0, 0, 1, 0, 1, 1, 1, 1.0])
    groups = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])  # pass rates 0, 0.5, 1, 1
    h = pass_rate_histogram(correct, groups)
    assert h["curriculum/pass_rate/0"] == 0.25 and h["curriculum/pass_rate/25-50"] == 0.25 and h["curriculum/pass_rate/100"] == 0.5
    assert h["curriculum/pass_rate/75-100"] == 0.0 and sum(h.values()) == 1.0


def test_prompt_format_puts_the_budget_first_and_applies_no_template_without_one(tiny_policy):
    from rlreason.policy import load_tokenizer

    problem = make_splits(0, 20, 4, 3, 9)[0][0]
    fmt = PromptFormat(load_tokenizer(tiny_policy), chat_template=False, budget_in_prompt=True)
    assert fmt(problem, None) == problem.prompt and fmt(problem, 12) == f"budget 12: {problem.prompt}"
    assert PromptFormat(None, False, budget_in_prompt=False)(problem, 12) == problem.prompt


def _builder(tiny_policy, overrides):
    from rlreason.rollout.worker import RolloutWorker

    cfg, _ = compose(["scale=smoke", "reward.isolation=inline", *overrides])
    train = make_splits(0, 200, 8, 3, 9)[0]
    fleet = InProcessFleet(RolloutWorker("hf", tiny_policy, threads=2), cfg.rollout)
    scorer = Scorer(cfg.reward, cfg.algo, cfg.rollout.max_new_tokens)
    return BatchBuilder(cfg, train, fleet, scorer, PromptFormat(None, False, False)), scorer


@pytest.mark.parametrize("method,group,low,high", [("dapo", 4, 0.0, 1.0), ("balanced", 8, 0.25, 0.75)])
def test_batch_builder_keeps_only_groups_inside_the_band_and_renumbers_them(tiny_policy, method, group, low, high):
    """DAPO's exclusive band (0, 1) and balanced filtering's inclusive [0.25, 0.75] (at G = 8, pass rates 1/8
    and 7/8 separate the two)."""
    args = [f"recipe={method}", "reward.verifier=tests.verifiers_fixture:even_length", "algo.overlong_shaping=false",
            f"rollout.group_size={group}"]
    builder, scorer = _builder(tiny_policy, args)
    sb = builder.next(1)
    scorer.close()
    groups = sb.batch.group_index
    assert groups.tolist() == sorted(groups.tolist()) and set(groups.tolist()) == set(range(len(sb.indices)))
    for g in range(len(sb.indices)):
        c = sb.batch.correct[groups == g]
        rate = float(c.mean())
        assert len(c) == group and (low < rate < high if method == "dapo" else low <= rate <= high), rate
    rounds = sb.metrics["curriculum/filter_rounds"]
    assert 1 <= rounds <= 4 and (len(sb.indices) == 4 or sb.metrics["curriculum/short_batch"] == 1.0)
    # every round's tokens count, kept or not
    assert builder.rollout_tokens >= int(sb.batch.response_mask.sum())
    assert builder.state_after(1)["rollout_tokens"] == builder.rollout_tokens


def test_batch_builder_under_a_length_budget_caps_generation_and_shapes_the_reward(tiny_policy):
    """Train Long, Think Short: budget 8 at step 1, generation capped at 2 x 8 tokens, and every reward is
    0.6 correct + 0.3 triangular length reward + 0.1 format (0 or 0.1), not the plain accuracy."""
    from curricula.length_budget import triangular_length_reward

    builder, scorer = _builder(tiny_policy, ["recipe=tlts", "curriculum.length.start=8", "curriculum.length.final=4"])
    sb = builder.next(1)
    scorer.close()
    assert sb.metrics["curriculum/budget"] == 8
    lengths = sb.batch.response_mask.sum(-1)
    assert int(lengths.max()) <= 16
    tri = torch.tensor([triangular_length_reward(int(n), 8) for n in lengths])
    rest = sb.batch.rewards - 0.6 * sb.batch.correct - 0.3 * tri
    assert all(abs(x) < 1e-6 or abs(x - 0.1) < 1e-6 for x in rest.tolist()), rest
    assert (0.3 * tri).abs().sum() > 0  # the length term is there


def test_batch_builder_is_deterministic_for_a_seed_and_resumes_from_its_state(tiny_policy):
    a, sa = _builder(tiny_policy, ["recipe=grpo"])
    b, sb_ = _builder(tiny_policy, ["recipe=grpo"])
    first = a.next(1)
    a.plan(2, 0), a.plan(3, 0)  # trainer.mode=async draws later steps' prompts before step 1 is checkpointed
    state = json.loads(json.dumps(a.state_after(1)))  # as a checkpoint stores it
    assert state["consumed"] == len(first.indices)  # the position before step 2's prompts: none of them is skipped
    a.load_state(json.loads(json.dumps(state)))
    second = a.next(2)
    b.load_state(state)
    resumed = b.next(2)
    assert resumed.indices == second.indices and torch.equal(resumed.batch.response_ids, second.batch.response_ids)
    assert first.indices != second.indices
    for s in (sa, sb_):
        s.close()


def test_evaluator_reads_the_initial_evaluation_from_the_cache(tiny_policy, tmp_path, monkeypatch):
    from rlreason.rollout.worker import RolloutWorker

    monkeypatch.setenv("RLREASON_CACHE", str(tmp_path))
    cfg, _ = compose(["scale=smoke", "reward.isolation=inline", "eval_samples=2"])
    evals = make_splits(0, 200, 8, 3, 9)[1][:4]
    scorer = Scorer(cfg.reward, cfg.algo, cfg.rollout.max_new_tokens)
    fleet = InProcessFleet(RolloutWorker("hf", tiny_policy, threads=2), cfg.rollout)
    fmt = PromptFormat(None, False, False)
    curriculum = Uniform(PromptSampler(10, 2, seed=0))
    first = Evaluator(cfg, evals, fleet, scorer, fmt, curriculum, tiny_policy)(0)
    assert {"accuracy/eval", "accuracy/eval_sampled", "accuracy/eval_pass_at_k", "eval/response_length"} <= set(first)
    assert first["eval/k"] == 2

    class Unreachable:
        def generate(self, *a, **k):
            raise AssertionError("the cached evaluation must not generate")

    assert Evaluator(cfg, evals, Unreachable(), scorer, fmt, curriculum, tiny_policy)(0) == first
    with pytest.raises(AssertionError, match="must not generate"):  # only the initial policy's evaluation is cached
        Evaluator(cfg, evals, Unreachable(), scorer, fmt, curriculum, tiny_policy)(1)
    scorer.close()


class SavingLearners:
    """Stands in for the learner group: `save` writes a file where the learner would write its state."""

    def call(self, method, path):
        assert method == "save"
        from pathlib import Path

        Path(path).mkdir(parents=True)
        (Path(path) / "learner.pt").write_text("state")


def test_checkpointer_writes_atomically_keeps_the_newest_and_ignores_half_written(tmp_path):
    ck = Checkpointer(tmp_path, keep=2)
    data = {"sampler": {"pos": 1}, "curriculum": {"q": [0.5]}, "rollout_tokens": 7}
    for step in (1, 2, 3):
        ck.save(step, SavingLearners(), {**data, "rollout_tokens": step}, warmstart={"steps": 20})
    assert [p.name for p in ck.complete()] == ["step_000002", "step_000003"]
    (tmp_path / "checkpoints" / "step_000004").mkdir()  # no trainer.json: a crash before the rename's source was complete
    (tmp_path / "checkpoints" / ".step_000005.tmp").mkdir()
    assert ck.latest().name == "step_000003"
    state = Checkpointer.read_state(ck.latest())
    assert state == {"step": 3, "sampler": {"pos": 1}, "warmstart": {"steps": 20}, "rollout_tokens": 3, "curriculum": {"q": [0.5]}}
    assert (ck.latest() / "learner.pt").read_text() == "state"


def test_threads_per_actor_splits_the_cores_among_actors_computing_at_once(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert threads_per_actor(0, 1, overlapped=False) == 16
    assert threads_per_actor(0, 2, overlapped=True) == 4
    assert threads_per_actor(0, 32, overlapped=True) == 1
    assert threads_per_actor(3, 2, overlapped=True) == 3
