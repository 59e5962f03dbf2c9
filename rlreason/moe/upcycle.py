"""Sparse upcycling: a dense Llama-architecture model (SmolLM2) into a Mixtral-architecture MoE.

Every MLP becomes E identical experts (copies of the dense MLP) behind a new router. Mixtral's router
renormalises the top-k probabilities to sum to 1, so with identical experts a token's output is
sum_j w_j * MLP(x) = MLP(x) for any router weights and any top_k: the upcycled model's logits equal
the dense model's at initialisation (up to float rounding of sum_j w_j = 1), and RL then lets the
experts diverge (Komatsuzaki et al., arXiv 2212.05055). Attention, norms, embeddings and head are
copied unchanged (Mixtral's attention is Llama's: no bias, no QK-norm, the same RoPE).

The router starts random (`router_std`, default 0.02 like the model's own init), so routing is
spread across experts from the first step; `router_std=0` gives an all-equal router (ties broken by
expert index). `noise_std` > 0 perturbs each expert copy to break their symmetry (then the logits
are no longer exactly equal).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def mixtral_config_from_llama(llama_cfg, num_experts: int, top_k: int):
    from transformers import MixtralConfig

    if getattr(llama_cfg, "attention_bias", False) or getattr(llama_cfg, "mlp_bias", False):
        raise ValueError("upcycling needs a Llama without attention/MLP biases (Mixtral has none)")
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k={top_k} must lie in 1..num_experts={num_experts}")
    c = llama_cfg
    return MixtralConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads,
        head_dim=getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads,
        hidden_act=c.hidden_act,
        max_position_embeddings=c.max_position_embeddings,
        rms_norm_eps=c.rms_norm_eps,
        rope_parameters=dict(c.rope_parameters),
        tie_word_embeddings=c.tie_word_embeddings,
        pad_token_id=c.pad_token_id,
        bos_token_id=c.bos_token_id,
        eos_token_id=c.eos_token_id,
        num_local_experts=num_experts,
        num_experts_per_tok=top_k,
        sliding_window=None,
        attention_dropout=0.0,
        router_jitter_noise=0.0,
        router_aux_loss_coef=0.0,
        output_router_logits=False,
    )


@torch.no_grad()
def upcycle(dense, num_experts: int, top_k: int, router_std: float = 0.02, noise_std: float = 0.0, seed: int = 0):
    """A MixtralForCausalLM whose experts are copies of `dense`'s MLPs (see the module docstring)."""
    from transformers import MixtralForCausalLM

    cfg = mixtral_config_from_llama(dense.config, num_experts, top_k)
    torch.manual_seed(seed)
    moe = MixtralForCausalLM(cfg).to(next(dense.parameters()).dtype)
    src = dense.state_dict()
    dst = moe.state_dict()
    for name, tensor in src.items():
        if ".mlp." in name:
            continue
        if name not in dst:
            raise KeyError(f"upcycling: {name} has no counterpart in the Mixtral model")
        dst[name].copy_(tensor)
    g = torch.Generator().manual_seed(seed)
    for i, layer in enumerate(moe.model.layers):
        mlp = dense.model.layers[i].mlp
        gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight], dim=0)  # [2I, H]: gate first, then up
        experts = layer.mlp.experts
        for e in range(num_experts):
            experts.gate_up_proj[e].copy_(gate_up)
            experts.down_proj[e].copy_(mlp.down_proj.weight)
            if noise_std > 0:
                experts.gate_up_proj[e].add_(torch.randn(gate_up.shape, generator=g) * noise_std)
                experts.down_proj[e].add_(torch.randn(mlp.down_proj.weight.shape, generator=g) * noise_std)
        router = layer.mlp.gate.weight
        router.copy_(torch.randn(router.shape, generator=g) * router_std if router_std > 0 else torch.zeros_like(router))
    if cfg.tie_word_embeddings:
        moe.tie_weights()
    return moe


def upcycled_folder(dense_path: str | Path, num_experts: int, top_k: int, cache: Path | None = None) -> Path:
    """An HF folder with the upcycled MoE of the dense model at `dense_path` (and its tokenizer),
    built once under `cache` (default: next to the dense model) and reused; written atomically."""
    from rlreason.policy import load_policy

    dense_path = Path(dense_path)
    root = cache or dense_path.parent
    final = root / f"{dense_path.name}-moe-e{num_experts}k{top_k}"
    if (final / "config.json").exists():
        return final
    log.info("upcycling %s into %d experts (top-%d): %s", dense_path, num_experts, top_k, final)
    from rlreason.assets import publish_folder

    def write(tmp: Path) -> None:
        upcycle(load_policy(dense_path), num_experts, top_k).save_pretrained(tmp)
        for f in dense_path.iterdir():  # tokenizer and generation files
            if f.is_file() and f.name.startswith(("tokenizer", "special_tokens", "generation_config", "chat_template")):
                shutil.copy2(f, tmp / f.name)

    return publish_folder(final, write)
