"""Auxiliary-loss-free load balancing (DeepSeek-V3, arXiv 2412.19437; Wang et al., arXiv 2408.15664):
a per-expert bias b enters the top-k *selection* only, and after each optimizer step moves towards
balance. No loss term, so no gradient competes with the policy's.

    selection   S_t = topk_e(s_te + b_e)           s: the router's scores (probabilities for softmax
                                                    routers, sigmoids for DeepSeek-style ones)
    weights     g_t = s_t gathered at S_t          unbiased; renormalised if the router does so
    update      b_e += u * sign(mean(c) - c_e)      c_e: routed slots of expert e over the step's
                                                    global batch (all learner ranks); once per step

The sign rule is Megatron's and DeepSeek-V3's. "A Theoretical Framework for Auxiliary-Loss-Free Load
Balancing of Sparse MoE" (arXiv 2512.03915) reads it as one dual step of the assignment LP
max sum s_te x_te s.t. each token takes k experts and each expert at most Tk/E tokens: b = -lambda, the
expert prices, whose best response is topk(s - lambda). Its proportional form, b_e += u (mean - c_e) /
mean, is `rule="proportional"` (the normalisation by the mean is ours, so u means the same in both);
`schedule="inv_time"` decays u as u0 / (1 + t / t0), the decreasing steps of its regret bound (the form
of that schedule is ours: the paper's abstract states the bound, not the schedule).

b is kept in fp32 whatever the model's dtype: bf16's spacing near 1 (7.8e-3) is larger than u = 1e-3.
"""

from __future__ import annotations

import torch

RULES = ("sign", "proportional")
SELECTION_BIAS_KEY = "rlreason.moe.selection_bias"  # b [L, E] in a weights payload (state dict or AdapterUpdate.extras)
SCHEDULES = ("constant", "inv_time")


def biased_topk(scores: torch.Tensor, bias: torch.Tensor, k: int) -> torch.Tensor:
    """Expert ids [N, k] chosen by scores [N, E] + bias [E] (the bias decides selection only)."""
    return torch.topk(scores.float() + bias.float(), k, dim=-1).indices


def bias_step(counts: torch.Tensor, rate: float, rule: str = "sign") -> torch.Tensor:
    """The change of b from the step's loads `counts` [..., E]: rate * sign(mean - c) (or proportional).
    A balanced load gives 0; under-loaded experts rise, over-loaded ones fall."""
    c = counts.double()
    gap = c.mean(-1, keepdim=True) - c
    if rule == "sign":
        return (rate * torch.sign(gap)).float()
    if rule == "proportional":
        return (rate * gap / c.mean(-1, keepdim=True).clamp(min=1e-12)).float()
    raise ValueError(f"unknown bias update rule {rule!r}; choose one of {', '.join(RULES)}")


def scheduled_rate(rate: float, step: int, schedule: str = "constant", t0: float = 100.0) -> float:
    """u at optimizer step `step` (0-based): constant, or u0 / (1 + step / t0)."""
    if schedule == "constant":
        return rate
    if schedule == "inv_time":
        return rate / (1.0 + step / t0)
    raise ValueError(f"unknown bias schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")


