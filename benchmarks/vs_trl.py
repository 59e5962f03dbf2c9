"""rlreason vs TRL's GRPOTrainer on the same work, side by side, plus the bare compute under both.

    .venv/bin/python benchmarks/vs_trl.py --model tiny_moe [--prompts 32] [--group 8] [--max-new 32]
        [--steps 6] [--warmup 2] [--repeats 3] [--sides rlreason,trl,bare] [--set key=value ...]
        [--arm 'name:key=value,key=value' ...] [--json out.json]

Same work on every side: the same policy (tiny_moe: the cached warm start of `make run`; smollm2:
SmolLM2-135M-Instruct), the same arithmetic prompts (SmolLM2: in its chat template), G samples per
prompt at temperature 1, top-p 1, no top-k, the same max prompt/response lengths, one AdamW update per
step over the whole batch (lr, betas, weight decay, grad clip as rlreason's defaults), KL off, the
same `math` verifier, GRPO's seq-mean-token-mean loss (TRL `loss_type="grpo"`), HF `generate`, and
the same LoRA adapters when the model's recipe trains through LoRA (`model=smollm2`: rank 16, alpha 32,
peft's all-linear; TRL gets them as `peft_config`, the bare loop through `rlreason.learner.lora.add_lora`).

Each repeat runs every side in a fresh child process, one after the other (nothing else running):
- `rlreason`: `rlreason/run.py` itself (Ray actors, the verifier pool), `--warmup + --steps` steps;
  per step `timing/step_s` (evaluation is not in it), rollout and train tokens/s.
- `trl`: `trl.GRPOTrainer` with `use_cpu`, one process; per-step wall time from a callback, its
  `generate` and reward calls timed by wrapping them.
- `bare`: the compute both frameworks wrap, with no framework: the smallest one-process GRPO loop
  (same prompt sampler, `model.generate`, the verifier, group advantages, one padded forward +
  backward + AdamW step, 2 torch threads); only generate and forward/backward/step are timed.
`--arm` adds an rlreason variant (its overrides on top of `--set`), run in the same rotation, so each
speed change is measured side by side with the others. The first `--warmup` steps of each run are
dropped; each side's figure is the median over repeats of the per-run median. Peak memory is the largest sum of RSS over the child's whole
process tree (for rlreason: the driver, Ray's own processes, the actors and the verifier workers),
sampled every second. Framework overhead = step time / (bare generate + bare forward/backward) - 1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# -- the work, as every side sees it -------------------------------------------------------------------
def work(args):
    """(policy folder, prompts in training order, gold answers, config) for `args.model`."""
    from rlreason.run import compose
    from rlreason.trainer import Trainer

    cfg, _ = compose(rlreason_overrides(args, total_steps=1))
    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer.from_config(cfg, Path(tmp))  # loads the task; the warm start comes from its cache
    from rlreason.policy import load_tokenizer

    tok = load_tokenizer(tr.policy.path)
    prompts, answers = [], []
    for p in tr.data.train:
        text = p.prompt
        if cfg.model.chat_template:
            text = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
        prompts.append(text)
        answers.append(p.answer)
    return str(tr.policy.path), prompts, answers, cfg


def rlreason_overrides(args, total_steps: int) -> list[str]:
    return [f"model={args.model}", f"total_steps={total_steps}", f"rollout.prompts_per_step={args.prompts}",
            f"rollout.group_size={args.group}", f"rollout.max_new_tokens={args.max_new}", "eval_every=0",
            "checkpoint_every=0", "telemetry.tensorboard=false", "telemetry.console=false", *args.set]


# -- children --------------------------------------------------------------------------------------------
def child_rlreason(args) -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix="vs_trl_rlreason_"))
    cmd = [sys.executable, str(ROOT / "rlreason/run.py"), *rlreason_overrides(args, args.warmup + args.steps), f"run_dir={run_dir}"]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    steps = [r for r in rows if "timing/step_s" in r and r["step"] > args.warmup]
    med = lambda k: statistics.median(r[k] for r in steps)  # noqa: E731
    mem = {k: max(r[k] for r in steps) for k in steps[-1] if k.startswith("memory/")}
    return {"step_s": med("timing/step_s"), "rollout_s": med("timing/rollout_s"), "reward_s": med("timing/reward_s"),
            "train_s": med("timing/train_s"), "sync_s": med("timing/sync_s"),
            "rollout_tok_s": med("throughput/rollout_tokens_per_s"), "learner_s": med("timing/learner_s"),
            # tokens trained / the step's time outside generation and scoring (as for TRL), not the learner's own clock
            "train_tok_s": statistics.median(r["throughput/train_tokens_per_s"] * r["timing/learner_s"] / r["timing/train_s"]
                                             for r in steps),
            "response_len": med("response_length/mean"), "steps": len(steps), **mem}


def child_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    import rewards
    from rlreason.learner.lora import lora_config

    policy, prompts, answers, cfg = work(args)
    torch.set_num_threads(os.cpu_count() or 1)
    verifier = rewards.load(cfg.reward.verifier, {}).call
    n = args.prompts * (args.warmup + args.steps)
    data = Dataset.from_dict({"prompt": [prompts[i % len(prompts)] for i in range(n)],
                              "answer": [answers[i % len(answers)] for i in range(n)]})
    timings = {"gen": [], "reward": [], "gen_tokens": [], "train_tokens": []}

    def reward(completions, answer, **_):
        t0 = time.perf_counter()
        out = [float(verifier(c, {"answer": a}).score) for c, a in zip(completions, answer)]
        timings["reward"].append(time.perf_counter() - t0)
        return out

    lc = cfg.learner
    conf = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="vs_trl_trl_"), use_cpu=True, bf16=False, seed=cfg.seed,
        model_init_kwargs={"dtype": "float32"},  # as rlreason loads it (a bf16 checkpoint would otherwise stay bf16)
        per_device_train_batch_size=args.prompts * args.group, gradient_accumulation_steps=1, num_generations=args.group,
        max_completion_length=args.max_new, max_steps=args.warmup + args.steps, num_iterations=1,
        temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p, top_k=0, beta=0.0, loss_type="grpo",
        epsilon=cfg.algo.clip_eps_low, scale_rewards="group", learning_rate=lc.lr, adam_beta1=lc.beta1, adam_beta2=lc.beta2,
        weight_decay=lc.weight_decay, max_grad_norm=lc.grad_clip, lr_scheduler_type="constant", warmup_steps=0,
        optim="adamw_torch", logging_steps=1, report_to=[], save_strategy="no", disable_tqdm=True, log_completions=False,
        dataloader_num_workers=0,
        # TRL's GRPOConfig turns gradient checkpointing on by default, and it stays on unless
        # --trl-grad-checkpointing off: on SmolLM2 with LoRA at 64 samples it was TRL's faster setting here
        # (104 vs 142 s a step; without it TRL's process reached 19 GB; BENCHMARKS.md).
        gradient_checkpointing=args.trl_grad_checkpointing == "on",
    )
    step_t: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            step_t.append(time.perf_counter() - self.t0)

    trainer = GRPOTrainer(model=policy, reward_funcs=reward, args=conf, train_dataset=data, callbacks=[Clock()],
                          peft_config=lora_config(cfg.model.lora) if cfg.model.lora.r > 0 else None)
    inner = trainer._generate

    def timed_generate(*a, **k):
        t0 = time.perf_counter()
        out = inner(*a, **k)
        timings["gen"].append(time.perf_counter() - t0)
        prompt_ids, completion_ids = out[0], out[1]
        timings["gen_tokens"].append(sum(len(c) for c in completion_ids))
        timings["train_tokens"].append(sum(len(c) for c in completion_ids) + sum(len(p) for p in prompt_ids))
        return out

    trainer._generate = timed_generate
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    trainer.train()
    w = args.warmup
    steps, gen, rew = step_t[w:], timings["gen"][w:], timings["reward"][w:]
    gen_tok, train_tok = timings["gen_tokens"][w:], timings["train_tokens"][w:]
    train_s = [s - g - r for s, g, r in zip(steps, gen, rew)]
    return {"step_s": statistics.median(steps), "rollout_s": statistics.median(gen), "reward_s": statistics.median(rew),
            "train_s": statistics.median(train_s), "rollout_tok_s": statistics.median(t / g for t, g in zip(gen_tok, gen)),
            "train_tok_s": statistics.median(t / s for t, s in zip(train_tok, train_s)),
            "response_len": statistics.median(t / (args.prompts * args.group) for t in gen_tok), "steps": len(steps),
            "trainable": trainable}


def child_bare(args) -> dict:
    """The smallest GRPO loop one would write in one process, nothing else: the same prompt sampler,
    `model.generate`, the `math` verifier, group-normalised advantages, one padded forward + backward +
    AdamW step. Only generate and forward/backward/step are timed (scoring and advantages are not)."""
    import torch

    import rewards
    from rlreason.algos.group import group_advantages
    from rlreason.data.sampler import PromptSampler
    from rlreason.forward import response_logprobs
    from rlreason.policy import load_policy, load_tokenizer

    policy, prompts, answers, cfg = work(args)
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(cfg.seed)
    tok = load_tokenizer(policy)
    model = load_policy(policy)
    if cfg.model.lora.r > 0:
        from rlreason.learner.lora import add_lora

        model = add_lora(model, cfg.model.lora)
    verifier = rewards.load(cfg.reward.verifier, {}).call
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=cfg.learner.lr, betas=(cfg.learner.beta1, cfg.learner.beta2),
                            weight_decay=cfg.learner.weight_decay)
    sampler = PromptSampler(len(prompts), args.prompts, seed=cfg.seed)
    gen_t, fb_t, toks = [], [], []
    for _ in range(args.warmup + args.steps):
        idx = sampler.next_batch()
        enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False,
                  return_token_type_ids=False)
        ids = enc.input_ids.repeat_interleave(args.group, 0)
        mask = enc.attention_mask.repeat_interleave(args.group, 0)
        model.eval()
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.max_new, do_sample=True,
                                 temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p, top_k=0,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        gen_t.append(time.perf_counter() - t0)
        resp = out[:, ids.shape[1]:]
        is_eos = resp == tok.eos_token_id
        resp_mask = ((is_eos.cumsum(-1) - is_eos.long()) == 0).long()
        toks.append(int(resp_mask.sum()))
        texts = tok.batch_decode(resp.masked_fill(resp_mask == 0, tok.pad_token_id), skip_special_tokens=True)
        gold = [answers[i] for i in idx for _ in range(args.group)]
        r = torch.tensor([float(verifier(t, {"answer": a}).score) for t, a in zip(texts, gold)])
        adv = group_advantages(r, torch.arange(len(idx)).repeat_interleave(args.group)).float()[:, None]
        model.train()
        t0 = time.perf_counter()
        lp = response_logprobs(model, ids, mask, resp, resp_mask)["logprobs"]
        ratio = torch.exp(lp - lp.detach())
        loss = -((ratio * adv * resp_mask).sum(-1) / resp_mask.sum(-1).clamp(min=1)).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, cfg.learner.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        fb_t.append(time.perf_counter() - t0)
    w = args.warmup
    return {"gen_s": statistics.median(gen_t[w:]), "fwd_bwd_s": statistics.median(fb_t[w:]),
            "rollout_tok_s": statistics.median(t / g for t, g in zip(toks[w:], gen_t[w:])),
            "response_len": statistics.median(t / (args.prompts * args.group) for t in toks[w:]), "steps": len(gen_t) - w,
            "trainable": sum(p.numel() for p in trainable)}


# -- the parent: children one at a time, their process trees' memory sampled ----------------------------------
def _tree_rss_mb(root: int) -> float:
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
            fields = stat[stat.rindex(")") + 2:].split()
            parents[int(d)] = int(fields[1])
            rss[int(d)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            continue
    tree, frontier = {root}, [root]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p and c not in tree]
        tree.update(kids)
        frontier.extend(kids)
    return sum(rss.get(p, 0) for p in tree) / 2**20


def run_side(side: str, args, extra: list[str]) -> dict:
    """One child; `extra` holds rlreason overrides and `env:NAME=value` items for the child's environment."""
    env = {**os.environ, **dict(e[4:].split("=", 1) for e in extra if e.startswith("env:"))}
    extra = [e for e in extra if not e.startswith("env:")]
    out = Path(tempfile.mkstemp(suffix=".json")[1])
    cmd = [sys.executable, __file__, "--child", side, "--out", str(out), "--model", args.model, "--prompts", str(args.prompts),
           "--group", str(args.group), "--max-new", str(args.max_new), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--trl-grad-checkpointing", args.trl_grad_checkpointing,
           *[x for s in [*args.set, *extra] for x in ("--set", s)]]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    peak = [0.0]

    def sample():
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_rss_mb(proc.pid))
            time.sleep(1.0)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    if proc.wait() != 0:
        raise SystemExit(f"{side} child failed (exit {proc.returncode}): {' '.join(cmd)}")
    th.join()
    res = json.loads(out.read_text())
    res["peak_rss_mb"] = peak[0]
    res["wall_s"] = time.perf_counter() - t0
    out.unlink()
    time.sleep(3)  # let the child's leftovers (Ray's processes) exit before the next side starts
    return res


