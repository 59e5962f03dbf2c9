"""RolloutWorker: the Ray actor that owns one inference engine and generates groups of responses.

It knows engines only through the `Engine` protocol (`engine.py`): the name in `rollout.engine` is
looked up in the engine registry once, here.
"""

from __future__ import annotations

import logging
import time

import torch

from rlreason.batch import RolloutBatch
from rlreason.rollout.engine import ENGINES
from rlreason.rollout.partial import continuation_inputs, stitch, unfinished
from rlreason.rollout.routing import validate_routed_experts
from rlreason.transfer import payload_bytes, unpack

log = logging.getLogger(__name__)


class RolloutWorker:
    """Wrap with `ray.remote(num_cpus=...)(RolloutWorker)`; also usable in-process for tests."""

    def __init__(self, engine: str, model_path: str, threads: int = 0, rollout_cfg=None, seed: int = 0,
                 chat_template: bool = False, **engine_options):
        """With `rollout_cfg` (the `rollout.*` config) the engine reads its options from it; without,
        `engine_options` are passed to the engine's constructor (tests, benchmarks). `chat_template`: the
        prompts are in the tokenizer's chat template (model.chat_template), so multi-turn observations are too."""
        cls = ENGINES.get(engine)
        if rollout_cfg is not None:
            self.engine = cls.from_config(model_path, rollout_cfg, threads, seed)
        else:
            self.engine = cls(model_path, threads=threads, **engine_options)
        self.weights_version = 0
        self.received_bytes = 0  # the last weight sync's payload
        self._routing_warned = False
        # rollout.partial: a generation on weights older than this ends at its next token (`interrupt`)
        self.partial = bool(getattr(rollout_cfg, "partial", False))
        self._interrupt_below = 0
        self.step_latency = float(getattr(rollout_cfg, "simulated_step_latency_s", 0.0))  # benchmarks: a separate device
        self._stops = hasattr(self.engine, "generate_ids")  # the engine asks stop() after every token
        self.episodes = None  # rollout.env other than single_turn: multi-turn episodes (rollout/episodes.py)
        if getattr(rollout_cfg, "env", "single_turn") != "single_turn":
            from rlreason.envs.base import ENVS
            from rlreason.rollout.episodes import EpisodeRunner

            env_cls, env_args = ENVS.get(rollout_cfg.env), dict(rollout_cfg.env_args)
            self.episodes = EpisodeRunner(self.engine, lambda: env_cls(**env_args), rollout_cfg.max_turns,
                                          rollout_cfg.max_total_tokens, list(rollout_cfg.stop), chat_template)

    def load_weights(self, payload, version: int) -> int:
        """Replace all weights at once; generation never sees a mix of versions (the actor is
        single-threaded, so no generate call can interleave with this one). `payload`: what the
        learner exported in the engine's `weights_format` (`rlreason/transfer.py`)."""
        self.engine.load_weights(unpack(payload))
        self.weights_version = version
        self.received_bytes = payload_bytes(payload)
        return version

    def join_weights_group(self, host: str, port: int, rank: int, world: int, timeout_s: float) -> None:
        """rollout.weight_transport=collective: join the learner's weights group as `rank` (`rlreason/collective.py`),
        here or, for an engine whose weights live in another process (vLLM), in the engine's own process."""
        if hasattr(self.engine, "join_weights_group"):
            self.engine.join_weights_group(host, port, rank, world, timeout_s)
            return
        from rlreason.collective import WeightsGroup

        self.weights_group = WeightsGroup(host, port, rank, world, timeout_s, "cuda" if torch.cuda.is_available() else "cpu")

    def receive_weights(self, version: int, bucket_mb: float) -> int:
        """The collective counterpart of `load_weights`: the learner's broadcast of weights `version`,
        loaded at once as `load_weights` loads (by the engine itself when it joined the group)."""
        if hasattr(self.engine, "receive_weights"):
            self.received_bytes = self.engine.receive_weights(version, bucket_mb)
        else:
            payload, self.received_bytes = self.weights_group.receive(version, bucket_mb)
            self.engine.load_weights(unpack(payload))
        self.weights_version = version
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
        samples: list[dict] | None = None,
    ) -> tuple[RolloutBatch, list[str]]:
        """`samples`: the task's sample of each prompt, which resets its multi-turn environments."""
        if self.episodes is not None:
            batch, texts = self.episodes.run(prompts, samples, n, max_new_tokens, temperature, top_p, greedy, seed,
                                             self.weights_version)
            batch.group_index = batch.group_index + group_offset
            return self._checked(batch, max_new_tokens), texts
        per_token = self._stops and (self.partial or self.step_latency > 0)
        batch, texts = self.engine.generate(
            prompts, n, max_new_tokens, temperature=temperature, top_p=top_p, greedy=greedy, seed=seed,
            **({"stop": self._after_token} if per_token else {}),
        )
        if self.step_latency and not self._stops:  # an engine without a per-token hook: the steps' latency at once
            time.sleep(self.step_latency * int(batch.response_mask.sum(-1).max()))
        batch.group_index = batch.group_index + group_offset
        batch.versions = torch.where(batch.response_mask.bool(), self.weights_version, -1).to(torch.int32)
        return self._checked(batch, max_new_tokens), texts

    def interrupt(self, version: int) -> None:
        """rollout.partial: end the generation running on weights older than `version` at its next token.
        Called on the actor's "control" concurrency group, so it runs beside the generation."""
        self._interrupt_below = max(self._interrupt_below, version)

    def _interrupted(self) -> bool:
        return self.weights_version < self._interrupt_below

    def _after_token(self) -> bool:
        """Asked by the engine after every decode step: wait out the simulated step latency (rollout.
        simulated_step_latency_s, sleeping, so the CPU is free for the learner as a separate device leaves
        it), then say whether an interrupt has come."""
        if self.step_latency:
            time.sleep(self.step_latency)
        return self._interrupted()

    def resume(self, batch: RolloutBatch, max_new_tokens: int, temperature: float, top_p: float, seed: int,
               greedy: bool = False) -> tuple[RolloutBatch, list[str]]:
        """Continue the rows of `batch` an interrupt cut short, under the weights served now, with the
        tokens they have left (`rlreason/rollout/partial.py`); it may be interrupted again."""
        engine = self.engine
        rows = torch.nonzero(unfinished(batch, max_new_tokens, engine.eos_id)).flatten()
        done = batch.response_mask.sum(-1)
        for n in sorted(set(done[rows].tolist())):  # rows with as many tokens so far share one call
            sub = rows[done[rows] == n]
            ids, mask = continuation_inputs(batch, sub, engine.pad_id)
            cont, _ = engine.generate_ids(ids, mask, max_new_tokens - n, temperature, top_p, greedy, seed + n, stop=self._after_token)
            batch = stitch(batch, sub, cont, self.weights_version, engine.pad_id)
        texts = engine.tokenizer.batch_decode(batch.response_ids, skip_special_tokens=True)
        return self._checked(batch, max_new_tokens), texts

    def _checked(self, batch: RolloutBatch, max_new_tokens: int) -> RolloutBatch:
        """Stamp the version; validate the routes; under rollout.partial, count the rows cut short."""
        batch.weights_version = self.weights_version
        if self.partial:
            cut = unfinished(batch, max_new_tokens, self.engine.eos_id)
            batch.meta = {"unfinished": int(cut.sum()), "unfinished_tokens": int(batch.response_mask[cut].sum())}
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
        return batch

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
