"""One step's training batch: the curriculum picks prompts (and per-prompt rollout counts and a token
budget), the fleet samples, the scorer rewards, the difficulty filter keeps groups, and the curriculum
learns from the result.

With `algo.dynamic_sampling`, groups whose pass rate falls outside [filter_low, filter_high] are
dropped and new prompts are drawn until the step has `rollout.prompts_per_step` groups or
`algo.filter_max_rounds` rounds have run; then it trains on what it has (a round that keeps nothing
at all trains on its last round unfiltered, and says so). Every round's tokens count towards
`rollout_token_budget`, kept or not.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass

import torch

from curricula.strategies import build_curriculum
from rlreason.algos.filtering import group_pass_rates, keep_groups
from rlreason.batch import RolloutBatch
from rlreason.data.sampler import PromptSampler
from rlreason.rollout.episodes import env_metrics

log = logging.getLogger(__name__)


@dataclass
class StepBatch:
    batch: RolloutBatch
    indices: list[int]  # the training problems of its groups, in group order
    metrics: dict  # reward/*, verifier/*, curriculum/*
    rollout_s: float
    reward_s: float


@dataclass
class RoundPlan:
    """One generation round of one step: what the curriculum chose, and how to sample it."""
    step: int
    round: int
    indices: list[int]  # training problems, one group each
    counts: list[int]  # responses per group
    prompts: list[str]  # formatted as the policy reads them
    seed: int
    max_new_tokens: int
    budget: int | None  # the length curriculum's token budget (None: off)
    samples: list[dict] | None = None  # the problems' samples (multi-turn environments are reset with them)


class SyncRollouts:
    """trainer.mode=sync (and the one-step-off mode): a round is generated when it is asked for, with
    the weights the workers serve then. `async_rollouts.AsyncRollouts` is the other source."""

    def __init__(self, fleet, plan):
        self.fleet, self.plan = fleet, plan

    def round(self, step: int, rnd: int) -> tuple[RoundPlan, RolloutBatch, list[str]]:
        p = self.plan(step, rnd)
        batch, texts = self.fleet.generate(p.prompts, seed=p.seed, n=p.counts, max_new_tokens=p.max_new_tokens,
                                           samples=p.samples)
        return p, batch, texts


class PromptFormat:
    """A problem's prompt as the policy reads it: the budget prefix under a length curriculum that puts
    it in the prompt, then the model's chat template for instruct models."""

    def __init__(self, tokenizer, chat_template: bool, budget_in_prompt: bool):
        self.tokenizer, self.chat_template, self.budget_in_prompt = tokenizer, chat_template, budget_in_prompt

    def __call__(self, problem, budget: int | None) -> str:
        text = problem.prompt
        if budget is not None and self.budget_in_prompt:
            text = f"budget {budget}: {text}"
        if self.chat_template:
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                      add_generation_prompt=True)
        return text


