"""The frozen pool: N prompts x M responses sampled once from the policy, with their rewards, the
policy's token log-probs, and whatever the estimators need besides (entropy, hidden states, vocab
log-probs). Every estimator and group size is then measured on subsamples of this one pool.

Cached under ~/.cache/rlreason/lab/<key>.pt, keyed by everything that shapes it (the policy folder's
weights file, the prompts, M, the sampling settings, the verifier and the seed).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from rlreason.batch import RolloutBatch

log = logging.getLogger(__name__)


@dataclass
class Pool:
    batch: RolloutBatch  # [N*M]: prompt k's responses are rows k*M .. k*M+M-1, group_index k
    learner_tensors: dict  # entropy [B, T], and on request hidden [B, T, d], vocab_logprobs [B, T, V]
    logprobs: torch.Tensor  # [B, T] the policy's log-probs of the sampled tokens (teacher-forced)
    num_prompts: int
    per_prompt: int


def pool_key(policy_path: str, prompts: list[str], settings: dict) -> str:
    h = hashlib.sha256()
    for f in sorted(Path(policy_path).glob("*.safetensors")):
        h.update(f.name.encode() + str(f.stat().st_size).encode() + str(int(f.stat().st_mtime)).encode())
    h.update(json.dumps({"prompts": prompts, **settings}, sort_keys=True).encode())
    return h.hexdigest()[:16]


def sample_pool(policy_path: str, prompts: list[str], samples: list[dict], per_prompt: int, max_new_tokens: int,
                temperature: float, verifier: str, seed: int, needs: set, cache_dir: Path | None = None,
                threads: int = 0) -> Pool:
    """Generate `per_prompt` responses to each prompt with the HF engine (in this process), score them with
    `verifier` in the sandboxed pool, and compute the teacher-forced log-probs (and `needs`) once."""
    settings = {"per_prompt": per_prompt, "max_new": max_new_tokens, "temperature": temperature, "verifier": verifier,
                "seed": seed, "needs": sorted(needs)}
    path = Path(cache_dir) / f"{pool_key(policy_path, prompts, settings)}.pt" if cache_dir else None
    if path is not None and path.exists():
        log.info("lab: frozen pool read from %s", path)
        return torch.load(path, weights_only=False)
    from rewards.pool import Job, VerifierPool
    from rewards.sandbox import Policy
    from rlreason.rollout.worker import RolloutWorker

    worker = RolloutWorker("hf", policy_path, threads=threads)
    batch, texts = worker.generate(prompts, 0, per_prompt, max_new_tokens, temperature, 1.0, seed=seed)
    del worker
    flat = [s for s in samples for _ in range(per_prompt)]
    with VerifierPool(num_workers=2, timeout_s=10.0, sandbox=Policy()) as pool:
        scores = pool.score([Job(verifier, texts, flat)])[0]
    batch.rewards = torch.tensor([r.score for r in scores], dtype=torch.float32)
    batch.correct = batch.rewards.clone()
    logprobs, extra = teacher_forced(policy_path, batch, needs, temperature)
    out = Pool(batch, extra, logprobs, len(prompts), per_prompt)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(out, path)
    return out


def load_policy(policy_path: str):
    """The policy for the lab's differentiation: eager attention and eager experts, which (unlike SDPA's
    CPU kernel and grouped_mm) support forward-mode autodiff."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(policy_path, dtype=torch.float32, attn_implementation="eager",
                                                 experts_implementation="eager")
    return model.eval()


def teacher_forced(policy_path: str, batch: RolloutBatch, needs: set, temperature: float, chunk: int = 64) -> tuple[torch.Tensor, dict]:
    """The policy's log-probs of the sampled tokens at the sampling temperature (as the learner computes
    them), with entropy and, when an estimator needs them, hidden states and vocab log-probs, in chunks
    of `chunk` sequences."""
    from rlreason.forward import response_logprobs

    model = load_policy(policy_path)
    parts = []
    with torch.no_grad():
        for i in range(0, batch.size, chunk):
            b = batch.select(torch.arange(i, min(i + chunk, batch.size)))
            parts.append(response_logprobs(model, b.prompt_ids, b.prompt_mask, b.response_ids, b.response_mask, temperature,
                                           with_entropy=True, with_hidden="hidden" in needs,
                                           with_vocab_logprobs="vocab_logprobs" in needs))
    out = {k: torch.cat([p[k] for p in parts]) for k in parts[0] if parts[0][k] is not None}
    return out.pop("logprobs"), out
