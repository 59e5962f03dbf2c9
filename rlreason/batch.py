"""The rollout batch: everything an estimator or a loss needs travels in this one dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Optional

import torch


@dataclass
class RolloutBatch:
    prompt_ids: torch.Tensor  # [B, P] left-padded
    prompt_mask: torch.Tensor  # [B, P] 1 on prompt tokens
    response_ids: torch.Tensor  # [B, T] right-padded
    response_mask: torch.Tensor  # [B, T] 1 on response tokens (EOS included)
    sampling_logprobs: torch.Tensor  # [B, T] log pi_sample(o_t) at the sampling temperature
    group_index: torch.Tensor  # [B] int: responses of one prompt share a group id
    rewards: Optional[torch.Tensor] = None  # [B]
    correct: Optional[torch.Tensor] = None  # [B] correctness verifier score
    truncated: Optional[torch.Tensor] = None  # [B] bool: hit max_new_tokens without EOS
    routed_experts: Optional[torch.Tensor] = None  # [B, T, layers, top_k] when the engine records it
    prompt_routed_experts: Optional[torch.Tensor] = None  # [B, P, layers, top_k] the prefill's routing, -1 on padding
    budgets: Optional[torch.Tensor] = None  # [B] token budgets from a curriculum
    weights_version: int = 0  # the learner step whose weights sampled this batch (the oldest, for a concat)
    # [B, T] int32: the weights version that produced each response token, -1 on padding (the rollout
    # worker stamps it; under trainer.mode=async the staleness gate and metrics read it)
    versions: Optional[torch.Tensor] = None
    # [B, T] 1 on the tokens the policy sampled (multi-turn: not the observations or template tokens between
    # turns, which the model attends to but is not trained on); None: every response token (single turn)
    loss_mask: Optional[torch.Tensor] = None
    # [B, len(ENV_STATS)] float: per response, what its episode did (multi-turn rollouts; rlreason/rollout/episodes.py)
    env_stats: Optional[torch.Tensor] = None
    meta: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.response_ids.shape[0]

    @property
    def gen_mask(self) -> torch.Tensor:
        """[B, T] the tokens losses, advantages and per-token metrics count: the sampled ones."""
        return self.response_mask if self.loss_mask is None else self.loss_mask

    def to(self, device) -> "RolloutBatch":
        """A copy with every tensor on `device` (the learner and engines compute where their model lives)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        return RolloutBatch(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in out.items()})

    def select(self, idx: torch.Tensor) -> "RolloutBatch":
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v[idx] if isinstance(v, torch.Tensor) and v.dim() > 0 else v
        return RolloutBatch(**out)

    @staticmethod
    def concat(parts: list["RolloutBatch"], pad_id: int) -> "RolloutBatch":
        """Concatenate batches (from several workers, or several generation rounds), re-padding prompts
        (left) and responses (right). Group ids are kept as they are: callers keep them distinct."""
        if len(parts) == 1:
            return parts[0]
        P = max(p.prompt_ids.shape[1] for p in parts)
        T = max(p.response_ids.shape[1] for p in parts)

        def lpad(x, n, v):
            return torch.nn.functional.pad(x, (n - x.shape[1], 0), value=v)

        def rpad(x, n, v):
            return torch.nn.functional.pad(x, (0, n - x.shape[1]), value=v)

        out = dict(
            prompt_ids=torch.cat([lpad(p.prompt_ids, P, pad_id) for p in parts]),
            prompt_mask=torch.cat([lpad(p.prompt_mask, P, 0) for p in parts]),
            response_ids=torch.cat([rpad(p.response_ids, T, pad_id) for p in parts]),
            response_mask=torch.cat([rpad(p.response_mask, T, 0) for p in parts]),
            sampling_logprobs=torch.cat([rpad(p.sampling_logprobs, T, 0.0) for p in parts]),
            group_index=torch.cat([p.group_index for p in parts]),
            truncated=torch.cat([p.truncated for p in parts]),
            weights_version=min(p.weights_version for p in parts),
        )
        if all(p.versions is not None for p in parts):
            out["versions"] = torch.cat([rpad(p.versions, T, -1) for p in parts])
        if any(p.loss_mask is not None for p in parts):
            out["loss_mask"] = torch.cat([rpad(p.gen_mask, T, 0) for p in parts])
        if all(p.env_stats is not None for p in parts):
            out["env_stats"] = torch.cat([p.env_stats for p in parts])
        for name in ("rewards", "correct", "budgets"):
            if all(getattr(p, name) is not None for p in parts):
                out[name] = torch.cat([getattr(p, name) for p in parts])
        if all(p.routed_experts is not None for p in parts):
            out["routed_experts"] = torch.cat(
                [torch.nn.functional.pad(p.routed_experts, (0, 0, 0, 0, 0, T - p.routed_experts.shape[1]), value=-1) for p in parts]
            )
        if all(p.prompt_routed_experts is not None for p in parts):
            out["prompt_routed_experts"] = torch.cat(
                [torch.nn.functional.pad(p.prompt_routed_experts, (0, 0, 0, 0, P - p.prompt_routed_experts.shape[1], 0), value=-1)
                 for p in parts]
            )
        return RolloutBatch(**out)


def per_prompt_counts(n: int | list[int], num_prompts: int) -> torch.Tensor:
    """Samples per prompt as a tensor: one `n` for all, or a list with one count per prompt (>= 1)."""
    counts = torch.as_tensor(n if isinstance(n, (list, tuple)) else [n] * num_prompts, dtype=torch.long)
    if counts.numel() != num_prompts or bool((counts < 1).any()):
        raise ValueError(f"need one sample count >= 1 per prompt ({num_prompts} prompts), got {n}")
    return counts
