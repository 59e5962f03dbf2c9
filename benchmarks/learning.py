"""Does RL beat its own warm start? Run the default recipe for several seeds, one after another, and
tabulate held-out eval accuracy before and after RL.

    .venv/bin/python benchmarks/learning.py --seeds 0 1 2 [--out runs/bench-learning] [-- extra overrides]

Each seed is a full `python rlreason/run.py recipe=grpo seed=S` (its own warm start, cached by seed).
Prints a markdown table (per seed and median) and writes it to <out>/learning.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="runs/bench-learning")
    ap.add_argument("--recipe", default="grpo")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    out = Path(args.out)
    rows = []
    for seed in args.seeds:
        run_dir = out / f"{args.recipe}-s{seed}"
        t0 = time.perf_counter()
        cmd = [sys.executable, str(ROOT / "rlreason" / "run.py"), f"recipe={args.recipe}", f"seed={seed}",
               f"run_dir={run_dir}", "telemetry.console=false", *args.overrides]
        print("+", " ".join(cmd), flush=True)
        proc = subprocess.run(cmd, cwd=ROOT)
        if proc.returncode:
            print(f"seed {seed} failed with exit code {proc.returncode}", file=sys.stderr)
            return proc.returncode
        wall = time.perf_counter() - t0
        s = json.loads((run_dir / "summary.json").read_text())
        ws = s.get("warmstart") or {}
        rows.append(
            {
                "seed": seed,
                "before": s["eval_accuracy_before_rl"],
                "after": s["eval_accuracy_after_rl"],
                "wall_s": wall,
                "warmstart_cached": ws.get("cached"),
                "warmstart_s": ws.get("seconds"),
            }
        )
    lines = [
        "| seed | eval acc. warm start | eval acc. after RL | delta (points) | wall time (s) | warm start |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        ws = "cached" if r["warmstart_cached"] else f"trained, {r['warmstart_s']:.0f} s"
        lines.append(
            f"| {r['seed']} | {r['before']:.3f} | {r['after']:.3f} | {100 * (r['after'] - r['before']):+.1f} | {r['wall_s']:.0f} | {ws} |"
        )
    med_b = statistics.median(r["before"] for r in rows)
    med_a = statistics.median(r["after"] for r in rows)
    med_d = statistics.median(r["after"] - r["before"] for r in rows)
    lines.append(f"| median | {med_b:.3f} | {med_a:.3f} | {100 * med_d:+.1f} | | |")
    table = "\n".join(lines)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "learning.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
