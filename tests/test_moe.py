"""MoE routing replay, router regularisers and router metrics (specs/moe_router.md), by hand."""

import math
from types import SimpleNamespace

import pytest
import torch

from rlreason.moe import metrics as M
from rlreason.moe.regularizers import expert_counts, freeze_routers, load_balancing_loss, router_anchor_kl, z_loss
from rlreason.moe.router import RouterTap, route_weights, sequence_routes
from rlreason.policy import MOE_ARCHS, build_tiny_moe

ARCH = SimpleNamespace(
    hidden_size=32, intermediate_size=64, moe_intermediate_size=16, num_layers=2, num_heads=4, num_kv_heads=2,
    num_experts=8, top_k=2, max_position_embeddings=64, tie_embeddings=True,
)


def tiny(arch: str, **over):
    cfg = SimpleNamespace(**{**vars(ARCH), "arch": arch, **over})
    model = build_tiny_moe(cfg, 40, 0, 1, 2, seed=0)
    model.train()
    return model


def inputs(B=3, S=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 40, (B, S), generator=g)
    mask = torch.ones(B, S, dtype=torch.long)
    mask[0, :3] = 0  # left padding on the first row
    return ids, mask


def forward_loss(model, ids, mask):
    out = model(input_ids=ids, attention_mask=mask, use_cache=False)
    logp = torch.log_softmax(out.logits.float(), -1)[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
    return logp, -(logp * mask[:, 1:]).sum()


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def random_routes(N, L, E, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(N * L)]).view(N, L, k)


# -- replay -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_replaying_self_recorded_ids_gives_identical_logprobs_and_grads(arch):
    model = tiny(arch)
    tap = RouterTap(model)
    assert tap.num_layers == 2 and tap.top_k == 2 and tap.num_experts == 8
    ids, mask = inputs()
    with tap.session():
        logp, loss = forward_loss(model, ids, mask)
        loss.backward()
    recorded, g_live = tap.stacked("live"), grads(model)
    model.zero_grad()
    with tap.session(forced=recorded):
        logp2, loss2 = forward_loss(model, ids, mask)
        loss2.backward()
    assert torch.equal(tap.stacked("used"), recorded)
    assert torch.equal(logp, logp2)
    g_replay = grads(model)
    assert g_live.keys() == g_replay.keys()
    for name in g_live:
        assert torch.allclose(g_live[name], g_replay[name], atol=1e-7, rtol=1e-6), name


@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_forced_random_ids_are_honoured_with_live_gate_weights_and_router_grad(arch):
    model = tiny(arch)
    tap = RouterTap(model)
    ids, mask = inputs()
    N = ids.numel()
    forced = random_routes(N, 2, 8, 2, seed=1)
    forced[:5] = -1  # sentinel rows route live
    seen = []
    hooks = [b.experts.register_forward_pre_hook(lambda m, a: seen.append((a[1].clone(), a[2].clone())))
             for b in model.modules() if hasattr(b, "experts") and hasattr(b, "gate")]
    with tap.session(forced=forced, capture_logits=True):
        _, loss = forward_loss(model, ids, mask)
        loss.backward()
    for h in hooks:
        h.remove()
    live, logits = tap.stacked("live"), tap.stacked("logits")
    for layer, (idx, weights) in enumerate(seen):
        assert torch.equal(idx[5:], forced[5:, layer]) and torch.equal(idx[:5], live[:5, layer])
        renorm = arch in ("qwen3_moe", "mixtral", "deepseek_v3")  # Qwen2-MoE and OLMoE keep the full-softmax probabilities
        # DeepSeek-V3 scores each expert by a sigmoid (routed_scaling_factor is 1 in the tiny config)
        scores = torch.sigmoid if arch == "deepseek_v3" else lambda x: torch.softmax(x, -1)
        p = scores(logits[layer].detach().float())[5:].gather(-1, forced[5:, layer])
        expected = p / p.sum(-1, keepdim=True) if renorm else p
        assert torch.allclose(weights[5:].float(), expected, atol=1e-6)
        assert torch.allclose(weights[5:].float().sum(-1), torch.ones(N - 5), atol=1e-6) == renorm
    for router in tap.routers:
        assert router.weight.grad is not None and router.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", ["qwen3_moe", "mixtral"])
