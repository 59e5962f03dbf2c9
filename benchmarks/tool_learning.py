"""Does the policy learn to call the tool when it helps? Multi-turn tool-use runs, several seeds.

    .venv/bin/python benchmarks/tool_learning.py --job tiny [--seeds 0,1,2] [--steps 60] [--out DIR] [-- extra overrides]
    .venv/bin/python benchmarks/tool_learning.py --job smollm2 [--seeds 0,1,2] [--steps 10]
    .venv/bin/python benchmarks/tool_learning.py --tabulate --job tiny --out DIR   (the table of kept runs)

Jobs (each `rlreason/run.py task=arith_tools` with GRPO):
- `tiny`: the tiny MoE on two-number arithmetic up to 99 (+, -, *) with the calculator in the paren format
  (``calculator(47*29)`` -> ``=1363`` -> ``#1363``). Its warm start writes half its answers with the tool and
  half directly (warmstart.direct_answer_fraction=0.5), so RL can be seen to move the tool-call rate.
- `smollm2`: SmolLM2-135M-Instruct (LoRA) on products of two numbers up to 99 (beyond its mental arithmetic),
  with the Python tool: a ```python block is run in the sandbox and its output comes back as a tool message;
  the instruction in the prompt says so (it ends in a literal "\\n\\n": Hydra does not decode escapes; kept, since
  the held-out problems are chosen by a hash of the prompt text). No warm start: whatever tool use it shows is
  its own. The runs in BENCHMARKS.md predate the decoding of escapes in `rollout.stop`: their stop string was a
  backslash and an "n", never met, so a first turn ran on after its code block to EOS or its budget. 8 prompts x 6
  samples a step at temperature 0.5 (at 1.0 the 135M model rarely writes a runnable block: 15% of samples
  called the tool in a trial step, against 86% of greedy answers; at 0.7, 10-30%, and 2-10% of samples were
  right, mostly groups without signal), up to 96 tokens a turn, 2 turns, 400 tokens
  an episode; 64 held-out problems, greedy. With gradient checkpointing: a step holds up to 48 x 400 tokens,
  more than a SmolLM2 learner step fits in 24 GiB without it (the first attempt was killed at 18.6 GB).

- `tiny-notool`, `smollm2-notool`: the controls, the same runs in one turn without the tool (SmolLM2 still reads
  the instruction and writes its code block, which is never run).

Per run it keeps metrics.jsonl and summary.json under --out and prints one table: held-out greedy accuracy and
tool-call rate before and after RL (mean over seeds, the binomial std of one eval beside the accuracy), the
training tool-call rate and accuracy over the first and last fifth of the steps, the tool error rate, and the
wall time.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SMOLLM2_INSTRUCTION = ("You can run Python: write a ```python code block that prints the result, and you will see "
                       "its output. Then give the final answer as a number.\n\n")
JOBS = {
    "tiny": ["task=arith_tools", "recipe=grpo", "warmstart.max_steps=300", "warmstart.target_accuracy=1.0",
             "rollout.max_new_tokens=32", "task.num_eval=200"],
    # the control: the same warm start and RL without the tool (single turn: the policy computes "=1363" itself)
    "tiny-notool": ["task=arith_tools", "recipe=grpo", "warmstart.max_steps=300", "warmstart.target_accuracy=1.0",
                    "rollout.max_new_tokens=32", "task.num_eval=200", "rollout.env=single_turn", "rollout.stop=[]"],
    "smollm2": ["model=smollm2", "task=arith_tools", "recipe=grpo", "task.ops=*", "task.num_eval=64",
                f"task.instruction={json.dumps(SMOLLM2_INSTRUCTION)}", "rollout.env=python",
                "rollout.env_args.timeout_s=5", "rollout.max_turns=2", "rollout.stop=['```\\n']",
                "rollout.max_new_tokens=96", "rollout.max_total_tokens=400", "rollout.prompts_per_step=8",
                "rollout.group_size=6", "rollout.temperature=0.5", "eval_sampled=false", "learner.grad_checkpointing=true"],
}
# the control: the same prompts (so the same held-out problems) in one turn of both turns' tokens; the code it
# writes is never run, whatever follows the block is the model's own
JOBS["smollm2-notool"] = [o for o in JOBS["smollm2"] if not o.startswith(("rollout.env", "rollout.stop", "rollout.max_"))] + [
    "rollout.env=single_turn", "rollout.stop=[]", "rollout.max_new_tokens=192"]


def summarise(run_dir: Path) -> dict:
    steps = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in steps if "loss/policy" in m]
    evals = [m for m in steps if "accuracy/eval" in m]
    acc_key = "accuracy/eval"
    fifth = max(1, len(train) // 5)

    def mean(rows, key):  # a single-turn run (the control) has no env/* metrics: no tool calls
        return statistics.mean(m.get(key, 0.0) for m in rows) if rows else float("nan")

    return {
        "steps": len(train),
        "acc_before": evals[0][acc_key], "acc_after": evals[-1][acc_key],
        "calls_before": evals[0].get("eval/env/tool_call_rate", 0.0),
        "calls_after": evals[-1].get("eval/env/tool_call_rate", 0.0),
        "train_calls_first": mean(train[:fifth], "env/tool_call_rate"), "train_calls_last": mean(train[-fifth:], "env/tool_call_rate"),
        "train_acc_first": mean(train[:fifth], "accuracy/train"), "train_acc_last": mean(train[-fifth:], "accuracy/train"),
        "tool_error_rate": mean(train, "env/tool_error_rate"),
        "obs_token_frac": mean(train, "env/obs_token_frac"),
        "wall_s": sum(m.get("timing/step_s", 0.0) for m in train),
    }


def run(job: str, seed: int, steps: int, out: Path, extra: list[str]) -> dict:
    run_dir = out / f"{job}-seed{seed}"
    overrides = [*JOBS[job], f"seed={seed}", f"total_steps={steps}", f"eval_every={steps}", f"checkpoint_every={steps}",
                 f"run_dir={run_dir}", *extra]
    t0 = time.perf_counter()
    log = (out / f"{job}-seed{seed}.log").open("w")
    code = subprocess.call([sys.executable, str(ROOT / "rlreason" / "run.py"), *overrides], cwd=ROOT, stdout=log,
                           stderr=subprocess.STDOUT)
    if code:
        raise SystemExit(f"{job} seed {seed} failed (exit {code}); see {out}/{job}-seed{seed}.log")
    s = summarise(run_dir)
    s["total_s"] = time.perf_counter() - t0
    print(f"{job} seed {seed}: {json.dumps({k: round(v, 3) for k, v in s.items()})}", flush=True)
    return s


def table(job: str, runs: list[dict], n_eval: int) -> None:
    def m(key):
        return statistics.mean(r[key] for r in runs)

    def sd(key):
        return statistics.stdev(r[key] for r in runs) if len(runs) > 1 else 0.0

    def binom(p):
        return math.sqrt(max(p * (1 - p), 1e-12) / n_eval)

    print(f"\n{job}: {len(runs)} seeds, {runs[0]['steps']} steps; mean (sd over seeds); eval binomial std beside accuracy")
    rows = [
        ("held-out accuracy", f"{m('acc_before'):.3f} ±{binom(m('acc_before')):.3f}", f"{m('acc_after'):.3f} ±{binom(m('acc_after')):.3f}",
         f"{sd('acc_before'):.3f} / {sd('acc_after'):.3f}"),
        ("held-out tool-call rate", f"{m('calls_before'):.3f}", f"{m('calls_after'):.3f}",
         f"{sd('calls_before'):.3f} / {sd('calls_after'):.3f}"),
        ("train tool-call rate (first/last fifth)", f"{m('train_calls_first'):.3f}", f"{m('train_calls_last'):.3f}",
         f"{sd('train_calls_first'):.3f} / {sd('train_calls_last'):.3f}"),
        ("train accuracy (first/last fifth)", f"{m('train_acc_first'):.3f}", f"{m('train_acc_last'):.3f}",
         f"{sd('train_acc_first'):.3f} / {sd('train_acc_last'):.3f}"),
    ]
    print("| | before | after | sd over seeds (before / after) |\n|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print(f"tool error rate {m('tool_error_rate'):.3f}; observation share of response tokens {m('obs_token_frac'):.3f}; "
          f"wall time of the steps {m('wall_s'):.0f} s per run (whole run {m('total_s'):.0f} s)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--job", choices=sorted(JOBS), default="tiny")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--tabulate", action="store_true")
    ap.add_argument("extra", nargs="*")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="tool_learning-"))
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.tabulate:
        runs = [summarise(out / f"{args.job}-seed{s}") for s in seeds]
        for r in runs:
            r.setdefault("total_s", float("nan"))
    else:
        runs = [run(args.job, s, args.steps, out, args.extra) for s in seeds]
        (out / f"{args.job}.json").write_text(json.dumps(runs, indent=1))
    n_eval = 64 if args.job.startswith("smollm2") else 200
    table(args.job, runs, n_eval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
