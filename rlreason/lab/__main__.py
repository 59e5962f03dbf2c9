"""``python -m rlreason.lab [options] [config overrides]``: what each advantage estimator does to the
policy gradient, on one frozen pool of rollouts.

Samples N prompts x M responses once from the policy (the run config's initial policy: the warm start
for the tiny MoE, SmolLM2 with model=smollm2; or --policy FOLDER, a checkpoint's policy/ or, for a LoRA
run, its adapter/), scores
them, and computes every sampled token's projected log-prob gradient. Then, for each arm (an algo
group: grpo, drgrpo, dapo, rloo, tempo, thr, d3s, tw_grpo, ...; `name:key=value,...` adds overrides,
e.g. `thr:algo.thr.p=-0.2`; `module:function` is a user estimator) and each group size G, draws K
training batches of --batch-prompts prompts x G responses and reports the gradient's variance, its bias
and cosine against the arm's own whole-pool gradient, its cosine to GRPO's whole-pool gradient, the
signal-to-noise ratio, the share of groups and tokens with no signal, the effective sample fraction of
the importance weights the arm's loss applies (`algo.tis_mode`: `grpo:algo.tis_mode=token`), and the
seconds per gradient.
The bias is shown with its own Monte-Carlo noise, sqrt(variance / K): a bias near it is consistent with
none.

Writes lab.md and lab.csv (the exact command in their header), variance_vs_G.png and cosine_vs_G.png
into --out. Deterministic for --seed. The pool is sampled by the configured `rollout.engine` (hf or
vllm), so the sampler/learner mismatch the importance weights correct is the engine's real one.
theta is what the learner trains: every parameter, or with model.lora.r > 0 (model=smollm2) the LoRA
adapters at their initialisation. Not modelled: DAPO's dynamic sampling and overlong shaping (the pool
is one sample of the policy; a zero-variance group carries no gradient either way).
"""

from __future__ import annotations

import argparse
import csv
import logging
import shlex
import sys
import time
from pathlib import Path

import torch

DEFAULT_ARMS = "grpo,drgrpo,dapo,rloo,tempo,thr,thr:algo.thr.p=-0.2,d3s,tw_grpo"
COLUMNS = ("arm", "G", "variance", "bias_norm", "bias_noise", "relative_bias", "cosine_to_own_full", "cosine_mean_to_own_full",
           "cosine_to_grpo_full", "snr", "zero_group_frac", "zero_token_frac", "ess_frac", "seconds_per_gradient")


def parse(argv: list[str]):
    ap = argparse.ArgumentParser(prog="python -m rlreason.lab", description=__doc__.split("\n\n")[0],
                                 epilog="Config overrides (model=..., task=..., rollout.temperature=..., key=value) follow the options.")
    ap.add_argument("--policy", default=None, help="an HF folder, e.g. a checkpoint's policy/, or a LoRA run's adapter/ "
                                                   "(default: the config's initial policy)")
    ap.add_argument("--prompts", type=int, default=16, help="N: prompts in the pool")
    ap.add_argument("--per-prompt", type=int, default=64, help="M: responses sampled per prompt")
    ap.add_argument("--group-sizes", default="2,4,8,16", help="the G values, each <= M")
    ap.add_argument("--batch-prompts", type=int, default=8, help="prompts per subsampled training batch")
    ap.add_argument("--subsamples", type=int, default=200, help="K: batches per arm and G")
    ap.add_argument("--dim", type=int, default=64, help="projection dimension of the token gradients")
    ap.add_argument("--arms", default=DEFAULT_ARMS, help=f"comma-separated (default: {DEFAULT_ARMS})")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: lab/<time>)")
    ap.add_argument("overrides", nargs="*", help="config overrides, as for rlreason/run.py")
    args = ap.parse_args(argv)
    args.group_sizes = [int(g) for g in args.group_sizes.split(",")]
    if max(args.group_sizes) > args.per_prompt or min(args.group_sizes) < 2:
        ap.error(f"--group-sizes must lie in 2..--per-prompt ({args.per_prompt})")
    if args.batch_prompts > args.prompts:
        ap.error("--batch-prompts must not exceed --prompts")
    return args


