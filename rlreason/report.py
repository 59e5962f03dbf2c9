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
- ``eval_vs_tokens.png``: held-out greedy accuracy, sampled pass@1 and pass@k (those present) against
  rollout tokens generated, one panel each: per label the mean over seeds (each seed's curve
  interpolated at every seed's evaluations, a marker each) with a mean ± std band, a dashed line at
  `--target` on the greedy panel, and a y-range fitted to the data. ``eval_by_category.png``: the same
  per category (sampled pass@1, else greedy), when the evaluations have categories.

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
    evals, tokens, eval_records, curves = [], 0, [], {}
    for r in rows:
        tokens = r.get("rollout/tokens_total", tokens)
        if "accuracy/eval" in r:
            evals.append((tokens if r["step"] > 0 else 0, r["accuracy/eval"]))
            eval_records.append(r)
            for key, value in r.items():  # greedy, sampled pass@1, pass@k, and each per category
                if key.startswith("accuracy/eval"):
                    curves.setdefault(key, []).append((r["step"], tokens if r["step"] > 0 else 0, value))
    steps = [r for r in rows if "timing/step_s" in r]
    return {
        "dir": run_dir,
        "overrides": dict(ov.split("=", 1) for ov in overrides or [] if "=" in ov),
        "recipe": (choices or {}).get("recipe") or "?",
        "seed": (config or {}).get("seed", 0),
        "finished": (run_dir / "summary.json").exists(),
        "evals": evals,
        "curves": curves,  # eval metric -> [(step, rollout tokens, value)]
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


CURVES = (("accuracy/eval", "greedy"), ("accuracy/eval_sampled", "sampled pass@1"), ("accuracy/eval_pass_at_k", "pass@k"))


def _mean_curve(rs: list[dict], key: str):
    """Mean and std over runs of one eval metric against rollout tokens. Runs evaluate at different token
    counts (and a token budget ends them at different steps), so each run's curve is interpolated at
    every token count where any of them evaluated, up to where the shortest ends."""
    import numpy as np

    curves = [sorted((tok, v) for _, tok, v in r["curves"].get(key, [])) for r in rs]
    curves = [c for c in curves if c]
    if not curves:
        return None
    end = min(c[-1][0] for c in curves)
    grid = np.array(sorted({tok for c in curves for tok, _ in c if tok <= end}), dtype=float)
    vals = np.array([np.interp(grid, [t for t, _ in c], [v for _, v in c]) for c in curves])
    return grid, vals.mean(0), vals.std(0, ddof=1) if len(curves) > 1 else np.zeros(len(grid))


def _panel(ax, runs: list[dict], labels: list[str], key: str, title: str, target: float | None) -> list[float]:
    """One metric against rollout tokens: per label the mean over seeds at every evaluation of any of
    them (markers) with a mean ± std band; the values drawn are returned (for the y-range)."""
    shown = []
    for i, label in enumerate(labels):
        rs = [r for r in runs if r["label"] == label and key in r["curves"]]
        curve = _mean_curve(rs, key) if rs else None
        if curve is None:
            continue
        x, y, sd = curve
        color = f"C{i % 10}"
        ax.plot(x, y, "-o", ms=4, color=color, label=f"{label} (n={len(rs)})")
        if len(rs) > 1:
            ax.fill_between(x, y - sd, y + sd, color=color, alpha=0.15, lw=0)
        shown += list(y - sd) + list(y + sd)
    if target is not None:
        ax.axhline(target, color="0.3", ls="--", lw=1, label=f"target {target:.2f}")
        shown.append(target)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    return shown


def _y_range(ax, values: list[float]) -> None:
    """A range that shows the differences: the data's span plus a margin, inside [0, 1]."""
    if values:
        lo, hi = min(values), max(values)
        pad = max(0.02, 0.08 * (hi - lo))
        ax.set_ylim(max(0.0, lo - pad), min(1.0, hi + pad))


def plot(runs: list[dict], path: Path, target: float | None = None) -> list[Path]:
    """`path` (eval_vs_tokens.png): greedy, sampled pass@1 and pass@k against rollout tokens, one panel
    each when present; and, when evaluations have categories, `eval_by_category.png` beside it (sampled
    pass@1, else greedy, per category). Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(r["label"] for r in runs))
    present = [(k, t) for k, t in CURVES if any(k in r["curves"] for r in runs)]
    k = next((int(r["after"]["eval/k"]) for r in runs if r.get("after") and "eval/k" in r["after"]), None)
    fig, axes = plt.subplots(1, len(present), figsize=(4.6 * len(present), 4.2), squeeze=False)
    for ax, (key, title) in zip(axes[0], present):
        title = f"pass@{k}" if title == "pass@k" and k else title
        _y_range(ax, _panel(ax, runs, labels, key, f"held-out {title}", target if key == "accuracy/eval" else None))
        ax.set_xlabel("rollout tokens generated")
    axes[0][0].set_ylabel("held-out eval accuracy")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written = [path]

    base = "accuracy/eval_sampled/" if any("accuracy/eval_sampled" in r["curves"] for r in runs) else "accuracy/eval/"
    cats = sorted({key[len(base):] for r in runs for key in r["curves"] if key.startswith(base)})
    if cats:
        cols = min(3, len(cats))
        rows = -(-len(cats) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
        for ax, cat in zip(axes.flat, cats):
            _y_range(ax, _panel(ax, runs, labels, base + cat, cat, None))
            ax.set_xlabel("rollout tokens")
        for ax in list(axes.flat)[len(cats):]:
            ax.axis("off")
        axes[0][0].legend(fontsize=7)
        fig.suptitle(f"held-out {'sampled pass@1' if 'sampled' in base else 'greedy accuracy'} per category", fontsize=11)
        fig.tight_layout()
        written.append(path.with_name("eval_by_category.png"))
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written


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
    plots = plot(runs, out / "eval_vs_tokens.png", args.target)
    print(text)
    print(f"wrote {out / 'report.md'}, {', '.join(str(p) for p in plots)} ({len(runs)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
