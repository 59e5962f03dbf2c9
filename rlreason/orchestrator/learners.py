"""The learner actor(s): one process, or `learner.num_workers` DeepSpeed ranks called together.

Every call goes to every rank (DeepSpeed steps and ZeRO-3 gathers are collectives) and returns rank
0's answer. A learner that dies ends the run with `LearnerDied`, naming the last checkpoint.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import ray

from rlreason import QUIET_ENV
from rlreason.learner.learner import Learner


class LearnerDied(RuntimeError):
    """A learner actor died: the run stops (the last checkpoint is intact) and run.py says where it is."""


class LearnerGroup:
    def __init__(self, cfg, policy_path, threads: int, resources: dict, place: Callable, last_checkpoint: Callable[[], object]):
        """`place(k)`: Ray options for rank k; `last_checkpoint()`: the newest complete checkpoint, for
        the message when a rank dies."""
        self.run_dir = cfg.run_dir
        self.last_checkpoint = last_checkpoint
        learner_cfg = dataclasses.replace(cfg.learner, threads=threads)
        # the actors' environment, whether this driver started the cluster or joined one (ray job submit)
        env = {"runtime_env": {"env_vars": dict(QUIET_ENV)}}
        self.actors = [
            ray.remote(Learner).options(**resources, **env, **place(k), max_restarts=0).remote(
                str(policy_path), learner_cfg, cfg.algo, cfg.rollout.temperature, cfg.rollout.max_new_tokens, cfg.seed,
                cfg.moe, cfg.model.lora, k,
            )
            for k in range(cfg.learner.num_workers)
        ]
        self.rank0 = self.actors[0]
        if cfg.learner.strategy == "deepspeed":
            addr, port = ray.get(self.rank0.address.remote())
            ray.get([lr.connect.remote(addr, port) for lr in self.actors])

    def submit(self, method: str, *args) -> list:
        """Start `method` on every rank; `wait(futures, method)` gives rank 0's answer."""
        return [getattr(lr, method).remote(*args) for lr in self.actors]

    def wait(self, futures: list, method: str):
        try:
            return ray.get(futures)[0]
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
            last = self.last_checkpoint()
            raise LearnerDied(
                f"the learner actor died during {method} ({type(e).__name__}); "
                + (f"the last checkpoint is {last}: continue with resume=true run_dir={self.run_dir}" if last
                   else "no checkpoint had been written yet")
            ) from e

    def call(self, method: str, *args):
        return self.wait(self.submit(method, *args), method)
