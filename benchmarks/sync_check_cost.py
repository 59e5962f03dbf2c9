"""What the weight-sync check (`rollout.check_sync`, rlreason/weights_check.py) costs on each side of a sync:
the fingerprint of SmolLM2's and the upcycled SmolLM2-MoE's state dicts, in fp32 and rounded to bf16.

    PYTHONPATH=. .venv/bin/python benchmarks/sync_check_cost.py

Needs the models under ~/.cache/rlreason/models (a run with model=smollm2 / model=smollm2-moe makes them).
"""

import statistics
import time
from pathlib import Path

import torch

from rlreason.policy import load_policy
from rlreason.weights_check import fingerprint

torch.set_num_threads(2)
for name in ["smollm2-135m-instruct", "smollm2-135m-instruct-moe-e4k2"]:
    sd = load_policy(Path.home() / ".cache/rlreason/models" / name).state_dict()
    n = sum(v.numel() for v in sd.values())
    fingerprint(sd.items())  # warm-up
    for label, dtype in (("fp32", None), ("bf16-rounded", torch.bfloat16)):
        times = []
        for _ in range(5):
            t = time.perf_counter()
            fingerprint(sd.items(), dtype=dtype)
            times.append(time.perf_counter() - t)
        print(f"{name}: {n / 1e6:.1f} M numbers (tied counted twice), {label}: median {statistics.median(times):.3f} s "
              f"(min {min(times):.3f}, max {max(times):.3f})", flush=True)
