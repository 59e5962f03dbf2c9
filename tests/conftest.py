import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


TINY = SimpleNamespace(
    hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
    num_experts=4, top_k=2, max_position_embeddings=64, tie_embeddings=True,
)


@pytest.fixture(scope="session")
def tiny_policy(tmp_path_factory) -> str:
    """A randomly initialised tiny Qwen3-MoE with the char tokenizer, saved as an HF folder."""
    from rlreason.data.tokenizer import build_char_tokenizer
    from rlreason.policy import build_tiny_moe

    tok = build_char_tokenizer()
    model = build_tiny_moe(TINY, len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, seed=0)
    path = tmp_path_factory.mktemp("tiny_policy")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def rollout(tiny_policy):
    """The HF engine on the tiny MoE (routes recorded) and its batch of 3 prompts x 4 samples of at
    most 12 tokens, with rewards that leave every group some signal."""
    import torch

    from rlreason.rollout.worker import RolloutWorker

    worker = RolloutWorker("hf", tiny_policy, threads=2)
    batch, _ = worker.generate(["1+2=", "10-3+4=", "7+7-1="], 0, 4, 12, 1.0, 1.0, seed=0)
    batch.rewards = torch.tensor([1.0, 0, 0, 1, 0, 1, 1, 1, 0, 0, 0, 1])
    return worker, batch


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray cluster for one test module's actors (3 CPUs: room for 2 DeepSpeed ranks and a worker)."""
    import ray

    ray.init(address="local", num_cpus=3, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def run_cli(args, cwd=ROOT, timeout=600, env=None, **kw):
    """Run `python rlreason/run.py ARGS` as a user would; returns the CompletedProcess."""
    import subprocess

    full_env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", **(env or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / "rlreason" / "run.py"), *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout, **kw,
    )


def read_metrics(run_dir) -> list[dict]:
    import json

    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line.strip()]
