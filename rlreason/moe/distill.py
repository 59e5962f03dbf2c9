"""A short supervised warm-up for an upcycled MoE: distil its dense parent back in before RL.

Drop-Upcycling re-initialises a fraction r of every expert's neurons, so the upcycled model is not the
dense model's function (its paper continues pre-training for hundreds of billions of tokens before any
fine-tuning). A short warm-up stands in for that here, and to compare drop with sparse upcycling on
equal footing both get the same one (`model.upcycle.warmup_steps` > 0):

1. the dense model samples one response (temperature 1, `max_new_tokens`) to each of the first
   `prompts` train prompts, formatted as the RL run formats them (the held-out split is never read);
2. the MoE trains every parameter with AdamW (no weight decay) on batches of `batch` of these sequences
   for at most `steps` steps, stopping before the first step whose batch is already within
   `kl_target` nats per token, on the forward KL to the dense model at every response position t:

       L = mean_t  sum_v p_dense(v | y_<t) [log p_dense(v | y_<t) - log p_moe(v | y_<t)]

   (distillation on the teacher's logits rather than cross-entropy on its sampled tokens: lower
   variance, and a sparse upcycle, which is the dense function, starts at L = 0 up to rounding, so
   the stopping rule leaves it untouched: the same rule for both, not a different procedure).

The result is an HF folder beside the upcycled one, named by a key of every setting and the prompts,
written atomically and reused by later runs. Its `warmup.json` records the loss curve and the cost.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def forward_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over masked positions of KL(teacher || student) on the next-token distributions.
    logits [B, T, V]; mask [B, T] (1 where position t predicts a response token)."""
    t_logp = torch.log_softmax(teacher_logits.float(), dim=-1)
    s_logp = torch.log_softmax(student_logits.float(), dim=-1)
    per_pos = (t_logp.exp() * (t_logp - s_logp)).sum(-1)
    return (per_pos * mask).sum() / mask.sum().clamp(min=1)


