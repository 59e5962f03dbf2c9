"""The GRPO variants: hand-worked numbers and properties (docs/algorithms.md)."""

import itertools
import math
import random

import pytest
import torch

from rlreason.algos.advantages import drgrpo, group_advantages, resolve_estimator, rloo_advantages
from rlreason.algos.d3s import d3s_masks, max_variance_subset, schedule, select_samples, select_tokens
from rlreason.algos.filtering import keep_groups
from rlreason.algos.losses import aggregate, gspo_loss, ppo_clip_loss
from rlreason.algos.shaping import overlong_penalty
from rlreason.algos.tempo import tempo_advantages, tempo_group
from rlreason.algos.thr import thr_explicit, thr_reweight, thr_scores
from rlreason.algos.token_weighting import tw_group_weights
from rlreason.config import AlgoConfig


def _pad(rows, pad=0):
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, : len(r)] = torch.tensor(r)
        mask[b, : len(r)] = 1
    return ids, mask


# -- TEMPO ------------------------------------------------------------------------------------------
def test_tempo_worked_example():
    a, b, c, d = 11, 12, 13, 14
    ids, mask = _pad([[a, b], [a, c], [d, b], [d, c]])
    adv = tempo_advantages(ids, mask, torch.tensor([1.0, 1, 1, 0]), torch.zeros(4, dtype=torch.long), std_ddof=0, eps=0.0)
    expected = torch.tensor([[1.155, 0.577], [1.155, 0.577], [0.0, 1.732], [-2.309, -2.887]])
    assert torch.allclose(adv, expected, atol=1e-3)


def test_tempo_single_child_nodes_carry_no_td():
    # the two responses share [5, 6] and split after it: only the third token sees TD
    r = [1.0, -1.0]
    adv = tempo_group([[5, 6, 7], [5, 6, 8]], r)
    assert adv[0][:2] == [1.0, 1.0] and adv[1][:2] == [-1.0, -1.0]
    assert adv[0][2] == pytest.approx(1.0 + (1.0 - 0.0)) and adv[1][2] == pytest.approx(-2.0)


def test_tempo_branch_delta_zero_when_sibling_subtrees_have_equal_means():
    # subtrees under 1 and 2 both have mean 0 -> delta at the root is 0 for every first token
    adv = tempo_group([[1, 3], [1, 4], [2, 3], [2, 4]], [1.0, -1.0, 1.0, -1.0])
    assert [row[0] for row in adv] == [1.0, -1.0, 1.0, -1.0]


def test_tempo_end_child_makes_a_prefix_node_branch():
    # [7] ends where [7, 8] goes on: node [7] has children {END, 8}, so token 8 gets TD
    adv = tempo_group([[7], [7, 8]], [1.0, -1.0])
    assert adv[1][1] == pytest.approx(-1.0 + (-1.0 - 0.0))
    # identical duplicates share a leaf: no branch after the shared prefix
    dup = tempo_group([[7, 8], [7, 8], [9]], [0.5, 0.5, -1.0])
    assert dup[0][1] == 0.5


def test_tempo_permutation_invariance_and_telescoping():
    rng = random.Random(0)
    for _ in range(20):
        G = rng.randint(2, 8)
        rows, seen = [], set()
        while len(rows) < G:  # unique responses ending in a unique EOS-like token, none a prefix of another
            r = [rng.randint(1, 3) for _ in range(rng.randint(1, 6))] + [99]
            if tuple(r) not in seen:
                seen.add(tuple(r))
                rows.append(r)
        rewards = torch.tensor([float(rng.randint(0, 1)) for _ in range(G)])
        if rewards.std() == 0:
            rewards[0] = 1 - rewards[0]
        ids, mask = _pad(rows)
        gi = torch.zeros(G, dtype=torch.long)
        adv = tempo_advantages(ids, mask, rewards, gi, std_ddof=0, eps=0.0)
        perm = torch.randperm(G)
        adv_p = tempo_advantages(ids[perm], mask[perm], rewards[perm], gi, std_ddof=0, eps=0.0)
        assert torch.allclose(adv_p, adv[perm], atol=1e-6)
        norm = group_advantages(rewards, gi, 0, 0.0)
        td = (adv - norm[:, None]) * mask
        assert torch.allclose(td.sum(-1), norm, atol=1e-5)  # sum_t delta = r~_i


