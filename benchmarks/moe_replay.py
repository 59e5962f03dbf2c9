"""MoE routing replay and router regularisers on the default task: none vs R2 vs R3 vs z-loss vs anchoring.

    .venv/bin/python benchmarks/moe_replay.py --out benchmarks/results/moe [--seeds 0 1 2] [--steps 80]
    .venv/bin/python benchmarks/moe_replay.py --out benchmarks/results/moe --summarise-only

Every arm is GRPO on the default tiny Qwen3-MoE with the same warm start per seed, under two conditions
that create the mismatches replay is for: the rollout engine samples in bf16 while the learner trains
in fp32 (as vLLM-bf16 + fp32-trainer deployments do; `rollout.dtype=bf16`), and each step's batch is
split into 4 update mini-batches (`learner.mini_batches=4`), so the router drifts between updates.
The runs go through `run.py -m` (resumable: re-running skips finished jobs), then the script writes
`moe_table.md` (per arm, mean +- std over seeds of the per-run medians over steps) and the
accuracy report (`python -m rlreason.report`).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMON = ["rollout.dtype=bf16", "learner.mini_batches=4", "telemetry.tensorboard=false", "telemetry.console=false"]
ARMS = {  # sweep subdirectory -> overrides (seed is added)
    "replay": ["recipe=grpo,moe_r2,moe_r3"],
    "zloss": ["recipe=grpo", "moe.z_coef=0.001"],
    "anchor": ["recipe=grpo", "moe.anchor_coef=1.0"],
}
COLUMNS = [  # metric, header, format
    ("kl/rollout_vs_train", "KL(rollout, train)", "{:.2e}"),
    ("kl/rollout_ratio_gt2_frac", "F(2)", "{:.4f}"),
    ("moe/rollout_vs_live/mismatch_rate", "rollout vs live routes", "{:.4f}"),
    ("moe/rollout_vs_used/mismatch_rate", "rollout vs used routes", "{:.4f}"),
    ("moe/old_vs_live/mismatch_rate", "old vs live (staleness)", "{:.4f}"),
    ("moe/probe/routing_change", "probe change / step", "{:.4f}"),
    ("clip/high_frac", "clip high", "{:.4f}"),
]


def run_sweeps(out: Path, seeds: list[int], steps: int) -> None:
    for sub, overrides in ARMS.items():
        cmd = [sys.executable, str(ROOT / "rlreason" / "run.py"), "-m", *overrides, f"seed={','.join(map(str, seeds))}",
               f"total_steps={steps}", f"eval_every={max(steps // 4, 1)}", f"checkpoint_every={steps}", *COMMON,
               f"sweep_dir={out / sub}"]
        print("+", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, cwd=ROOT, check=False)


def arm_label(run_dir: Path) -> str:
    group = run_dir.parent.name
    if group == "replay":  # jobs are named recipe=<r>,seed=<s>
        recipe = run_dir.name.split(",")[0]
        return {"recipe=grpo": "none", "recipe=moe_r2": "R2", "recipe=moe_r3": "R3"}.get(recipe, recipe)
    return {"zloss": "z-loss 1e-3", "anchor": "anchoring 1.0"}.get(group, group)


def summarise(out: Path) -> str:
    arms: dict[str, list[dict]] = {}
    for metrics in sorted(out.rglob("metrics.jsonl")):
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        steps = [r for r in rows if "loss/policy" in r]
        evals = [r["accuracy/eval"] for r in rows if "accuracy/eval" in r]
        if not steps or not (metrics.parent / "summary.json").exists():
            continue
        run = {k: statistics.median(r[k] for r in steps if k in r) for k, _, _ in COLUMNS if any(k in r for r in steps)}
        run["eval_final"], run["eval_start"] = evals[-1], evals[0]
        arms.setdefault(arm_label(metrics.parent), []).append(run)

    def cell(values, fmt):
        values = [v for v in values if v is not None and not math.isnan(v)]
        if not values:
            return "-"
        if len(values) == 1:
            return fmt.format(values[0])
        return f"{fmt.format(statistics.fmean(values))} ± {fmt.format(statistics.stdev(values))}"

    head = ["arm", "n", "final eval acc"] + [h for _, h, _ in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = ["none", "R2", "R3", "z-loss 1e-3", "anchoring 1.0"]
    for arm in order + sorted(set(arms) - set(order)):
        runs = arms.get(arm)
        if not runs:
            continue
        cells = [arm, str(len(runs)), cell([r["eval_final"] for r in runs], "{:.3f}")]
        cells += [cell([r.get(k) for r in runs], fmt) for k, _, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Per run: the median over its steps; then mean ± sample std over seeds. Warm-start eval accuracy: "
                 + ", ".join(sorted({f"{r['eval_start']:.3f}" for rs in arms.values() for r in rs})) + ".")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "moe")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--summarise-only", action="store_true")
    args = ap.parse_args()
    if not args.summarise_only:
        run_sweeps(args.out, args.seeds, args.steps)
    table = summarise(args.out)
    (args.out / "moe_table.md").write_text(table + "\n")
    print(table)
    subprocess.run([sys.executable, "-m", "rlreason.report", str(args.out), "--out", str(args.out)], cwd=ROOT, check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
