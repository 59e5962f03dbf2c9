"""Curricula: which prompts a step trains on, how many rollouts each gets, and with what budget.

- `length_budget`: Train Long, Think Short budget schedules and the triangular length reward;
- `knapsack`: Knapsack RL's value model and its exact rollout allocation;
- `sec`: the self-evolving curriculum's bandit arithmetic;
- `strategies`: the strategies the trainer drives through one interface (`curriculum.strategy`),
  with their state saved in checkpoints.

Balanced online difficulty filtering shares DAPO's mechanism (`rlreason/algos/filtering.py`,
`algo.dynamic_sampling` with an inclusive band; recipe `balanced`).
"""
