"""The estimator lab's core against a problem with a known answer: a 3-armed bandit policy
pi = softmax(theta), one-token responses, reward r(a). For group size G the exact expectation and
covariance trace of GRPO's and RLOO's gradient are sums over all 3^G outcomes, written here
independently of the estimators' code; the lab's Monte-Carlo figures from a frozen pool converge to them."""

import itertools
import math

import pytest
import torch

from rlreason.batch import RolloutBatch
from rlreason.config import AlgoConfig
from rlreason.lab.coefficients import batch_gradient, surrogate_coefficients
from rlreason.lab.stats import gradient_stats, zero_advantage_fractions

THETA = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)
PI = torch.softmax(THETA, 0)
REWARD = torch.tensor([1.0, 0.0, 0.25], dtype=torch.float64)


def exact_advantages(r: torch.Tensor, estimator: str, cfg: AlgoConfig) -> torch.Tensor:
    """GRPO: (r - mean) / (std + eps) (std with cfg.std_ddof); RLOO: r - mean of the others."""
    G = len(r)
    if estimator == "rloo":
        return r - (r.sum() - r) / (G - 1)
    std = r.std(correction=cfg.std_ddof) if G > cfg.std_ddof else torch.tensor(0.0, dtype=r.dtype)
    return (r - r.mean()) / (std + cfg.adv_eps)


def exact_moments(G: int, estimator: str, cfg: AlgoConfig):
    """E[g] and tr Cov[g] of g = grad_theta L, L = -(1/G) sum_i A_i log pi(a_i) (one-token responses,
    seq-mean-token-mean), so g = -(1/G) sum_i A_i (e_{a_i} - pi), over every outcome of G draws."""
    mean, second = torch.zeros(3, dtype=torch.float64), 0.0
    for outcome in itertools.product(range(3), repeat=G):
        p = math.prod(float(PI[a]) for a in outcome)
        adv = exact_advantages(REWARD[list(outcome)], estimator, cfg)
        g = -sum(adv[i] * (torch.nn.functional.one_hot(torch.tensor(a), 3).double() - PI) for i, a in enumerate(outcome)) / G
        mean += p * g
        second += p * float(g @ g)
    return mean, second - float(mean @ mean)


def bandit_batch(actions: torch.Tensor) -> RolloutBatch:
    n = len(actions)
    return RolloutBatch(
        prompt_ids=torch.zeros(n, 1, dtype=torch.long), prompt_mask=torch.ones(n, 1, dtype=torch.long),
        response_ids=actions[:, None], response_mask=torch.ones(n, 1, dtype=torch.long),
        sampling_logprobs=torch.log(PI)[actions][:, None].float(), group_index=torch.zeros(n, dtype=torch.long),
        rewards=REWARD[actions].float(), correct=REWARD[actions].float())


@pytest.mark.parametrize("estimator,G", [("grpo", 2), ("grpo", 4), ("rloo", 3)])
def test_lab_mean_and_variance_converge_to_the_exact_gradient_moments(estimator, G):
    cfg = AlgoConfig(estimator=estimator)
    want_mean, want_var = exact_moments(G, estimator, cfg)
    gen = torch.Generator().manual_seed(0)
    pool = torch.multinomial(PI, 60_000, replacement=True, generator=gen)  # the frozen pool of one-token responses
    token_grads = torch.nn.functional.one_hot(pool, 3).double() - PI  # grad_theta log pi(a) = e_a - pi, per response
    K = 4000
    samples = []
    for _ in range(K):
        idx = torch.randperm(len(pool), generator=gen)[:G]
        batch = bandit_batch(pool[idx])
        c = surrogate_coefficients(batch, cfg, batch.sampling_logprobs)
        samples.append(batch_gradient(c, token_grads[idx][:, None, :]))
    got = gradient_stats(torch.stack(samples), want_mean)
    se = math.sqrt(want_var / K)  # the Monte-Carlo standard error of the mean's norm, roughly
    assert got["bias_norm"] < 4 * se, (got, se)
    assert got["variance"] == pytest.approx(want_var, rel=0.08)
    assert got["cosine_of_mean"] > 0.99


def test_gradient_stats_by_hand():
    g = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 2.0], [2.0, -2.0]])
    s = gradient_stats(g, torch.tensor([2.0, 1.0]))
    # mean (2, 0); deviations (-1,0),(1,0),(0,2),(0,-2): squared norms 1+1+4+4 = 10, over K-1 = 3
    assert s["variance"] == pytest.approx(10 / 3) and s["mean_norm"] == pytest.approx(2.0)
    assert s["bias_norm"] == pytest.approx(1.0) and s["snr"] == pytest.approx(4 / (10 / 3))
    assert s["bias_noise"] == pytest.approx(math.sqrt(10 / 3 / 4))
    assert s["cosine_of_mean"] == pytest.approx(2 / math.sqrt(5))
    per = [(2 * 1 + 0) / (1 * math.sqrt(5)), 6 / (3 * math.sqrt(5)), (4 + 2) / (math.sqrt(8) * math.sqrt(5)),
           (4 - 2) / (math.sqrt(8) * math.sqrt(5))]
    assert s["cosine_per_batch"] == pytest.approx(sum(per) / 4)


