"""The rollout engine interface, and the registry that maps `rollout.engine` to an implementation.

An engine owns one copy of the policy for sampling. The rollout worker actor (`worker.py`) and the
trainer's rollout fleet talk to every engine through this protocol only; the engine's name appears
nowhere else. Built-ins: `hf` (transformers, `hf.py`) and `vllm` (`vllm.py`), registered by import path
so that choosing one never imports the other. A team's own engine registers with
``@ENGINES.register("name")`` or an entry point in the group ``rlreason.engines``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

import torch

from rlreason.batch import RolloutBatch
from rlreason.registry import Registry


class UnknownEngine(ValueError):
    """`rollout.engine` names nothing registered."""


class Engine(Protocol):
    # how new weights arrive (rlreason/transfer.py): TENSORS through the object store (a state dict, or an
    # AdapterUpdate under LoRA adapter sync), or HF_FOLDER (a WeightsFolder the learner writes)
    weights_format: ClassVar[str]
    # (num_experts, top_k) of an MoE policy, else None; routed experts are validated against it
    moe_shape: tuple[int, int] | None

    @classmethod
    def from_config(cls, model_path: str, rollout_cfg, threads: int, seed: int) -> "Engine":
        """Build the engine from the `rollout.*` config (each engine reads the keys it knows)."""

    @classmethod
    def check_config(cls, cfg) -> None:
        """Raise ValueError, with a one-line message naming the key, for a config this engine cannot run."""

    def generate(self, prompts: list[str], n: int | list[int], max_new_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0, greedy: bool = False, seed: int | None = None) -> tuple[RolloutBatch, list[str]]:
        """n samples of each prompt (one n, or one count per prompt), with sampling log-probs."""

    # Optional, for rollout.partial (the config refuses it for an engine without `generate_ids`): `generate`
    # then also takes `stop`, a callable asked after every decode step that ends the call where it is when it
    # answers True; `generate_ids` continues rows from token ids; `tokenizer`, `eos_id` and `pad_id` are read.
    def generate_ids(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                     top_p: float = 1.0, greedy: bool = False, seed: int | None = None,
                     stop=None) -> tuple[RolloutBatch, list[str]]:
        """One response to each left-padded row of token ids (a prompt and a response so far)."""

    # Optional, for rollout.weight_transport=collective with an engine whose weights live in another process
    # (vLLM): it joins the learner's weights group there (`rlreason/collective.py`) and receives each broadcast
    # there, returning the bytes received. Without them the worker receives and calls `load_weights`.
    def join_weights_group(self, host: str, port: int, rank: int, world: int, timeout_s: float) -> None: ...

    def receive_weights(self, version: int, bucket_mb: float) -> int: ...

    def load_weights(self, weights: Any) -> None:
        """Replace the policy's weights at once with what `rlreason.transfer.unpack` gives."""

    def score(self, batch: RolloutBatch, temperature: float = 1.0) -> torch.Tensor:
        """Teacher-forced log-probs [B, T] of the batch's responses under the current weights (checks)."""

    def fingerprint(self) -> dict:
        """What the engine serves now, for the sync check (`rlreason/weights_check.py`): {"groups": a
        Fingerprint of its weights (and any state sent with them), "grouping": how names were grouped
        (a key of `weights_check.GROUPINGS`), "dtype": the torch dtype name its weights are held in}. An engine
        without this method is not checked (the trainer says so once)."""


ENGINES = Registry("engine", "rollout.engine", error=UnknownEngine)
ENGINES.register_path("hf", "rlreason.rollout.hf:HFEngine")
ENGINES.register_path("vllm", "rlreason.rollout.vllm:VLLMEngine")