def arm_configs(arms: str, overrides: list[str]) -> dict:
    """name -> algo config; `name` is an algo group, `group:key=value,...`, or a user estimator's module:function."""
    from rlreason.run import compose, group_choices

    out = {}
    for arm in arms.split(","):
        head, _, extra = arm.partition(":") if arm.split(":", 1)[0] in group_choices("algo") else (arm, "", "")
        args = [f"algo={head}"] if head in group_choices("algo") else [f"algo.estimator={head}"]
        cfg, _ = compose([*overrides, *args, *[e for e in extra.split(",") if e]])
        out[arm] = cfg.algo
    return out


def main(argv: list[str] | None = None) -> int:
    from rich.progress import Progress

    from rlreason.algos.advantages import resolve_estimator
    from rlreason.lab.experiment import measure
    from rlreason.lab.pool import adapter_base, differentiable_policy, merged_policy, sample_pool
    from rlreason.lab.token_grads import cached_token_grads
    from rlreason.run import UserError, compose

    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        cfg, _ = compose(args.overrides)
        arms = arm_configs(args.arms, args.overrides)
    except UserError as e:
        print(f"rlreason.lab: config error: {e}", file=sys.stderr)
        return 2
    command = "python -m rlreason.lab " + " ".join(shlex.quote(a) for a in argv)
    out = args.out or Path("lab") / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    from rlreason.assets import cache_root
    from rlreason.orchestrator.batches import PromptFormat
    from rlreason.orchestrator.policy_source import initial_policy
    from rlreason.orchestrator.scorer import RewardPlan
    from rlreason.orchestrator.task_data import load_task_data
    from rlreason.policy import load_tokenizer

    plan = RewardPlan.from_config(cfg.reward)
    data = load_task_data(cfg.task, plan.validators(), out)
    policy = args.policy or str(initial_policy(cfg, out, data.train).path)
    gen = torch.Generator().manual_seed(args.seed)
    problems = [data.train[i] for i in torch.randperm(len(data.train), generator=gen)[:args.prompts].tolist()]
    sampler = merged_policy(policy, cache_root() / "lab") if adapter_base(policy) else policy  # a LoRA checkpoint's adapter/
    fmt = PromptFormat(load_tokenizer(sampler), cfg.model.chat_template, False)
    needs = set().union(*(getattr(resolve_estimator(a.estimator), "needs", set()) for a in arms.values()))
    print(f"lab: sampling the pool: {args.prompts} prompts x {args.per_prompt} responses from {policy}", flush=True)
    pool = sample_pool(sampler, [fmt(p, None) for p in problems], [p.as_sample() for p in problems], args.per_prompt,
                       cfg.rollout, plan.accuracy.name, args.seed, needs, cache_root() / "lab")
    t_pool = time.perf_counter()
    model = differentiable_policy(policy, cfg.model.lora, args.seed)
    with Progress(disable=not sys.stdout.isatty()) as bar:  # a bar on a terminal; a line per tenth in a log
        J = cached_token_grads(cache_root() / "lab", pool, model, args.dim, args.seed, cfg.rollout.temperature,
                               progress=_reporter(bar, f"token gradients ({args.dim} projected dims)"))
        t_grads = time.perf_counter()
        norm_len = cfg.algo.loss_norm_len or cfg.rollout.max_new_tokens
        rows = measure(pool, J, arms, args.group_sizes, args.batch_prompts, args.subsamples, args.seed, norm_len,
                       arm_configs("grpo", args.overrides)["grpo"],
                       progress=_reporter(bar, "arms x group sizes"))
    timing = {"pool_s": t_pool - t_start, "token_grads_s": t_grads - t_pool, "measure_s": time.perf_counter() - t_grads}
    header = (f"`{command}`\n\npool: {args.prompts} prompts x {args.per_prompt} responses, mean reward "
              f"{float(pool.batch.rewards.mean()):.3f}, policy {policy}, sampled by {cfg.rollout.engine} "
              f"({mismatch_line(pool)}); theta: {theta_line(model)}, projected to {args.dim} dims; "
              f"{args.subsamples} batches of {args.batch_prompts} prompts x G per arm and G; "
              + ", ".join(f"{k} {v:.0f} s" for k, v in timing.items()))
    write_table(rows, out, header)
    plot(rows, out)
    print((out / "lab.md").read_text())
    print(f"wrote {out / 'lab.md'}, {out / 'lab.csv'}, {out / 'variance_vs_G.png'}, {out / 'cosine_vs_G.png'}")
    return 0


