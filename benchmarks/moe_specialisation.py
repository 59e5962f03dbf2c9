"""Expert specialisation of a LoRA-trained MoE run by task category, at its start and its checkpoints.

    .venv/bin/python benchmarks/moe_specialisation.py RUN [RUN ...] [--out spec.json] [--per-category 16]

For each run folder and each policy in it (step 0: the base its checkpoints' adapters name, which is
the policy RL started from; then every kept checkpoint, its adapters merged into that base and its
aux-free selection bias from learner.pt applied as the run's engine applied it), the policy answers
the held-out problems of each category greedily (the run's task, `--per-category` of each, the run's
prompt format and max_new_tokens). Every routed slot of the question and answer tokens is counted
by (category, layer, expert); the chat template's shared prefix is left out, since identical prefixes
route identically. Per layer, `category_specialisation` (rlreason/moe/metrics.py) gives the mutual
information between category and expert (bits) and the mean total-variation distance of a
category's load from the overall load; the table prints their means over layers, the largest layer
value, E * max load, and the greedy accuracy on these problems.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def policies(run: Path) -> list[tuple[int, str, torch.Tensor | None]]:
    """(step, HF folder, selection bias or None) for step 0 and each kept checkpoint."""
    from rlreason.lab.pool import adapter_base, merged_policy

    steps = sorted(p for p in (run / "checkpoints").glob("step_*") if (p / "adapter" / "adapter_config.json").exists())
    if not steps:
        raise SystemExit(f"{run} has no LoRA checkpoint (checkpoints/step_*/adapter): nothing to compare with its start")
    out = [(0, adapter_base(str(steps[0] / "adapter")), None)]
    for ckpt in steps:
        state = torch.load(ckpt / "learner.pt", map_location="cpu", weights_only=False) if (ckpt / "learner.pt").exists() else {}
        bias = state.get("moe", {}).get("bias", {}).get("bias")
        out.append((int(ckpt.name.split("_")[1]), merged_policy(str(ckpt / "adapter"), run / "merged"), bias))
    return out


@torch.no_grad()
def routed_counts(folder: str, bias, problems, prompt_format, max_new_tokens: int, categories: list[str]):
    """counts [C, L, E] of routed slots by category, and greedy accuracy."""
    from rewards.math import math_verifier
    from rlreason.moe.balance import SelectionBias
    from rlreason.moe.router import moe_blocks, unwrap
    from rlreason.policy import load_policy, load_tokenizer

    tok = load_tokenizer(folder)
    model = load_policy(folder).eval()
    routers = [unwrap(b.gate) for b in moe_blocks(model)]
    selection = SelectionBias(model, bias.clone().float()) if bias is not None else None
    texts = [prompt_format(p, None) for p in problems]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False, return_token_type_ids=False)
    gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id)
    answers = tok.batch_decode(gen[:, enc.input_ids.shape[1]:], skip_special_tokens=True)
    correct = [math_verifier(a, p.as_sample()).score for a, p in zip(answers, problems)]
    # the tokens to count: after the prompts' common prefix, up to and including the answer's end
    width = enc.input_ids.shape[1]
    real = torch.cat([enc.attention_mask.bool(), torch.ones_like(gen[:, width:], dtype=torch.bool)], 1)
    for row in range(len(problems)):
        resp = gen[row, width:].tolist()
        if tok.eos_token_id in resp:
            real[row, width + resp.index(tok.eos_token_id) + 1:] = False
    prompts = [enc.input_ids[r][enc.attention_mask[r].bool()].tolist() for r in range(len(problems))]
    shared = next((i for i in range(min(map(len, prompts))) if len({p[i] for p in prompts}) > 1), min(map(len, prompts)))
    count = real.clone()
    for r in range(len(problems)):
        first = width - int(enc.attention_mask[r].sum())  # left padding
        count[r, : first + shared] = False
    captured: list[torch.Tensor] = []
    hooks = [r.register_forward_hook(lambda m, i, out: captured.append(out[2].detach())) for r in routers]
    model(input_ids=gen, attention_mask=real.long())
    for h in hooks:
        h.remove()
    if selection is not None:
        selection.close()
    E = routers[0].num_experts
    ids = torch.stack(captured, 1)  # [B*T, L, k]
    cat_of_row = torch.tensor([categories.index(p.category) for p in problems])
    cats = cat_of_row[:, None].expand_as(count).reshape(-1)[count.reshape(-1)]
    ids = ids[count.reshape(-1)]
    counts = torch.zeros(len(categories), len(routers), E)
    for layer in range(len(routers)):
        for slot in range(ids.shape[-1]):
            counts[:, layer].index_put_((cats, ids[:, layer, slot]), torch.ones(len(cats)), accumulate=True)
    return counts, sum(correct) / len(correct)


def main(argv=None) -> int:
    from omegaconf import OmegaConf

    from rlreason.data.tasks import load_task
    from rlreason.moe.metrics import category_specialisation
    from rlreason.orchestrator.batches import PromptFormat
    from rlreason.policy import load_tokenizer

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--per-category", type=int, default=16, help="held-out problems per category")
    ap.add_argument("--out", type=Path, help="write every number (per layer, per category) here as JSON")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    results = []
    print(f"{'run':<28} {'step':>4} {'greedy':>6} {'MI bits':>8} {'max MI':>7} {'mean TV':>8} {'E*max load':>10}")
    for run in args.runs:
        cfg = OmegaConf.load(run / "config.yaml")
        _, held_out = load_task(cfg.task)
        categories = sorted({p.category for p in held_out})
        chosen = [p for c in categories for p in [q for q in held_out if q.category == c][: args.per_category]]
        for step, folder, bias in policies(run):
            fmt = PromptFormat(load_tokenizer(folder), cfg.model.chat_template, False)
            counts, acc = routed_counts(folder, bias, chosen, fmt, cfg.rollout.max_new_tokens, categories)
            layers = [category_specialisation(counts[:, layer]) for layer in range(counts.shape[1])]
            load = counts.sum(0) / counts.sum((0, 2))[:, None]
            mi = [x["mutual_information"] for x in layers]
            row = {"run": str(run), "step": step, "greedy": acc, "categories": categories, "mi_mean": sum(mi) / len(mi),
                   "mi_max": max(mi), "tv_mean": sum(x["mean_tv"] for x in layers) / len(layers),
                   "max_over_mean": float((load.max(-1).values * load.shape[-1]).mean()), "layers": layers}
            results.append(row)
            print(f"{run.name[-28:]:<28} {step:>4} {acc:>6.3f} {row['mi_mean']:>8.4f} {row['mi_max']:>7.4f} "
                  f"{row['tv_mean']:>8.4f} {row['max_over_mean']:>10.3f}", flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