def work_arguments(ap: argparse.ArgumentParser) -> None:
    """The options that define the work (`work(args)` reads them); shared with speed_changes.py."""
    ap.add_argument("--model", default="tiny_moe", choices=["tiny_moe", "smollm2"])
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--max-new", type=int, default=32)
    ap.add_argument("--set", action="append", default=[], help="an extra rlreason override (key=value)")


def main() -> None:
    ap = argparse.ArgumentParser()
    work_arguments(ap)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sides", default="rlreason,trl,bare")
    ap.add_argument("--trl-grad-checkpointing", default="on", choices=["on", "off"], help="TRL's gradient checkpointing (its default: on)")
    ap.add_argument("--arm", action="append", default=[],
                    help="an rlreason variant 'name:key=value,key=value' (an item env:NAME=value sets the child's environment)")
    ap.add_argument("--json", default="")
    ap.add_argument("--child", default="")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    if args.child:
        res = {"rlreason": child_rlreason, "trl": child_trl, "bare": child_bare}[args.child](args)
        Path(args.out).write_text(json.dumps(res))
        return
    sides = {s: (s, []) for s in args.sides.split(",")}
    for arm in args.arm:
        name, _, overrides = arm.partition(":")
        sides[f"rlreason[{name}]"] = ("rlreason", [o for o in overrides.split(",") if o])
    runs: dict[str, list[dict]] = {s: [] for s in sides}
    for r in range(args.repeats):
        for s, (child, extra) in sides.items():
            res = run_side(child, args, extra)
            runs[s].append(res)
            print(f"[repeat {r + 1}/{args.repeats}] {s}: {json.dumps({k: round(v, 4) for k, v in res.items()})}", flush=True)
    med = {s: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for s, rs in runs.items()}
    print(f"\nmodel={args.model} prompts={args.prompts} G={args.group} max_new={args.max_new} steps={args.steps} "
          f"(+{args.warmup} warm-up) repeats={args.repeats} extra={args.set}")
    bare = med["bare"]["gen_s"] + med["bare"]["fwd_bwd_s"] if "bare" in med else None
    trl = med["trl"]["step_s"] if "trl" in med else None
    print("| side | step (s) | steps/hour | vs TRL | over bare compute | rollout (s) | train (s) | rollout tok/s | train tok/s "
          "| response len | peak RSS (MB) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s, m in med.items():
        if s == "bare":
            continue
        ratio = f"{trl / m['step_s']:.2f}x" if trl else "-"
        over = f"{m['step_s'] / bare - 1:+.0%}" if bare else "-"
        print(f"| {s} | {m['step_s']:.3f} | {3600 / m['step_s']:,.0f} | {ratio} | {over} | {m['rollout_s']:.3f} | {m['train_s']:.3f} | "
              f"{m['rollout_tok_s']:,.0f} | {m['train_tok_s']:,.0f} | {m['response_len']:.1f} | {m['peak_rss_mb']:,.0f} |")
    if bare:
        b = med["bare"]
        print(f"\nbare: generate {b['gen_s']:.3f} s + forward/backward {b['fwd_bwd_s']:.3f} s = {bare:.3f} s "
              f"(response len {b['response_len']:.1f}, peak RSS {b['peak_rss_mb']:,.0f} MB)")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": runs, "median": med}, indent=1))


if __name__ == "__main__":
    main()
