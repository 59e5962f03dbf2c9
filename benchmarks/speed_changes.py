"""Each learner and rollout speed change on its own, in one process, arms rotated every iteration.

    .venv/bin/python benchmarks/speed_changes.py --model tiny_moe|smollm2 [--prompts 32] [--group 8] [--max-new 32] [--iters 7]

End-to-end runs on this 2-core VM drift by up to 2x within minutes, which swamps a 10-20% change;
here every arm runs once per iteration, in turn, on the same batch and the same weights, so drift
hits all arms alike. Medians over `--iters` iterations (the first is a warm-up, dropped).

Learner arms (`Learner.train_step` on one generated batch, fresh learner per arm, 2 threads):
- `baseline`: a separate no-grad old-policy forward, one padded forward, LM head on every position;
- `+logits_to_keep`: the LM head only on response positions (`response_logprobs`);
- `+fused`: also `learner.fuse_old_pass` (the old-policy values from the differentiated forward);
- `+buckets`: also `learner.length_buckets=4` (the defaults now).
Rollout arms (dense SmolLM2 only; an MoE's recorded routes need generate's own prefill):
`share_prefix` off / on in the HF engine, same seeds.

`--sync`: weight sync between a learner and a rollout actor under Ray instead (fresh processes,
1 CPU each), rotated: `via driver` (the learner returns the state dict to the driver, which puts it
again for the worker: the old path) against `learner puts` (`Learner.put_weights`: the driver only
passes the reference; numpy arrays mapped zero-copy by the worker).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _drop_logits_to_keep(module, args, kwargs):
    kwargs.pop("logits_to_keep", None)  # the old behaviour: logits at every position
    return args, kwargs


def rotate(arms: dict, iters: int) -> dict[str, float]:
    """Run every arm (name -> fn(iteration)) once per iteration, in turn; the median seconds of each
    over the iterations after the first."""
    times: dict[str, list[float]] = {name: [] for name in arms}
    for it in range(iters):
        for name, fn in arms.items():
            t0 = time.perf_counter()
            fn(it)
            times[name].append(time.perf_counter() - t0)
        print(f"iteration {it + 1}/{iters}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in times.items()), flush=True)
    return {k: statistics.median(v[1:]) for k, v in times.items()}


def main() -> None:
    from benchmarks.vs_trl import work_arguments

    ap = argparse.ArgumentParser()
    work_arguments(ap)
    ap.add_argument("--iters", type=int, default=7)
    ap.add_argument("--sync", action="store_true")
    args = ap.parse_args()
    if args.sync:
        return sync_bench(args)
    from benchmarks.vs_trl import work
    from rlreason.config import AlgoConfig, LearnerConfig
    from rlreason.learner.learner import Learner
    from rlreason.rollout.hf import HFEngine

    policy, prompts, answers, cfg = work(args)
    torch.set_num_threads(2)
    batch_prompts = prompts[: args.prompts]
    engines = {"share_prefix=off": HFEngine(policy, threads=2, share_prefix=False)}
    if not engines["share_prefix=off"].record_routing:
        engines["share_prefix=on"] = HFEngine(policy, threads=2, share_prefix=True)
    batch, _ = engines["share_prefix=off"].generate(batch_prompts, args.group, args.max_new, seed=0)
    batch.rewards = torch.tensor([float(i % 3 == 0) for i in range(batch.size)])
    lens = batch.response_mask.sum(1).float()
    print(f"batch: {batch.size} sequences, prompt width {batch.prompt_ids.shape[1]}, response width {batch.response_ids.shape[1]}, "
          f"mean response {lens.mean():.1f} tokens", flush=True)
    arms = {
        "baseline": dict(fuse_old_pass=False, length_buckets=1),
        "+logits_to_keep": dict(fuse_old_pass=False, length_buckets=1),
        "+fused": dict(fuse_old_pass=True, length_buckets=1),
        "+buckets (default)": dict(fuse_old_pass=True, length_buckets=4),
    }
    learners = {}
    for name, kw in arms.items():
        lr = Learner(policy, LearnerConfig(threads=2, **kw), AlgoConfig(), 1.0, args.max_new)
        if name == "baseline":
            lr.model.register_forward_pre_hook(_drop_logits_to_keep, with_kwargs=True)
        learners[name] = lr
    arms = {name: (lambda it, lr=lr: lr.train_step(batch)) for name, lr in learners.items()}
    arms.update({name: (lambda it, e=e: e.generate(batch_prompts, args.group, args.max_new, seed=it + 1))
                 for name, e in engines.items()})
    med = rotate(arms, args.iters)
    print(f"\nmodel={args.model} prompts={args.prompts} G={args.group} max_new={args.max_new} iters={args.iters} (first dropped)")
    print("| part | arm | median (s) | vs baseline |")
    print("|---|---|---:|---:|")
    for name in learners:
        print(f"| learner train_step | {name} | {med[name]:.3f} | {med['baseline'] / med[name]:.2f}x |")
    for name in engines:
        print(f"| HF generate | {name} | {med[name]:.3f} | {med['share_prefix=off'] / med[name]:.2f}x |")


def sync_bench(args) -> None:
    import ray

    from benchmarks.vs_trl import work
    from rlreason.config import AlgoConfig, LearnerConfig
    from rlreason.learner.learner import Learner
    from rlreason.rollout.worker import RolloutWorker

    policy = work(args)[0]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    learner = ray.remote(num_cpus=1)(Learner).remote(policy, LearnerConfig(threads=1), AlgoConfig(), 1.0, args.max_new)
    worker = ray.remote(num_cpus=1)(RolloutWorker).remote("hf", policy, 1)
    ray.get([learner.pid.remote(), worker.pid.remote()])

    def via_driver(v):
        ray.get(worker.load_weights.remote(ray.put(ray.get(learner.get_weights.remote())), v))

    def learner_puts(v):
        (ref,) = ray.get(learner.put_weights.remote())
        ray.get(worker.load_weights.remote(ref, v))

    arms = {"via driver (before)": via_driver, "learner puts (now)": learner_puts}
    med = rotate(arms, args.iters)
    print(f"\nmodel={args.model} weight sync, iters={args.iters} (first dropped)")
    print("| path | median (s) | vs before |")
    print("|---|---:|---:|")
    for name in arms:
        print(f"| {name} | {med[name]:.3f} | {med['via driver (before)'] / med[name]:.1f}x |")
    ray.shutdown()


if __name__ == "__main__":
    main()
