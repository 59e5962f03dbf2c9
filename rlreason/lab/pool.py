"""The frozen pool: N prompts x M responses sampled once from the policy, with their rewards, the
policy's token log-probs, and whatever the estimators need besides (entropy, hidden states, vocab
log-probs). Every estimator and group size is then measured on subsamples of this one pool.

Cached under ~/.cache/rlreason/lab/<key>.pt, keyed by everything that shapes it (the policy folder's
weights file, the prompts, M, the sampling settings, the verifier and the seed).
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
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
    key: str = ""  # its cache key (what the token gradients computed on it are cached under)


def pool_key(policy_path: str, prompts: list[str], settings: dict) -> str:
    h = hashlib.sha256()
    for f in sorted(Path(policy_path).glob("*.safetensors")):
        h.update(f.name.encode() + str(f.stat().st_size).encode() + str(int(f.stat().st_mtime)).encode())
    h.update(json.dumps({"prompts": prompts, **settings}, sort_keys=True).encode())
    return h.hexdigest()[:16]


def sample_pool(policy_path: str, prompts: list[str], samples: list[dict], per_prompt: int, rollout_cfg, verifier: str,
                seed: int, needs: set, cache_dir: Path | None = None, threads: int = 0) -> Pool:
    """Generate `per_prompt` responses to each prompt with the `rollout.*` engine (in this process: hf, or
    vllm), score them with `verifier` in the sandboxed pool, and compute the policy's teacher-forced
    log-probs (and `needs`) once."""
    r = rollout_cfg
    settings = {"per_prompt": per_prompt, "max_new": r.max_new_tokens, "temperature": r.temperature, "top_p": r.top_p,
                "engine": r.engine, "dtype": r.dtype, "verifier": verifier, "seed": seed, "needs": sorted(needs)}
    key = pool_key(policy_path, prompts, settings)
    path = Path(cache_dir) / f"{key}.pt" if cache_dir else None
    if path is not None and path.exists():
        log.info("lab: frozen pool read from %s", path)
        pool = torch.load(path, weights_only=False)
        pool.key = key
        return pool
    from rewards.pool import Job, VerifierPool
    from rewards.sandbox import Policy
    from rlreason.rollout.worker import RolloutWorker

    worker = RolloutWorker(r.engine, policy_path, threads=threads, rollout_cfg=r, seed=seed)
    batch, texts = worker.generate(prompts, 0, per_prompt, r.max_new_tokens, r.temperature, r.top_p, seed=seed)
    del worker
    gc.collect()  # a vLLM engine's memory goes before the policy is loaded again
    flat = [s for s in samples for _ in range(per_prompt)]
    with VerifierPool(num_workers=2, timeout_s=10.0, sandbox=Policy()) as pool:
        scores = pool.score([Job(verifier, texts, flat)])[0]
    batch.rewards = torch.tensor([r.score for r in scores], dtype=torch.float32)
    batch.correct = batch.rewards.clone()
    logprobs, extra = teacher_forced(policy_path, batch, needs, r.temperature)
    out = Pool(batch, extra, logprobs, len(prompts), per_prompt, key)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(out, path)
    return out


def adapter_base(policy_path: str) -> str | None:
    """The base HF folder a LoRA run's checkpoint (`checkpoints/step_N/adapter/`) names, or None when
    `policy_path` is a whole policy."""
    config = Path(policy_path) / "adapter_config.json"
    return json.loads(config.read_text())["base_model_name_or_path"] if config.exists() else None


def merged_policy(adapter_folder: str, cache_dir: Path) -> str:
    """An HF folder with the adapters merged into their base, for the engine to sample the pool from;
    built once per adapter file under `cache_dir`."""
    from rlreason.learner.lora import merged_state_dict
    from rlreason.policy import load_policy, load_tokenizer

    folder = Path(cache_dir) / f"merged-{pool_key(adapter_folder, [], {})}"
    if not (folder / "config.json").exists():
        from peft import PeftModel

        model = PeftModel.from_pretrained(load_policy(adapter_base(adapter_folder)), adapter_folder)
        tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
        model.get_base_model().save_pretrained(tmp, state_dict=merged_state_dict(model))
        load_tokenizer(adapter_folder).save_pretrained(tmp)
        os.replace(tmp, folder)
    return str(folder)


def differentiable_policy(policy_path: str, lora=None, seed: int = 0):
    """The policy for the lab's differentiation: eager attention and eager experts, which (unlike SDPA's
    CPU kernel and grouped_mm) support forward-mode autodiff. theta, the trainable parameters, is what
    the learner would train:
    - a LoRA checkpoint's adapter folder: its adapters, as trained (the base from adapter_config.json);
    - else with `lora` (a `model.lora` config with r > 0): fresh LoRA adapters, initialised from `seed`,
      the gradient a LoRA run's first step follows (B = 0 at init, so the A-part of every direction has
      zero gradient and all the signal is in B);
    - else every parameter."""
    from transformers import AutoModelForCausalLM

    base = adapter_base(policy_path)
    model = AutoModelForCausalLM.from_pretrained(base or policy_path, dtype=torch.float32, attn_implementation="eager",
                                                 experts_implementation="eager")
    if base is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, policy_path, is_trainable=True)
    elif lora is not None and lora.r > 0:
        from rlreason.learner.lora import add_lora

        torch.manual_seed(seed)
        model = add_lora(model, lora)
    return model.eval()


def teacher_forced(policy_path: str, batch: RolloutBatch, needs: set, temperature: float, chunk: int = 64) -> tuple[torch.Tensor, dict]:
    """The policy's log-probs of the sampled tokens at the sampling temperature (as the learner computes
    them), with entropy and, when an estimator needs them, hidden states and vocab log-probs, in chunks
    of `chunk` sequences."""
    from rlreason.forward import response_logprobs

    model = differentiable_policy(policy_path)
    parts = []
    with torch.no_grad():
        for i in range(0, batch.size, chunk):
            b = batch.select(torch.arange(i, min(i + chunk, batch.size)))
            parts.append(response_logprobs(model, b.prompt_ids, b.prompt_mask, b.response_ids, b.response_mask, temperature,
                                           with_entropy=True, with_hidden="hidden" in needs,
                                           with_vocab_logprobs="vocab_logprobs" in needs))
    out = {k: torch.cat([p[k] for p in parts]) for k in parts[0] if parts[0][k] is not None}
    return out.pop("logprobs"), out
