"""Learner peak memory against tokens per step, and the largest step that fits a memory budget.

    .venv/bin/python benchmarks/memory.py [--model smollm2] [--seq 64+64] [--tokens 1024,2048,4096] [--budget-gib 24]
        [--others-mb 3000] [--set learner.grad_checkpointing=true ...]

Each size runs in a fresh process: a `Learner` (the defaults: fp32 AdamW, fused old pass, length
buckets) takes one `train_step` on a batch of `tokens / (prompt + response)` sequences of random
tokens with every position real (the worst case: no padding to trim), and reports its peak RSS
(VmHWM). A least-squares line through the sizes gives the fixed part (weights, gradients, AdamW
state, libraries) and the bytes per token; the largest step is where the line meets the budget
less `--others-mb` (the rollout actor, the driver, Ray's processes and the verifier workers, as
measured by benchmarks/vs_trl.py's per-actor `memory/*` metrics).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def child(args) -> None:
    import torch

    from rlreason.batch import RolloutBatch
    from rlreason.config import AlgoConfig, LearnerConfig
    from rlreason.learner.learner import Learner
    from rlreason.telemetry.memory import peak_rss_mb

    p, r = (int(x) for x in args.seq.split("+"))
    B = max(2, args.child // (p + r))
    policy = policy_folder(args.model)
    kw = dict(kv.split("=", 1) for kv in args.set)
    lc = LearnerConfig(threads=2, grad_checkpointing=kw.get("learner.grad_checkpointing", "false") == "true")
    learner = Learner(policy, lc, AlgoConfig(), 1.0, r)
    vocab = learner.model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    batch = RolloutBatch(
        prompt_ids=torch.randint(0, vocab, (B, p), generator=g), prompt_mask=torch.ones(B, p, dtype=torch.long),
        response_ids=torch.randint(0, vocab, (B, r), generator=g), response_mask=torch.ones(B, r, dtype=torch.long),
        sampling_logprobs=torch.full((B, r), -5.0), group_index=torch.arange(B) // 4, truncated=torch.zeros(B, dtype=torch.bool),
    )
    batch.rewards = (torch.arange(B) % 2).float()
    before = peak_rss_mb()
    t0 = time.perf_counter()
    learner.train_step(batch)
    print(json.dumps({"tokens": B * (p + r), "sequences": B, "loaded_mb": before, "peak_mb": peak_rss_mb(),
                      "step_s": time.perf_counter() - t0}))


def policy_folder(model: str) -> str:
    if model == "smollm2":
        from rlreason.assets import smollm2_folder

        return str(smollm2_folder())
    return model  # an HF folder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--seq", default="64+64", help="prompt+response tokens per sequence")
    ap.add_argument("--tokens", default="1024,2048,4096")
    ap.add_argument("--budget-gib", type=float, default=24.0)
    ap.add_argument("--others-mb", type=float, default=3000.0)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--child", type=int, default=0)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    rows = []
    for n in (int(x) for x in args.tokens.split(",")):
        cmd = [sys.executable, __file__, "--child", str(n), "--model", args.model, "--seq", args.seq,
               *[x for s in args.set for x in ("--set", s)]]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if out.returncode != 0:
            raise SystemExit(f"size {n} failed:\n{out.stderr[-3000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    xs, ys = [r["tokens"] for r in rows], [r["peak_mb"] for r in rows]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    fixed = my - slope * mx
    room = args.budget_gib * 1024 - args.others_mb
    print(f"\nmodel={args.model} seq={args.seq} extra={args.set}")
    print("| tokens per step | sequences | peak RSS (MB) | step (s) |")
    print("|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['tokens']:,} | {r['sequences']} | {r['peak_mb']:,.0f} | {r['step_s']:.1f} |")
    print(f"\nfit: {fixed:,.0f} MB fixed + {slope * 1024:,.1f} MB per 1k tokens; {args.budget_gib:g} GiB less {args.others_mb:,.0f} MB "
          f"for the other processes leaves {room:,.0f} MB: at most ~{(room - fixed) / slope:,.0f} tokens per learner step")


if __name__ == "__main__":
    main()
