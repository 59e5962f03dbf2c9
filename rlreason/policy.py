"""Building and loading policies: a tiny Qwen3-MoE from a config, or a saved HF folder."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


MOE_ARCHS = ("qwen3_moe", "qwen2_moe", "mixtral", "olmoe", "deepseek_v3")


def tiny_moe_config(model_cfg, vocab_size: int, pad_id: int, bos_id: int, eos_id: int):
    """An HF config for a small MoE of architecture `model_cfg.arch` (one of MOE_ARCHS), every layer
    sparse, sized by `model_cfg` (hidden, layers, heads, experts, top_k); router aux loss off."""
    import transformers

    m = model_cfg
    arch = getattr(m, "arch", "qwen3_moe")
    common = dict(
        vocab_size=vocab_size,
        hidden_size=m.hidden_size,
        num_hidden_layers=m.num_layers,
        num_attention_heads=m.num_heads,
        num_key_value_heads=m.num_kv_heads,
        num_experts_per_tok=m.top_k,
        max_position_embeddings=m.max_position_embeddings,
        tie_word_embeddings=m.tie_embeddings,
        pad_token_id=pad_id,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        router_aux_loss_coef=0.0,
        output_router_logits=False,
    )
    if arch == "qwen3_moe":
        return transformers.Qwen3MoeConfig(
            **common, intermediate_size=m.intermediate_size, moe_intermediate_size=m.moe_intermediate_size,
            head_dim=m.hidden_size // m.num_heads, num_experts=m.num_experts, norm_topk_prob=True, decoder_sparse_step=1,
        )
    if arch == "qwen2_moe":  # adds an always-on shared expert behind a sigmoid gate; top-k not renormalised
        return transformers.Qwen2MoeConfig(
            **common, intermediate_size=m.intermediate_size, moe_intermediate_size=m.moe_intermediate_size,
            shared_expert_intermediate_size=m.moe_intermediate_size, num_experts=m.num_experts, norm_topk_prob=False,
            decoder_sparse_step=1,
        )
    if arch == "mixtral":  # Llama attention, experts of `intermediate_size`; top-k always renormalised
        return transformers.MixtralConfig(
            **common, intermediate_size=m.moe_intermediate_size, num_local_experts=m.num_experts,
            head_dim=m.hidden_size // m.num_heads,
        )
    if arch == "olmoe":  # QK-norm attention; top-k not renormalised
        return transformers.OlmoeConfig(
            **common, intermediate_size=m.moe_intermediate_size, num_experts=m.num_experts, norm_topk_prob=False,
        )
    if arch == "deepseek_v3":  # MLA attention, a shared expert, sigmoid routing with e_score_correction_bias
        head = m.hidden_size // m.num_heads
        return transformers.DeepseekV3Config(
            **{**common, "num_key_value_heads": m.num_heads}, intermediate_size=m.intermediate_size,
            moe_intermediate_size=m.moe_intermediate_size, n_routed_experts=m.num_experts, n_shared_experts=1, n_group=1,
            topk_group=1, first_k_dense_replace=0, routed_scaling_factor=1.0, norm_topk_prob=True, q_lora_rank=None,
            kv_lora_rank=head * 2, qk_rope_head_dim=head // 2, qk_nope_head_dim=head // 2, v_head_dim=head,
        )
    raise ValueError(f"model.arch={arch!r} is not available; choose one of: {', '.join(MOE_ARCHS)}")


def build_tiny_moe(model_cfg, vocab_size: int, pad_id: int, bos_id: int, eos_id: int, seed: int):
    """A randomly initialised MoE policy (default: Qwen3-MoE) sized by `model_cfg`; see tiny_moe_config."""
    from transformers import AutoModelForCausalLM

    cfg = tiny_moe_config(model_cfg, vocab_size, pad_id, bos_id, eos_id)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")


def load_policy(path: str | Path, dtype: str = "fp32"):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=DTYPES[dtype])
    model.generation_config.pad_token_id = model.config.pad_token_id
    return model


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    tok.padding_side = "left"
    return tok


def num_params(model) -> int:
    return sum(p.numel() for p in model.parameters())
