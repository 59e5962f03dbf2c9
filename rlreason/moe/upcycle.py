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

Drop-Upcycling (Nakamura et al., ICLR 2025, arXiv 2502.19261; its code read, `drop_ratio` > 0): in each
expert copy a fraction r of the intermediate neurons is re-initialised from the dense weights'
statistics, so that experts can diverge while keeping most of the dense knowledge (`drop_neurons`).
Per expert and per matrix (gate and up: rows; down: columns) n = floor(r I) neurons S are drawn, and
that slice is refilled from N(mu, sigma^2), mu and sigma (unbiased) of the slice itself. The reference
code draws S anew for each of the three matrices (`index_mode="per_matrix"`, the default here as
there), so a neuron survives whole with probability (1-r)^3; `shared` draws one S for all three (then
1-r), our option for short fine-tuning budgets. The reference code also permutes each expert's neurons
first, which changes nothing at equal width; it is left out. r > 0 is not the dense model's function:
give it a supervised warm-up before RL.
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


INDEX_MODES = ("per_matrix", "shared")


def slice_stats(part: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased standard deviation over every entry of the slice, as the reference code."""
    return part.mean(), part.std()


@torch.no_grad()
def refill_from_slice_stats(weight: torch.Tensor, index: torch.Tensor, dim: int, generator: torch.Generator) -> None:
    """In place: the slices `index` of `weight` along `dim` redrawn from N(mu, sigma^2) of those slices."""
    part = weight.index_select(dim, index).float()
    mu, sigma = slice_stats(part)
    fresh = torch.randn(part.shape, generator=generator) * sigma + mu
    weight.index_copy_(dim, index, fresh.to(weight.dtype))


@torch.no_grad()
def drop_neurons(gate_up: torch.Tensor, down: torch.Tensor, ratio: float, generator: torch.Generator,
                 index_mode: str = "per_matrix") -> dict:
    """One expert, in place: `gate_up` [2I, H] (gate rows, then up rows), `down` [H, I]. Returns the
    neuron ids re-initialised per matrix."""
    if index_mode not in INDEX_MODES:
        raise ValueError(f"unknown drop-upcycling index_mode {index_mode!r}; choose one of {', '.join(INDEX_MODES)}")
    inter = down.shape[1]
    n = int(ratio * inter)
    if n == 0:
        return {"gate": [], "up": [], "down": []}
    shared = torch.randperm(inter, generator=generator)[:n]
    chosen = {m: shared if index_mode == "shared" else torch.randperm(inter, generator=generator)[:n] for m in ("gate", "up", "down")}
    gate, up = gate_up[:inter], gate_up[inter:]  # views: refilled in place
    refill_from_slice_stats(gate, chosen["gate"], 0, generator)
    refill_from_slice_stats(up, chosen["up"], 0, generator)
    refill_from_slice_stats(down, chosen["down"], 1, generator)
    return {m: idx.tolist() for m, idx in chosen.items()}


@torch.no_grad()
def upcycle(dense, num_experts: int, top_k: int, router_std: float = 0.02, noise_std: float = 0.0, seed: int = 0,
            drop_ratio: float = 0.0, index_mode: str = "per_matrix"):
    """A MixtralForCausalLM whose experts are copies of `dense`'s MLPs, with `drop_ratio` of each expert's
    neurons re-initialised (Drop-Upcycling; see the module docstring)."""
    if not 0 <= drop_ratio <= 1:
        raise ValueError(f"drop_ratio={drop_ratio} must lie in [0, 1]")
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
    g_drop = torch.Generator().manual_seed(seed + 1)  # its own stream: the router is the same with and without drops
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
            if drop_ratio > 0:
                drop_neurons(experts.gate_up_proj[e], experts.down_proj[e], drop_ratio, g_drop, index_mode)
        router = layer.mlp.gate.weight
        router.copy_(torch.randn(router.shape, generator=g) * router_std if router_std > 0 else torch.zeros_like(router))
    if cfg.tie_word_embeddings:
        moe.tie_weights()
    return moe


def copy_tokenizer_files(src: Path, dst: Path) -> None:
    """The tokenizer and generation files of HF folder `src` into `dst` (weights and config are not copied)."""
    for f in src.iterdir():
        if f.is_file() and f.name.startswith(("tokenizer", "special_tokens", "generation_config", "chat_template")):
            shutil.copy2(f, dst / f.name)


def upcycled_folder(dense_path: str | Path, num_experts: int, top_k: int, cache: Path | None = None,
                    drop_ratio: float = 0.0, index_mode: str = "per_matrix") -> Path:
    """An HF folder with the upcycled MoE of the dense model at `dense_path` (and its tokenizer),
    built once under `cache` (default: next to the dense model) and reused; written atomically.
    `drop_ratio` > 0: Drop-Upcycling (a folder of its own, named by r and the index mode)."""
    from rlreason.policy import load_policy

    dense_path = Path(dense_path)
    root = cache or dense_path.parent
    drop = f"-drop{drop_ratio:g}{'' if index_mode == 'per_matrix' else '-' + index_mode}" if drop_ratio > 0 else ""
    final = root / f"{dense_path.name}-moe-e{num_experts}k{top_k}{drop}"
    if (final / "config.json").exists():
        return final
    log.info("upcycling %s into %d experts (top-%d%s): %s", dense_path, num_experts, top_k,
             f", drop-upcycled r={drop_ratio:g}" if drop_ratio > 0 else "", final)
    from rlreason.assets import publish_folder

    def write(tmp: Path) -> None:
        upcycle(load_policy(dense_path), num_experts, top_k, drop_ratio=drop_ratio, index_mode=index_mode).save_pretrained(tmp)
        copy_tokenizer_files(dense_path, tmp)

    return publish_folder(final, write)
