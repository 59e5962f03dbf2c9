"""What each speed choice does to a SmolLM2 GRPO step on this machine, measured side by side in one process.

    .venv/bin/python benchmarks/smollm2_speed.py [--prompts 8] [--group 8] [--max-new 48] [--iters 3] [--json out.json]

The work is one step of `model=smollm2 task=elementary_math recipe=grpo`: `--prompts` train problems in
SmolLM2's chat template, `--group` samples each at T=1, up to `--max-new` tokens. Arms, each rotated
through `--iters` rounds (the first round is a warm-up and is dropped; the figure is the median of the rest):

- rollout (HFEngine.generate, 2 threads): `decode loop` (rollout/decode.py: ended responses leave the
  batch) vs `HF generate`, both fp32; and the loop with bf16 weights. Reported: seconds, response
  tokens/s, and the gap between the sampling log-probs and an fp32 learner's on the same tokens (k3
  KL and max |log-ratio|), which is what a rollout dtype costs in off-policyness.
- learner (Learner.train_step on the loop's fp32 batch, LoRA r=16 unless said): `shared prompt`
  (each distinct prompt forwarded once) vs `padded` (every sequence forwards its own prompt), fp32;
  the shared prompt under bf16 autocast; full fine-tuning (no LoRA), shared prompt, fp32.
- weight sync (in-process, no Ray: the part Ray adds is the object-store copy of what is sent):
  `adapter only` (the adapters, merged by the engine) vs `merged` (the learner merges and the engine
  loads every weight); bytes sent.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--max-new", type=int, default=48)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import torch

    from rlreason.algos.kl import kl_k3
    from rlreason.assets import smollm2_folder
    from rlreason.config import AlgoConfig, LearnerConfig, LoRAConfig
    from rlreason.data.elementary_math import CATEGORIES, make_splits
    from rlreason.forward import response_logprobs
    from rlreason.learner.learner import Learner
    from rlreason.learner.lora import adapter_update, merged_state_dict
    from rlreason.rollout.hf import HFEngine

    torch.set_num_threads(2)
    path = str(smollm2_folder())
    train, _ = make_splits(list(CATEGORIES), 1000, 32, seed=0)
    engines = {"decode loop fp32": HFEngine(path, threads=2), "HF generate fp32": HFEngine(path, threads=2, compact_finished=False),
               "decode loop bf16": HFEngine(path, threads=2, dtype="bf16")}
    tok = engines["decode loop fp32"].tokenizer
    prompts = [tok.apply_chat_template([{"role": "user", "content": p.prompt}], tokenize=False, add_generation_prompt=True)
               for p in train[: args.prompts]]
    scorer = engines["decode loop fp32"].model  # fp32 reference log-probs

    lora = LoRAConfig(r=16, alpha=32)
    learners = {
        "shared prompt, LoRA, fp32": Learner(path, LearnerConfig(threads=2, lr=2e-4), AlgoConfig(), 1.0, args.max_new, lora_cfg=lora),
        "padded, LoRA, fp32": Learner(path, LearnerConfig(threads=2, lr=2e-4, share_prompt=False), AlgoConfig(), 1.0, args.max_new,
                                      lora_cfg=lora),
        "shared prompt, LoRA, bf16": Learner(path, LearnerConfig(threads=2, lr=2e-4, dtype="bf16"), AlgoConfig(), 1.0,
                                             args.max_new, lora_cfg=lora),
        "shared prompt, full, fp32": Learner(path, LearnerConfig(threads=2, lr=1e-5), AlgoConfig(), 1.0, args.max_new),
    }
    syncer = learners["shared prompt, LoRA, fp32"]
    sync_engine = HFEngine(path, threads=2)

    def sync_adapter():
        update = adapter_update(syncer.model)
        sync_engine.load_adapter_update(update)
        return sum(a.numel() + b.numel() for a, b, _ in update.factors.values()) * 4

    def sync_merged():
        weights = merged_state_dict(syncer.model)
        sync_engine.load_state_dict(weights)
        return sum(v.numel() * v.element_size() for v in weights.values())

    rows: dict[str, list[dict]] = {}

    def record(name: str, row: dict) -> None:  # printed as measured: a cut-short run still tells something
        rows.setdefault(name, []).append(row)
        print(f"  {name:40s} " + "  ".join(f"{k} {v:.4g}" for k, v in row.items()), flush=True)

    batch = None
    for it in range(args.iters):
        for name, eng in engines.items():
            t0 = time.perf_counter()
            b, _ = eng.generate(prompts, args.group, args.max_new, seed=it)
            dt = time.perf_counter() - t0
            with torch.no_grad():
                lp = response_logprobs(scorer, b.prompt_ids, b.prompt_mask, b.response_ids, b.response_mask)["logprobs"]
            m = b.response_mask.float()
            n = int(m.sum())
            record(f"rollout: {name}", {
                "s": dt, "tokens_per_s": n / dt, "tokens": n,
                "k3_vs_fp32_learner": float((kl_k3(b.sampling_logprobs, lp) * m).sum() / m.sum()),
                "max_abs_log_ratio": float(((lp - b.sampling_logprobs).abs() * m).max())})
            if name == "decode loop fp32":
                batch = b
        batch.rewards = torch.tensor([float(i % 3 == 0) for i in range(batch.size)])
        for name, lr in learners.items():
            t0 = time.perf_counter()
            lr.train_step(batch)
            record(f"learner: {name}", {"s": time.perf_counter() - t0, "response_tokens": int(batch.response_mask.sum())})
        for name, fn in (("adapter only", sync_adapter), ("merged", sync_merged)):
            t0 = time.perf_counter()
            sent = fn()
            record(f"sync: {name}", {"s": time.perf_counter() - t0, "mb_sent": sent / 2**20})
        print(f"round {it + 1}/{args.iters} done", flush=True)

    summary = {}
    print(f"\nSmolLM2-135M-Instruct, {args.prompts} prompts x {args.group} samples, <= {args.max_new} new tokens; "
          f"median of rounds 2..{args.iters}")
    for name, rs in rows.items():
        kept = rs[1:] or rs
        med = {k: statistics.median(r[k] for r in kept) for k in kept[0]}
        summary[name] = {"median": med, "rounds": rs}
        print(f"{name:40s} " + "  ".join(f"{k} {v:.4g}" for k, v in med.items()))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
