"""MoE routing methods on the default task, side by side: `--set replay` compares none, R2, R3, z-loss
and anchoring; `--set balance` compares none, the global load-balancing loss, aux-loss-free bias
balancing, the ERC loss and selective Sinkhorn routing.

    .venv/bin/python benchmarks/moe_replay.py --out benchmarks/results/moe [--seeds 0 1 2] [--steps 80]
    .venv/bin/python benchmarks/moe_replay.py --set balance --out benchmarks/results/moe_balance
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
ARM_SETS = {  # set -> sweep subdirectory -> overrides (seed is added)
    "replay": {
        "replay": ["recipe=grpo,moe_r2,moe_r3"],
        "zloss": ["recipe=grpo", "moe.z_coef=0.001"],
        "anchor": ["recipe=grpo", "moe.anchor_coef=1.0"],
    },
    "balance": {
        "methods": ["recipe=grpo", "moe=none,aux_free,erc,sinkhorn"],
        "lbl": ["recipe=grpo", "moe.lb_coef=0.01", "moe.lb_scope=global"],
        "sinkhorn_every_step": ["recipe=grpo", "moe=sinkhorn", "moe.sinkhorn_prob=1"],
    },
}
LABELS = {"recipe=grpo": "none", "recipe=moe_r2": "R2", "recipe=moe_r3": "R3", "moe=none": "none", "moe=aux_free": "aux-free",
          "moe=erc": "ERC 1e-2", "moe=sinkhorn": "Sinkhorn p=0.1", "zloss": "z-loss 1e-3", "anchor": "anchoring 1.0",
          "lbl": "global LBL 1e-2", "sinkhorn_every_step": "Sinkhorn p=1"}
ORDER = ["none", "R2", "R3", "z-loss 1e-3", "anchoring 1.0", "global LBL 1e-2", "aux-free", "ERC 1e-2", "Sinkhorn p=0.1",
         "Sinkhorn p=1"]
COLUMNS = [  # metric, header, format
    ("kl/rollout_vs_train", "KL(rollout, train)", "{:.2e}"),
    ("moe/load/max_over_mean", "load max/mean", "{:.3f}"),
    ("kl/rollout_ratio_gt2_frac", "F(2)", "{:.4f}"),
    ("moe/rollout_vs_live/mismatch_rate", "rollout vs live routes", "{:.4f}"),
    ("moe/rollout_vs_used/mismatch_rate", "rollout vs used routes", "{:.4f}"),
    ("moe/old_vs_live/mismatch_rate", "old vs live (staleness)", "{:.4f}"),
    ("moe/probe/routing_change", "probe change / step", "{:.4f}"),
    ("clip/high_frac", "clip high", "{:.4f}"),
]


def run_sweeps(out: Path, arms: dict, seeds: list[int], steps: int) -> None:
    for sub, overrides in arms.items():
        cmd = [sys.executable, str(ROOT / "rlreason" / "run.py"), "-m", *overrides, f"seed={','.join(map(str, seeds))}",
               f"total_steps={steps}", f"eval_every={max(steps // 4, 1)}", f"checkpoint_every={steps}", *COMMON,
               f"sweep_dir={out / sub}"]
        print("+", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, cwd=ROOT, check=False)


def arm_label(run_dir: Path) -> str:
    """A job of a one-arm sweep (over seeds) is its sweep's subdirectory; a job of a sweep over choices is named
    by them (`recipe=<r>,seed=<s>`, `recipe=grpo,moe=<m>,seed=<s>`): the moe group when present, else the recipe."""
    if run_dir.parent.name in LABELS:  # a sweep of one arm over seeds
        return LABELS[run_dir.parent.name]
    parts = [p for p in run_dir.name.split(",") if not p.startswith("seed=")]
    moe = [p for p in parts if p.startswith("moe=")]
    if moe:
        return LABELS.get(moe[0], moe[0])
    return LABELS.get(parts[0], parts[0]) if parts else run_dir.parent.name


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
    for arm in [a for a in ORDER if a in arms] + sorted(set(arms) - set(ORDER)):
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
    ap.add_argument("--set", choices=sorted(ARM_SETS), default="replay", dest="arm_set")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "moe")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--summarise-only", action="store_true")
    args = ap.parse_args()
    if not args.summarise_only:
        run_sweeps(args.out, ARM_SETS[args.arm_set], args.seeds, args.steps)
    table = summarise(args.out)
    (args.out / "moe_table.md").write_text(table + "\n")
    print(table)
    subprocess.run([sys.executable, "-m", "rlreason.report", str(args.out), "--out", str(args.out)], cwd=ROOT, check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
