"""Step time of the synchronous loop versus one-step-off-policy, and a single learner versus DeepSpeed.

    .venv/bin/python benchmarks/scale_out.py async [--steps 12] [--repeats 2]
    .venv/bin/python benchmarks/scale_out.py deepspeed [--repeats 5]

`async`: `make run`'s job (recipe=tempo on the default task, 32 prompts x 8 samples) run through
`rlreason/run.py` for `--steps` steps per arm, the arms alternating, `--repeats` times each. The
off-policy arm adds `algo.tis_mode=token`. Reported: the median `timing/step_s` over steps 2.. (the
first step has no overlap), the wall time of the training steps, and the ratio to the synchronous arm.
Arms with `learner.threads=1 rollout.threads=1` pin the split of the 2 cores explicitly (`threads=0`
splits the cores among the actors that compute at the same time).

`deepspeed`: one rollout batch of that size (the cached warm-started tiny MoE, HF engine, random 0/1
rewards so every group has a gradient) trained on by (a) the single learner with 2 threads, (b) 2
DeepSpeed ZeRO-2 actors with 1 thread each, (c) the same at ZeRO-3; the median `train_step` over
`--repeats` steps after one warm-up step, each arm as Ray actors.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ASYNC_ARMS = {
    "sync": [],
    "off-policy": ["trainer.off_policy_steps=1", "algo.tis_mode=token"],
    "sync, 1+1 threads": ["learner.threads=1", "rollout.threads=1"],
    "off-policy, 1+1 threads": ["trainer.off_policy_steps=1", "algo.tis_mode=token", "learner.threads=1", "rollout.threads=1"],
}


def run_async(args) -> None:
    arms = {a: ASYNC_ARMS[a] for a in (args.arms.split(";") if args.arms else ASYNC_ARMS)}
    out: dict[str, list[dict]] = {arm: [] for arm in arms}
    with tempfile.TemporaryDirectory(prefix="rlr-async-") as tmp:
        for r in range(args.repeats):
            for arm, extra in arms.items():
                run_dir = Path(tmp) / f"{arm.replace(' ', '_').replace(',', '')}-{r}"
                cmd = [sys.executable, str(ROOT / "rlreason" / "run.py"), "recipe=tempo", f"total_steps={args.steps}", "eval_every=0",
                       "checkpoint_every=0", "telemetry.tensorboard=false", "telemetry.console=false", f"run_dir={run_dir}", *extra]
                t0 = time.time()
                subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
                steps = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
                steps = [m for m in steps if "timing/step_s" in m]
                rec = {
                    "step_s": [m["timing/step_s"] for m in steps[1:]],
                    "wall_s": sum(m["timing/step_s"] for m in steps),
                    "rollout_s": statistics.median(m["timing/rollout_s"] for m in steps[1:]),
                    "train_s": statistics.median(m["timing/train_s"] for m in steps[1:]),
                    "kl": statistics.median(m["kl/rollout_vs_train"] for m in steps[1:]),
                    "lag": steps[-1]["rollout/weights_lag"],
                }
                out[arm].append(rec)
                print(f"[{r + 1}/{args.repeats}] {arm}: median step {statistics.median(rec['step_s']):.2f} s, "
                      f"{rec['wall_s']:.1f} s for {len(steps)} steps ({time.time() - t0:.0f} s with start-up)", flush=True)
    base = statistics.median(s for rec in out["sync"] for s in rec["step_s"])
    print(f"\n| arm | median timing/step_s | ratio to sync | wall of {args.steps} steps (median of runs) | median rollout_s | "
          "median train_s (waited) | median kl/rollout_vs_train | weights lag |")
    print("|---|---|---|---|---|---|---|---|")
    for arm, recs in out.items():
        med = statistics.median(s for rec in recs for s in rec["step_s"])
        print(f"| {arm} | {med:.2f} | {med / base:.2f} | {statistics.median(r['wall_s'] for r in recs):.1f} | "
              f"{statistics.median(r['rollout_s'] for r in recs):.2f} | {statistics.median(r['train_s'] for r in recs):.2f} | "
              f"{statistics.median(r['kl'] for r in recs):.2e} | {recs[-1]['lag']} |")


def run_deepspeed(args) -> None:
    import ray
    import torch

    from benchmarks.moe_overhead import default_policy
    from rlreason.config import AlgoConfig, Config, LearnerConfig
    from rlreason.data.tasks import load_task
    from rlreason.learner.learner import Learner
    from rlreason.rollout.worker import RolloutWorker

    policy = args.policy or default_policy()
    train, _ = load_task(Config().task)
    worker = RolloutWorker("hf", policy, threads=2)
    batch, _ = worker.generate([p.prompt for p in train[:32]], 0, 8, 32, 1.0, 1.0, seed=0)
    batch.rewards = torch.randint(0, 2, (batch.size,), generator=torch.Generator().manual_seed(0)).float()
    del worker
    base = LearnerConfig(mini_batches=args.mini_batches)
    arms = {
        "single learner, 2 threads": (dataclasses.replace(base, threads=2), 1, 2),
        "DeepSpeed ZeRO-2, 2 actors x 1 thread": (dataclasses.replace(base, threads=1, strategy="deepspeed", num_workers=2), 2, 1),
        "DeepSpeed ZeRO-3, 2 actors x 1 thread": (
            dataclasses.replace(base, threads=1, strategy="deepspeed", num_workers=2, zero_stage=3), 2, 1),
    }
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows = []
    for arm, (cfg, n, cpus) in arms.items():
        ranks = [ray.remote(num_cpus=cpus)(Learner).remote(policy, cfg, AlgoConfig(), 1.0, 32, 0, None, None, r) for r in range(n)]
        if cfg.strategy == "deepspeed":
            addr, port = ray.get(ranks[0].address.remote())
            ray.get([r.connect.remote(addr, port) for r in ranks])
        ray.get([r.train_step.remote(batch) for r in ranks])  # warm-up
        times, sync_times = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            ray.get([r.train_step.remote(batch) for r in ranks])
            times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ray.get([r.get_weights.remote() for r in ranks])
            sync_times.append(time.perf_counter() - t0)
        rows.append((arm, statistics.median(times), statistics.median(sync_times)))
        print(f"{arm}: train_step median {rows[-1][1]:.2f} s, get_weights {rows[-1][2]:.3f} s", flush=True)
        for r in ranks:
            ray.kill(r)
    ray.shutdown()
    print("\n| learner | median train_step (s) | ratio to single | median get_weights (s) |\n|---|---|---|---|")
    for arm, t, s in rows:
        print(f"| {arm} | {t:.2f} | {t / rows[0][1]:.2f} | {s:.3f} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("async", "deepspeed"))
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--policy", default=None)
    ap.add_argument("--mini-batches", type=int, default=1)
    ap.add_argument("--arms", default="", help="async: ';'-separated arm names (default: all)")
    args = ap.parse_args()
    run_async(args) if args.what == "async" else run_deepspeed(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