def test_checkpointing_on_and_off_give_equal_grads_under_replay(arch):
    ids, mask = inputs()
    forced = random_routes(ids.numel(), 2, 8, 2, seed=2)
    results = []
    for ckpt in (False, True):
        model = tiny(arch)
        if ckpt:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        tap = RouterTap(model)
        calls = []
        tap.routers[0].register_forward_hook(lambda *a, calls=calls: calls.append(1))
        with tap.session(forced=forced, capture_logits=True):
            _, loss = forward_loss(model, ids, mask)
            loss = loss + z_loss(tap.stacked("logits"))  # captured logits stay differentiable under recompute
            loss.backward()
        assert torch.equal(tap.stacked("used"), forced)
        assert len(calls) == (2 if ckpt else 1)  # the recompute really ran, with the same forced ids
        results.append(grads(model))
    for name in results[0]:
        assert torch.allclose(results[0][name], results[1][name], atol=1e-6, rtol=1e-5), name


def test_route_count_follows_sparse_layers_and_sequence_alignment():
    assert RouterTap(tiny("qwen3_moe", num_layers=3)).num_layers == 3
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    cfg = Qwen3MoeConfig(vocab_size=40, hidden_size=32, intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, num_experts=8, num_experts_per_tok=2, mlp_only_layers=[1])
    tap = RouterTap(Qwen3MoeForCausalLM(cfg))
    assert tap.num_layers == 2  # layer 1 is a dense MLP: no route recorded or replayed there
    # sequence alignment: response route t sits at position P - 1 + t; the last position routes live
    prompt = torch.tensor([[[[-1, -1]], [[1, 2]], [[3, 4]]]])  # [B=1, P=3, L=1, k=2], left-padded
    response = torch.tensor([[[[3, 4]], [[5, 6]]]])  # [1, T=2, 1, 2]
    full = sequence_routes(prompt, response, prompt_len=3)
    assert full[0, :, 0].tolist() == [[-1, -1], [1, 2], [3, 4], [5, 6], [-1, -1]]
    assert sequence_routes(None, response, 3)[0, :, 0].tolist() == [[-1, -1], [-1, -1], [3, 4], [5, 6], [-1, -1]]
    with pytest.raises(ValueError, match="forced routes"):
        with tap.session(forced=torch.zeros(4, 3, 2, dtype=torch.long)):
            pass


def test_route_weights_rule():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    p = torch.softmax(logits, -1)
    idx = torch.tensor([[3, 0]])
    assert torch.allclose(route_weights(logits, idx, False), p[:, [3, 0]])
    assert torch.allclose(route_weights(logits, idx, True), p[:, [3, 0]] / p[:, [3, 0]].sum())


def test_probabilities_as_router_logits_are_refused():
    model = tiny("qwen3_moe")
    tap = RouterTap(model)
    router = tap.routers[0]
    original = type(router).forward

    def probs_forward(self, h):  # what transformers returned before PR #45131
        logits, w, idx = original(self, h)
        return torch.softmax(logits, -1), w, idx

    router.forward = probs_forward.__get__(router)
    with pytest.raises(RuntimeError, match="probabilities"), tap.session():
        model(input_ids=torch.tensor([[5, 6, 7]]))


# -- regularisers -------------------------------------------------------------------------------------


def test_load_balancing_loss_uniform_collapsed_masked_global():
    E, k, T = 8, 2, 12
    assert load_balancing_loss(torch.zeros(1, T, E), k).item() == pytest.approx(1.0)
    collapsed = torch.full((1, T, E), -30.0)
    collapsed[..., 0] = 30.0
    assert load_balancing_loss(collapsed, 1).item() == pytest.approx(E, rel=1e-6)  # one expert takes everything: E
    two = torch.full((1, T, E), -30.0)
    two[..., :2] = 30.0
    assert load_balancing_loss(two, 2).item() == pytest.approx(E / 2, rel=1e-6)  # E/k for k experts
    # padding tokens do not count: equal to the loss over the real tokens only
    x = torch.randn(2, T, E)
    mask = torch.tensor([0, 0, 0] + [1] * (T - 3))
    assert load_balancing_loss(x, k, mask).item() == pytest.approx(load_balancing_loss(x[:, 3:], k).item(), rel=1e-6)
    # global-batch LB with counts from the same single micro-batch equals the micro-batch LB
    idx = torch.topk(x, k, -1).indices.permute(1, 0, 2)
    counts = expert_counts(idx, E, mask)
    assert load_balancing_loss(x, k, mask, counts=counts).item() == pytest.approx(load_balancing_loss(x, k, mask).item())


