"""Curricula: which prompts a step trains on, and with what budgets.

Today the trainer draws prompts with `rlreason.data.sampler.PromptSampler` (epoch-shuffled,
resumable). Length-budget schedules, difficulty filtering, knapsack rollout allocation and the SEC
bandit land here as pure functions (see the curriculum issue); nothing in this package is wired yet.
"""
