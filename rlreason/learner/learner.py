"""Learner: the Ray actor that owns the trainable policy, its optimizer and (optionally) a frozen reference.

One `train_step` per rollout batch: an old-policy forward without gradient (logprobs, entropy), the
configured estimator's advantages, then `learner.ppo_epochs` passes over `learner.mini_batches`
mini-batches of the PPO-clip loss, one AdamW step each, gradients clipped to `learner.grad_clip`.
With one epoch and one mini-batch the update is on-policy and the old logprobs are the detached
logprobs of the very forward that is differentiated, so the ratio is exactly 1; with
`learner.fuse_old_pass` (and one rank) that forward is also the old-policy pass, which then does not
run separately. Forwards run in `learner.length_buckets` length buckets, and with
`learner.share_prompt` each distinct prompt is forwarded once for its whole group (`forward.py`). `algo.tis_mode`
reweights the policy-gradient term by the (truncated) learner/sampler ratio, see
`algos/rollout_correction.py`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import time
from pathlib import Path

import torch

from rlreason.algos import resolve_estimator
from rlreason.algos.advantages import as_estimate
from rlreason.algos.kl import kl_k3
from rlreason.algos.losses import POLICY_LOSSES, aggregate, aggregate_weights, weighted_policy_loss
from rlreason.algos.rollout_correction import rollout_correction_weights
from rlreason.batch import RolloutBatch
from rlreason.forward import bucketed_response_logprobs, shared_prompt_response_logprobs
from rlreason.learner.lora import adapter_update, add_lora, load_adapter, merged_state_dict
from rlreason.learner.strategy import DeepSpeedStrategy, LocalStrategy, free_address
from rlreason.moe.balance import SELECTION_BIAS_KEY
from rlreason.moe.control import RouterControl
from rlreason.moe.metrics import logprob_gap
from rlreason.moe.regularizers import freeze_routers
from rlreason.moe.router import moe_blocks
from rlreason.policy import load_policy, load_tokenizer
from rlreason.telemetry.memory import peak_cuda_mb, peak_rss_mb

log = logging.getLogger(__name__)


class Learner:
    """Wrap with `ray.remote(num_cpus=...)(Learner)`; also usable in-process for tests."""

    def __init__(self, model_path: str, learner_cfg, algo_cfg, temperature: float, max_new_tokens: int, seed: int = 0,
                 moe_cfg=None, lora_cfg=None, rank: int = 0):
        """`rank`: this actor's place among `learner.num_workers` DeepSpeed ranks; with
        `learner.strategy=deepspeed`, call `connect(addr, port)` on every rank (at once) before training."""
        self.cfg = learner_cfg
        self.algo = algo_cfg
        self.temperature = temperature
        self.norm_len = algo_cfg.loss_norm_len or max_new_tokens
        if learner_cfg.threads:
            torch.set_num_threads(learner_cfg.threads)
        torch.manual_seed(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.rank = rank
        self.model = load_policy(model_path).to(self.device)
        self.lora = lora_cfg is not None and lora_cfg.r > 0
        self.adapter_sync = self.lora and lora_cfg.sync == "adapter"
        if self.lora:
            self.model = add_lora(self.model, lora_cfg)
        self.model.train()
        if getattr(learner_cfg, "grad_checkpointing", False):
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.tokenizer = load_tokenizer(model_path)
        self.moe = None
        if moe_blocks(self.model):
            from rlreason.config import MoEConfig

            moe_cfg = moe_cfg if moe_cfg is not None else MoEConfig()
            if moe_cfg.freeze_router:
                freeze_routers(self.model)
            self.moe = RouterControl(self.model, moe_cfg, lambda b: self._forward(self.model, b.to(self.device)), seed)
        elif moe_cfg is not None and moe_cfg.routing_replay != "none":
            raise ValueError(f"moe.routing_replay={moe_cfg.routing_replay} needs an MoE policy; this one is dense")
        elif moe_cfg is not None and (moe_cfg.balance != "none" or moe_cfg.erc_coef or moe_cfg.router != "native"):
            raise ValueError("moe.balance, moe.erc_coef and moe.router need an MoE policy; this one is dense")
        self.ref = None
        if algo_cfg.kl_coef > 0 and not self.lora:  # with LoRA the reference is the base model: adapters disabled
            self.ref = load_policy(model_path).to(self.device)
            self.ref.eval()
            self.ref.requires_grad_(False)
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=learner_cfg.lr,
            betas=(learner_cfg.beta1, learner_cfg.beta2),
            weight_decay=learner_cfg.weight_decay,
        )
        self.strategy = LocalStrategy(self.model, self.optimizer, learner_cfg.grad_clip) if learner_cfg.strategy == "single" else None
        self.estimator = resolve_estimator(algo_cfg.estimator)
        self.policy_loss = POLICY_LOSSES.get(algo_cfg.policy_loss)
        self.version = 0
        self.nonfinite_streak = 0  # consecutive updates skipped for a non-finite loss or gradient norm

    def address(self) -> tuple[str, int]:
        """Rank 0: where the other DeepSpeed ranks connect."""
        return free_address()

    def connect(self, master_addr: str, master_port: int) -> int:
        """DeepSpeed: join the process group and wrap the model and optimizer (every rank at once)."""
        c = self.cfg
        self.strategy = DeepSpeedStrategy(self.model, self.optimizer, c.grad_clip, c.zero_stage, self.rank, c.num_workers,
                                          master_addr, master_port, c.deepspeed_config)
        self.model = self.strategy.model
        return self.rank

    def pid(self) -> int:
        return os.getpid()

    def local_param_numel(self) -> int:
        """Parameter elements this rank holds (under ZeRO-3 its partition only)."""
        return sum(p.numel() for p in self.model.parameters())

    def _autocast(self):
        if self.cfg.dtype == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _forward(self, model, b: RolloutBatch, with_entropy: bool = False, needs: frozenset = frozenset(),
                 entropy_grad: bool = True) -> dict:
        buckets, segment = self.cfg.length_buckets, None
        if self.moe is not None and model is self.model and self.moe.tap.active:
            # each bucket's tokens are mapped back to the whole batch's layout for routing replay and metrics;
            # checkpointed recomputation in backward would not know which bucket it replays: one forward then
            buckets = 1 if self.cfg.grad_checkpointing else buckets
            segment = self.moe.tap.segment
        # each distinct prompt forwarded once (not under a router tap, whose segments follow the padded layout,
        # nor with checkpointing, which turns HF's KV cache off)
        shared = self.cfg.share_prompt and segment is None and not self.cfg.grad_checkpointing
        forward = shared_prompt_response_logprobs if shared else functools.partial(bucketed_response_logprobs, segment=segment)
        with self._autocast():
            return forward(
                model, b.prompt_ids, b.prompt_mask, b.response_ids, b.response_mask, buckets,
                temperature=self.temperature,
                with_entropy=with_entropy, with_hidden="hidden" in needs, with_vocab_logprobs="vocab_logprobs" in needs,
                entropy_grad=entropy_grad,
            )

    def get_weights(self) -> dict | None:
        """The policy's full weights on CPU, as the rollout engines load them: with LoRA the merged
        base + adapter weights, under ZeRO-3 gathered from every rank (a collective: call it on all
        ranks; ranks other than 0 return None)."""
        with self.strategy.full_params():
            if self.rank != 0:
                return None
            if self.lora:
                return merged_state_dict(self.model)
            return {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

    def _engine_extras(self) -> dict:
        """State the rollout engines need besides the weights: the MoE selection bias (aux-free balancing)."""
        if self.moe is None or self.moe.bias is None:
            return {}
        return {SELECTION_BIAS_KEY: self.moe.bias.bias.clone()}

    def weights_fingerprint(self, grouping: str, dtype: str) -> dict | None:
        """The fingerprint (`rlreason/weights_check.py`) of what the rollout engines should now serve:
        the weights `get_weights` returns, rounded to the engines' `dtype` (a torch dtype name), grouped as
        the engine groups its own (`grouping`), and the state sent with them. A collective under ZeRO-3
        (call it on all ranks); None on ranks other than 0."""
        from rlreason.weights_check import GROUPINGS, fingerprint

        with self.strategy.full_params():
            if self.rank != 0:
                return None
            weights = merged_state_dict(self.model) if self.lora else self.model.state_dict()
            groups = fingerprint(weights.items(), GROUPINGS[grouping], getattr(torch, dtype))
        groups.update(fingerprint(self._engine_extras().items()))  # sent and kept in fp32
        return groups

    def _sync_payload(self):
        """What a weight sync sends (call inside `full_params`, on rank 0): the LoRA adapters only (an
        `AdapterUpdate`) with `model.lora.sync=adapter`, else the (merged) weights; each with the state the
        engines keep beside them."""
        if self.adapter_sync:
            update = adapter_update(self.model)
            update.extras = self._engine_extras()
            return update
        weights = merged_state_dict(self.model) if self.lora else self.model.state_dict()
        return {**weights, **self._engine_extras()}

    def put_weights(self) -> list | None:
        """The weights `get_weights` returns, put into Ray's object store from this actor (a
        collective under ZeRO-3: call it on all ranks): `[ref]` on rank 0, None elsewhere. The driver
        passes the ref on to the rollout workers without fetching it (`rlreason/transfer.py`). With LoRA
        and `model.lora.sync=adapter`, only the adapters (an `AdapterUpdate`): the engine merges them."""
        with self.strategy.full_params():
            if self.rank != 0:
                return None
            return [_put(self._sync_payload())]  # copied into the store here, inside the gather

    def join_weights_group(self, host: str, port: int, world: int, timeout_s: float) -> None:
        """rollout.weight_transport=collective: rank 0 hosts and joins the weights group (`rlreason/collective.py`)
        as its rank 0; the rollout workers join as 1..world-1. Other ranks take no part."""
        from rlreason.collective import WeightsGroup

        if self.rank == 0:
            self.weights_group = WeightsGroup(host, port, 0, world, timeout_s, str(self.device))
            self.sender = None  # async publishes of this group (`publish_weights`)

    def broadcast_weights(self, version: int, bucket_mb: float, checkpoint_layout: bool = False) -> int | None:
        """Send the sync payload of `version` to the weights group (a collective under ZeRO-3: call it on all
        ranks). `checkpoint_layout`: for engines that load checkpoints (vLLM), the whole (merged) weights
        under the checkpoint's names, as `save_weights` writes them, never LoRA adapters alone. Returns the
        bytes sent (None on ranks other than 0)."""
        with self.strategy.full_params():
            if self.rank != 0:
                return None
            return self.weights_group.send(version, self._broadcast_payload(checkpoint_layout), bucket_mb)

    def publish_weights(self, version: int, bucket_mb: float, checkpoint_layout: bool = False) -> int | None:
        """trainer.mode=async with the collective transport: `broadcast_weights` without waiting. The payload is
        copied now and broadcast by a background thread (`collective.BackgroundSender`) while the learner trains
        on; each worker receives it after its generation in flight. Returns the bytes (None off rank 0)."""
        from rlreason.collective import BackgroundSender

        with self.strategy.full_params():
            if self.rank != 0:
                return None
            if self.sender is None:
                self.sender = BackgroundSender(self.weights_group)
            return self.sender.publish(version, self._broadcast_payload(checkpoint_layout), bucket_mb)

    def export_published(self, version: int, directory: str | None = None):
        """The copy published last (`publish_weights`), which must be `version`, as the object store carries it:
        `[ref]`, or written to `directory` as an HF folder (engines that reload checkpoints). For a worker
        restarted before it received that broadcast; the learner may have trained on since."""
        if self.rank != 0:
            return None
        payload = self.sender.kept(version)
        if directory is not None:
            self._hf_model().save_pretrained(directory, state_dict=payload)
            return directory
        return [_put(payload)]

    def _broadcast_payload(self, checkpoint_layout: bool):
        """(Inside `full_params`, rank 0.) `_sync_payload`, or for engines that reload checkpoints the (merged)
        weights under the checkpoint's names, as they read them."""
        if not checkpoint_layout:
            return self._sync_payload()
        return self._with_tied_head(merged_state_dict(self.model) if self.lora else self.model.state_dict())

    @torch.no_grad()
    def score_logprobs(self, batch: RolloutBatch) -> torch.Tensor:
        self.model.eval()
        try:
            return self._forward(self.model, batch.to(self.device))["logprobs"].cpu()
        finally:
            self.model.train()

    def train_step(self, batch: RolloutBatch, progress: float = 0.0) -> dict:
        """One update from a scored batch; `progress` = step / total_steps (for scheduled estimators)."""
        t0 = time.perf_counter()
        batch = batch.to(self.device)
        moe = self.moe
        if moe:
            moe.step = self.version  # seeds this step's ERC noise and Sinkhorn choice
        single = self.cfg.mini_batches == 1 and self.cfg.ppo_epochs == 1
        if single and self.cfg.fuse_old_pass and self.strategy.world_size == 1:
            return self._fused_step(batch, progress, t0)
        with torch.no_grad():
            with moe.old_pass(batch) if moe else contextlib.nullcontext():
                old = self._forward(self.model, batch, with_entropy=True, needs=self.estimator.needs)
            ref_logp = self._ref_logprobs(batch) if self.algo.kl_coef > 0 else None
        mask, advantages, token_weights, is_weights, metrics = self._advantages(batch, old, progress)
        B = batch.size
        sums: dict[str, float] = {}
        n_updates = skipped = 0
        tokens = 0
        for _ in range(self.cfg.ppo_epochs):
            perm = torch.randperm(B, generator=self.generator) if not single else torch.arange(B)
            for idx in torch.chunk(perm, self.cfg.mini_batches):
                applied, stats, n_tok = self._update(batch, idx, mask, advantages, is_weights, token_weights, old, ref_logp, single)
                if not applied:
                    skipped += 1
                    continue
                n_updates += 1
                tokens += n_tok
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v
        metrics.update({k: v / max(n_updates, 1) for k, v in sums.items()})
        metrics["train/skipped_updates"] = skipped
        return self._finish_step(metrics, ref_logp, tokens, t0)

    def _fused_step(self, batch: RolloutBatch, progress: float, t0: float) -> dict:
        """`learner.fuse_old_pass` with one on-policy update (one epoch, one mini-batch, one rank): the
        old-policy values are the detached outputs of the very forward that is differentiated (the
        weights have not moved), so the separate no-grad old-policy forward is skipped. Estimators,
        MoE old-pass metrics and the rollout-correction weights see exactly what they would see after it."""
        moe = self.moe
        with moe.fused_pass(batch) if moe else contextlib.nullcontext():
            live = self._forward(self.model, batch, with_entropy=True, needs=self.estimator.needs,
                                 entropy_grad=self.algo.entropy_coef > 0)
            if moe:
                moe.fused_forward_done(batch)
            old = {k: v.detach() for k, v in live.items()}
            with torch.no_grad():
                ref_logp = self._ref_logprobs(batch) if self.algo.kl_coef > 0 else None
            mask, advantages, token_weights, is_weights, metrics = self._advantages(batch, old, progress)
            live.pop("vocab_logprobs", None)
            live.pop("hidden", None)
            applied, stats, tokens = self._update(batch, torch.arange(batch.size), mask, advantages, is_weights, token_weights,
                                                  old, ref_logp, True, live=live)
        metrics.update(stats)
        metrics["train/skipped_updates"] = int(not applied)
        return self._finish_step(metrics, ref_logp, tokens, t0)

    def _finish_step(self, metrics: dict, ref_logp, tokens: int, t0: float) -> dict:
        if ref_logp is None:
            metrics["kl/ref"] = 0.0
        if self.moe:
            metrics.update(self.moe.finish(all_reduce=lambda c: self.strategy.all_reduce(c.to(self.device, torch.float32)).cpu()))
        self.version += 1
        elapsed = time.perf_counter() - t0
        metrics["timing/learner_s"] = elapsed  # inside the actor; timing/train_s adds the transport and the wait
        metrics["throughput/train_tokens_per_s"] = tokens / max(elapsed, 1e-9)
        metrics["learner/version"] = self.version
        metrics["memory/learner_peak_rss_mb"] = peak_rss_mb()
        if (cuda := peak_cuda_mb()) is not None:
            metrics["memory/learner_peak_cuda_mb"] = cuda
        return metrics

    def _advantages(self, batch: RolloutBatch, old: dict, progress: float):
        """The estimator's advantages from the old-policy values, the loss mask and weights, the step's metrics."""
        est = as_estimate(self.estimator(batch, self.algo, {"old_logprobs": old["logprobs"], "progress": progress, **old}))
        old.pop("vocab_logprobs", None)
        old.pop("hidden", None)
        # the estimator may narrow the tokens that enter the loss (D3S) and weight them (TW-GRPO)
        resp_mask = batch.gen_mask.float()  # the sampled tokens: never a multi-turn observation (batch.loss_mask)
        mask = resp_mask if est.loss_mask is None else est.loss_mask.to(self.device).float() * resp_mask
        advantages = est.advantages.to(self.device) * mask
        token_weights = est.token_weights.to(self.device) if est.token_weights is not None else None
        is_weights = rollout_correction_weights(
            old["logprobs"], batch.sampling_logprobs, resp_mask, self.algo.tis_mode, self.algo.tis_cap
        )

        metrics = {
            "entropy/mean": float(aggregate(old["entropy"], resp_mask, "token-mean")),
            # k3 estimate of KL(pi_sample || pi_train) on the sampled tokens
            "kl/rollout_vs_train": float(aggregate(kl_k3(batch.sampling_logprobs, old["logprobs"]), resp_mask, "token-mean")),
            "kl/rollout_ratio_gt2_frac": float(
                aggregate((old["logprobs"] - batch.sampling_logprobs > math.log(2.0)).float(), resp_mask, "token-mean")
            ),
            "advantage/mean": float(aggregate(advantages, mask, "token-mean")),
            "advantage/abs_mean": float(aggregate(advantages.abs(), mask, "token-mean")),
            "rollout_correction/weight_mean": float(aggregate(is_weights, resp_mask, "token-mean")),
            "rollout_correction/masked_seq_frac": float(((is_weights * resp_mask).sum(-1) == 0).float().mean()),
            "loss/token_frac": float(mask.sum() / resp_mask.sum().clamp(min=1)),
            **{f"kl/rollout_{k}": v for k, v in logprob_gap(old["logprobs"], batch.sampling_logprobs, resp_mask).items()},
            **est.metrics,
        }
        if self.moe:
            metrics.update(self.moe.old_pass_metrics())
        return mask, advantages, token_weights, is_weights, metrics

    def _update(self, batch, idx, mask, advantages, is_weights, token_weights, old, ref_logp, single,
                live: dict | None = None) -> tuple[bool, dict, int]:
        """One optimizer update on mini-batch `idx` (indices into the step batch). Under DeepSpeed each
        rank takes every world_size-th sequence of the mini-batch; the loss weights come from the whole
        mini-batch's mask, so the ranks' summed gradients are the single learner's (see strategy.py).
        `live`: the forward over the whole batch already ran (fused old pass, inside its MoE context)."""
        a, moe, st = self.algo, self.moe, self.strategy
        W = st.world_size
        weights = aggregate_weights(mask[idx], a.loss_agg, self.norm_len)  # [n, T] over the whole mini-batch
        share = torch.arange(len(idx))[st.rank::W]
        scale = float(W)
        if len(share) == 0:  # fewer sequences than ranks: join the collectives with a zero-weight sequence
            share, scale = torch.arange(1), 0.0
        local = idx[share]
        w = weights[share.to(weights.device)]
        mb = batch.select(local)
        mb_mask = mask[local]
        with moe.update_pass(local) if moe and live is None else contextlib.nullcontext():
            out = live if live is not None else self._forward(self.model, mb, with_entropy=a.entropy_coef > 0)
            logp = out["logprobs"]
            old_logp = logp.detach() if single else old["logprobs"][local]
            pg_loss, info = weighted_policy_loss(self.policy_loss, logp, old_logp, advantages[local], mb_mask, w, a.clip_eps_low,
                                                 a.clip_eps_high, is_weights[local],
                                                 token_weights[local] if token_weights is not None else None)
            loss = pg_loss
            kl_loss = torch.zeros((), device=self.device)
            if ref_logp is not None:
                kl_loss = (kl_k3(logp, ref_logp[local], a.kl_clamp) * w).sum()
                loss = loss + a.kl_coef * kl_loss
            if a.entropy_coef > 0:
                loss = loss - a.entropy_coef * (out["entropy"] * w).sum()
            update: dict[str, float] = {}  # this update's extra metrics, kept only if it is applied
            if moe:
                reg, reg_info = moe.regularizer_loss()  # over this rank's share of the mini-batch
                loss = loss + reg / scale if scale else loss
                update.update(reg_info)
                moe.after_update()
            # one collective for the metrics: global loss parts, clip and ratio sums, token count
            m = mb_mask
            vec = torch.stack([
                pg_loss.detach(), kl_loss.detach(), loss.detach(),
                (info["clipped_low"].float() * m).sum(), (info["clipped_high"].float() * m).sum(), (info["ratio"] * m).sum(),
                m.sum(), (mb.prompt_mask.sum() + mb.response_mask.sum()).float(),
            ]).float()
            parts = st.all_reduce(vec if scale else torch.zeros_like(vec))
            if not st.all_finite(bool(torch.isfinite(parts[2]))):
                self._skip_nonfinite(parts[2], float("nan"))
                return False, {}, 0
            st.backward(loss * scale)  # inside the replay context: checkpointed layers recompute with the same routes
        if moe:
            moe.router_grad_norm()
        applied, grad_norm = st.step()
        if not applied:
            self._skip_nonfinite(parts[2], grad_norm)
            return False, {}, 0
        self.nonfinite_streak = 0
        n = parts[6].clamp(min=1)
        stats = {
            **update,
            "loss/policy": float(parts[0]),
            "loss/total": float(parts[2]),
            "grad_norm": grad_norm,
            "clip/low_frac": float(parts[3] / n),
            "clip/high_frac": float(parts[4] / n),
            "ratio/mean": float(parts[5] / n),
        }
        if ref_logp is not None:
            stats["kl/ref"] = float(parts[1])
        return True, stats, int(parts[7])

    @torch.no_grad()
    def _ref_logprobs(self, b: RolloutBatch) -> torch.Tensor:
        """The frozen reference: its own copy, or with LoRA the base model (adapters disabled)."""
        if self.ref is not None:
            return self._forward(self.ref, b)["logprobs"]
        with self.model.disable_adapter(), self.moe.native() if self.moe else contextlib.nullcontext():
            return self._forward(self.model, b)["logprobs"]

    def _skip_nonfinite(self, loss, grad_norm) -> None:
        """Drop this update (no optimizer step, gradients cleared); too many in a row stop training."""
        self.optimizer.zero_grad(set_to_none=True)
        self.nonfinite_streak += 1
        log.warning("learner: non-finite loss %s / grad norm %s: update skipped (%d in a row)", float(loss.detach()),
                    float(grad_norm), self.nonfinite_streak)
        if self.nonfinite_streak >= self.cfg.max_nonfinite_updates:
            raise FloatingPointError(
                f"{self.nonfinite_streak} updates in a row had a non-finite loss or gradient norm "
                f"(learner.max_nonfinite_updates={self.cfg.max_nonfinite_updates}); stopping before the weights are damaged. "
                "Checkpoints written so far are intact; lower learner.lr or check the estimator/verifier for NaN."
            )

    def _hf_model(self):
        return self.model.get_base_model() if self.lora else self.model

    def save_weights(self, directory: str) -> str:
        """Write the policy as an HF folder (for engines that reload weights from disk, e.g. vLLM).

        Tied output embeddings are written out as `lm_head.weight` too: vLLM's in-place reload
        rebuilds every module it finds, and one with no weights in the folder stays uninitialised."""
        weights = self.get_weights()
        if weights is None:
            return directory
        self._hf_model().save_pretrained(directory, state_dict=self._with_tied_head(weights))
        return directory

    def _with_tied_head(self, weights: dict) -> dict:
        """`weights` plus `lm_head.weight` (the same tensor) when the output embedding is tied to the input one."""
        hf = self._hf_model()
        if getattr(hf.config, "tie_word_embeddings", False) and "lm_head.weight" not in weights:
            emb = hf.get_input_embeddings()
            name = next((n for n, m in hf.named_modules() if m is emb), None)
            key = f"{name.replace('.base_layer', '')}.weight" if name is not None else None
            if key in weights:
                weights = {**weights, "lm_head.weight": weights[key]}
        return weights

    # -- checkpoints -------------------------------------------------------------------------
    def save(self, directory: str) -> None:
        """A checkpoint (every rank calls it): the policy as an HF folder (`policy/`), or with LoRA the
        adapters only (`adapter/`); the optimizer (`learner.pt`, or DeepSpeed's per-rank partitions
        under `deepspeed/`); and each rank's random state."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        try:
            with self.strategy.full_params():  # under ZeRO-3 the weights are whole only inside this context
                if self.rank == 0:
                    self.model.save_pretrained(d / ("adapter" if self.lora else "policy"))  # a PeftModel writes adapters only
                    self.tokenizer.save_pretrained(d / ("adapter" if self.lora else "policy"))
            extra = self.strategy.save(d)
            torch.save(
                {**extra, "torch_rng": torch.get_rng_state(), "generator": self.generator.get_state(), "version": self.version,
                 "moe": self.moe.state_dict() if self.moe else {}},
                d / ("learner.pt" if self.rank == 0 else f"learner_rank{self.rank}.pt"),
            )
        except OSError:
            raise
        except Exception as e:  # noqa: BLE001 - torch and safetensors report a full disk as their own errors
            raise disk_error(d, e) from e

    def load(self, directory: str) -> int:
        d = Path(directory)
        extra = torch.load(d / ("learner.pt" if self.rank == 0 else f"learner_rank{self.rank}.pt"), weights_only=False,
                           map_location="cpu")
        if isinstance(self.strategy, DeepSpeedStrategy):
            self.strategy.load(d, extra)  # weights (trainable ones under LoRA) and optimizer partitions
        else:
            if self.lora:
                load_adapter(self.model, d / "adapter")
            else:
                # through from_pretrained, so HF's on-disk layout (e.g. per-expert MoE weights) maps back
                saved = load_policy(d / "policy")
                self.model.load_state_dict(saved.state_dict(), strict=True)  # copies onto self.device
                del saved
            self.strategy.load(d, extra)  # optimizer state follows the params
        torch.set_rng_state(extra["torch_rng"])
        self.generator.set_state(extra["generator"])
        self.version = extra["version"]
        if self.moe:
            self.moe.load_state_dict(extra.get("moe", {}))
            self.moe.forget_probe()
        return self.version


def _put(payload):
    """A sync payload (state dict or `AdapterUpdate`) put into Ray's object store, in transport form: its ref."""
    import ray

    from rlreason.transfer import AdapterUpdate, to_transport

    return ray.put(payload.to_transport() if isinstance(payload, AdapterUpdate) else to_transport(payload))


def disk_error(directory: Path, e: Exception) -> Exception:
    """A write that failed with a library's own error ("iostream error", a safetensors IoError) as the
    OSError it is when the disk is full, naming the directory; any other error unchanged."""
    import errno
    import shutil

    free = shutil.disk_usage(directory).free
    if free < 256 * 2**20 or "No space left" in str(e) or "StorageFull" in str(e):
        return OSError(errno.ENOSPC, f"No space left on device ({free // 2**20} MiB free; {type(e).__name__}: {str(e)[:200]})",
                       str(directory))
    return e
