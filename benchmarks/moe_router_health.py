"""An MoE run's router health over training beside its dense twin's accuracy, from two run folders.

    .venv/bin/python benchmarks/moe_router_health.py MOE_RUN DENSE_RUN [--png out.png]

For each of the MoE run's evaluations: held-out greedy / sampled pass@1 / pass@k of the MoE run, and of
the dense run at equal compute (its last evaluation at or below the MoE's rollout tokens; its step in
brackets: the MoE's responses stay longer, so it takes fewer steps per token), and the MoE router's health over the train
steps since the previous evaluation (medians): E * max expert load / total (`moe/load/max_over_mean`,
1 = perfectly balanced, E/k = k experts take every token), the fraction of (layer, expert) slots with no
token (`moe/load/dead_experts`), the entropy of the expert loads over ln E (`moe/load/entropy`, 1 when every
expert gets the same share: expert utilisation), the routing drift on a fixed probe batch since the start
(`moe/probe/routing_change`), the router entropy, and under routing replay the share of routes the
learner did not take as the sampler did (`moe/rollout_vs_used/mismatch_rate`, 0 when R3 holds).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

ACC = ("accuracy/eval", "accuracy/eval_sampled", "accuracy/eval_pass_at_k")
HEALTH = {
    "E*max load/total": "moe/load/max_over_mean",
    "dead experts": "moe/load/dead_experts",
    "load entropy": "moe/load/entropy",
    "probe routing change": "moe/probe/routing_change",
    "router entropy": "moe/router/entropy",
    "R3 mismatch": "moe/rollout_vs_used/mismatch_rate",
}


def read(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        raise SystemExit(f"{path} does not exist: pass a run folder (the one holding metrics.jsonl)")
    return [json.loads(line) for line in path.open() if line.strip()]


def evals(rows: list[dict]) -> dict[int, dict]:
    """step -> its evaluation row, with `rollout/tokens_total` carried forward from the train rows."""
    out, tokens = {}, 0
    for r in rows:
        tokens = r.get("rollout/tokens_total", tokens)
        if "accuracy/eval" in r:
            out[r["step"]] = {**r, "rollout/tokens_total": tokens}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("moe", type=Path)
    ap.add_argument("dense", type=Path)
    ap.add_argument("--png", type=Path, default=None)
    args = ap.parse_args()
    moe_rows, dense_rows = read(args.moe), read(args.dense)
    moe_evals, dense_evals = evals(moe_rows), evals(dense_rows)
    train = [r for r in moe_rows if "moe/load/max_over_mean" in r]
    if not train:
        raise SystemExit(f"{args.moe} has no moe/* metrics: is it an MoE run with moe.metrics=true?")

    fmt = lambda r: " / ".join(f"{r[k]:.3f}" for k in ACC)  # noqa: E731
    head = ["step", "rollout tokens", "MoE greedy / pass@1 / pass@k", "dense at <= these tokens (step)", *HEALTH]
    print("| " + " | ".join(head) + " |\n|" + "---:|" * len(head))
    previous = -1
    for step in sorted(moe_evals):
        window = [r for r in train if previous < r["step"] <= step]
        health = []
        for key in HEALTH.values():
            values = [r[key] for r in window if key in r]
            health.append(f"{statistics.median(values):.3f}" if values else "-")
        tokens = moe_evals[step]["rollout/tokens_total"]
        dense_steps = [s for s, r in dense_evals.items() if r["rollout/tokens_total"] <= tokens]
        dense = f"{fmt(dense_evals[max(dense_steps)])} ({max(dense_steps)})" if dense_steps else "-"
        print(f"| {step} | {tokens:,} | {fmt(moe_evals[step])} | {dense} | " + " | ".join(health) + " |")
        previous = step

    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax_acc, ax_load) = plt.subplots(1, 2, figsize=(11, 4))
        for name, ev, style in (("MoE", moe_evals, "-o"), ("dense", dense_evals, "--s")):
            steps = sorted(ev)
            tokens = [ev[s]["rollout/tokens_total"] for s in steps]  # equal compute, not equal steps
            ax_acc.plot(tokens, [ev[s]["accuracy/eval_sampled"] for s in steps], style, label=f"{name} sampled pass@1")
            ax_acc.plot(tokens, [ev[s]["accuracy/eval"] for s in steps], style, alpha=0.5, label=f"{name} greedy")
        ax_acc.set(xlabel="rollout tokens", ylabel="held-out accuracy", ylim=(0, 1), title="accuracy")
        ax_acc.legend(fontsize=8)
        steps = [r["step"] for r in train]
        ax_load.plot(steps, [r["moe/load/max_over_mean"] for r in train], ".-", label="E*max load/total")
        ax_load.plot(steps, [r.get("moe/probe/routing_change", float("nan")) for r in train], ".-", label="probe routing change")
        ax_load.set(xlabel="step", title="router health (MoE)")
        ax_load.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.png, dpi=120)
        print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
