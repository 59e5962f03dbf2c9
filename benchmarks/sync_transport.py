"""Weight-sync time of SmolLM2-135M-Instruct through Ray's object store vs by gloo broadcast
(`rollout.weight_transport`), full weights and LoRA adapters only.

    PYTHONPATH=. .venv/bin/python benchmarks/sync_transport.py [--repeats 5] [--bucket-mb 256] [--engine hf|vllm]

A learner actor and a rollout worker, 1 CPU each, on this machine's local Ray. Object store: the
learner's `put_weights` then the worker's `load_weights` (vLLM: the learner writes an HF folder, the
engine reloads it in place). Collective: the learner's `broadcast_weights` and the worker's
`receive_weights` at once (vLLM: received in the engine's worker process and reloaded in place from the
tensors; always the whole merged weights). Both end with the weights loaded in the engine, so both
include that copy; vLLM's reloads also fingerprint what they serve (`rollout.check_sync`, on by
default). Reported: the median over `--repeats` syncs after one warm-up, the bytes the worker received,
and bytes per second. Needs ~/.cache/rlreason/models/smollm2-135m-instruct (a run with
model=smollm2 makes it).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import ray

from rlreason.config import AlgoConfig, LearnerConfig
from rlreason.learner.learner import Learner
from rlreason.rollout.worker import RolloutWorker
from rlreason.run import compose
from rlreason.transfer import WeightsFolder


def measure(policy: str, lora, repeats: int, bucket_mb: float, engine: str, sync_dir: str) -> dict:
    learner = ray.remote(num_cpus=1)(Learner).remote(policy, LearnerConfig(threads=1), AlgoConfig(), 1.0, 32, 0, None, lora, 0)
    worker = ray.remote(num_cpus=1)(RolloutWorker).remote(engine, policy, 1)
    folder = engine == "vllm"  # vLLM reloads checkpoints: a folder through the file system, whole weights by broadcast
    host, port = ray.get(learner.address.remote())
    ray.get([learner.join_weights_group.remote(host, port, 2, 600), worker.join_weights_group.remote(host, port, 1, 2, 600)])
    out = {}
    for transport in ("object_store", "collective"):
        times = []
        for v in range(repeats + 1):
            t0 = time.perf_counter()
            if transport == "object_store" and folder:
                path = ray.get(learner.save_weights.remote(f"{sync_dir}/v{v}"))
                ray.get(worker.load_weights.remote(WeightsFolder(path), v))
                shutil.rmtree(path)
            elif transport == "object_store":
                (ref,) = ray.get(learner.put_weights.remote())
                ray.get(worker.load_weights.remote(ref, v))
                del ref
            else:
                ray.get([learner.broadcast_weights.remote(v, bucket_mb, folder), worker.receive_weights.remote(v, bucket_mb)])
            times.append(time.perf_counter() - t0)
        nbytes = ray.get(worker.served_weights.remote())["bytes"]
        med = statistics.median(times[1:])
        out[transport] = {"s": med, "bytes": nbytes, "min": min(times[1:]), "max": max(times[1:])}
    for a in (learner, worker):
        ray.kill(a)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--bucket-mb", type=float, default=256.0)
    ap.add_argument("--engine", default="hf", choices=("hf", "vllm"))
    args = ap.parse_args()
    policy = str(Path.home() / ".cache/rlreason/models/smollm2-135m-instruct")
    cfg, _ = compose(["model=smollm2"])
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows = []
    for label, lora in (("full weights", None), (f"LoRA r={cfg.model.lora.r} adapters", cfg.model.lora)):
        with tempfile.TemporaryDirectory() as sync_dir:
            res = measure(policy, lora, args.repeats, args.bucket_mb, args.engine, sync_dir)
        for transport, r in res.items():
            rows.append((label, transport, r))
            print(f"{label}, {transport}: median {r['s']:.3f} s (min {r['min']:.3f}, max {r['max']:.3f}), "
                  f"{r['bytes'] / 1e6:.1f} MB, {r['bytes'] / r['s'] / 1e9:.2f} GB/s", flush=True)
    ray.shutdown()
    print("\n| engine | payload | transport | median sync (s) | MB received | GB/s |\n|---|---|---|---|---|---|")
    for label, transport, r in rows:
        print(f"| {args.engine} | {label} | {transport} | {r['s']:.3f} | {r['bytes'] / 1e6:.1f} | {r['bytes'] / r['s'] / 1e9:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