def test_load_balancing_gradient_flows_through_p_only():
    E, k, T = 4, 1, 5
    x = torch.randn(1, T, E, requires_grad=True)
    loss = load_balancing_loss(x, k)
    loss.backward()
    f = torch.bincount(x[0].argmax(-1), minlength=E).float() / T
    p = torch.softmax(x.detach()[0], -1)
    # d/dx_t of E/T * sum_i f_i p_ti = E/T * p_t * (f - p_t . f)
    expected = E / T * p * (f[None] - (p * f[None]).sum(-1, keepdim=True))
    assert torch.allclose(x.grad[0], expected, atol=1e-6)


def test_z_loss_value_mask_and_gradient():
    x = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]], requires_grad=True)  # [L=1, T=2, E=3]
    lse = torch.tensor([math.log(math.e + math.e**2 + math.e**3), math.log(3.0)])
    assert z_loss(x).item() == pytest.approx(float((lse**2).mean()), rel=1e-6)
    assert z_loss(x, torch.tensor([1, 0])).item() == pytest.approx(float(lse[0] ** 2), rel=1e-6)
    c_z = 1e-3
    (c_z * z_loss(x)).backward()
    expected = 2 * c_z * lse[:, None] * torch.softmax(x.detach()[0], -1) / 2
    assert torch.allclose(x.grad[0], expected, atol=1e-8)


def test_anchoring_is_zero_at_old_and_positive_after_a_change():
    old = torch.randn(2, 6, 8)
    new = old.clone().requires_grad_(True)
    a = router_anchor_kl(old, new)
    a.backward()
    assert a.item() == pytest.approx(0.0, abs=1e-7) and new.grad.abs().max() < 1e-7
    assert router_anchor_kl(old, old + 0.5 * torch.randn_like(old)).item() > 1e-3


def test_frozen_router_is_bit_identical_after_a_step_and_absent_from_the_optimizer(tiny_policy):
    from rlreason.config import AlgoConfig, LearnerConfig, MoEConfig
    from rlreason.learner.learner import Learner
    from rlreason.rollout.worker import RolloutWorker

    batch, _ = RolloutWorker("hf", tiny_policy, threads=2).generate(["1+2=", "7+7-1="], 0, 4, 10, 1.0, 1.0, seed=0)
    batch.rewards = torch.tensor([1.0, 0, 0, 1, 0, 1, 1, 0])
    learner = Learner(tiny_policy, LearnerConfig(lr=1e-2), AlgoConfig(), 1.0, 10, moe_cfg=MoEConfig(freeze_router=True))
    routers = learner.moe.tap.routers
    before = [r.weight.detach().clone() for r in routers]
    others = {n: p.detach().clone() for n, p in learner.model.named_parameters() if p.requires_grad}
    in_opt = {id(p) for g in learner.optimizer.param_groups for p in g["params"]}
    assert all(id(r.weight) not in in_opt for r in routers)
    learner.train_step(batch)
    assert all(torch.equal(b, r.weight) for b, r in zip(before, routers))
    assert any(not torch.equal(v, dict(learner.model.named_parameters())[n]) for n, v in others.items())
    assert freeze_routers(learner.model) == len(routers)


# -- metrics ---------------------------------------------------------------------------------------------


def test_route_agreement_by_hand():
    a = torch.tensor([[[0, 1], [2, 3]], [[4, 5], [6, 7]], [[0, 1], [-1, -1]]])  # [N=3, L=2, k=2]
    b = torch.tensor([[[1, 0], [2, 5]], [[4, 6], [6, 7]], [[2, 3], [1, 2]]])
    r = M.route_agreement(a, b)
    # layer 0: same set (order ignored), 1 of 2 shared, disjoint -> 2/3 mismatch; overlap (1 + .5 + 0)/3
    assert r["mismatch_rate"][0] == pytest.approx(2 / 3) and r["topk_overlap"][0] == pytest.approx(0.5)
    # layer 1: the third row is unrecorded (-1): 1 mismatch of 2
    assert r["mismatch_rate"][1] == pytest.approx(0.5) and r["topk_overlap"][1] == pytest.approx(0.75)
    assert r["token_any_mismatch"] == pytest.approx(1.0)
    assert r["mismatched_layers_per_token"] == pytest.approx(1.0)  # one differing layer on each token
    r = M.route_agreement(a, b, mask=torch.tensor([1, 0, 0]))
    assert r["mismatch_rate"] == [0.0, 1.0]