def test_tempo_zero_variance_group_gets_zero_and_long_groups_are_linear():
    ids, mask = _pad([[1, 2], [1, 3]])
    assert tempo_advantages(ids, mask, torch.tensor([1.0, 1.0]), torch.zeros(2, dtype=torch.long)).abs().sum() == 0
    # G=16 responses of 4,000 tokens sharing a long prefix: built in one pass (no G*T x G*T structure)
    g = torch.Generator().manual_seed(0)
    prefix = torch.randint(1, 50, (3000,), generator=g)
    ids = torch.cat([prefix.repeat(16, 1), torch.randint(1, 50, (16, 1000), generator=g)], 1)
    adv = tempo_advantages(ids, torch.ones_like(ids), (torch.arange(16) % 2).float(), torch.zeros(16, dtype=torch.long))
    norm = group_advantages((torch.arange(16) % 2).float(), torch.zeros(16, dtype=torch.long))
    assert torch.allclose(adv[:, :3000], norm[:, None].expand(16, 3000))  # no branching in the shared prefix


# -- D3S --------------------------------------------------------------------------------------------
def _pop_var(x):
    x = x.double()
    return float(((x - x.mean()) ** 2).mean())


def test_d3s_subset_is_the_brute_force_optimum():
    g = torch.Generator().manual_seed(1)
    for n in range(1, 11):
        for _ in range(5):
            v = torch.randn(n, generator=g).round(decimals=1)  # ties included
            for N in range(1, n + 1):
                best = max(_pop_var(v[list(c)]) for c in itertools.combinations(range(n), N))
                got = max_variance_subset(v, N)
                assert len(got) == N and _pop_var(v[got]) == pytest.approx(best, abs=1e-9)


def test_d3s_binary_rewards_give_a_sign_balanced_subset_and_lemma_1():
    adv = group_advantages(torch.tensor([1.0, 1, 1, 0, 0, 0, 0, 0]), torch.zeros(8, dtype=torch.long), 0, 0.0)
    keep = max_variance_subset(adv, 4)
    assert int((adv[keep] > 0).sum()) == 2 and int((adv[keep] < 0).sum()) == 2
    g = torch.Generator().manual_seed(2)
    for _ in range(20):
        x = torch.randn(7, generator=g)
        x = (x - x.mean()) / x.std(unbiased=False)
        assert _pop_var(x[max_variance_subset(x, 2)]) >= 1 - 1e-9


def test_d3s_schedule_endpoints_and_token_counts():
    assert schedule(0.0, 0.25, 1.0) == 0.25 and schedule(1.0, 0.25, 1.0) == 1.0 and schedule(0.5, 0.2, 0.6) == pytest.approx(0.4)
    score = torch.rand(3, 10)
    mask = torch.ones(3, 10)
    mask[2, 7:] = 0
    for share in (0.1, 0.33, 0.5, 1.0):
        assert int(select_tokens(score, mask, share, "batch").sum()) == math.ceil(share * 27)
    keep = select_tokens(score, mask, 0.3, "sequence")
    assert keep.sum(-1).tolist() == [3, 3, 3]  # ceil(0.3*10), ceil(0.3*7)
    assert bool((keep & ~mask.bool()).sum() == 0)
    # batch scope ranks across sequences: a low-scoring sequence may lose all its tokens
    lopsided = torch.tensor([[10.0, 9.0, 8.0], [0.1, 0.0, 0.0]])
    assert select_tokens(lopsided, torch.ones(2, 3), 0.5, "batch").sum(-1).tolist() == [3, 0]
    assert int(select_tokens(lopsided, torch.ones(2, 3), 0.01, "batch").sum()) == 1  # never zero tokens


def test_d3s_full_shares_reduce_to_grpo():
    rewards = torch.tensor([1.0, 0, 0, 1, 1, 0])
    gi = torch.tensor([0, 0, 0, 1, 1, 1])
    mask = torch.ones(6, 4)
    adv = group_advantages(rewards, gi)
    keep, info = d3s_masks(adv, adv[:, None] * mask, torch.rand(6, 4), mask, gi, 1.0, 0.5, 1.0, 0.5, 1.0)
    assert bool(keep.all()) and info["d3s/kept_samples"] == 6
    # per-group selection keeps round(share * G) from each group
    per = select_samples(adv, gi, 0.67, per_group=True)
    assert per[:3].sum() == 2 and per[3:].sum() == 2


# -- THR --------------------------------------------------------------------------------------------
def _thr_inputs(seed=0, G=4, T=5, V=6, d=3):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(G, T, d, generator=g)
    probs = torch.softmax(torch.randn(G, T, V, generator=g), -1)
    targets = torch.randint(0, V, (G, T), generator=g)
    mask = torch.ones(G, T, dtype=torch.bool)
    mask[1, 3:] = False
    positive = torch.tensor([True, False, True, False])
    return hidden, probs, targets, mask, positive


