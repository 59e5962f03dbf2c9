"""Curriculum strategies: what the policy practises next, and how much compute each prompt gets.

The trainer calls one strategy through five hooks per step, in this order:

1. ``prompts(step, round)``: the indices of the step's training problems (round > 0 when the
   difficulty filter asks for more);
2. ``budget(step)``: a token budget (injected into the prompt, and the generation cap) or None;
3. ``rollouts(step, indices)``: per-prompt rollout counts or None (uniform `group_size`);
4. ``shape_rewards(correct, fmt, lengths, budget)``: the reward from the verifiers' scores, or None
   (the trainer's default: correct + format_weight * fmt);
5. ``observe(step, indices, batch)``: learn from the scored batch; returns `curriculum/*` metrics.

``state_dict``/``load_state_dict`` carry everything a resumed run needs (the sampler position, arm
values, success rates), so a resumed run makes the same choices as the uninterrupted one. Random
choices draw from generators seeded by (seed, step), not from hidden global state.
"""

from __future__ import annotations

import random
from collections import Counter

import torch

from curricula.knapsack import allocate
from curricula.length_budget import budget_schedule, triangular_length_reward
from curricula.sec import softmax_probs, td_update
from rlreason.algos.group import group_advantages
from rlreason.registry import Registry


class UnknownCurriculum(ValueError):
    """`curriculum.strategy` names nothing registered."""


# name -> a strategy class with `from_config(cfg, sampler, problems)`; user strategies register here too
CURRICULA = Registry("curriculum", "curriculum.strategy", error=UnknownCurriculum, plural="curricula")


@CURRICULA.register("uniform")
class Uniform:
    """The default: the epoch-shuffled sampler, uniform rollouts, the trainer's reward."""

    name = "uniform"

    def __init__(self, sampler):
        self.sampler = sampler

    @classmethod
    def from_config(cls, cfg, sampler, problems) -> "Uniform":
        return cls(sampler)

    def prompts(self, step: int, round: int = 0) -> list[int]:
        return self.sampler.next_batch()

    def budget(self, step: int) -> int | None:
        return None

    def cap(self, budget: int) -> int:
        """The generation cap for a budget."""
        return budget

    def rollouts(self, step: int, indices: list[int]) -> list[int] | None:
        return None

    def shape_rewards(self, correct, fmt, lengths, budget):
        return None

    def observe(self, step: int, indices: list[int], batch) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])


@CURRICULA.register("length_budget")
class LengthBudget(Uniform):
    """Train Long, Think Short: B(t) tightens over training; reward = w_c * correct + w_l * R_len(l; B) +
    w_f * format. The generation cap is cap_factor * B (2 by default, so the whole triangle, and
    with it the penalty for overshooting, is reachable; 1 caps at the budget itself)."""

    name = "length_budget"

    def __init__(self, sampler, total_steps: int, kind: str, start: int, final: int, decays: int, custom: list[int] | None,
                 w_correct: float, w_length: float, w_format: float, cap_factor: float):
        super().__init__(sampler)
        self.args = (total_steps, kind, start, final, decays, custom)
        self.w = (w_correct, w_length, w_format)
        self.cap_factor = cap_factor

    @classmethod
    def from_config(cls, cfg, sampler, problems) -> "LengthBudget":
        lb = cfg.curriculum.length
        return cls(sampler, cfg.total_steps, lb.schedule, lb.start, lb.final, lb.decays, list(lb.custom),
                   lb.w_correct, lb.w_length, lb.w_format, lb.cap_factor)

    def budget(self, step: int) -> int:
        total, kind, start, final, decays, custom = self.args
        return budget_schedule(step - 1, total, kind, start, final, decays, custom)

    def cap(self, budget: int) -> int:
        return max(1, int(round(self.cap_factor * budget)))

    def shape_rewards(self, correct, fmt, lengths, budget):
        wc, wl, wf = self.w
        r_len = torch.tensor([triangular_length_reward(int(n), budget) for n in lengths], dtype=torch.float32)
        return wc * correct + wl * r_len + wf * fmt

    def observe(self, step, indices, batch) -> dict:
        return {"curriculum/budget": self.budget(step)}


