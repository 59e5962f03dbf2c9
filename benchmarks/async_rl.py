"""Synchronous vs one-step-off vs asynchronous training at an equal rollout-token budget.

    .venv/bin/python benchmarks/async_rl.py [--seeds 0,1,2] [--tokens 250000] [--arms "sync;async k=2"] [--out DIR] [-- extra overrides]
    .venv/bin/python benchmarks/async_rl.py --job smollm2 --tokens 20000 --seeds 0 --arms "sync;async k=1;async k=2 + partial"
    .venv/bin/python benchmarks/async_rl.py --simulate [--latency 0.02] [--workers 1,2,4] [--caps 16,64] [--steps 12]
    .venv/bin/python benchmarks/async_rl.py --tabulate --out DIR [--arms ...] [--seeds ...]   (the table of kept runs)

Each arm is `make run`'s job (recipe=tempo on the default task, the tiny MoE: 32 prompts x 8 samples, up
to 32 tokens), or with `--job smollm2` `make run-smollm2`'s (GRPO, SmolLM2-135M-Instruct with LoRA on
elementary math, 6 prompts x 8 samples, 60 held-out problems x 4 samples), run through `rlreason/run.py`
until `rollout_token_budget` tokens, evaluated on the held-out split before and after (greedy, and pass@1
from the job's samples). Every arm uses `algo.tis_mode=token`, so the
only difference is when the samples were generated. The seeds run one after another, the arms alternating.
Per run it keeps `metrics.jsonl` and `summary.json` under `--out`, and prints one table: steps and wall
time of the training steps, steps per hour, learner and rollout utilisation, staleness, the share of
samples continued across a weight update (partial rollouts), and held-out accuracy (mean over seeds, with the
binomial std of one eval beside it).

`--simulate`: engines on their own accelerators, simulated. Every decode step also sleeps `--latency`
seconds (`rollout.simulated_step_latency_s`), which leaves the CPU to the learner as a separate device
would, so generation time follows the longest response of each worker's shard. The same job runs
`--steps` steps (no evaluation) with sync, async k=2 and async k=2 with partial rollouts, for each number
of rollout workers and each `rollout.max_new_tokens` cap (a larger cap spreads the response lengths: a few
responses run on to it while most end early). Reported: wall time of the steps, steps per hour and the
ratio to sync in the same cell.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

ARMS = {
    "sync": [],
    "one-step-off": ["trainer.off_policy_steps=1"],
    "async k=1": ["trainer.mode=async", "trainer.max_staleness=1"],
    "async k=2": ["trainer.mode=async", "trainer.max_staleness=2"],
    "async k=4": ["trainer.mode=async", "trainer.max_staleness=4"],
    "async k=2 + partial": ["trainer.mode=async", "trainer.max_staleness=2", "rollout.partial=true"],
    "async k=1 + partial": ["trainer.mode=async", "trainer.max_staleness=1", "rollout.partial=true"],
    "async k=4 + partial": ["trainer.mode=async", "trainer.max_staleness=4", "rollout.partial=true"],
}
JOBS = {
    "tiny": ["recipe=tempo"],
    "smollm2": ["model=smollm2", "task=elementary_math", "recipe=grpo", "rollout.prompts_per_step=6", "task.eval_per_category=12",
                "eval_samples=4"],
}


def summarise(run_dir: Path) -> dict:
    steps = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in steps if "timing/step_s" in m]
    summary = json.loads((run_dir / "summary.json").read_text())
    wall = sum(m["timing/step_s"] for m in train)
    after = summary["eval_after_rl"]
    if train and "timing/rollout_idle_s" in train[0]:
        rollout_busy = 1 - sum(m["timing/rollout_idle_s"] for m in train) / wall
    else:  # sync and one-step-off: the workers compute during timing/rollout_s only
        rollout_busy = sum(m["timing/rollout_s"] for m in train) / wall
    return {
        "steps": len(train),
        "tokens": summary["rollout_tokens"],
        "wall_s": wall,
        "steps_per_hour": 3600 * len(train) / wall,
        "learner_util": sum(m["timing/learner_s"] for m in train) / wall,
        "rollout_util": rollout_busy,
        "staleness": statistics.mean(m.get("async/staleness_mean", m["rollout/weights_lag"]) for m in train),
        "partial_frac": statistics.mean(m.get("async/partial_frac", 0.0) for m in train),
        "greedy_before": summary["eval_accuracy_before_rl"],
        "greedy_after": summary["eval_accuracy_after_rl"],
        "pass1_after": after.get("accuracy/eval_sampled"),
        "std_greedy": after.get("eval/binomial_std"),
        "std_pass1": after.get("eval/binomial_std_sampled"),
    }


SIM_ARMS = {
    "sync": [],
    "async k=2": ["trainer.mode=async", "trainer.max_staleness=2"],
    "async k=2 + partial": ["trainer.mode=async", "trainer.max_staleness=2", "rollout.partial=true"],
    "async k=1 + partial": ["trainer.mode=async", "trainer.max_staleness=1", "rollout.partial=true"],
    "async k=4 + partial": ["trainer.mode=async", "trainer.max_staleness=4", "rollout.partial=true"],
}


def simulate(args) -> None:
    cells = []
    with tempfile.TemporaryDirectory(prefix="rlr-async-sim-") as tmp:
        for workers in [int(w) for w in args.workers.split(",")]:
            for cap in [int(c) for c in args.caps.split(",")]:
                cell = {}
                for arm, extra in SIM_ARMS.items():
                    run_dir = Path(tmp) / f"w{workers}-c{cap}-{arm.replace(' ', '').replace('=', '').replace('+', '_')}"
                    cmd = [sys.executable, str(ROOT / "rlreason" / "run.py"), "recipe=tempo", f"total_steps={args.steps}",
                           "eval_every=0", "eval_sampled=false", "checkpoint_every=0", "algo.tis_mode=token",
                           f"rollout.num_workers={workers}", f"rollout.max_new_tokens={cap}",
                           f"rollout.simulated_step_latency_s={args.latency}", "telemetry.tensorboard=false",
                           "telemetry.console=false", f"run_dir={run_dir}", *extra, *args.extra]
                    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
                    if proc.returncode:
                        print(proc.stderr[-3000:], file=sys.stderr)
                        raise SystemExit(f"{arm}, {workers} workers, cap {cap} failed (exit {proc.returncode})")
                    train = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
                    train = [m for m in train if "timing/step_s" in m]
                    wall = sum(m["timing/step_s"] for m in train)
                    lengths = [m["response_length/mean"] for m in train]
                    cell[arm] = {"wall_s": wall, "steps_per_hour": 3600 * len(train) / wall,
                                 "mean_length": statistics.mean(lengths),
                                 "truncated": statistics.mean(m["response/truncated_frac"] for m in train),
                                 "staleness": statistics.mean(m.get("async/staleness_mean", 0.0) for m in train),
                                 "interrupted": sum(m.get("async/interrupted", 0) for m in train)}
                    print(f"{workers} workers, cap {cap}, {arm}: {len(train)} steps in {wall:.1f} s", flush=True)
                cells.append((workers, cap, cell))
    print(f"\n| rollout workers | max_new_tokens | mean length | truncated | arm | wall of {args.steps} steps (s) | steps/hour | "
          "ratio to sync | staleness | interrupted shards |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for workers, cap, cell in cells:
        base = cell["sync"]["steps_per_hour"]
        for arm, r in cell.items():
            print(f"| {workers} | {cap} | {r['mean_length']:.1f} | {r['truncated']:.2f} | {arm} | {r['wall_s']:.1f} | "
                  f"{r['steps_per_hour']:,.0f} | {r['steps_per_hour'] / base:.2f} | {r['staleness']:.2f} | {r['interrupted']} |")


def run_name(arm: str, seed: int) -> str:
    return f"{arm.replace(' ', '').replace('=', '')}-s{seed}"


def run_arms(arms: dict, seeds: list[int], args) -> dict[str, list[dict]]:
    """Every arm for every seed, the arms alternating within a seed; the summaries by arm."""
    rows: dict[str, list[dict]] = {arm: [] for arm in arms}
    with tempfile.TemporaryDirectory(prefix="rlr-async-rl-") as tmp:
        for seed in seeds:
            for arm, extra in arms.items():
                name = run_name(arm, seed)
                run_dir = Path(tmp) / name
                cmd = [sys.executable, str(ROOT / "rlreason" / "run.py"), *JOBS[args.job], f"seed={seed}", "total_steps=1000",
                       f"rollout_token_budget={args.tokens}", "eval_every=0", "checkpoint_every=0", "algo.tis_mode=token",
                       "telemetry.tensorboard=false", "telemetry.console=false", f"run_dir={run_dir}", *extra, *args.extra]
                t0 = time.time()
                proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
                if proc.returncode:
                    print(proc.stderr[-3000:], file=sys.stderr)
                    raise SystemExit(f"{arm} seed {seed} failed (exit {proc.returncode})")
                rec = summarise(run_dir)
                rows[arm].append(rec)
                if args.out:
                    keep = Path(args.out) / name
                    keep.mkdir(parents=True, exist_ok=True)
                    for f in ("metrics.jsonl", "summary.json"):
                        shutil.copy(run_dir / f, keep / f)
                print(f"seed {seed} {arm}: {rec['steps']} steps in {rec['wall_s']:.0f} s ({time.time() - t0:.0f} s with start-up "
                      f"and evals), greedy {rec['greedy_before']:.3f} -> {rec['greedy_after']:.3f}", flush=True)
    return rows


def kept(arms: dict, seeds: list[int], out: Path) -> dict[str, list[dict]]:
    """The summaries of runs kept under `out` (--tabulate)."""
    return {arm: [summarise(out / run_name(arm, seed)) for seed in seeds] for arm in arms}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--job", choices=tuple(JOBS), default="tiny")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--tokens", type=int, default=250_000, help="rollout_token_budget of every run")
    ap.add_argument("--arms", default="", help="';'-separated arm names (default: the first five, without partial)")
    ap.add_argument("--out", default=None, help="keep each run's metrics.jsonl and summary.json here")
    ap.add_argument("--tabulate", action="store_true", help="print the table of the runs kept under --out; run nothing")
    ap.add_argument("--simulate", action="store_true", help="the simulated-scale grid (see above)")
    ap.add_argument("--latency", type=float, default=0.02, help="--simulate: seconds per decode step")
    ap.add_argument("--workers", default="1,2,4", help="--simulate: rollout worker counts")
    ap.add_argument("--caps", default="16,64", help="--simulate: rollout.max_new_tokens values")
    ap.add_argument("--steps", type=int, default=12, help="--simulate: steps per run")
    ap.add_argument("extra", nargs="*", help="overrides for every arm")
    args = ap.parse_args()
    if args.simulate:
        simulate(args)
        return 0
    arms = {a: ARMS[a] for a in (args.arms.split(";") if args.arms else list(ARMS)[:5])}
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = kept(arms, seeds, Path(args.out)) if args.tabulate else run_arms(arms, seeds, args)
    base = statistics.mean(r["steps_per_hour"] for r in rows[next(iter(rows))])
    print(f"\n| arm | steps (mean) | rollout tokens | wall of the steps (s) | steps/hour | ratio | learner util | rollout util | "
          f"staleness | partial | greedy after (mean ± sd of {len(seeds)} seeds) | pass@1 after | eval binomial std |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for arm, recs in rows.items():
        def m(key, recs=recs):
            return statistics.mean(r[key] for r in recs)

        def sd(key, recs=recs):
            return statistics.stdev(r[key] for r in recs) if len(recs) > 1 else 0.0

        print(f"| {arm} | {m('steps'):.0f} | {m('tokens'):,.0f} | {m('wall_s'):.0f} | {m('steps_per_hour'):,.0f} | "
              f"{m('steps_per_hour') / base:.2f} | {m('learner_util'):.2f} | {m('rollout_util'):.2f} | {m('staleness'):.2f} | "
              f"{m('partial_frac'):.2f} | {m('greedy_after'):.3f} ± {sd('greedy_after'):.3f} | "
              f"{m('pass1_after'):.3f} ± {sd('pass1_after'):.3f} | {m('std_greedy'):.3f} / {m('std_pass1'):.3f} |")
    print(f"greedy before RL: {statistics.mean(r['greedy_before'] for recs in rows.values() for r in recs):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