def test_thr_matrix_trick_equals_the_explicit_double_sum():
    args = _thr_inputs()
    assert torch.allclose(thr_scores(*args).double(), thr_explicit(*args), atol=1e-4)


def test_thr_p_zero_is_grpo_and_weights_stay_in_band():
    hidden, probs, targets, mask, positive = _thr_inputs(1)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    thr = adv[:, None] * thr_scores(hidden, probs, targets, mask, positive)
    same, _ = thr_reweight(adv, thr, mask, positive, p=0.0)
    assert torch.equal(same, adv[:, None] * mask)
    up, dom = thr_reweight(adv, thr, mask, positive, p=0.3, tau_beta=0.0)
    down, dom2 = thr_reweight(adv, thr, mask, positive, p=-0.3, tau_beta=0.0)
    ratio = (up / adv[:, None])[mask]
    assert bool(((ratio >= 0.7 - 1e-6) & (ratio <= 1.3 + 1e-6)).all())
    # flipping p swaps the amplified and the damped tokens
    amplified = (up.abs() > adv[:, None].abs() * mask) & mask
    damped2 = (down.abs() < adv[:, None].abs() * mask) & mask
    assert torch.equal(amplified, damped2) and bool(amplified.any())
    # unmixed groups are left as GRPO
    allpos = torch.ones(4, dtype=torch.bool)
    unchanged, _ = thr_reweight(adv, thr, mask, allpos, p=0.5)
    assert torch.equal(unchanged, adv[:, None] * mask)


def test_thr_nthr_eta_values():
    eta = lambda p: 2 * abs(0.5 - p)  # noqa: E731 - NTHR's damping of negative tokens, spec section 2
    assert eta(0.25) == 0.5 and eta(0.5) == 0.0


# -- TW-GRPO ----------------------------------------------------------------------------------------
def test_tw_weights_identical_distributions_give_one_and_argmax_gets_alpha():
    lp = torch.log_softmax(torch.randn(1, 5, 7), -1).repeat(4, 1, 1)
    mask = torch.ones(4, 5)
    assert torch.allclose(tw_group_weights(lp, mask, alpha=1.7), torch.ones(5))
    g = torch.Generator().manual_seed(3)
    lp = torch.log_softmax(torch.randn(4, 5, 7, generator=g), -1)
    lp[:, 2] = torch.log_softmax(torch.randn(4, 7, generator=g) * 5, -1)  # position 2 diverges most
    w = tw_group_weights(lp, mask, alpha=1.7)
    assert int(torch.argmax(w)) == 2 and float(w[2]) == pytest.approx(1.7) and float(w.min()) == pytest.approx(1.0)
    assert bool(((w >= 1) & (w <= 1.7)).all())


# -- baselines --------------------------------------------------------------------------------------
def test_rloo_and_drgrpo_by_hand():
    assert torch.allclose(rloo_advantages(torch.tensor([1.0, 0, 0, 0]), torch.zeros(4, dtype=torch.long)),
                          torch.tensor([1.0, -1 / 3, -1 / 3, -1 / 3]))
    assert rloo_advantages(torch.tensor([1.0]), torch.zeros(1, dtype=torch.long)).item() == 0
    from types import SimpleNamespace

    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 0, 0]])
    batch = SimpleNamespace(rewards=torch.tensor([1.0, 0.0, 0.0, 1.0]), group_index=torch.zeros(4, dtype=torch.long),
                            response_mask=mask, gen_mask=mask)  # gen_mask: RolloutBatch's sampled tokens
    adv = drgrpo(batch, AlgoConfig(), {})
    assert torch.equal(adv[:, 0], torch.tensor([0.5, -0.5, -0.5, 0.5]))  # r - mu, no std
    # Dr.GRPO's normaliser: sum of per-token values over G * L_gen (here 4 * 8)
    assert aggregate(adv, batch.response_mask, "seq-mean-token-sum-norm", 8).item() == pytest.approx((1.0 - 0.5 - 1.5 + 0.5) / 32)
    # DAPO's token-mean: one denominator over the batch's 7 tokens
    assert aggregate(adv, batch.response_mask, "token-mean").item() == pytest.approx(-0.5 / 7)


def test_overlong_shaping_by_hand():
    pen = overlong_penalty(torch.tensor([10, 16, 18, 20, 21]), max_len=20, cache_len=4)
    assert pen.tolist() == [0.0, 0.0, -0.5, -1.0, -1.0]