class BatchBuilder:
    def __init__(self, cfg, train: list, fleet, scorer, prompt_format: PromptFormat):
        self.cfg = cfg
        self.train, self.fleet, self.scorer, self.prompt = train, fleet, scorer, prompt_format
        self.sampler = PromptSampler(len(train), cfg.rollout.prompts_per_step, seed=cfg.seed)
        self.curriculum = build_curriculum(cfg, self.sampler, train)
        self.rollout_tokens = 0  # response tokens trained on or filtered out so far (all rounds, kept or not)
        self.source = SyncRollouts(fleet, self.plan)  # the trainer swaps in AsyncRollouts under trainer.mode=async
        self._before: dict[int, dict] = {}  # step -> the data position before its prompts were drawn

    def next(self, step: int) -> StepBatch:
        """The scored batch of `step`; the curriculum observes it before it is returned."""
        out = self._collect(step)
        out.metrics.update(self.curriculum.observe(step, out.indices, out.batch))
        return out

    def plan(self, step: int, rnd: int) -> RoundPlan:
        """Round `rnd` of `step`: the curriculum draws its prompts (and their rollout counts and budget)."""
        if rnd == 0:
            self._before[step] = self._position()
        cfg, cur = self.cfg, self.curriculum
        budget = cur.budget(step)
        indices = cur.prompts(step, rnd)
        counts = cur.rollouts(step, indices) or [cfg.rollout.group_size] * len(indices)
        return RoundPlan(step, rnd, indices, counts, [self.prompt(self.train[i], budget) for i in indices],
                         seed=cfg.seed * 1_000_003 + step + 7_919 * rnd,
                         max_new_tokens=cur.cap(budget) if budget else cfg.rollout.max_new_tokens, budget=budget,
                         samples=[self.train[i].as_sample() for i in indices] if cfg.rollout.env != "single_turn" else None)

    def state_after(self, step: int) -> dict:
        """The data position to resume from after `step` (checkpoints and metrics): the sampler and the
        curriculum as they were before step + 1's prompts were drawn, and the tokens counted so far. Under
        trainer.mode=async later steps' prompts are drawn ahead of training; a resume draws them again
        rather than skip them (the curriculum's observations of the steps in between are not kept)."""
        for s in [s for s in self._before if s <= step]:
            del self._before[s]
        return {**(self._before.get(step + 1) or self._position()), "rollout_tokens": self.rollout_tokens}

    def _position(self) -> dict:
        return {"sampler": copy.deepcopy(self.sampler.state_dict()), "curriculum": copy.deepcopy(self.curriculum.state_dict()),
                "consumed": self.sampler.consumed, "epoch": self.sampler.epoch}

    def load_state(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
        if "curriculum" in state:
            self.curriculum.load_state_dict(state["curriculum"])
        self.rollout_tokens = state.get("rollout_tokens", 0)

    def _collect(self, step: int) -> StepBatch:
        a = self.cfg.algo
        want = self.cfg.rollout.prompts_per_step
        kept_parts, kept_indices = [], []
        rounds, seen_groups, passed, t_rollout, t_reward = 0, 0, 0, 0.0, 0.0
        reward_metrics = {}
        while True:
            rounds += 1
            t0 = time.perf_counter()
            plan, batch, texts = self.source.round(step, rounds - 1)
            indices, counts, budget = plan.indices, plan.counts, plan.budget
            t_rollout += time.perf_counter() - t0
            self.rollout_tokens += int(batch.response_mask.sum())  # every round counts, kept or dropped
            shape = (lambda c, f, n, b=budget: self.curriculum.shape_rewards(c, f, n, b)) if budget is not None else None
            t0 = time.perf_counter()
            samples = [self.train[i].as_sample() for i, c in zip(indices, counts) for _ in range(c)]
            round_metrics = self.scorer.score(batch, texts, samples, shape, where=f"step {step}")
            if batch.env_stats is not None:
                round_metrics.update(env_metrics(batch.env_stats, float(batch.gen_mask.sum())))
            t_reward += time.perf_counter() - t0
            if rounds == 1:
                reward_metrics = round_metrics
            if not a.dynamic_sampling:
                return StepBatch(batch, indices, reward_metrics, t_rollout, t_reward)
            batch.group_index = batch.group_index + seen_groups
            seen_groups += len(indices)
            keep = keep_groups(batch.correct, batch.group_index, a.filter_low, a.filter_high, a.filter_inclusive)
            groups, _ = group_pass_rates(batch.correct, batch.group_index)
            passed += int(keep.sum())
            for g, k, i in zip(groups.tolist(), keep.tolist(), indices):
                if k and len(kept_indices) < want:
                    kept_parts.append(batch.select(torch.nonzero(batch.group_index == g).flatten()))
                    kept_indices.append(i)
            if len(kept_indices) >= want or rounds >= a.filter_max_rounds:
                break
        reward_metrics.update({
            "curriculum/filter_rounds": rounds,
            "curriculum/kept_frac": passed / seen_groups,  # share of generated groups inside the band
            "curriculum/short_batch": float(len(kept_indices) < want),
        })
        if not kept_parts:  # nothing passed the band: train on the last round as it is (zero-signal step)
            log.warning("step %d: no group passed the filter band in %d rounds; training on the last round unfiltered", step, rounds)
            return StepBatch(batch, indices, reward_metrics, t_rollout, t_reward)
        out = RolloutBatch.concat(kept_parts, self.fleet.pad_id)
        # renumber the kept groups 0..n-1 in order
        _, out.group_index = torch.unique_consecutive(out.group_index, return_inverse=True)
        return StepBatch(out, kept_indices, reward_metrics, t_rollout, t_reward)
