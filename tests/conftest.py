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


def interrupted_and_resumed(worker, steps: int, max_new: int = 12):
    """Partial-rollout exactness on a rollout worker: greedy answers to 3 prompts x 2, once straight through
    (`ref`) and once stopped after `steps` decode steps (`cut`), then continued with the weights relabelled
    version 1, as a load of identical weights would (`out`). Returns (ref, ref_texts, cut, out, texts) after
    the checks both engines share: the same ids and texts, log-probs within 1e-4, the versions switching
    where each row was cut, no row past the budget."""
    import torch

    worker.partial = True
    prompts = ["1+2=", "10-3+4=", "7+7-1="]
    ref, ref_texts = worker.generate(prompts, 0, 2, max_new, 1.0, 1.0, greedy=True, seed=0)
    calls = {"n": 0}

    def after_steps():
        calls["n"] += 1
        return calls["n"] >= steps

    worker._interrupted = after_steps
    cut, _ = worker.generate(prompts, 0, 2, max_new, 1.0, 1.0, greedy=True, seed=0)
    done = cut.response_mask.sum(-1)
    assert cut.meta["unfinished"] > 0 and int(done.max()) <= steps
    worker._interrupted = lambda: False
    worker.weights_version = 1
    out, texts = worker.resume(cut, max_new, 1.0, 1.0, seed=7, greedy=True)
    assert out.meta["unfinished"] == 0 and texts == ref_texts
    T = out.response_ids.shape[1]
    assert torch.equal(out.response_ids, ref.response_ids[:, :T]) and torch.equal(out.response_mask, ref.response_mask[:, :T])
    mask = out.response_mask.bool()
    assert int(mask.sum(-1).max()) <= max_new
    assert (out.sampling_logprobs - ref.sampling_logprobs[:, :T])[mask].abs().max() < 1e-4
    positions = torch.arange(T).expand_as(mask)
    assert torch.equal(out.versions[mask], (positions >= done[:, None]).int()[mask])  # version 1 from the cut on
    return ref, ref_texts, cut, out, texts
