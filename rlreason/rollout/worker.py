"""RolloutWorker: the Ray actor that owns one inference engine and generates groups of responses.

It knows engines only through the `Engine` protocol (`engine.py`): the name in `rollout.engine` is
looked up in the engine registry once, here.
"""

from __future__ import annotations

import logging

import torch

from rlreason.batch import RolloutBatch
from rlreason.rollout.engine import ENGINES
from rlreason.rollout.routing import validate_routed_experts
from rlreason.transfer import payload_bytes, unpack

log = logging.getLogger(__name__)


class RolloutWorker:
    """Wrap with `ray.remote(num_cpus=...)(RolloutWorker)`; also usable in-process for tests."""

    def __init__(self, engine: str, model_path: str, threads: int = 0, rollout_cfg=None, seed: int = 0, **engine_options):
        """With `rollout_cfg` (the `rollout.*` config) the engine reads its options from it; without,
        `engine_options` are passed to the engine's constructor (tests, benchmarks)."""
        cls = ENGINES.get(engine)
        if rollout_cfg is not None:
            self.engine = cls.from_config(model_path, rollout_cfg, threads, seed)
        else:
            self.engine = cls(model_path, threads=threads, **engine_options)
        self.weights_version = 0
        self.received_bytes = 0  # the last weight sync's payload
        self._routing_warned = False

    def load_weights(self, payload, version: int) -> int:
        """Replace all weights at once; generation never sees a mix of versions (the actor is
        single-threaded, so no generate call can interleave with this one). `payload`: what the
        learner exported in the engine's `weights_format` (`rlreason/transfer.py`)."""
        self.engine.load_weights(unpack(payload))
        self.weights_version = version
        self.received_bytes = payload_bytes(payload)
        return version

    def served_weights(self) -> dict | None:
        """The engine's fingerprint of what it now serves (`Engine.fingerprint`) and the bytes of the last
        sync's payload; None for an engine that cannot fingerprint itself."""
        if not hasattr(self.engine, "fingerprint"):
            return None
        return {**self.engine.fingerprint(), "bytes": self.received_bytes, "version": self.weights_version}

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
        batch.versions = torch.where(batch.response_mask.bool(), self.weights_version, -1).to(torch.int32)
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

    def score_logprobs(self, batch: RolloutBatch, temperature: float = 1.0):
        """Teacher-forced logprobs of given responses under this worker's weights (for checks)."""
        return self.engine.score(batch, temperature)

    def peak_memory_mb(self) -> dict:
        """Peak RSS (and CUDA memory on GPU) of this actor so far, in MiB."""
        from rlreason.telemetry.memory import peak_cuda_mb, peak_rss_mb

        return {"rss": peak_rss_mb(), "cuda": peak_cuda_mb()}

    def ping(self) -> int:
        return self.weights_version

    def pid(self) -> int:
        import os

        return os.getpid()
