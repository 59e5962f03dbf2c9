"""The routing methods of specs/moe_routing_methods.md in the learner and the HF engine: aux-free
balancing (bias on the selection, its step, its sync and checkpoint), the ERC loss in the update, and
Sinkhorn steps. The pure functions are tested by hand in test_moe_balance/erc/sinkhorn.py."""

import pytest
import torch

from rlreason.config import AlgoConfig, LearnerConfig, MoEConfig
from rlreason.moe.balance import SELECTION_BIAS_KEY, SelectionBias, bias_step
from rlreason.moe.regularizers import expert_counts
from rlreason.moe.router import RouterTap, moe_blocks, route_weights, unwrap


@pytest.fixture(scope="module")
def batch(tiny_policy):
    from rlreason.rollout.worker import RolloutWorker

    b, _ = RolloutWorker("hf", tiny_policy, threads=2).generate(["1+2=", "10-3+4=", "7+7-1=", "4-2+9="], 0, 4, 12, 1.0, 1.0, seed=0)
    b.rewards = torch.tensor([1.0, 0, 0, 1, 0, 1, 1, 1, 0, 0, 0, 1, 1, 0, 1, 0])
    return b


def learner(path, **moe):
    from rlreason.learner.learner import Learner

    return Learner(path, LearnerConfig(lr=1e-2), AlgoConfig(), 1.0, 12, moe_cfg=MoEConfig(**moe))