@torch.no_grad()
def sample_teacher(teacher, tokenizer, prompts: list[str], max_new_tokens: int, seed: int, batch_size: int = 32) -> list[dict]:
    """One temperature-1 response from the teacher per prompt: [{"prompt_ids", "response_ids"}]."""
    torch.manual_seed(seed)
    out = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i : i + batch_size]
        enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False, return_token_type_ids=False)
        gen = teacher.generate(**enc, max_new_tokens=max_new_tokens, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                               pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        width = enc.input_ids.shape[1]
        for row, ids in enumerate(gen):
            prompt = enc.input_ids[row][enc.attention_mask[row].bool()].tolist()
            response = ids[width:].tolist()
            if tokenizer.eos_token_id in response:  # keep the end-of-sequence token: the MoE must learn to stop
                response = response[: response.index(tokenizer.eos_token_id) + 1]
            out.append({"prompt_ids": prompt, "response_ids": response})
        log.info("warm-up: teacher sampled %d/%d prompts", len(out), len(prompts))
    return out


def collate(rows: list[dict], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded input ids, attention mask, and the mask of positions whose next token is a response token."""
    seqs = [r["prompt_ids"] + r["response_ids"] for r in rows]
    width = max(map(len, seqs))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attn = torch.zeros(len(rows), width, dtype=torch.long)
    predicts = torch.zeros(len(rows), width)
    for i, (r, s) in enumerate(zip(rows, seqs)):
        ids[i, : len(s)] = torch.tensor(s)
        attn[i, : len(s)] = 1
        p = len(r["prompt_ids"])
        predicts[i, p - 1 : len(s) - 1] = 1  # logits at t predict token t+1
    return ids, attn, predicts


def warmup_key(upcycled: Path, dense: Path, cfg, prompts: list[str], max_new_tokens: int, seed: int) -> str:
    import transformers

    blob = json.dumps({"upcycled": upcycled.name, "dense": dense.name, "steps": cfg.warmup_steps, "batch": cfg.warmup_batch,
                       "lr": cfg.warmup_lr, "kl_target": cfg.warmup_kl_target, "prompts": prompts,
                       "max_new_tokens": max_new_tokens, "seed": seed, "versions": [torch.__version__, transformers.__version__]},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def distilled_folder(upcycled: Path, dense: Path, cfg, prompts: list[str], max_new_tokens: int, seed: int) -> Path:
    """The upcycled MoE at `upcycled` after the distillation warm-up (cfg: model.upcycle), built once."""
    from rlreason.assets import publish_folder

    prompts = prompts[: cfg.warmup_prompts]
    final = upcycled.parent / f"{upcycled.name}-warmup{cfg.warmup_steps}-{warmup_key(upcycled, dense, cfg, prompts, max_new_tokens, seed)}"
    if (final / "config.json").exists():
        return final
    log.info("warm-up: distilling %s into %s for %d steps (once; cached at %s)", dense.name, upcycled.name, cfg.warmup_steps, final)
    return publish_folder(final, lambda tmp: _train(upcycled, dense, cfg, prompts, max_new_tokens, seed, tmp))


def _train(upcycled: Path, dense: Path, cfg, prompts: list[str], max_new_tokens: int, seed: int, out: Path) -> None:
    from rlreason.moe.upcycle import copy_tokenizer_files
    from rlreason.policy import load_policy, load_tokenizer

    t0 = time.perf_counter()
    tok = load_tokenizer(upcycled)
    teacher = load_policy(dense).eval()
    rows = sample_teacher(teacher, tok, prompts, max_new_tokens, seed)
    sample_s = time.perf_counter() - t0
    student = load_policy(upcycled).train()
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.warmup_lr, weight_decay=0.0)
    rng = random.Random(seed)
    order: list[int] = []
    history = []
    for step in range(1, cfg.warmup_steps + 1):
        if len(order) < cfg.warmup_batch:  # epochs of the sampled set, reshuffled
            fresh = list(range(len(rows)))
            rng.shuffle(fresh)
            order += fresh
        batch = [rows[i] for i in order[: cfg.warmup_batch]]
        del order[: cfg.warmup_batch]
        ids, attn, predicts = collate(batch, tok.pad_token_id)
        with torch.no_grad():
            t_logits = teacher(input_ids=ids, attention_mask=attn).logits
        loss = forward_kl(t_logits, student(input_ids=ids, attention_mask=attn).logits, predicts)
        if not math.isfinite(loss.item()):
            raise RuntimeError(f"warm-up: the distillation loss is {loss.item()} at step {step}")
        history.append(round(loss.item(), 5))
        if loss.item() < cfg.warmup_kl_target:
            # checked before stepping: a sparse upcycle starts at KL ~1e-9, whose rounding-noise gradient Adam
            # would scale up to lr-sized steps and move it away from the dense function
            log.info("warm-up: KL %.2g < model.upcycle.warmup_kl_target=%g at step %d: done", loss.item(), cfg.warmup_kl_target, step)
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step == 1 or step % 10 == 0 or step == cfg.warmup_steps:
            log.info("warm-up: step %d/%d  KL(dense || moe) %.4f  (%.0f s)", step, cfg.warmup_steps, loss.item(),
                     time.perf_counter() - t0)
    student.save_pretrained(out)
    copy_tokenizer_files(upcycled, out)
    stopped_early = history[-1] < cfg.warmup_kl_target  # the last KL was measured, not stepped on
    info = {"teacher": dense.name, "student": upcycled.name, "prompts": len(prompts), "max_steps": cfg.warmup_steps,
            "steps_taken": len(history) - stopped_early, "kl_target": cfg.warmup_kl_target, "batch": cfg.warmup_batch,
            "lr": cfg.warmup_lr, "response_tokens": sum(len(r["response_ids"]) for r in rows), "kl": history,
            "teacher_sample_s": round(sample_s, 1), "seconds": round(time.perf_counter() - t0, 1)}
    (out / "warmup.json").write_text(json.dumps(info, indent=1))