def _reporter(bar, label: str):
    """progress(done, total): the rich bar on a terminal, else a printed line at each tenth."""
    task = bar.add_task(label, total=None)

    def report(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)
        if bar.disable and (done % max(1, total // 10) == 0 or done == total):
            print(f"lab: {label}: {done}/{total}", flush=True)

    return report


def mismatch_line(pool) -> str:
    """How far the sampler's token log-probs are from the policy's: mean |log ratio| and the raw ratio's
    effective sample fraction over all the pool's tokens (what `algo.tis_mode` would correct)."""
    from rlreason.lab.stats import effective_sample_fraction

    mask = pool.batch.response_mask.bool()
    log_ratio = (pool.logprobs - pool.batch.sampling_logprobs)[mask]
    ess = effective_sample_fraction(log_ratio.double().exp(), torch.ones_like(log_ratio))
    return f"sampler/learner mean |log ratio| {float(log_ratio.abs().mean()):.2g}, raw ratio ESS {ess:.4f}"


def theta_line(model) -> str:
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lora = any("lora_" in k for k, p in model.named_parameters() if p.requires_grad)
    return f"{n / 1e6:.2f} M {'LoRA adapter parameters' if lora else 'parameters'}"


def write_table(rows: list[dict], out: Path, header: str) -> None:
    with open(out / "lab.csv", "w", newline="") as f:
        f.write("# " + header.replace("\n", " ") + "\n")
        w = csv.DictWriter(f, fieldnames=list(COLUMNS), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    lines = [header, "", "| arm | G | variance | bias (± its noise) | bias / full norm | cos to own full | cos of mean "
             "| cos to GRPO full | SNR | zero groups | zero tokens | IS ESS | ms/gradient |", "|---|" + "---:|" * 12]
    for r in rows:
        lines.append(f"| {r['arm']} | {r['G']} | {r['variance']:.3g} | {r['bias_norm']:.3g} ± {r['bias_noise']:.2g} | "
                     f"{r['relative_bias']:.3f} | "
                     f"{r['cosine_to_own_full']:.3f} | "
                     f"{r['cosine_mean_to_own_full']:.3f} | {r['cosine_to_grpo_full']:.3f} | {r['snr']:.3g} | "
                     f"{r['zero_group_frac']:.2f} | {r['zero_token_frac']:.2f} | {r['ess_frac']:.3f} | "
                     f"{1000 * r['seconds_per_gradient']:.1f} |")
    (out / "lab.md").write_text("\n".join(lines) + "\n")


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(dict.fromkeys(r["arm"] for r in rows))
    for key, name, ylabel, log in (("variance", "variance_vs_G.png", "gradient variance (trace, projected)", True),
                                   ("cosine_to_own_full", "cosine_vs_G.png", "cosine of one batch's gradient to the full pool's", False)):
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for i, arm in enumerate(arms):
            pts = sorted((r["G"], r[key]) for r in rows if r["arm"] == arm)
            ax.plot([g for g, _ in pts], [v for _, v in pts], "-o", ms=4, color=f"C{i % 10}", label=arm)
        ax.set_xscale("log", base=2)
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("group size G")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