def test_category_specialisation_by_hand():
    # each category its own expert: 1 bit, and half of each category's slots would have to move
    apart = M.category_specialisation(torch.tensor([[10.0, 0.0], [0.0, 10.0]]))
    assert apart["mutual_information"] == pytest.approx(1.0) and apart["mean_tv"] == pytest.approx(0.5)
    assert apart["load_by_category"] == [[1.0, 0.0], [0.0, 1.0]]
    same = M.category_specialisation(torch.tensor([[5.0, 5.0], [3.0, 3.0]]))
    assert same["mutual_information"] == pytest.approx(0.0, abs=1e-12) and same["mean_tv"] == pytest.approx(0.0)
    # p(c, e) = [[3/8, 1/8], [1/8, 3/8]]: MI = 3/4 log2(3/2) + 1/4 log2(1/2) = 0.188722; TV = |3/4 - 1/2| = 1/4
    leaning = M.category_specialisation(torch.tensor([[6.0, 2.0], [2.0, 6.0]]))
    assert leaning["mutual_information"] == pytest.approx(0.75 * math.log2(1.5) - 0.25) and leaning["mean_tv"] == pytest.approx(0.25)


def test_expert_load_and_router_stats_by_hand():
    idx = torch.tensor([[[0, 1]], [[0, 2]], [[0, 1]], [[0, 3]]])  # [N=4, L=1, k=2], E=4
    load = M.expert_load(idx, 4)
    assert load["max_over_mean"] == [pytest.approx(2.0)]  # expert 0: 4 of 8 slots = 0.5, mean 0.25
    assert load["maxvio"] == [pytest.approx(1.0)]
    assert load["dead_experts"] == [0]
    p = torch.tensor([0.5, 0.25, 0.125, 0.125])
    assert load["entropy"] == [pytest.approx(float(-(p * p.log()).sum() / math.log(4)))]
    assert M.expert_load(torch.tensor([[[0, 1]]]), 4)["dead_experts"] == [2]
    logits = torch.log(torch.tensor([[[0.4, 0.3, 0.2999, 0.0001], [0.7, 0.2, 0.05, 0.05]]]))  # [L=1, N=2, E=4]
    s = M.router_stats(logits, top_k=1)
    assert s["top1_prob"] == [pytest.approx(0.55, rel=1e-5)]
    assert s["near_tie_frac"] == [pytest.approx(0.0)]
    assert M.router_stats(logits, top_k=2)["near_tie_frac"] == [pytest.approx(0.5)]  # 0.3 vs 0.2999 is a near tie
    assert s["lse2"] == [pytest.approx(0.0, abs=1e-6)]  # logits are log-probabilities: lse = 0


# -- the learner ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bf16_rollout(tiny_policy):
    """A batch sampled by a bf16 copy of the policy (as deployed engines sample): its routing differs
    from the fp32 learner's on some tokens, like vLLM's from the trainer's."""
    from rlreason.rollout.worker import RolloutWorker

    w = RolloutWorker("hf", tiny_policy, threads=2, dtype="bf16")
    batch, _ = w.generate(["1+2=", "10-3+4=", "7+7-1=", "4-2+9="], 0, 4, 12, 1.0, 1.0, seed=0)
    batch.rewards = torch.tensor([1.0, 0, 0, 1, 0, 1, 1, 1, 0, 0, 0, 1, 1, 0, 1, 0])
    return batch


def _learner(path, mode, **moe):
    from rlreason.config import AlgoConfig, LearnerConfig, MoEConfig
    from rlreason.learner.learner import Learner

    return Learner(path, LearnerConfig(lr=1e-2, mini_batches=2, ppo_epochs=2), AlgoConfig(), 1.0, 12,
                   moe_cfg=MoEConfig(routing_replay=mode, **moe))


def test_learner_replay_modes(tiny_policy, bf16_rollout):
    batch = bf16_rollout
    assert batch.prompt_routed_experts is not None and batch.routed_experts is not None
    none, r2, r3 = (_learner(tiny_policy, m).train_step(batch) for m in ("none", "r2", "r3"))
    # the bf16 sampler routed some (token, layer) pairs differently from the fp32 learner
    assert none["moe/rollout_vs_live/mismatch_rate"] > 0
    assert none["moe/rollout_vs_used/mismatch_rate"] > 0 and "moe/replay_vs_used/mismatch_rate" not in none
    # R3: every training forward used the sampler's experts (measured at the experts' input)
    assert r3["moe/rollout_vs_used/mismatch_rate"] == 0.0 and r3["moe/replay_vs_used/mismatch_rate"] == 0.0
    # R2: the update passes used the old pass's experts, so the engine mismatch stays
    assert r2["moe/replay_vs_used/mismatch_rate"] == 0.0 and r2["moe/rollout_vs_used/mismatch_rate"] > 0
    # the updates drift the live router away from the replayed routes (staleness); none sees it too
    assert r2["moe/replay_vs_live/mismatch_rate"] > 0 and none["moe/old_vs_live/mismatch_rate"] > 0
    # R3's old logprobs are those of the sampler's routing: closer to the sampling logprobs
    assert r3["kl/rollout_vs_train"] < none["kl/rollout_vs_train"]
    for m in (none, r2, r3):
        assert 0 <= m["moe/probe/routing_change"] <= 1 and m["moe/load/max_over_mean"] >= 1
        assert "moe/layer1/rollout_vs_live/mismatch_rate" in m and m["moe/router/grad_norm"] > 0


