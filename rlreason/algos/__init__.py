"""Pure tensor functions: advantage estimators, policy losses, KL estimators.

`ESTIMATORS` maps an estimator name (``algo.estimator``) to a function
``(batch: RolloutBatch, algo_cfg, learner_tensors: dict) -> advantages [B, T] | Estimate``. An
estimator declares the learner tensors it needs (``needs``: ``{"hidden", "vocab_logprobs"}``) so the
learner computes them only when asked; ``algo.estimator=module:function`` loads one from user code.
"""

from rlreason.algos.advantages import ESTIMATORS, Estimate, register_estimator, resolve_estimator

__all__ = ["ESTIMATORS", "Estimate", "register_estimator", "resolve_estimator"]