def test_coefficients_are_the_loss_derivative_and_zero_for_a_flat_group():
    cfg = AlgoConfig(estimator="grpo")
    batch = bandit_batch(torch.tensor([0, 1, 1, 1]))
    c = surrogate_coefficients(batch, cfg, batch.sampling_logprobs)
    adv = exact_advantages(REWARD[[0, 1, 1, 1]], "grpo", cfg)
    assert c[:, 0].double() == pytest.approx(-adv / 4, abs=1e-6)  # dL/dlogp = -A_i / G (seq-mean-token-mean)
    flat = bandit_batch(torch.tensor([1, 1, 1, 1]))
    c0 = surrogate_coefficients(flat, cfg, flat.sampling_logprobs)
    assert zero_advantage_fractions(c0, flat.response_mask, flat.group_index) == {"zero_group_frac": 1.0, "zero_token_frac": 1.0}


def test_lab_command_writes_the_table_and_plots_and_repeats_itself(tmp_path, capsys, monkeypatch):
    """`python -m rlreason.lab` on the smoke warm start (in-process): every arm and G has a row with finite
    figures, the command heads the table, the plots exist, and a second run with the same seed gives the
    same numbers, without computing the token gradients again."""
    import csv

    from rlreason.lab.__main__ import main

    args = ["--prompts", "4", "--per-prompt", "8", "--group-sizes", "2,4", "--batch-prompts", "2", "--subsamples", "6",
            "--dim", "4", "--arms", "grpo,d3s,thr:algo.thr.p=-0.2", "scale=smoke"]
    import rlreason.lab.token_grads as token_grads

    computed = []
    real = token_grads.projected_token_grads
    monkeypatch.setattr(token_grads, "projected_token_grads", lambda *a, **k: computed.append(1) or real(*a, **k))
    tables = []
    for run in ("a", "b"):
        before = len(computed)
        assert main([*args, "--out", str(tmp_path / run)]) == 0
        if run == "b":
            assert len(computed) == before  # the same pool, theta, dim and seed: token gradients from the cache
        lines = (tmp_path / run / "lab.csv").read_text().splitlines()
        assert lines[0].startswith("# `python -m rlreason.lab --prompts 4")
        tables.append(list(csv.DictReader(lines[1:])))
        assert (tmp_path / run / "variance_vs_G.png").stat().st_size > 5000 and (tmp_path / run / "cosine_vs_G.png").exists()
    rows = tables[0]
    assert [(r["arm"], r["G"]) for r in rows] == [(a, g) for a in ("grpo", "d3s", "thr:algo.thr.p=-0.2") for g in ("2", "4")]
    assert all(math.isfinite(float(r["variance"])) and float(r["variance"]) >= 0 for r in rows)
    assert all(-1 <= float(r["cosine_to_grpo_full"]) <= 1 for r in rows)
    drop = lambda rs: [{k: v for k, v in r.items() if k != "seconds_per_gradient"} for r in rs]  # noqa: E731
    assert drop(tables[0]) == drop(tables[1])


