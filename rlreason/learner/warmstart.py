"""Supervised warm start with TRL, cached on disk by its config.

A random policy earns no reward, so RL starts from a policy fine-tuned (TRL `SFTTrainer`,
prompt-completion format, loss on completions only) on solutions the task writes. Training stops as
soon as greedy accuracy on a validation slice of the *train* split reaches
`warmstart.target_accuracy` (or at `warmstart.max_steps`), leaving room for RL to show. The held-out
eval split is never used here.

The result is an ordinary HF folder under `warmstart.cache_dir/<key>`, where the key hashes
everything that shapes it (model, task, warm-start settings, seed, tokenizer, library versions), so
a second run with the same settings starts at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path

import torch

from rlreason.assets import remove_stale_tmp

log = logging.getLogger(__name__)


def _plain(x):
    if is_dataclass(x):
        return asdict(x)
    try:
        from omegaconf import OmegaConf

        return OmegaConf.to_container(x, resolve=True)
    except Exception:  # noqa: BLE001
        return x


# task fields added after caches existed: left out of the key at their neutral value, so a cached
# warm start stays valid for runs that do not use them
_NEUTRAL_TASK = {"levels": [], "path": None}
_NEUTRAL_MODEL = {"arch": "qwen3_moe", "chat_template": False}
# RL-time options (the warm start trains the full base model either way) and smollm2-moe's upcycling (not a
# warm-started model): left out, so caches made before these fields existed stay valid
_IGNORED_MODEL = ("lora", "upcycle")
# keys since removed from the schema, at the value every cached warm start was made with (so caches stay valid)
_RETIRED_MODEL = {"tokenizer": "char"}


def cache_key(model_cfg, task_cfg, ws_cfg, seed: int, vocab: dict) -> str:
    import transformers
    import trl

    ws = {k: v for k, v in _plain(ws_cfg).items() if k != "cache_dir"}
    task = {k: v for k, v in _plain(task_cfg).items() if not (k in _NEUTRAL_TASK and v == _NEUTRAL_TASK[k])}
    blob = json.dumps(
        {
            "model": {**_RETIRED_MODEL, **{k: v for k, v in _plain(model_cfg).items()
                                           if k not in _IGNORED_MODEL and not (k in _NEUTRAL_MODEL and v == _NEUTRAL_MODEL[k])}},
            "task": task,
            "warmstart": ws,
            "seed": seed,
            "vocab": sorted(vocab.items()),
            "versions": [torch.__version__, transformers.__version__, trl.__version__],
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@torch.no_grad()
def greedy_accuracy(model, tokenizer, problems, max_new_tokens: int, batch_size: int = 256) -> float:
    from rewards.math import math_verifier

    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(problems), batch_size):
        chunk = problems[i : i + batch_size]
        enc = tokenizer(
            [p.prompt for p in chunk], return_tensors="pt", padding=True, add_special_tokens=False, return_token_type_ids=False
        )
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        texts = tokenizer.batch_decode(out[:, enc.input_ids.shape[1] :], skip_special_tokens=True)
        correct += sum(math_verifier(t, p.as_sample()).score for t, p in zip(texts, chunk))
    if was_training:
        model.train()
    return correct / max(1, len(problems))


def warm_start(model_cfg, task_cfg, ws_cfg, seed: int, tokenizer, train_problems, max_new_tokens: int) -> tuple[Path, dict]:
    """Return (policy folder, info); trains and caches it when not cached yet."""
    key = cache_key(model_cfg, task_cfg, ws_cfg, seed, tokenizer.get_vocab())
    root = Path(os.path.expanduser(ws_cfg.cache_dir))
    final = root / key
    info_path = final / "warmstart.json"
    if info_path.exists():
        info = json.loads(info_path.read_text())
        info["cached"] = True
        log.info("warm start: cached policy %s (val accuracy %.3f)", final, info["val_accuracy"])
        return final, info

    from datasets import Dataset, disable_progress_bars
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from rlreason.policy import build_tiny_moe

    disable_progress_bars()
    if len(train_problems) <= ws_cfg.eval_size:
        raise ValueError(f"warmstart.eval_size={ws_cfg.eval_size} leaves no SFT data from {len(train_problems)} train problems")
    val = train_problems[-ws_cfg.eval_size :]
    sft = train_problems[: -ws_cfg.eval_size]
    model = build_tiny_moe(model_cfg, len(tokenizer), tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, seed)
    style_rng = random.Random(seed)
    ds = Dataset.from_list(
        [
            {
                "prompt": p.prompt,
                "completion": (p.direct_solution if style_rng.random() < ws_cfg.direct_answer_fraction else p.solution)
                + tokenizer.eos_token,
            }
            for p in sft
        ]
    )

    history: list[dict] = []

    class StopAtAccuracy(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step % ws_cfg.eval_every == 0 or state.global_step >= ws_cfg.max_steps:
                acc = greedy_accuracy(model, tokenizer, val, max_new_tokens)
                history.append({"step": state.global_step, "val_accuracy": acc})
                log.info("warm start: step %d  val accuracy %.3f", state.global_step, acc)
                if acc >= ws_cfg.target_accuracy:
                    control.should_training_stop = True
            return control

    for stale in remove_stale_tmp(root):  # warm starts killed before they finished
        log.info("removed %s, left by a warm start that did not finish", stale)
    tmp = root / f".{key}.{os.getpid()}.tmp"
    args = SFTConfig(
        output_dir=str(tmp / "trainer"),
        max_steps=ws_cfg.max_steps,
        per_device_train_batch_size=ws_cfg.batch_size,
        learning_rate=ws_cfg.lr,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=ws_cfg.warmup_steps,
        logging_strategy="no",
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        dataloader_num_workers=0,
        max_length=model_cfg.max_position_embeddings,
        seed=seed,
        disable_tqdm=True,
    )
    t0 = time.perf_counter()
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tokenizer, callbacks=[StopAtAccuracy()])
    trainer.train()
    if not history or history[-1]["step"] != trainer.state.global_step:
        history.append({"step": trainer.state.global_step, "val_accuracy": greedy_accuracy(model, tokenizer, val, max_new_tokens)})
    info = {
        "key": key,
        "steps": trainer.state.global_step,
        "val_accuracy": history[-1]["val_accuracy"],
        "history": history,
        "seconds": time.perf_counter() - t0,
    }
    if info["val_accuracy"] < ws_cfg.target_accuracy:
        log.warning(
            "warm start stopped at warmstart.max_steps=%d with val accuracy %.3f < target %.3f",
            ws_cfg.max_steps, info["val_accuracy"], ws_cfg.target_accuracy,
        )
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(tmp / "policy")
    tokenizer.save_pretrained(tmp / "policy")
    (tmp / "policy" / "warmstart.json").write_text(json.dumps(info, indent=1))
    shutil.rmtree(tmp / "trainer", ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp / "policy", final)
    except OSError:  # another process finished the same key first
        if not info_path.exists():
            raise
    shutil.rmtree(tmp, ignore_errors=True)
    info["cached"] = False
    return final, info