@CURRICULA.register("knapsack")
class Knapsack(Uniform):
    """Knapsack rollout allocation: the step's total rollouts (prompts x group_size) split across its
    prompts by the exact knapsack over Value(N, p). p is the prompt's pass rate in its latest
    rollouts; a prompt never seen takes the mean pass rate of everything seen so far (`prior`
    before anything has been seen)."""

    name = "knapsack"

    def __init__(self, sampler, total: int, n_low: int, n_up: int, prior: float):
        super().__init__(sampler)
        self.total, self.n_low, self.n_up, self.prior = total, n_low, n_up, prior
        self.rates: dict[int, float] = {}

    @classmethod
    def from_config(cls, cfg, sampler, problems) -> "Knapsack":
        k, r = cfg.curriculum.knapsack, cfg.rollout
        return cls(sampler, r.prompts_per_step * r.group_size, k.n_low, k.n_up, k.prior)

    def _rate(self, i: int) -> float:
        if i in self.rates:
            return self.rates[i]
        return sum(self.rates.values()) / len(self.rates) if self.rates else self.prior

    def rollouts(self, step, indices):
        return allocate([self._rate(i) for i in indices], self.total, self.n_low, self.n_up)

    def observe(self, step, indices, batch) -> dict:
        counts = Counter()
        for slot, i in enumerate(indices):
            rows = batch.group_index == slot
            self.rates[i] = float((batch.correct[rows] > 0).float().mean())
            counts[int(rows.sum())] += 1
        hist = {f"curriculum/alloc_n{n}": c for n, c in sorted(counts.items())}
        return {"curriculum/prompts_tracked": len(self.rates), **hist}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "rates": {str(k): v for k, v in self.rates.items()}}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.rates = {int(k): v for k, v in state["rates"].items()}


@CURRICULA.register("sec")
class SEC(Uniform):
    """Self-evolving curriculum: a softmax bandit over categories rewarded by mean |advantage|."""

    name = "sec"

    def __init__(self, sampler, categories: list[str], seed: int, alpha: float, tau: float, batch_size: int,
                 std_ddof: int = 1, adv_eps: float = 1e-6):
        super().__init__(sampler)
        self.arms = sorted(set(categories))
        self.members = {a: [i for i, c in enumerate(categories) if c == a] for a in self.arms}
        self.q = [0.0] * len(self.arms)
        self.seed, self.alpha, self.tau, self.batch_size = seed, alpha, tau, batch_size
        self.adv = (std_ddof, adv_eps)
        self.last_counts: dict[str, int] = {}

    @classmethod
    def from_config(cls, cfg, sampler, problems) -> "SEC":
        c = cfg.curriculum.sec
        return cls(sampler, [p.category for p in problems], cfg.seed, c.alpha, c.tau, cfg.rollout.prompts_per_step,
                   cfg.algo.std_ddof, cfg.algo.adv_eps)

    def prompts(self, step: int, round: int = 0) -> list[int]:
        rng = random.Random(f"sec-{self.seed}-{step}-{round}")
        probs = softmax_probs(self.q, self.tau)
        arms = rng.choices(range(len(self.arms)), weights=probs, k=self.batch_size)
        self.last_counts = dict(Counter(self.arms[a] for a in arms))
        return [rng.choice(self.members[self.arms[a]]) for a in arms]

    def observe(self, step, indices, batch) -> dict:
        adv = group_advantages(batch.rewards, batch.group_index, *self.adv).abs()
        per_arm: dict[int, list[float]] = {}
        cat_of = {i: a for a, members in self.members.items() for i in members}
        for slot, i in enumerate(indices):
            per_arm.setdefault(self.arms.index(cat_of[i]), []).append(float(adv[batch.group_index == slot].mean()))
        rewards = {a: sum(v) / len(v) for a, v in per_arm.items()}
        self.q = td_update(self.q, rewards, self.alpha)
        probs = softmax_probs(self.q, self.tau)
        out = {}
        for k, arm in enumerate(self.arms):
            out[f"curriculum/q/{arm}"] = self.q[k]
            out[f"curriculum/p/{arm}"] = probs[k]
        return out

    def state_dict(self) -> dict:
        return {**super().state_dict(), "q": list(self.q)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.q = list(state["q"])


def build_curriculum(cfg, sampler, problems) -> Uniform:
    """The strategy `cfg.curriculum.strategy` names (a registered name, an entry point of group
    `rlreason.curriculums` or `module:Class`), built from the run's config."""
    return CURRICULA.get(cfg.curriculum.strategy).from_config(cfg, sampler, problems)
