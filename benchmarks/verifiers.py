"""What the verifier sandbox costs: throughput of the pool versus in-process calls, and per step.

    .venv/bin/python benchmarks/verifiers.py throughput [--n 4096] [--repeats 5]
    .venv/bin/python benchmarks/verifiers.py step [--steps 12] [--repeats 2]

`throughput`: completions per second of the `math` verifier over two sets of `--n` completions, by
(a) `InlineRunner` (the calling process, no isolation), (b) `VerifierPool` with 1 worker, (c)
with 2 workers (limits only, `reward.isolation=process`) and (d) 2 sandboxed workers (the default,
`reward.isolation=sandbox`: namespaces, own uid, scratch emptied after each call), each arm after one
warm-up pass (imports, first parses), median over `--repeats`.
The sets: `arithmetic`, the default task's own solutions with the final answer right, wrong or
restated directly (what the default run scores: mostly the numeric fast path), and `latex`, answers in
LaTeX forms that need math-verify's parser (`\\frac{a}{b}`, `\\sqrt{}`, `2^{k}`, `\\dfrac`). A
batched verifier wrapping the same function is also timed in the pool (one call per 64 completions).

`step`: `make run`'s job (recipe=tempo, 32 prompts x 8 samples) through `rlreason/run.py` with
`reward.isolation=sandbox` (the default), `process` and `inline`, the arms alternating; the median
`timing/reward_s` and `timing/step_s` over steps 2.., and the share of the step the reward takes.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def arithmetic_set(n: int) -> tuple[list[str], list[dict]]:
    from rlreason.config import TaskConfig
    from rlreason.data.tasks import load_task

    rng = random.Random(0)
    train, _ = load_task(TaskConfig(num_train=n, num_eval=10))
    texts, samples = [], []
    for p in train[:n]:
        kind = rng.random()
        if kind < 0.5:
            texts.append(p.solution)
        elif kind < 0.8:
            texts.append(p.solution.rsplit("#", 1)[0] + f"#{int(p.answer) + rng.randint(1, 5)}")
        else:
            texts.append(p.direct_solution)
        samples.append(p.as_sample())
    return texts, samples


def latex_set(n: int) -> tuple[list[str], list[dict]]:
    rng = random.Random(1)
    texts, samples = [], []
    for _ in range(n):
        a, b = rng.randint(1, 30), rng.randint(2, 30)
        form = rng.choice([f"\\frac{{{a}}}{{{b}}}", f"\\dfrac{{{a * 2}}}{{{b * 2}}}", f"\\sqrt{{{a * a}}}", f"2^{{{a % 12}}}",
                           f"{a}\\cdot {b}", f"\\frac{{\\sqrt{{{a * a}}}}}{{{b}}}"])
        gold = rng.choice([f"{a}/{b}", f"\\frac{{{a}}}{{{b}}}", str(a), str(2 ** (a % 12)), str(a * b)])
        texts.append(f"Working it out... the answer is \\boxed{{{form}}}.")
        samples.append({"answer": gold})
    return texts, samples


def run_throughput(args) -> None:
    from rewards.pool import InlineRunner, Job, VerifierPool
    from rewards.sandbox import Policy

    sets = {"arithmetic": arithmetic_set(args.n), "latex": latex_set(args.n)}
    arms = {
        "in-process": lambda: InlineRunner(timeout_s=5),
        "pool, 1 worker": lambda: VerifierPool(1, 5.0),
        "pool, 2 workers": lambda: VerifierPool(2, 5.0),
        "sandbox, 2 workers (default)": lambda: VerifierPool(2, 5.0, sandbox=Policy()),
    }
    results = {}
    for set_name, (texts, samples) in sets.items():
        for arm, make in arms.items():
            specs = ["math"] + (["benchmarks.verifiers:math_batched"] if arm != "in-process" else [])
            for spec in specs:
                with make() as runner:
                    runner.score([Job(spec, texts[:256], samples[:256])])  # warm-up: imports, first parses
                    times = []
                    for _ in range(args.repeats):
                        t0 = time.perf_counter()
                        out = runner.score([Job(spec, texts, samples)])[0]
                        times.append(time.perf_counter() - t0)
                    assert all(r.status == "ok" for r in out), [r.error for r in out if r.status != "ok"][:2]
                label = arm + (", batched x64" if spec != "math" else "")
                med = statistics.median(times)
                results[(set_name, label)] = {"completions_per_s": args.n / med, "median_s": med,
                                              "accuracy": sum(r.score for r in out) / len(out)}
                print(f"{set_name:10s} {label:28s} {args.n / med:9.0f} completions/s  (median {med:.3f} s, "
                      f"mean score {results[(set_name, label)]['accuracy']:.3f})", flush=True)
    print("\n| set | arm | completions/s | vs in-process |\n|---|---|---|---|")
    for (set_name, label), r in results.items():
        base = results[(set_name, "in-process")]["completions_per_s"]
        print(f"| {set_name} | {label} | {r['completions_per_s']:.0f} | {r['completions_per_s'] / base:.2f} |")


def math_batched(completions: list[str], samples: list[dict]) -> list:
    from rewards.math import math_verifier

    return [math_verifier(c, s) for c, s in zip(completions, samples)]


math_batched.batched, math_batched.batch_size = True, 64


def run_step(args) -> None:
    arms = {"sandbox (default)": ["reward.isolation=sandbox"], "process": ["reward.isolation=process"],
            "inline": ["reward.isolation=inline"]}
    out: dict[str, list[dict]] = {arm: [] for arm in arms}
    with tempfile.TemporaryDirectory(prefix="rlr-verif-") as tmp:
        for r in range(args.repeats):
            for arm, extra in arms.items():
                run_dir = Path(tmp) / f"{arm.split(' ')[0]}-{r}"
                cmd = [sys.executable, str(ROOT / "rlreason" / "run.py"), "recipe=tempo", f"total_steps={args.steps}", "eval_every=0",
                       "checkpoint_every=0", "telemetry.tensorboard=false", "telemetry.console=false", f"run_dir={run_dir}", *extra]
                subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
                steps = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
                steps = [m for m in steps if "timing/step_s" in m][1:]
                rec = {"reward_s": statistics.median(m["timing/reward_s"] for m in steps),
                       "step_s": statistics.median(m["timing/step_s"] for m in steps),
                       "latency_mean_s": statistics.median(m["verifier/latency_mean_s"] for m in steps)}
                out[arm].append(rec)
                print(f"{arm:18s} repeat {r}: reward {rec['reward_s']:.3f} s, step {rec['step_s']:.3f} s", flush=True)
    print("\n| reward.isolation | timing/reward_s | timing/step_s | reward share of step |\n|---|---|---|---|")
    for arm, recs in out.items():
        rw = statistics.median(x["reward_s"] for x in recs)
        st = statistics.median(x["step_s"] for x in recs)
        print(f"| {arm} | {rw:.3f} | {st:.3f} | {rw / st:.1%} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--n", type=int, default=4096)
    t.add_argument("--repeats", type=int, default=5)
    s = sub.add_parser("step")
    s.add_argument("--steps", type=int, default=12)
    s.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    {"throughput": run_throughput, "step": run_step}[args.what](args)


if __name__ == "__main__":
    main()