def test_the_selection_bias_moves_the_choice_and_leaves_the_gate_to_the_unbiased_router(tiny_policy):
    from rlreason.policy import load_policy

    model = load_policy(tiny_policy)
    routers = [unwrap(b.gate) for b in moe_blocks(model)]
    x = torch.randn(20, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    logits, _, native_ids = routers[0](x)
    bias = torch.zeros(len(routers), routers[0].num_experts)
    bias[0, 3] = 10.0  # expert 3 of layer 0 wins every token's selection
    hooks = SelectionBias(model, bias)
    _, weights, ids = routers[0](x)
    assert (ids == 3).any(-1).all() and not (native_ids == 3).any(-1).all()
    torch.testing.assert_close(weights, route_weights(logits, ids, True).to(weights.dtype))  # the unbiased softmax
    hooks.enabled = False
    assert torch.equal(routers[0](x)[2], native_ids)
    hooks.close()


def test_aux_free_steps_the_bias_from_the_routed_loads_syncs_and_checkpoints_it(tiny_policy, batch, tmp_path):
    from rlreason.rollout.worker import RolloutWorker
    from rlreason.transfer import to_transport

    lrn = learner(tiny_policy, balance="aux_free", bias_update_rate=0.05)
    m = lrn.train_step(batch)
    counts = expert_counts(lrn.moe.old_used, lrn.moe.tap.num_experts, lrn.moe.mask)  # fused: the update's routes
    torch.testing.assert_close(lrn.moe.bias.bias, bias_step(counts.double(), 0.05))
    assert lrn.moe.bias.bias.dtype == torch.float32 and lrn.moe.bias.bias.abs().max() == pytest.approx(0.05)
    assert m["moe/bias/range"] > 0 and "moe/layer1/bias/range" in m and m["moe/bias/rate"] == 0.05

    # the engine gets b with the weights and selects as the learner does: a bias that forces expert 2
    lrn.moe.bias.bias[:, 2] = 10.0
    worker = RolloutWorker("hf", tiny_policy, threads=2)
    worker.load_weights(to_transport({**lrn.get_weights(), **lrn._engine_extras()}), 1)
    sampled, _ = worker.generate(["1+2="], 0, 2, 6, 1.0, 1.0, seed=0)
    real = sampled.routed_experts[sampled.response_mask.bool()]  # [tokens, L, k]
    assert (real == 2).any(-1).all()
    with lrn.moe.tap.session():
        lrn._forward(lrn.model, batch)
    live = lrn.moe.tap.stacked("live")[lrn.moe.mask.bool()]
    assert (live == 2).any(-1).all()
    with lrn.moe.tap.session(), lrn.moe.native():  # the reference pass inside a step: no bias, nothing recorded
        lrn._forward(lrn.model, batch)
    assert lrn.moe.tap.stacked("live") is None  # the paused tap saw nothing
    lrn.save(str(tmp_path / "ckpt"))
    again = learner(tiny_policy, balance="aux_free", bias_update_rate=0.05)
    again.load(str(tmp_path / "ckpt"))
    assert torch.equal(again.moe.bias.bias, lrn.moe.bias.bias) and again.moe.selection.bias is again.moe.bias.bias
    assert SELECTION_BIAS_KEY not in lrn.get_weights()  # HF folders (vLLM, checkpoints) never carry it


def test_erc_enters_the_update_once(tiny_policy, batch):
    m = learner(tiny_policy, erc_coef=0.1).train_step(batch)
    assert m["loss/moe_erc"] > 0
    assert m["loss/total"] == pytest.approx(m["loss/policy"] + 0.1 * m["loss/moe_erc"], rel=1e-5)


def test_sinkhorn_steps_balance_the_learners_routing_and_p0_is_native(tiny_policy, batch):
    native = learner(tiny_policy).train_step(batch)
    never = learner(tiny_policy, router="sinkhorn", sinkhorn_prob=0.0).train_step(batch)
    always = learner(tiny_policy, router="sinkhorn", sinkhorn_prob=1.0, sinkhorn_tol=1e-6, sinkhorn_iters=500)
    m = always.train_step(batch)
    assert never["loss/policy"] == native["loss/policy"] and never["moe/sinkhorn/step"] == 0.0
    assert m["moe/sinkhorn/step"] == 1.0
    # the plan balances each forward's real tokens: top-1 loads are within one token of T/E in every layer
    used = always.moe.old_used[:, :, :1]
    counts = expert_counts(used, always.moe.tap.num_experts, always.moe.mask)
    assert float((counts.max(-1).values / counts.mean(-1)).max()) < native["moe/load/max_over_mean_max"]
    assert m["moe/load/max_over_mean"] < native["moe/load/max_over_mean"]


def test_a_balanced_session_leaves_padding_to_the_router(tiny_policy):
    from rlreason.moe.sinkhorn import ssr_route
    from rlreason.policy import load_policy

    model = load_policy(tiny_policy)
    tap = RouterTap(model)
    ids = torch.randint(3, 30, (2, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[0, :3] = 0
    with torch.no_grad(), tap.session():
        model(input_ids=ids, attention_mask=mask)
    native = tap.stacked("live")
    with torch.no_grad(), tap.session(balanced=lambda lg, k: ssr_route(lg, k), token_mask=mask.reshape(-1)):
        model(input_ids=ids, attention_mask=mask)
    balanced = tap.stacked("live")
    pad = ~mask.reshape(-1).bool()
    assert torch.equal(balanced[pad], native[pad]) and not torch.equal(balanced[~pad], native[~pad])
    with pytest.raises(ValueError, match="token mask"), tap.session(balanced=lambda lg, k: ssr_route(lg, k)):
        pass


@pytest.mark.integration
def test_the_routing_methods_run_from_the_cli_on_a_tiny_deepseek_moe(tmp_path):
    """aux-free + ERC + Sinkhorn on every step + R2, two smoke steps as a user runs them, on the DeepSeek-V3
    architecture (its router's own bias is b; the Qwen/Mixtral hook path runs end to end below)."""
    from conftest import read_metrics, run_cli

    proc = run_cli(["recipe=grpo", "model.arch=deepseek_v3", "moe=aux_free", "moe.erc_coef=0.01", "moe.router=sinkhorn",
                    "moe.sinkhorn_prob=1", "moe.routing_replay=r2", "scale=smoke", "total_steps=2", "rollout.prompts_per_step=2",
                    "telemetry.tensorboard=false", f"run_dir={tmp_path}"], timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = [m for m in read_metrics(tmp_path) if "loss/policy" in m]
    assert [m["step"] for m in steps] == [1, 2]
    for m in steps:
        assert m["moe/bias/range"] > 0 and m["loss/moe_erc"] > 0 and m["moe/sinkhorn/step"] == 1.0
        assert m["moe/replay_vs_used/mismatch_rate"] == 0.0


@pytest.mark.integration
def test_drop_upcycled_smollm2_moe_with_aux_free_runs_from_the_cli(tmp_path):
    """model=smollm2-moe model.upcycle.method=drop moe=aux_free: the drop-upcycled folder is built (r = 0.5),
    LoRA trains it, and the selection bias travels to the hf engine in the adapter-only sync."""
    from conftest import read_metrics, run_cli

    # 2 experts, top-1 (the smallest upcycling) and a 2 x 2 batch of 4 tokens: the path, not the scale, is under test
    proc = run_cli(["model=smollm2-moe", "model.num_experts=2", "model.top_k=1", "model.upcycle.method=drop", "moe=aux_free",
                    "task=elementary_math", "recipe=grpo", "scale=smoke", "total_steps=1", "eval_every=0", "eval_sampled=false",
                    "task.eval_per_category=1", "rollout.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=4",
                    "telemetry.tensorboard=false", f"run_dir={tmp_path}"], timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (step,) = [m for m in read_metrics(tmp_path) if "loss/policy" in m]
    assert step["moe/bias/range"] > 0 and step["loss/policy"] == step["loss/policy"]
    assert "method: drop" in (tmp_path / "config.yaml").read_text()


def test_a_deepseek_router_selects_with_its_own_bias_which_starts_from_the_checkpoint():
    """DeepSeek-V3's router has e_score_correction_bias: b is written into it (sigmoid scores + b choose,
    the unbiased sigmoid gates), b starts from the checkpoint's value, and disabled routes with that value."""
    from types import SimpleNamespace

    from rlreason.policy import build_tiny_moe

    arch = SimpleNamespace(arch="deepseek_v3", hidden_size=32, intermediate_size=64, moe_intermediate_size=16, num_layers=2,
                           num_heads=4, num_kv_heads=2, num_experts=8, top_k=2, max_position_embeddings=64, tie_embeddings=True)
    model = build_tiny_moe(arch, 40, 0, 1, 2, seed=0)
    routers = [unwrap(b.gate) for b in moe_blocks(model)]
    assert len(routers) == 2 and all(hasattr(r, "e_score_correction_bias") for r in routers)
    routers[1].e_score_correction_bias.fill_(0.01)  # a checkpoint that was already balancing
    bias = torch.zeros(2, 8)
    hooks = SelectionBias(model, bias)
    assert torch.allclose(bias[1], torch.full((8,), 0.01)) and bias[0].abs().sum() == 0
    x = torch.randn(20, 32, generator=torch.Generator().manual_seed(0))
    bias[0, 6] = 10.0
    logits, weights, ids = routers[0](x)
    assert (ids == 6).any(-1).all() and float(routers[0].e_score_correction_bias[6]) == 10.0
    torch.testing.assert_close(weights, route_weights(logits, ids, True, "sigmoid", 1.0))
    hooks.enabled = False
    routers[1](x)
    _, _, native = routers[0](x)
    assert not (native == 6).any(-1).all() and float(routers[1].e_score_correction_bias[0]) == pytest.approx(0.01)
    hooks.close()
