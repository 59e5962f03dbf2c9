"""Pure tensor functions: advantage estimators, policy losses, KL estimators.

`ESTIMATORS` maps an estimator name (``algo.estimator``) to a function
``(batch: RolloutBatch, algo_cfg, learner_tensors: dict) -> advantages [B, T]``. An estimator declares
the learner tensors it needs (``needs``: e.g. ``{"hidden_states", "entropy"}``) so the learner computes
them only when asked.
"""

from rlreason.algos.advantages import ESTIMATORS, register_estimator

__all__ = ["ESTIMATORS", "register_estimator"]
