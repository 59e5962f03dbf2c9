"""Building and loading policies: a tiny Qwen3-MoE from a config, or a saved HF folder."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def build_tiny_moe(model_cfg, vocab_size: int, pad_id: int, bos_id: int, eos_id: int, seed: int):
    """A randomly initialised Qwen3-MoE policy sized by `model_cfg` (hidden, layers, experts, top_k)."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    cfg = Qwen3MoeConfig(
        vocab_size=vocab_size,
        hidden_size=model_cfg.hidden_size,
        intermediate_size=model_cfg.intermediate_size,
        moe_intermediate_size=model_cfg.moe_intermediate_size,
        num_hidden_layers=model_cfg.num_layers,
        num_attention_heads=model_cfg.num_heads,
        num_key_value_heads=model_cfg.num_kv_heads,
        head_dim=model_cfg.hidden_size // model_cfg.num_heads,
        num_experts=model_cfg.num_experts,
        num_experts_per_tok=model_cfg.top_k,
        norm_topk_prob=True,
        decoder_sparse_step=1,
        max_position_embeddings=model_cfg.max_position_embeddings,
        tie_word_embeddings=model_cfg.tie_embeddings,
        pad_token_id=pad_id,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        router_aux_loss_coef=0.0,
        output_router_logits=False,
        attn_implementation="sdpa",
    )
    torch.manual_seed(seed)
    model = Qwen3MoeForCausalLM(cfg)
    return model


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
