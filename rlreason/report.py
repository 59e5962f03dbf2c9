"""Compare runs: ``python -m rlreason.report DIR [--target 0.8] [--out DIR]``.

Reads every run under DIR (a directory holding metrics.jsonl, e.g. the jobs of
``run.py -m recipe=grpo,tempo seed=0,1,2 sweep_dir=DIR``), groups runs by their overrides with the
seed left out (the label: the recipe plus whatever else differs between runs), and writes:

- ``report.md``: one row per label. Final and best held-out eval accuracy, rollout tokens to first
  reach `--target` eval accuracy (mean over the seeds that reached it, and how many did), wall time
  (steps plus evaluations), and mean response length. Each is given as the mean ± the sample std
  over seeds (n = seeds).
  Then, for runs whose evaluations include them (`eval_sampled`), held-out greedy accuracy, sampled
  pass@1 and pass@k before and after RL (mean ± std over seeds, then every seed's change with twice
  its binomial std), the change in sampled pass@1 per category, and every pair of labels' difference
  in final greedy and sampled pass@1 with its noise (`pairwise`).
- ``eval_vs_tokens.png``: eval accuracy against rollout tokens generated, one line per label (the
  mean over seeds, interpolated onto a common token grid, a marker at every evaluation) with a band
  from the seeds' min to max.

Runs that have not finished (no summary.json) are included and marked with a `*` in the n column.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def read_metrics(path: Path) -> list[dict]:
    """Every complete line of a metrics.jsonl; a line cut short (a crash mid-write) is skipped, and said."""
    rows = []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            print(f"rlreason.report: {path}:{n}: skipped a partial line (the run stopped while writing it)", file=sys.stderr)
    return rows


def load_run(run_dir: Path) -> dict:
    import yaml

    rows = read_metrics(run_dir / "metrics.jsonl")
    overrides = yaml.safe_load((run_dir / "overrides.yaml").read_text()) if (run_dir / "overrides.yaml").exists() else []
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").exists() else {}
    choices = yaml.safe_load((run_dir / "choices.yaml").read_text()) if (run_dir / "choices.yaml").exists() else {}
    evals, tokens, eval_records = [], 0, []
    for r in rows:
        tokens = r.get("rollout/tokens_total", tokens)
        if "accuracy/eval" in r:
            evals.append((tokens if r["step"] > 0 else 0, r["accuracy/eval"]))
            eval_records.append(r)
    steps = [r for r in rows if "timing/step_s" in r]
    return {
        "dir": run_dir,
        "overrides": dict(ov.split("=", 1) for ov in overrides or [] if "=" in ov),
        "recipe": (choices or {}).get("recipe") or "?",
        "seed": (config or {}).get("seed", 0),
        "finished": (run_dir / "summary.json").exists(),
        "evals": evals,
        "wall_s": sum(r["timing/step_s"] for r in steps) + sum(r.get("timing/eval_s", 0.0) for r in rows),
        "response_len": statistics.fmean(r["response_length/mean"] for r in steps) if steps else float("nan"),
        "tokens": tokens,
        # the first and last evaluation records (greedy, sampled, pass@k, per category, binomial stds)
        "before": eval_records[0] if eval_records and eval_records[0]["step"] == 0 else None,
        "after": eval_records[-1] if len(eval_records) > 1 else None,
    }


def label_runs(runs: list[dict]) -> None:
    """Label = recipe plus the overrides (other than seed and recipe) whose values differ between runs."""
    keys = sorted({k for r in runs for k in r["overrides"]} - {"seed", "recipe"})
    varying = [k for k in keys if len({r["overrides"].get(k) for r in runs}) > 1]
    for r in runs:
        extra = [f"{k}={r['overrides'][k]}" for k in varying if k in r["overrides"]]
        r["label"] = r["recipe"] + (f" ({', '.join(extra)})" if extra else "")


def tokens_to_target(evals: list[tuple[int, float]], target: float) -> int | None:
    for tokens, acc in evals:
        if acc >= target:
            return tokens
    return None


def _ms(values: list[float], fmt: str) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.fmean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"


def summarise(runs: list[dict], target: float) -> list[dict]:
    groups: dict[str, list[dict]] = {}
    for r in runs:
        groups.setdefault(r["label"], []).append(r)
    table = []
    for label, rs in groups.items():
        reached = [t for t in (tokens_to_target(r["evals"], target) for r in rs) if t is not None]
        table.append({
            "label": label,
            "n": len(rs),
            "unfinished": sum(not r["finished"] for r in rs),
            "final": [r["evals"][-1][1] for r in rs if r["evals"]],
            "best": [max(a for _, a in r["evals"]) for r in rs if r["evals"]],
            "reached": reached,
            "wall": [r["wall_s"] / 60 for r in rs],
            "length": [r["response_len"] for r in rs],
        })
    table.sort(key=lambda row: -statistics.fmean(row["final"]) if row["final"] else 0.0)
    return table


def markdown(table: list[dict], target: float) -> str:
    lines = [
        f"| estimator | n | final eval acc | best eval acc | rollout tokens to {target:.2f} (reached) | wall (min) "
        "| mean response length |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in table:
        n = f"{row['n']}" + ("*" if row["unfinished"] else "")
        reach = f"{_ms(row['reached'], ',.0f')} ({len(row['reached'])}/{row['n']})"
        lines.append(f"| {row['label']} | {n} | {_ms(row['final'], '.3f')} | {_ms(row['best'], '.3f')} | {reach} | "
                     f"{_ms(row['wall'], '.1f')} | {_ms(row['length'], '.1f')} |")
    lines.append("")
    lines.append("Mean ± sample std over seeds. Tokens: response tokens generated for training (rollout/tokens_total).")
    if any(row["unfinished"] for row in table):
        lines.append("`*`: some runs of this row have not finished.")
    return "\n".join(lines) + "\n"


HELD_OUT = ("accuracy/eval", "accuracy/eval_sampled", "accuracy/eval_pass_at_k")  # greedy, sampled pass@1, pass@k


def before_after(runs: list[dict]) -> str:
    """Held-out metrics before -> after RL per label (runs with a step-0 and a later evaluation), every
    seed's change in sampled pass@1 beside twice its binomial std, and sampled pass@1 per category."""
    groups: dict[str, list[dict]] = {}
    for r in runs:
        if r["before"] and r["after"] and "accuracy/eval_sampled" in r["after"]:
            groups.setdefault(r["label"], []).append(r)
    if not groups:
        return ""
    k = next(iter(groups.values()))[0]["after"].get("eval/k", "k")
    lines = ["", f"Held-out before -> after RL (k = {k}); per seed: change in sampled pass@1 (2 x binomial std of the after value)",
             "", "| estimator | n | greedy | sampled pass@1 | pass@k | per seed: change in pass@1 (2σ) |", "|---|---:|---:|---:|---:|---|"]
    for label, rs in groups.items():
        cells = []
        for key in HELD_OUT:
            b = [r["before"][key] for r in rs if key in r["before"]]
            a = [r["after"][key] for r in rs if key in r["after"]]
            cells.append(f"{_ms(b, '.3f')} -> {_ms(a, '.3f')}")
        seeds = ", ".join(f"s{r['seed']}: {r['after']['accuracy/eval_sampled'] - r['before']['accuracy/eval_sampled']:+.3f} "
                          f"({2 * r['after'].get('eval/binomial_std_sampled', float('nan')):.3f})"
                          for r in sorted(rs, key=lambda r: r["seed"]))
        lines.append(f"| {label} | {len(rs)} | {' | '.join(cells)} | {seeds} |")
    cats = sorted({key.split("/", 2)[2] for rs in groups.values() for r in rs for key in r["after"]
                   if key.startswith("accuracy/eval_sampled/")})
    if cats:
        lines += ["", "Sampled pass@1 per category, before -> after (mean over seeds):", "",
                  "| estimator | " + " | ".join(cats) + " |", "|---|" + "---:|" * len(cats)]
        for label, rs in groups.items():
            row = []
            for c in cats:
                key = f"accuracy/eval_sampled/{c}"
                b = [r["before"][key] for r in rs if key in r["before"]]
                a = [r["after"][key] for r in rs if key in r["after"]]
                row.append(f"{statistics.fmean(b):.2f} -> {statistics.fmean(a):.2f}" if a and b else "n/a")
            lines.append(f"| {label} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


NOISE = {"accuracy/eval": "eval/binomial_std", "accuracy/eval_sampled": "eval/binomial_std_sampled"}


def difference(a: list[dict], b: list[dict], key: str) -> dict:
    """Label A's final `key` minus label B's (means over seeds) and two noise levels of that difference:
    `seed_se`, the standard error from the seeds' spread, sqrt(var_A / n_A + var_B / n_B) (needs 2+ seeds
    on each side; it contains the evaluation's own noise), and `eval_std`, the evaluation's binomial noise
    alone, sqrt(sum_i sd_Ai^2) / n_A combined likewise with B's. `separated` when |diff| > 2 x the larger
    of the two (the binomial std alone where a side has a single seed): the seeds' spread contains the
    evaluation's noise, so a seed SE below the binomial std is an artefact of too few seeds (two seeds
    that agree by chance). A rule of thumb, not a test: with 2-3 seeds the SE is itself uncertain."""
    va, vb = [r["after"][key] for r in a], [r["after"][key] for r in b]
    diff = statistics.fmean(va) - statistics.fmean(vb)
    sd = lambda rs: (sum(r["after"].get(NOISE[key], float("nan")) ** 2 for r in rs) ** 0.5) / len(rs)  # noqa: E731
    eval_std = (sd(a) ** 2 + sd(b) ** 2) ** 0.5
    seed_se = (statistics.variance(va) / len(va) + statistics.variance(vb) / len(vb)) ** 0.5 \
        if len(va) > 1 and len(vb) > 1 else None
    noise = max(seed_se, eval_std) if seed_se is not None else eval_std
    return {"diff": diff, "seed_se": seed_se, "eval_std": eval_std, "separated": abs(diff) > 2 * noise}


def pairwise(runs: list[dict]) -> str:
    """Every pair of labels: the difference in final held-out greedy accuracy and sampled pass@1."""
    groups: dict[str, list[dict]] = {}
    for r in runs:
        if r["after"] and all(k in r["after"] for k in NOISE):
            groups.setdefault(r["label"], []).append(r)
    labels = sorted(groups, key=lambda g: -statistics.fmean(r["after"]["accuracy/eval_sampled"] for r in groups[g]))
    if len(labels) < 2:
        return ""
    lines = ["", "Pairwise, final held-out accuracy: A - B (seed SE; binomial std), `yes` where |A - B| > 2 x the "
             "larger of the seed SE and the binomial std (the binomial std alone with a single seed)", "",
             "| A - B | n | greedy | separated | sampled pass@1 | separated |", "|---|---|---:|---|---:|---|"]
    for i, la in enumerate(labels):
        for lb in labels[i + 1:]:
            cells = []
            for key in NOISE:
                d = difference(groups[la], groups[lb], key)
                se = f"{d['seed_se']:.3f}" if d["seed_se"] is not None else "n/a"
                mark = "" if d["seed_se"] is not None else "*"
                cells += [f"{d['diff']:+.3f} ({se}; {d['eval_std']:.3f})", ("yes" if d["separated"] else "no") + mark]
            lines.append(f"| {la} - {lb} | {len(groups[la])}, {len(groups[lb])} | " + " | ".join(cells) + " |")
    if any(len(groups[g]) < 2 for g in labels):
        lines += ["", "`*`: a side has one seed, so only the evaluation's noise is known; seed-to-seed spread is not."]
    return "\n".join(lines) + "\n"


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.5))
    labels = list(dict.fromkeys(r["label"] for r in runs))
    for label in labels:
        rs = [r for r in runs if r["label"] == label and len(r["evals"]) >= 2]
        if not rs:
            continue
        end = min(r["evals"][-1][0] for r in rs)
        grid = np.linspace(0, end, 50)
        ys = np.array([np.interp(grid, [t for t, _ in r["evals"]], [a for _, a in r["evals"]]) for r in rs])
        (line,) = ax.plot(grid, ys.mean(0), label=f"{label} (n={len(rs)})")
        for r in rs:  # each evaluation as it was measured
            ax.plot([t for t, _ in r["evals"]], [a for _, a in r["evals"]], "o", ms=3, color=line.get_color(), alpha=0.6)
        if len(rs) > 1:
            ax.fill_between(grid, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.15)
    ax.set_xlabel("rollout tokens generated")
    ax.set_ylabel("held-out eval accuracy (greedy)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rlreason.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", type=Path, help="a sweep directory (searched recursively for metrics.jsonl)")
    ap.add_argument("--target", type=float, default=0.8, help="eval accuracy for the tokens-to-target column")
    ap.add_argument("--out", type=Path, default=None, help="where report.md and eval_vs_tokens.png go (default: DIR)")
    args = ap.parse_args(argv)
    if not args.dir.is_dir():
        print(f"rlreason.report: {args.dir} is not a directory", file=sys.stderr)
        return 2
    run_dirs = sorted(p.parent for p in args.dir.rglob("metrics.jsonl"))
    runs = []
    for d in run_dirs:
        try:
            runs.append(load_run(d))
        except (OSError, ValueError, KeyError) as e:
            print(f"rlreason.report: skipping {d}: {e}", file=sys.stderr)
    if not runs:
        print(f"rlreason.report: no runs (metrics.jsonl) under {args.dir}", file=sys.stderr)
        return 2
    label_runs(runs)
    out = args.out or args.dir
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(summarise(runs, args.target), args.target) + before_after(runs) + pairwise(runs)
    (out / "report.md").write_text(text)
    plot(runs, out / "eval_vs_tokens.png")
    print(text)
    print(f"wrote {out / 'report.md'} and {out / 'eval_vs_tokens.png'} ({len(runs)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
