"""Learner: the Ray actor that owns the trainable policy, its optimizer and (optionally) a frozen reference.

One `train_step` per rollout batch: an old-policy forward without gradient (logprobs, entropy), the
configured estimator's advantages, then `learner.ppo_epochs` passes over `learner.mini_batches`
mini-batches of the PPO-clip loss, one AdamW step each, gradients clipped to `learner.grad_clip`.
With one epoch and one mini-batch the update is on-policy and the old logprobs are the detached
logprobs of the very forward that is differentiated, so the ratio is exactly 1. `algo.tis_mode`
reweights the policy-gradient term by the (truncated) learner/sampler ratio, see
`algos/rollout_correction.py`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path

import torch

from rlreason.algos import resolve_estimator
from rlreason.algos.advantages import as_estimate
from rlreason.algos.kl import kl_k3
from rlreason.algos.losses import aggregate, gspo_loss, ppo_clip_loss
from rlreason.algos.rollout_correction import rollout_correction_weights
from rlreason.batch import RolloutBatch
from rlreason.learner.forward import response_logprobs
from rlreason.moe.control import RouterControl
from rlreason.moe.metrics import logprob_gap
from rlreason.moe.regularizers import freeze_routers
from rlreason.moe.router import moe_blocks
from rlreason.policy import load_policy, load_tokenizer

log = logging.getLogger(__name__)


class Learner:
    """Wrap with `ray.remote(num_cpus=...)(Learner)`; also usable in-process for tests."""

    def __init__(self, model_path: str, learner_cfg, algo_cfg, temperature: float, max_new_tokens: int, seed: int = 0,
                 moe_cfg=None):
        self.cfg = learner_cfg
        self.algo = algo_cfg
        self.temperature = temperature
        self.norm_len = algo_cfg.loss_norm_len or max_new_tokens
        if learner_cfg.threads:
            torch.set_num_threads(learner_cfg.threads)
        torch.manual_seed(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = load_policy(model_path).to(self.device)
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
            self.moe = RouterControl(self.model, moe_cfg, lambda b: self._forward(self.model, b.to(self.device)))
        elif moe_cfg is not None and moe_cfg.routing_replay != "none":
            raise ValueError(f"moe.routing_replay={moe_cfg.routing_replay} needs an MoE policy; this one is dense")
        self.ref = None
        if algo_cfg.kl_coef > 0:
            self.ref = load_policy(model_path).to(self.device)
            self.ref.eval()
            self.ref.requires_grad_(False)
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=learner_cfg.lr,
            betas=(learner_cfg.beta1, learner_cfg.beta2),
            weight_decay=learner_cfg.weight_decay,
        )
        self.estimator = resolve_estimator(algo_cfg.estimator)
        self.version = 0
        self.nonfinite_streak = 0  # consecutive updates skipped for a non-finite loss or gradient

    def _autocast(self):
        if self.cfg.dtype == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _forward(self, model, b: RolloutBatch, with_entropy: bool = False, needs: frozenset = frozenset()) -> dict:
        with self._autocast():
            return response_logprobs(
                model, b.prompt_ids, b.prompt_mask, b.response_ids, b.response_mask, self.temperature, with_entropy,
                with_hidden="hidden" in needs, with_vocab_logprobs="vocab_logprobs" in needs,
            )

    def _policy_loss(self, logp, old_logp, advantages, mask):
        a = self.algo
        if a.policy_loss == "ppo":
            return ppo_clip_loss(logp, old_logp, advantages, a.clip_eps_low, a.clip_eps_high)
        return gspo_loss(logp, old_logp, advantages, mask, a.clip_eps_low, a.clip_eps_high, token_level=a.policy_loss == "gspo-token")

    def get_weights(self) -> dict:
        return {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

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
        with torch.no_grad():
            with moe.old_pass(batch) if moe else contextlib.nullcontext():
                old = self._forward(self.model, batch, with_entropy=True, needs=self.estimator.needs)
            ref_logp = self._forward(self.ref, batch)["logprobs"] if self.ref is not None else None
        est = as_estimate(self.estimator(batch, self.algo, {"old_logprobs": old["logprobs"], "progress": progress, **old}))
        old.pop("vocab_logprobs", None)
        old.pop("hidden", None)
        # the estimator may narrow the tokens that enter the loss (D3S) and weight them (TW-GRPO)
        resp_mask = batch.response_mask.float()
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
            "loss/token_frac": float(mask.sum() / batch.response_mask.sum().clamp(min=1)),
            **{f"kl/rollout_{k}": v for k, v in logprob_gap(old["logprobs"], batch.sampling_logprobs, resp_mask).items()},
            **est.metrics,
        }
        if moe:
            metrics.update(moe.old_pass_metrics())

        single = self.cfg.mini_batches == 1 and self.cfg.ppo_epochs == 1
        B = batch.size
        sums: dict[str, float] = {}
        n_updates = skipped = 0
        tokens = 0
        for _ in range(self.cfg.ppo_epochs):
            perm = torch.randperm(B, generator=self.generator) if not single else torch.arange(B)
            for idx in torch.chunk(perm, self.cfg.mini_batches):
                mb = batch.select(idx)
                mb_mask = mask[idx]
                with moe.update_pass(idx) if moe else contextlib.nullcontext():
                    out = self._forward(self.model, mb, with_entropy=self.algo.entropy_coef > 0)
                    logp = out["logprobs"]
                    old_logp = logp.detach() if single else old["logprobs"][idx]
                    pg_tok, info = self._policy_loss(logp, old_logp, advantages[idx], mb_mask)
                    pg_tok = pg_tok * is_weights[idx]
                    if token_weights is not None:
                        pg_tok = pg_tok * token_weights[idx]
                    pg_loss = aggregate(pg_tok, mb_mask, self.algo.loss_agg, self.norm_len)
                    loss = pg_loss
                    update: dict[str, float] = {}  # this update's extra metrics, kept only if it is applied
                    if ref_logp is not None:
                        kl = kl_k3(logp, ref_logp[idx], self.algo.kl_clamp)
                        kl_loss = aggregate(kl, mb_mask, self.algo.loss_agg, self.norm_len)
                        loss = loss + self.algo.kl_coef * kl_loss
                        update["kl/ref"] = kl_loss.item()
                    if self.algo.entropy_coef > 0:
                        loss = loss - self.algo.entropy_coef * aggregate(out["entropy"], mb_mask, self.algo.loss_agg, self.norm_len)
                    if moe:
                        reg, reg_info = moe.regularizer_loss()
                        loss = loss + reg
                        update.update(reg_info)
                        moe.after_update()
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()  # inside the replay context: checkpointed layers recompute with the same routes
                if moe:
                    moe.router_grad_norm()
                max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
                grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
                if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
                    self._skip_nonfinite(loss, grad_norm)
                    skipped += 1
                    continue
                self.nonfinite_streak = 0
                self.optimizer.step()
                n_updates += 1
                tokens += int(mb.prompt_mask.sum() + mb.response_mask.sum())
                for k, v in (
                    *update.items(),
                    ("loss/policy", pg_loss.item()),
                    ("loss/total", loss.item()),
                    ("grad_norm", grad_norm.item()),
                    ("clip/low_frac", float(aggregate(info["clipped_low"].float(), mb_mask, "token-mean"))),
                    ("clip/high_frac", float(aggregate(info["clipped_high"].float(), mb_mask, "token-mean"))),
                    ("ratio/mean", float(aggregate(info["ratio"], mb_mask, "token-mean"))),
                ):
                    sums[k] = sums.get(k, 0.0) + v
        metrics.update({k: v / max(n_updates, 1) for k, v in sums.items()})
        metrics["train/skipped_updates"] = skipped
        if ref_logp is None:
            metrics["kl/ref"] = 0.0
        if moe:
            metrics.update(moe.finish())
        self.version += 1
        elapsed = time.perf_counter() - t0
        metrics["throughput/train_tokens_per_s"] = tokens / max(elapsed, 1e-9)
        metrics["learner/version"] = self.version
        return metrics

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

    def save_weights(self, directory: str) -> str:
        """Write the policy as an HF folder (for engines that reload weights from disk, e.g. vLLM).

        Tied output embeddings are written out as `lm_head.weight` too: vLLM's in-place reload
        rebuilds every module it finds, and one with no weights in the folder stays uninitialised."""
        from safetensors.torch import load_file, save_file

        self.model.save_pretrained(directory)
        if getattr(self.model.config, "tie_word_embeddings", False):
            path = Path(directory) / "model.safetensors"
            tensors = load_file(str(path))
            if "lm_head.weight" not in tensors:
                tensors["lm_head.weight"] = self.model.get_output_embeddings().weight.detach().clone()
                save_file(tensors, str(path), metadata={"format": "pt"})
        return directory

    # -- checkpoints -------------------------------------------------------------------------
    def save(self, directory: str) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(d / "policy")
        self.tokenizer.save_pretrained(d / "policy")
        torch.save(
            {
                "optimizer": self.optimizer.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "generator": self.generator.get_state(),
                "version": self.version,
            },
            d / "learner.pt",
        )

    def load(self, directory: str) -> int:
        d = Path(directory)
        # through from_pretrained, so HF's on-disk layout (e.g. per-expert MoE weights) maps back
        saved = load_policy(d / "policy")
        self.model.load_state_dict(saved.state_dict(), strict=True)  # copies onto self.device
        del saved
        extra = torch.load(d / "learner.pt", weights_only=False, map_location="cpu")  # optimizer state follows the params
        self.optimizer.load_state_dict(extra["optimizer"])
        torch.set_rng_state(extra["torch_rng"])
        self.generator.set_state(extra["generator"])
        self.version = extra["version"]
        if self.moe:
            self.moe.forget_probe()
        return self.version