def test_group_filter_bands():
    correct = torch.tensor([1.0, 1, 0, 0, 1, 1, 0, 0, 0, 1, 0, 0])
    gi = torch.arange(4).repeat_interleave(3)
    rates = [2 / 3, 2 / 3, 0.0, 1 / 3]
    keep = keep_groups(correct, gi, 0.0, 1.0, inclusive=False)
    assert keep.tolist() == [0 < r < 1 for r in rates]
    for g, k in enumerate(keep.tolist()):  # DAPO's filter: exactly the groups with reward variance
        assert k == bool(correct[gi == g].std() > 0)
    assert keep_groups(correct, gi, 1 / 3, 2 / 3, inclusive=True).tolist() == [True, True, False, True]  # bounds inclusive
    assert keep_groups(correct, gi, 1 / 3, 2 / 3, inclusive=False).tolist() == [False, False, False, False]
    assert keep_groups(correct, gi, 0.25, 0.75, inclusive=True).tolist() == [True, True, False, True]


def _grad_of(loss_fn):
    w = torch.nn.Parameter(torch.tensor([0.3, -0.2, 0.5]))
    feats = torch.tensor([[[1.0, 0, 0], [0, 1, 0], [0, 0, 1]], [[0, 1, 0], [1, 0, 0], [1, 1, 0]]])
    logp = torch.nn.functional.logsigmoid(feats @ w)  # [2, 3]: differentiable stand-in logprobs
    loss = loss_fn(logp)
    loss.backward()
    return loss.detach(), w.grad.clone()


def test_gspo_equals_grpo_on_policy_at_equal_lengths_and_gspo_token_equals_gspo():
    mask = torch.ones(2, 3)
    adv = torch.tensor([[1.0] * 3, [-0.5] * 3])
    grpo_l, grpo_g = _grad_of(lambda lp: aggregate(ppo_clip_loss(lp, lp.detach(), adv, 0.2, 0.2)[0], mask, "seq-mean-token-mean"))
    gspo_l, gspo_g = _grad_of(lambda lp: aggregate(gspo_loss(lp, lp.detach(), adv, mask, 3e-4, 4e-4)[0], mask, "seq-mean-token-mean"))
    tok_l, tok_g = _grad_of(lambda lp: aggregate(gspo_loss(lp, lp.detach(), adv, mask, 3e-4, 4e-4, True)[0], mask,
                                                  "seq-mean-token-mean"))
    assert torch.allclose(grpo_l, gspo_l) and torch.allclose(grpo_g, gspo_g, atol=1e-7)
    assert torch.allclose(tok_l, gspo_l) and torch.allclose(tok_g, gspo_g, atol=1e-7)
    # off-policy: the sequence ratio is the geometric mean of the token ratios, clipped as one
    lp = torch.log(torch.tensor([[0.5, 0.5, 0.5]]))
    old = torch.log(torch.tensor([[0.25, 0.5, 1.0]]))
    loss, info = gspo_loss(lp, old, torch.ones(1, 3), torch.ones(1, 3), 0.2, 0.2)
    assert torch.allclose(info["ratio"], torch.ones(1, 3)) and torch.allclose(loss, -torch.ones(1, 3))


def test_user_estimator_by_import_path(tmp_path, monkeypatch):
    (tmp_path / "team_estimators.py").write_text(
        "import torch\n"
        "def sign_only(batch, cfg, learner_tensors):\n"
        "    return torch.sign(batch.rewards - batch.rewards.mean())[:, None] * batch.response_mask\n"
        "sign_only.needs = frozenset({'hidden'})\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    fn = resolve_estimator("team_estimators:sign_only")
    assert fn.needs == {"hidden"}
    with pytest.raises(ValueError, match="has no attribute 'nope'"):
        resolve_estimator("team_estimators:nope")
    with pytest.raises(ValueError, match="cannot import module 'no_such_team_module'"):
        resolve_estimator("no_such_team_module:fn")
    with pytest.raises(ValueError, match="unknown estimator"):
        resolve_estimator("tempoo")


def test_gspo_sequence_advantage_ignores_tokens_outside_the_loss():
    # a sequence whose first token was dropped (D3S) keeps its advantage under GSPO
    lp = torch.zeros(1, 3)
    mask = torch.tensor([[0.0, 1.0, 1.0]])
    adv = torch.tensor([[0.0, 2.0, 2.0]])  # advantages arrive multiplied by the loss mask
    loss, _ = gspo_loss(lp, lp, adv, mask, 0.2, 0.2)
    assert torch.allclose(loss, torch.full((1, 3), -2.0))