def test_learner_regularisers_enter_the_loss(tiny_policy, bf16_rollout):
    plain = _learner(tiny_policy, "none").train_step(bf16_rollout)
    reg = _learner(tiny_policy, "none", lb_coef=0.1, lb_scope="global", z_coef=0.01, anchor_coef=1.0).train_step(bf16_rollout)
    assert "loss/moe_lb" not in plain
    assert reg["loss/moe_lb"] >= 1.0 - 1e-6 and reg["loss/moe_z"] > 0 and reg["loss/moe_anchor"] >= 0
    expected = reg["loss/policy"] + 0.1 * reg["loss/moe_lb"] + 0.01 * reg["loss/moe_z"] + 1.0 * reg["loss/moe_anchor"]
    assert reg["loss/total"] == pytest.approx(expected, rel=1e-5)
    # the LB value is logged even at coefficient 0
    assert plain["moe/lb_loss"] >= 1.0 - 1e-6 and plain["moe/z_loss"] > 0


def test_r3_without_recorded_routes_is_refused_and_reference_is_never_replayed(tiny_policy, bf16_rollout):
    import dataclasses

    from rlreason.config import AlgoConfig, LearnerConfig, MoEConfig
    from rlreason.learner.learner import Learner

    stripped = dataclasses.replace(bf16_rollout, routed_experts=None, prompt_routed_experts=None)
    with pytest.raises(RuntimeError, match="routed experts"):
        _learner(tiny_policy, "r3").train_step(stripped)
    learner = Learner(tiny_policy, LearnerConfig(), AlgoConfig(kl_coef=0.1), 1.0, 12, moe_cfg=MoEConfig(routing_replay="r3"))
    ref_routers = [m for m in learner.ref.modules() if type(m).__name__.endswith("TopKRouter")]
    assert ref_routers and all(not r._forward_hooks for r in ref_routers)  # the tap hooks only the trained policy
    assert all(r in learner.moe.tap.routers for r in learner.moe.tap.routers) and not set(ref_routers) & set(learner.moe.tap.routers)
    m = learner.train_step(bf16_rollout)
    assert m["moe/rollout_vs_used/mismatch_rate"] == 0.0 and m["kl/ref"] >= 0


def test_r3_trains_a_tiny_moe_for_several_steps_with_zero_replayed_mismatch(tiny_policy):
    """The loop in-process: the HF engine (bf16) samples and records routes, the learner trains with R3,
    weights go back to the engine, three times. Every training forward used the sampler's experts."""
    from rlreason.config import AlgoConfig, LearnerConfig, MoEConfig
    from rlreason.learner.learner import Learner
    from rlreason.rollout.worker import RolloutWorker

    worker = RolloutWorker("hf", tiny_policy, threads=2, dtype="bf16")
    learner = Learner(tiny_policy, LearnerConfig(lr=1e-2, mini_batches=2), AlgoConfig(), 1.0, 12,
                      moe_cfg=MoEConfig(routing_replay="r3"))
    g = torch.Generator().manual_seed(0)
    start = {n: p.detach().clone() for n, p in learner.model.named_parameters()}
    live_mismatch = []
    for step in range(3):
        batch, _ = worker.generate(["1+2=", "10-3+4=", "7+7-1=", "4-2+9="], 0, 4, 12, 1.0, 1.0, seed=step)
        batch.rewards = torch.bernoulli(torch.full((batch.size,), 0.5), generator=g)
        m = learner.train_step(batch)
        assert m["moe/rollout_vs_used/mismatch_rate"] == 0.0 and m["moe/replay_vs_used/mismatch_rate"] == 0.0
        assert m["grad_norm"] > 0 and m["loss/policy"] == m["loss/policy"]
        live_mismatch.append(m["moe/rollout_vs_live/mismatch_rate"])
        worker.load_weights(learner.get_weights(), m["learner/version"])
    assert max(live_mismatch) > 0  # without replay, the learner would have routed some tokens elsewhere
    assert any(not torch.equal(v, dict(learner.model.named_parameters())[n]) for n, v in start.items())
    assert worker.engine.model.dtype == torch.bfloat16
