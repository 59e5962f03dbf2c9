"""What the learner does for an MoE policy in one train step: routing replay, regularisers, metrics.

`RouterControl` wraps a `RouterTap` with the learner's schedule:

1. `old_pass(batch)`: the no-grad old-policy forward. Under R3 it already replays the rollout
   engine's routes (the old logprobs are then those of the routing that sampled). It keeps the
   old router logits (anchoring), the routes it used (R2) and the global expert counts (global-batch
   LB), and reports train-vs-rollout routing mismatch, expert load and router statistics.
2. `update_pass(batch, idx)`: each update mini-batch's forward and backward (keep backward inside the
   context: activation checkpointing recomputes layers there, and the replay must hold). R3 forces
   the rollout routes, R2 the old pass's; `regularizer_loss` gives the configured LB / z / anchoring
   terms from the live logits; `after_update` accumulates replay and staleness mismatch.
3. `finish()`: routing change on a fixed probe batch across the step, router weight and
   gradient norms, the averaged update metrics; with `moe.balance=aux_free`, one step of the
   selection bias from the loads the step's update passes routed (summed over learner ranks).

Routing methods besides replay (specs/moe_routing_methods.md):
- aux-free balancing: `SelectionBias` hooks (installed before the tap, so the tap sees the biased
  choice and replay overrides it) select by softmax + b; `ExpertBias` moves b after each step.
  Under R3 the rollout engine's b decided the replayed routes (the engine's copy, synced with the
  weights: the learner's b of the previous step); under R2 the old pass's, which is the learner's
  current b. Either way the counted loads are the routes the experts received.
- ERC loss: added to `regularizer_loss` once per optimizer update (it does not depend on the batch).
- Sinkhorn routing: on a step chosen by `selective_step(seed, step)`, the old pass and every update
  pass of that step route their real tokens by the balanced plan (the same branch in all of them,
  so the ratio is 1 at the old policy); the probe and the reference route natively.

The reference model never goes through here: it is never replayed, biased or balanced.
"""

from __future__ import annotations

import contextlib

import torch

from rlreason.forward import build_inputs
from rlreason.moe import metrics as M
from rlreason.moe.balance import ExpertBias, SelectionBias
from rlreason.moe.erc import erc_loss, expert_gate_proj
from rlreason.moe.regularizers import expert_counts, load_balancing_loss, router_anchor_kl, z_loss
from rlreason.moe.router import RouterTap, moe_blocks, sequence_routes, unwrap
from rlreason.moe.sinkhorn import megatron_route, selective_step, ssr_route

REPLAY_MODES = ("none", "r2", "r3")


def _flat(routes: torch.Tensor) -> torch.Tensor:
    """[B, S, L, k] -> [B * S, L, k] long (the row order the MoE blocks flatten tokens in)."""
    return routes.reshape(-1, *routes.shape[2:]).long()


def _token_mask(b) -> torch.Tensor:
    _, attention_mask, _ = build_inputs(b.prompt_ids, b.prompt_mask, b.response_ids, b.response_mask)
    return attention_mask.reshape(-1)


