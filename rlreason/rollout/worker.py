"""RolloutWorker: the Ray actor that owns one inference engine and generates groups of responses."""

from __future__ import annotations

import logging

import torch

from rlreason.batch import RolloutBatch
from rlreason.rollout.routing import validate_routed_experts

log = logging.getLogger(__name__)


class RolloutWorker:
    """Wrap with `ray.remote(num_cpus=...)(RolloutWorker)`; also usable in-process for tests."""

    def __init__(self, engine: str, model_path: str, threads: int = 0, seed: int = 0, vllm_kv_cache_gib: int = 1,
                 vllm_gpu_memory_utilization: float = 0.3, dtype: str = "fp32", share_prefix: bool = True,
                 compact_finished: bool = True, max_batch: int = 256):
        if engine == "hf":
            from rlreason.rollout.hf import HFEngine

            self.engine = HFEngine(model_path, threads=threads, dtype=dtype, share_prefix=share_prefix,
                                   compact_finished=compact_finished, max_batch=max_batch)
        elif engine == "vllm":
            from rlreason.rollout.vllm import VLLMEngine

            self.engine = VLLMEngine(model_path, threads=threads, kv_cache_gib=vllm_kv_cache_gib,
                                     gpu_memory_utilization=vllm_gpu_memory_utilization, seed=seed)
        else:
            raise ValueError(f"rollout.engine={engine!r} is not available; choose one of: hf, vllm")
        self.engine_name = engine
        self.weights_version = 0
        self._routing_warned = False

    def load_weights(self, state_dict, version: int) -> int:
        """Replace all weights at once; generation never sees a mix of versions (the actor is
        single-threaded, so no generate call can interleave with this one). Tensors or, from
        `Learner.put_weights`, numpy arrays mapped from the object store; or an `AdapterUpdate`
        (LoRA adapters only), which the engine merges into its base weights."""
        from rlreason.rollout.transfer import AdapterUpdate, from_transport

        if isinstance(state_dict, AdapterUpdate):
            self.engine.load_adapter_update(state_dict.from_transport())
        else:
            self.engine.load_state_dict(from_transport(state_dict))
        self.weights_version = version
        return version

    def load_weights_from_path(self, path: str, version: int) -> int:
        """vLLM: reload an HF folder the learner wrote, in place (no engine restart)."""
        self.engine.reload_weights(path)
        self.weights_version = version
        return version

    def generate(
        self,
        prompts: list[str],
        group_offset: int,
        n: int | list[int],
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        greedy: bool = False,
        seed: int | None = None,
    ) -> tuple[RolloutBatch, list[str]]:
        batch, texts = self.engine.generate(
            prompts, n, max_new_tokens, temperature=temperature, top_p=top_p, greedy=greedy, seed=seed
        )
        batch.group_index = batch.group_index + group_offset
        batch.weights_version = self.weights_version
        if batch.routed_experts is not None:
            num_experts, top_k = self.engine.moe_shape
            try:
                validate_routed_experts(batch.routed_experts, num_experts, top_k)
                if batch.prompt_routed_experts is not None:
                    validate_routed_experts(batch.prompt_routed_experts, num_experts, top_k)
            except ValueError as e:  # a broken capture must not poison training: drop it, say so once
                if not self._routing_warned:
                    log.error("rollout: routed-expert capture failed validation (%s); carrying None", e)
                    self._routing_warned = True
                batch.routed_experts = batch.prompt_routed_experts = None
        return batch, texts

    @torch.no_grad()
    def score_logprobs(self, batch: RolloutBatch, temperature: float = 1.0) -> torch.Tensor:
        """Teacher-forced logprobs of given responses under this worker's weights (for checks)."""
        from rlreason.learner.forward import response_logprobs

        if self.engine_name == "vllm":
            if temperature != 1.0:
                raise ValueError("vLLM scoring is at temperature 1")
            return self.engine.score(batch)

        b = batch.to(self.engine.device)
        return response_logprobs(
            self.engine.model, b.prompt_ids, b.prompt_mask, b.response_ids, b.response_mask, temperature
        )["logprobs"].cpu()

    def peak_memory_mb(self) -> dict:
        """Peak RSS (and CUDA memory on GPU) of this actor so far, in MiB."""
        from rlreason.telemetry.memory import peak_cuda_mb, peak_rss_mb

        return {"rss": peak_rss_mb(), "cuda": peak_cuda_mb()}

    def ping(self) -> int:
        return self.weights_version

    def pid(self) -> int:
        import os

        return os.getpid()
