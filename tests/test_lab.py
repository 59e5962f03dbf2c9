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


def test_lab_command_writes_the_table_and_plots_and_repeats_itself(tmp_path, capsys):
    """`python -m rlreason.lab` on the smoke warm start (in-process): every arm and G has a row with finite
    figures, the command heads the table, the plots exist, and a second run with the same seed gives the
    same numbers."""
    import csv

    from rlreason.lab.__main__ import main

    args = ["--prompts", "4", "--per-prompt", "8", "--group-sizes", "2,4", "--batch-prompts", "2", "--subsamples", "6",
            "--dim", "4", "--arms", "grpo,d3s,thr:algo.thr.p=-0.2", "scale=smoke"]
    tables = []
    for run in ("a", "b"):
        assert main([*args, "--out", str(tmp_path / run)]) == 0
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