class RouterControl:
    def __init__(self, model, cfg, forward, seed: int = 0):
        """`forward(batch)` runs the policy's forward pass over a rollout batch (the probe uses it);
        `seed` seeds the ERC noise and the Sinkhorn steps' choice."""
        if cfg.routing_replay not in REPLAY_MODES:
            raise ValueError(f"moe.routing_replay={cfg.routing_replay!r}; choose one of: {', '.join(REPLAY_MODES)}")
        self.cfg = cfg
        self.seed = seed
        self.step = 0  # the optimizer step being taken (the learner sets it: resumes keep counting)
        self.blocks = moe_blocks(model)
        self.bias = self.selection = None
        if cfg.balance == "aux_free":  # before the tap: the tap records the biased choice
            E = unwrap(self.blocks[0].gate).num_experts
            self.bias = ExpertBias(len(self.blocks), E, cfg.bias_update_rate, cfg.bias_update_rule, cfg.bias_schedule, cfg.bias_t0)
            self.selection = SelectionBias(model, self.bias.bias)
        self.balanced = None  # this step's batch routing rule (Sinkhorn), or None
        self.tap = RouterTap(model)
        self.mode = cfg.routing_replay
        self._forward = forward
        self._probe = None  # (batch, live routes after the last step)
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    # -- step part 1 -----------------------------------------------------------------------------------
    def _rollout_routes(self, b) -> torch.Tensor | None:
        routes = sequence_routes(b.prompt_routed_experts, b.routed_experts, b.prompt_ids.shape[1])
        return None if routes is None else _flat(routes)

    @contextlib.contextmanager
    def old_pass(self, b):
        """Context for the old-policy forward over the whole step batch `b`."""
        self._start_old(b)
        forced = self.rollout if self.mode == "r3" else None
        with self.tap.session(forced=forced, capture_logits=True, balanced=self.balanced, token_mask=self.mask):
            yield
        self._end_old(b)

    @contextlib.contextmanager
    def fused_pass(self, b):
        """The old pass and the single update pass as one forward (the learner's `fuse_old_pass`: one
        on-policy update over the whole batch, so the old policy is the live one). Call
        `fused_forward_done(b)` after the forward, before the loss; keep backward inside. R3 replays
        the rollout routes in it; under R2 the routes to replay are this very forward's, so the
        update uses the old pass's routes by construction (the replay metrics then read 0)."""
        self._start_old(b)
        self.forced = self.rollout if self.mode == "r3" else None
        with self.tap.session(forced=self.forced, capture_logits=True, balanced=self.balanced, token_mask=self.mask):
            yield

    def fused_forward_done(self, b) -> None:
        self._end_old(b)
        self.rows = self._rows(torch.arange(b.size))
        if self.mode == "r2":
            self.forced = self.old_used

    def _start_old(self, b) -> None:
        self._sums, self._counts = {}, {}
        self.mask = _token_mask(b)
        self.balanced = self._step_router()
        self.rollout = self._rollout_routes(b)
        if self.mode == "r3" and self.rollout is None:
            raise RuntimeError(
                "moe.routing_replay=r3 needs the routed experts recorded by the rollout engine, and this batch has none "
                "(the HF engine records them; vLLM only on CUDA). Use moe.routing_replay=r2 or none."
            )
        if self.cfg.metrics and self.cfg.probe_size > 0:
            if self._probe is None:  # a fixed probe: the first batch's first sequences
                self._probe = (b.select(torch.arange(min(self.cfg.probe_size, b.size))), None)
            if self._probe[1] is None:  # first step, or after a resume: the routes before this step's updates
                self._probe = (self._probe[0], self._probe_routes())

    def _step_router(self):
        """The Sinkhorn rule if this step routes by it (`moe.router=sinkhorn`, chosen by seed and step)."""
        c = self.cfg
        if c.router != "sinkhorn" or not selective_step(self.seed, self.step, c.sinkhorn_prob):
            return None
        if c.sinkhorn_mode == "megatron":
            return lambda logits, k: megatron_route(logits, k, c.sinkhorn_tol, c.sinkhorn_iters)
        return lambda logits, k: ssr_route(logits, k, c.sinkhorn_xi, c.sinkhorn_tol, c.sinkhorn_iters)

    def _end_old(self, b) -> None:
        self.old_logits = self.tap.stacked("logits").detach()  # [L, N, E]
        self.old_used = self.tap.stacked("used")  # [N, L, k]
        self.old_live = self.tap.stacked("live")
        self.seq_len = b.prompt_ids.shape[1] + b.response_ids.shape[1]
        self.global_counts = expert_counts(self.old_used, self.tap.num_experts, self.mask)

    def old_pass_metrics(self) -> dict:
        out: dict = {}
        if not self.cfg.metrics:
            return out
        layers = self.cfg.layer_metrics
        if self.rollout is not None:
            agree = M.route_agreement(self.rollout, self.old_live, self.mask)
            M.summarize("moe/rollout_vs_live/mismatch_rate", agree["mismatch_rate"], out, layers)
            M.summarize("moe/rollout_vs_live/topk_overlap", agree["topk_overlap"], out)
            out["moe/rollout_vs_live/token_any_mismatch"] = agree["token_any_mismatch"]
            out["moe/rollout_vs_live/layers_per_token"] = agree["mismatched_layers_per_token"]
        load = M.expert_load(self.old_used, self.tap.num_experts, self.mask)
        M.summarize("moe/load/max_over_mean", load["max_over_mean"], out, layers)
        M.summarize("moe/load/maxvio", load["maxvio"], out)
        M.summarize("moe/load/entropy", load["entropy"], out)
        M.summarize("moe/load/dead_experts", [float(d) for d in load["dead_experts"]], out, layers)
        stats = M.router_stats(self.old_logits, self.tap.top_k, self.mask)
        for name, values in stats.items():
            M.summarize(f"moe/router/{name}", values, out, layers and name == "near_tie_frac")
        out["moe/lb_loss"] = float(load_balancing_loss(self.old_logits, self.tap.top_k, self.mask, indices=self.old_used))
        out["moe/z_loss"] = float(z_loss(self.old_logits, self.mask))
        return out

    # -- step part 2 -----------------------------------------------------------------------------------
    def _rows(self, idx: torch.Tensor) -> torch.Tensor:
        """Flat token rows of sequences `idx` (rows of [B * S])."""
        base = idx.to(self.old_used.device)[:, None] * self.seq_len
        return (base + torch.arange(self.seq_len, device=base.device)[None]).reshape(-1)

    @contextlib.contextmanager
    def update_pass(self, idx: torch.Tensor):
        self.rows = self._rows(idx)
        forced = None
        if self.mode == "r3":
            forced = self.rollout[self.rows]
        elif self.mode == "r2":
            forced = self.old_used[self.rows]
        self.forced = forced
        with self.tap.session(forced=forced, capture_logits=True, balanced=self.balanced, token_mask=self.mask[self.rows]):
            yield

    def regularizer_loss(self) -> tuple[torch.Tensor | float, dict]:
        c = self.cfg
        if not (c.lb_coef or c.z_coef or c.anchor_coef or c.erc_coef):
            return 0.0, {}
        logits = self.tap.stacked("logits")
        mask = self.mask[self.rows]
        loss, info = 0.0, {}
        if c.lb_coef:
            counts = self.global_counts if c.lb_scope == "global" else None
            lb = load_balancing_loss(logits, self.tap.top_k, mask, indices=self.tap.stacked("used"), counts=counts)
            loss, info["loss/moe_lb"] = loss + c.lb_coef * lb, float(lb.detach())
        if c.z_coef:
            z = z_loss(logits, mask)
            loss, info["loss/moe_z"] = loss + c.z_coef * z, float(z.detach())
        if c.anchor_coef:
            a = router_anchor_kl(self.old_logits[:, self.rows], logits, mask)
            loss, info["loss/moe_anchor"] = loss + c.anchor_coef * a, float(a.detach())
        if c.erc_coef:
            erc = self.erc_loss()
            loss, info["loss/moe_erc"] = loss + c.erc_coef * erc, float(erc.detach())
        return loss, info

    def erc_loss(self) -> torch.Tensor:
        """The ERC loss summed over MoE layers, its noise seeded by (seed, step, layer)."""
        total = 0.0
        for layer, block in enumerate(self.blocks):
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + self.step) * 1_009 + layer)
            total = total + erc_loss(unwrap(block.gate).weight, expert_gate_proj(block.experts), self.cfg.erc_alpha, gen)
        return total

    def _add(self, name: str, value: float) -> None:
        if value == value:  # skip nan (no valid pair)
            self._sums[name] = self._sums.get(name, 0.0) + value
            self._counts[name] = self._counts.get(name, 0) + 1

    def after_update(self) -> None:
        live, used, mask = self.tap.stacked("live"), self.tap.stacked("used"), self.mask[self.rows]
        if self.bias is not None:  # the loads the experts received in this update's forward
            self.bias.count(expert_counts(used, self.tap.num_experts, mask))
        if not self.cfg.metrics:
            return

        def rate(a, b):
            return M.layer_mean(M.route_agreement(a, b, mask)["mismatch_rate"])

        if self.forced is not None:
            self._add("moe/replay_vs_used/mismatch_rate", rate(self.forced, used))  # 0 when the replay took
            agree = M.route_agreement(self.forced, live, mask)
            self._add("moe/replay_vs_live/mismatch_rate", M.layer_mean(agree["mismatch_rate"]))
            self._add("moe/replay_vs_live/topk_overlap", M.layer_mean(agree["topk_overlap"]))
        if self.rollout is not None:
            self._add("moe/rollout_vs_used/mismatch_rate", rate(self.rollout[self.rows], used))
        self._add("moe/old_vs_live/mismatch_rate", rate(self.old_used[self.rows], live))

    def router_grad_norm(self) -> None:
        grads = [r.weight.grad for r in self.tap.routers if r.weight.grad is not None]
        if grads and self.cfg.metrics:
            self._add("moe/router/grad_norm", float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

    # -- step part 3 -----------------------------------------------------------------------------------
    def _probe_routes(self) -> torch.Tensor:
        with torch.no_grad(), self.tap.session():
            self._forward(self._probe[0])
        return self.tap.stacked("live")

    def finish(self, all_reduce=None) -> dict:
        """Metrics after the step's updates: averaged update-pass metrics, router weight norm, and the
        share of the probe's (token, layer) routes that the step's updates changed. With aux-free
        balancing, b takes its step (`all_reduce` sums the loads over learner ranks)."""
        out = {k: v / self._counts[k] for k, v in self._sums.items()}
        if self.cfg.router == "sinkhorn":
            out["moe/sinkhorn/step"] = float(self.balanced is not None)
        if self.bias is not None:
            info = self.bias.update(all_reduce)
            self.selection.refresh()
            b = self.bias.bias
            M.summarize("moe/bias/range", (b.max(-1).values - b.min(-1).values).tolist(), out, self.cfg.layer_metrics)
            M.summarize("moe/bias/abs_mean", b.abs().mean(-1).tolist(), out)
            M.summarize("moe/bias/update_load_max_over_mean", info["max_over_mean"], out, self.cfg.layer_metrics)
            out["moe/bias/rate"] = info["rate"]
        if not self.cfg.metrics:
            return out
        out["moe/router/weight_norm"] = float(torch.linalg.vector_norm(torch.stack([r.weight.detach().norm() for r in self.tap.routers])))
        if self._probe is not None:
            before, after = self._probe[1], self._probe_routes()
            change = M.layer_mean(M.route_agreement(before, after, _token_mask(self._probe[0]))["mismatch_rate"])
            if change == change:  # not nan
                out["moe/probe/routing_change"] = change
            self._probe = (self._probe[0], after)
        return out

    def state_dict(self) -> dict:
        """What a checkpoint must keep besides the weights: the selection bias."""
        return {"bias": self.bias.state_dict()} if self.bias is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.bias is not None and "bias" in state:
            self.bias.load_state_dict(state["bias"])
            self.selection.bias = self.bias.bias
            self.selection.refresh()

    @contextlib.contextmanager
    def native(self):
        """Route as the checkpoint would (no selection bias, no tap: the LoRA learner's reference pass)."""
        with self.tap.paused():
            if self.selection is None:
                yield
                return
            self.selection.enabled = False
            try:
                yield
            finally:
                self.selection.enabled = True

    def forget_probe(self) -> None:
        """After loading other weights (resume), the cached probe routes are stale."""
        if self._probe is not None:
            self._probe = (self._probe[0], None)
