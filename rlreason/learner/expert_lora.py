"""LoRA on fused MoE expert stacks, applied to the activations instead of the weights
(`model.lora.expert_forward=activations`, the default).

peft adapts a transformers-5 expert stack W [E, a, b] by folding W + s * lhs @ rhs (one `baddbmm`, lhs
[E, a, r], rhs [E, r, b]) on every forward and handing the folded stack to the experts module. That costs
a full-size stack per forward, and in the backward a full-size weight gradient dW_e = g_e^T x_e per
expert plus a zero-filled [E, a, b] tensor per expert for the indexing `W[e]`: on the upcycled SmolLM2
(4 experts, 30 layers) a learner step took 3x its attention-only-LoRA twin
(`benchmarks/smollm2_moe_lora_profile.py`). The same adapter applied to the activations,

    x W_e^T + s * (x rhs_e^T) lhs_e^T        (W_e stored [out, in], transformers' default)
    x W_e   + s * (x lhs_e) rhs_e            (W_e stored [in, out], `is_transposed` experts)

is the same function up to float rounding and costs tokens x r x (a + b) per expert, with gradients only
for the factors. The factors are peft's own (`get_delta_factors`), so checkpoints, the adapter-only
weight sync and `merged_state_dict` are unchanged. What this module adds is only a forward: the outermost
peft wrapper of each experts module is given one that routes tokens to experts as transformers' eager
implementation does and adds the low-rank terms. Before a module is switched, the two forwards are
compared on random tokens with random adapters; a module whose forward differs (another gating, a
layout this code does not know) keeps peft's fold, with a warning.
"""

from __future__ import annotations

import logging
import types

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)
STACKS = ("gate_up_proj", "down_proj")


def route_expert_lora_through_activations(peft_model) -> int:
    """Give every peft-wrapped experts module the activation-space forward; returns how many switched."""
    from peft.tuners.lora.layer import ParamWrapper

    wrappers = [(n, m) for n, m in peft_model.get_base_model().named_modules() if isinstance(m, ParamWrapper)]
    nested = {id(m.base_layer) for _, m in wrappers}
    switched = 0
    for name, outer in wrappers:
        if id(outer) in nested:  # only the outermost wrapper of a chain runs the experts
            continue
        chain, experts = _wrapper_chain(outer)
        if not _is_fused_experts(experts, chain):
            continue
        peft_forward = outer.forward
        outer.forward = types.MethodType(_activation_forward(chain, experts, peft_forward), outer)
        if _same_function(outer, peft_forward):
            switched += 1
        else:
            del outer.forward  # back to the class's (peft's) forward
            log.warning("%s: the activation-space expert LoRA does not reproduce this experts module (%s); "
                        "it keeps peft's per-forward weight fold", name, type(experts).__name__)
    if switched:
        log.info("LoRA: %d experts modules apply their adapters to the activations", switched)
    return switched


def _wrapper_chain(outer):
    """peft nests one ParamWrapper per adapted parameter: outer -> ... -> the experts module."""
    from peft.tuners.lora.layer import ParamWrapper

    chain, inner = [], outer
    while isinstance(inner, ParamWrapper):
        chain.append(inner)
        inner = inner.base_layer
    return chain, inner


def _is_fused_experts(inner, chain) -> bool:
    names = {w.parameter_name for w in chain}
    stacks = [getattr(inner, s, None) for s in STACKS]
    return (names <= set(STACKS) and all(isinstance(p, torch.Tensor) and p.dim() == 3 for p in stacks)
            and getattr(inner, "has_gate", True) and hasattr(inner, "act_fn") and not getattr(inner, "has_bias", False))


def _activation_forward(chain, experts, peft_forward):
    by_stack = {w.parameter_name: w for w in chain}
    transposed = bool(getattr(experts, "is_transposed", False))

    def project(x, stack, e, factors):
        w = getattr(experts, stack)[e]
        y = x @ w if transposed else F.linear(x, w)
        if factors is not None:
            lhs, rhs, s = factors
            y = y + s * ((x @ lhs[e]) @ rhs[e] if transposed else (x @ rhs[e].T) @ lhs[e].T)
        return y

    def gate(h):
        if hasattr(experts, "_apply_gate"):
            return experts._apply_gate(h)
        g, u = h.chunk(2, dim=-1)
        return experts.act_fn(g) * u

    def forward(self, hidden_states, top_k_index, top_k_weights, *args, **kwargs):
        factors = {}
        for stack, w in by_stack.items():
            adapters = [a for a in w.active_adapters if a in w.lora_A]
            if args or kwargs or w.disable_adapters or w.merged or len(adapters) > 1:
                return peft_forward(hidden_states, top_k_index, top_k_weights, *args, **kwargs)
            factors[stack] = w.get_delta_factors(adapters[0]) if adapters else None
        out = torch.zeros_like(hidden_states)
        n = getattr(experts, "num_experts", getattr(experts, STACKS[0]).shape[0])
        for e in torch.unique(top_k_index).tolist():
            if not 0 <= e < n:  # expert-parallel padding index
                continue
            token, slot = torch.where(top_k_index == e)
            x = hidden_states[token]
            h = gate(project(x, STACKS[0], e, factors.get(STACKS[0])))
            y = project(h, STACKS[1], e, factors.get(STACKS[1]))
            out.index_add_(0, token, (y * top_k_weights[token, slot, None]).to(out.dtype))
        return out

    return forward


@torch.no_grad()
def _same_function(outer, peft_forward, tokens: int = 12, top_k: int = 2) -> bool:
    """Both forwards on random tokens and random routing, with the adapters' B factors made random
    (peft starts them at zero, which would make any forward agree)."""
    chain, experts = _wrapper_chain(outer)
    n, hidden = _experts_shape(experts)
    g = torch.Generator().manual_seed(0)
    param = getattr(experts, STACKS[0])
    x = torch.randn(tokens, hidden, generator=g).to(param)
    index = torch.stack([torch.randperm(n, generator=g)[:min(top_k, n)] for _ in range(tokens)])
    weights = torch.rand(index.shape, generator=g).to(param)
    saved = []
    for w in chain:
        for lora_b in w.lora_B.values():
            saved.append((lora_b.weight, lora_b.weight.clone()))
            lora_b.weight.copy_(torch.randn(lora_b.weight.shape, generator=g).to(lora_b.weight) * 0.05)
    try:
        expect = peft_forward(x, index, weights)
        got = outer.forward(x, index, weights)
        scale = expect.abs().max().clamp_min(1e-6)
        return bool(((got - expect).abs().max() / scale) < (1e-4 if param.dtype == torch.float32 else 3e-2))
    except Exception as err:  # a signature or layout this forward does not handle
        log.debug("activation-space expert LoRA check failed: %r", err)
        return False
    finally:
        for weight, value in saved:
            weight.copy_(value)


def _experts_shape(experts) -> tuple[int, int]:
    """(number of experts, hidden size) from the down projection, whatever its layout."""
    down = getattr(experts, STACKS[1])
    transposed = bool(getattr(experts, "is_transposed", False))
    return down.shape[0], down.shape[2] if transposed else down.shape[1]