class ExpertBias:
    """The per-layer biases [L, E] (fp32) and the loads counted since the last update.

    `count(counts)` adds one forward's loads [L, E] (`expert_counts` of the ids the experts received, padding
    masked); `update()` applies one step of the rule to every layer and clears the counts. `all_reduce` (a callable on the
    [L, E] counts) sums them over learner ranks first, so every rank moves b identically."""

    def __init__(self, num_layers: int, num_experts: int, rate: float, rule: str = "sign", schedule: str = "constant",
                 t0: float = 100.0):
        self.bias = torch.zeros(num_layers, num_experts, dtype=torch.float32)
        self.counts = torch.zeros(num_layers, num_experts, dtype=torch.float64)
        self.rate, self.rule, self.schedule, self.t0 = rate, rule, schedule, t0
        self.steps = 0

    def count(self, counts: torch.Tensor) -> None:
        self.counts += counts.detach().to("cpu", torch.float64)

    def update(self, all_reduce=None) -> dict:
        """One step of b from the counted loads; returns the loads' max/mean per layer before the step."""
        counts = all_reduce(self.counts) if all_reduce is not None else self.counts
        u = scheduled_rate(self.rate, self.steps, self.schedule, self.t0)
        if float(counts.sum()) > 0:
            self.bias += bias_step(counts, u, self.rule)
        self.steps += 1
        imbalance = (counts.max(-1).values / counts.mean(-1).clamp(min=1e-12)).tolist()
        self.counts = torch.zeros_like(self.counts)
        return {"max_over_mean": imbalance, "rate": u}

    def state_dict(self) -> dict:
        return {"bias": self.bias.clone(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.bias = state["bias"].to(torch.float32).clone()
        self.steps = int(state["steps"])


class SelectionBias:
    """Make every router of `model` select by scores + b, its gate weights unchanged.

    - Routers without a bias of their own (transformers-5 Qwen3-MoE, Qwen2-MoE, Mixtral, OLMoE: a softmax,
      forward returning (logits, weights, indices)): a forward hook re-selects topk(softmax(l) + b_l) and
      recomputes the weights from the unbiased softmax at those ids (renormalised as the router does).
    - DeepSeek-style routers (`e_score_correction_bias`, sigmoid scores): the router's own bias is b; a
      pre-hook writes b_l into it before each forward, and b starts from the checkpoint's values.
    Installed in the learner before its router tap, so the tap records the biased choice and routing
    replay overrides it; and in the HF rollout engine, which receives b with the weights. `enabled`
    False (the LoRA learner's reference pass) routes as the checkpoint does."""

    def __init__(self, model, bias: torch.Tensor):
        from rlreason.moe.router import moe_blocks, renormalises, unwrap

        routers = [unwrap(b.gate) for b in moe_blocks(model)]
        if bias.shape != (len(routers), routers[0].num_experts if routers else 0):
            raise ValueError(f"selection bias of shape {tuple(bias.shape)} for {len(routers)} MoE layers")
        self.bias = bias  # [L, E] fp32, shared (updated in place by ExpertBias or load)
        self.enabled = True
        self.initial = torch.zeros_like(bias)
        self._own = {}  # layer -> a DeepSeek-style router
        self._handles = []
        for layer, r in enumerate(routers):
            if hasattr(r, "e_score_correction_bias"):
                self.initial[layer] = r.e_score_correction_bias.detach().float().cpu()
                bias[layer] = self.initial[layer]
                self._own[layer] = r
                self._handles.append(r.register_forward_pre_hook(self._own_bias(layer)))
            else:
                self._handles.append(r.register_forward_hook(self._hook(layer, r.top_k, renormalises(r))))

    def _own_bias(self, layer: int):
        def pre_hook(module, args):
            value = self.bias[layer] if self.enabled else self.initial[layer]
            module.e_score_correction_bias.copy_(value.to(module.e_score_correction_bias.device))

        return pre_hook

    def _hook(self, layer: int, k: int, renormalise: bool):
        from rlreason.moe.router import route_weights  # the gates replay uses too: the unbiased softmax at the ids

        def hook(module, inputs, output):
            if not self.enabled:
                return None
            logits, weights, _ = output
            probs = torch.softmax(logits.detach().float(), dim=-1)
            indices = biased_topk(probs, self.bias[layer].to(probs.device), k)
            return logits, route_weights(logits, indices, renormalise).to(weights.dtype), indices

        return hook

    def load(self, bias: torch.Tensor) -> None:
        self.bias.copy_(bias)
        self.refresh()

    def refresh(self) -> None:
        """Write b into the DeepSeek-style routers' own bias now (their weights, and so a saved policy
        folder, then carry the current b, not the one of the last forward)."""
        with torch.no_grad():
            for layer, router in self._own.items():
                router.e_score_correction_bias.copy_(self.bias[layer].to(router.e_score_correction_bias.device))

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