def test_lab_help_documents_it(capsys):
    from rlreason.lab.__main__ import main

    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "--group-sizes" in out and "--arms" in out and "config overrides" in out.lower()


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_projected_token_grads_match_reverse_mode(tiny_policy, rollout, lora):
    """J[b, t, j] = v_j . grad log pi(o_{b,t}) by forward mode (vmapped blocks of directions, prompts shared
    by their group) equals the same inner product by reverse mode, one backward pass per token, on the tiny
    MoE's batch of 3 prompts of different lengths x 4 responses; with LoRA over the adapters only (B made
    nonzero so that A's gradient is too). The random policy samples the pad token (row 2), whose embedding
    row reverse mode never updates through the lookup: the lab leaves it out of theta."""
    from rlreason.config import LoRAConfig
    from rlreason.forward import response_logprobs
    from rlreason.lab.pool import differentiable_policy
    from rlreason.lab.token_grads import directions, embedding_padding_rows, projected_token_grads

    _, batch = rollout
    model = differentiable_policy(tiny_policy, LoRAConfig(r=2, target_modules="q_proj,v_proj") if lora else None, seed=0)
    if lora:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1)
    params = {k: p for k, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in k for k in params) == lora
    assert bool(embedding_padding_rows(model)) != lora and (batch.response_ids[2] == model.config.pad_token_id).any()
    dim = 3
    # memory_mb=0: one direction per block, chunks of one group: the blocking must not change the result
    J = projected_token_grads(model, batch, dim, seed=5, temperature=0.7, max_rows=4, memory_mb=0)
    J_wide = projected_token_grads(model, batch, dim, seed=5, temperature=0.7)
    torch.testing.assert_close(J, J_wide, rtol=1e-4, atol=1e-5)

    V = directions(params, range(dim), 5, dim, embedding_padding_rows(model))
    lp = response_logprobs(model, batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.response_mask, 0.7)["logprobs"]
    checked = 0
    for b, t in [(0, 0), (1, 3), (5, 0), (11, 2)] + [(b, int(batch.response_mask[b].sum()) - 1) for b in (2, 7)]:
        grads = torch.autograd.grad(lp[b, t], list(params.values()), retain_graph=True, allow_unused=True)
        want = torch.tensor([sum(float((g * V[k][j]).sum()) for k, g in zip(params, grads) if g is not None)
                            for j in range(dim)])
        torch.testing.assert_close(J[b, t], want.float(), rtol=1e-3, atol=1e-5)
        checked += bool(want.abs().max() > 1e-4)
    assert checked >= 4  # the comparison is not between zeros
    assert (J[~batch.response_mask.bool()] == 0).all()


def test_effective_sample_fraction_and_the_importance_weights_in_the_coefficients():
    """Kish's ESS by hand, and `algo.tis_mode=token` scales each token's coefficient by min(ratio, cap)."""
    from rlreason.lab.coefficients import importance_weights
    from rlreason.lab.stats import effective_sample_fraction

    # weights 1, 1, 2, 0 on 4 tokens (the 5th masked out): (4)^2 / (4 * 6) = 2/3
    w = torch.tensor([[1.0, 1.0, 2.0], [0.0, 9.0, 1.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert effective_sample_fraction(w, mask) == pytest.approx(2 / 3)
    assert effective_sample_fraction(torch.ones(2, 3), mask) == 1.0

    batch = bandit_batch(torch.tensor([0, 1, 2, 0]))
    learner_logp = batch.sampling_logprobs + torch.log(torch.tensor([[0.5], [1.0], [3.0], [1.5]]))  # ratios 0.5, 1, 3, 1.5
    off = surrogate_coefficients(batch, AlgoConfig(estimator="rloo"), learner_logp)
    tis = surrogate_coefficients(batch, AlgoConfig(estimator="rloo", tis_mode="token", tis_cap=2.0), learner_logp)
    torch.testing.assert_close(tis, off * torch.tensor([[0.5], [1.0], [2.0], [1.5]]))
    assert (off != 0).all()
    torch.testing.assert_close(importance_weights(batch, AlgoConfig(), learner_logp), torch.ones(4, 1))


def test_a_lora_checkpoint_is_differentiated_in_its_adapters_and_sampled_merged(tiny_policy, tmp_path):
    """--policy runs/x/checkpoints/step_N/adapter: theta is the saved adapters (as trained, B != 0), and the
    folder the engine samples from holds base + adapters merged, with the same log-probs."""
    from rlreason.config import LoRAConfig
    from rlreason.forward import response_logprobs
    from rlreason.lab.pool import adapter_base, differentiable_policy, merged_policy
    from rlreason.learner.lora import add_lora
    from rlreason.policy import load_policy, load_tokenizer

    trained = add_lora(load_policy(tiny_policy), LoRAConfig(r=2, target_modules="q_proj,v_proj"))
    with torch.no_grad():
        for name, p in trained.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    trained.save_pretrained(tmp_path / "adapter")
    load_tokenizer(tiny_policy).save_pretrained(tmp_path / "adapter")
    assert adapter_base(str(tmp_path / "adapter")) == tiny_policy and adapter_base(tiny_policy) is None

    model = differentiable_policy(str(tmp_path / "adapter"))
    got = {k: p for k, p in model.named_parameters() if p.requires_grad}
    want = {k: p for k, p in trained.named_parameters() if p.requires_grad}
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    merged = load_policy(merged_policy(str(tmp_path / "adapter"), tmp_path / "cache"))
    ids = torch.tensor([[5, 9, 12, 7, 3, 11]])
    one = torch.ones_like(ids[:, :3])
    a = response_logprobs(model, ids[:, :3], one, ids[:, 3:], one)["logprobs"]
    b = response_logprobs(merged, ids[:, :3], one, ids[:, 3:], one)["logprobs"]
    base = response_logprobs(load_policy(tiny_policy), ids[:, :3], one, ids[:, 3:], one)["logprobs"]
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert (a - base).abs().max() > 1e-3  # the adapters matter
