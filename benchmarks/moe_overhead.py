"""What routing replay, router metrics and router regularisers cost the learner, side by side.

    .venv/bin/python benchmarks/moe_overhead.py [--policy <HF folder>] [--repeats 7]

One rollout batch (32 prompts x 8 samples from the default warm-started tiny MoE, sampled by the HF
engine, routes recorded) is trained on by a fresh learner per configuration and round (configurations
interleaved); the second `train_step` is timed. The table gives the median and the ratio to the bare learner
(no MoE metrics, no replay). Default policy: the cached warm start of `make run`'s settings.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CONFIGS = {
    "bare (moe.metrics=false)": dict(metrics=False),
    "metrics on (default)": dict(),
    "R2": dict(routing_replay="r2"),
    "R3": dict(routing_replay="r3"),
    "R3 + z-loss + anchoring + global LB": dict(routing_replay="r3", z_coef=1e-3, anchor_coef=1.0, lb_coef=1e-2, lb_scope="global"),
}


def default_policy() -> str:
    from rlreason.config import Config
    from rlreason.data.tasks import load_task
    from rlreason.data.tokenizer import build_char_tokenizer
    from rlreason.learner.warmstart import warm_start

    cfg = Config()
    train, _ = load_task(cfg.task)
    path, _ = warm_start(cfg.model, cfg.task, cfg.warmstart, cfg.seed, build_char_tokenizer(), train, cfg.rollout.max_new_tokens)
    return str(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", default=None)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--mini-batches", type=int, default=4)
    args = ap.parse_args()
    from rlreason.config import AlgoConfig, Config, LearnerConfig, MoEConfig
    from rlreason.data.tasks import load_task
    from rlreason.learner.learner import Learner
    from rlreason.rollout.worker import RolloutWorker

    torch.set_num_threads(2)
    policy = args.policy or default_policy()
    train, _ = load_task(Config().task)
    worker = RolloutWorker("hf", policy, threads=2)
    batch, _ = worker.generate([p.prompt for p in train[:32]], 0, 8, 32, 1.0, 1.0, seed=0)
    batch.rewards = torch.bernoulli(torch.full((batch.size,), 0.5), generator=torch.Generator().manual_seed(0))
    print(f"policy {policy}; batch {batch.size} x {batch.response_ids.shape[1]} tokens; "
          f"learner.mini_batches={args.mini_batches}; {args.repeats} rounds", flush=True)
    times: dict[str, list[float]] = {name: [] for name in CONFIGS}
    for r in range(args.repeats + 1):  # round 0 warms up and is dropped
        for name, moe in CONFIGS.items():
            learner = Learner(policy, LearnerConfig(mini_batches=args.mini_batches, threads=2), AlgoConfig(), 1.0, 32,
                              moe_cfg=MoEConfig(**moe))
            learner.train_step(batch)  # the first step also sets up the probe: time the second
            t0 = time.perf_counter()
            learner.train_step(batch)
            if r:
                times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["bare (moe.metrics=false)"])
    print("| learner configuration | median train_step (s) | ratio to bare |")
    print("|---|---|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {med:.3f} | {med / base:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
