"""The learner in-process (no Ray): on-policy ratio, reference model, mini-batches, checkpoints."""

import dataclasses

import pytest
import torch

from rlreason.config import AlgoConfig, LearnerConfig
from rlreason.learner.learner import Learner
from rlreason.rollout.worker import RolloutWorker


def test_sampling_logprobs_match_learner_for_same_weights(tiny_policy, rollout):
    _, batch = rollout
    learner = Learner(tiny_policy, LearnerConfig(), AlgoConfig(), 1.0, 12)
    lp = learner.score_logprobs(batch)
    diff = ((lp - batch.sampling_logprobs) * batch.response_mask).abs().max()
    assert diff < 1e-4


def test_one_epoch_one_minibatch_ratio_is_exactly_one(tiny_policy, rollout):
    _, batch = rollout
    learner = Learner(tiny_policy, LearnerConfig(), AlgoConfig(), 1.0, 12)
    assert learner.ref is None  # kl_coef = 0: no reference model loaded
    m = learner.train_step(batch)
    assert m["ratio/mean"] == 1.0
    assert m["clip/low_frac"] == 0.0 and m["clip/high_frac"] == 0.0
    assert m["kl/ref"] == 0.0
    assert m["grad_norm"] > 0


def test_kl_reference_and_several_minibatches(tiny_policy, rollout):
    _, batch = rollout
    cfg = LearnerConfig(mini_batches=3, ppo_epochs=2, lr=1e-2)
    learner = Learner(tiny_policy, cfg, AlgoConfig(kl_coef=0.1), 1.0, 12)
    assert learner.ref is not None
    first = learner.train_step(batch)
    assert first["kl/ref"] > 0  # after the first of six updates the policy has left the reference
    second = learner.train_step(batch)
    assert second["ratio/mean"] != 1.0
    assert learner.version == 2


def test_bf16_autocast_step_runs(tiny_policy, rollout):
    _, batch = rollout
    learner = Learner(tiny_policy, LearnerConfig(dtype="bf16"), AlgoConfig(), 1.0, 12)
    m = learner.train_step(batch)
    assert torch.isfinite(torch.tensor(m["loss/policy"]))
    assert next(learner.model.parameters()).dtype == torch.float32  # master weights stay fp32


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-sum-norm"])
def test_aggregation_modes_train(tiny_policy, rollout, mode):
    _, batch = rollout
    learner = Learner(tiny_policy, LearnerConfig(), AlgoConfig(loss_agg=mode), 1.0, 12)
    assert learner.train_step(batch)["grad_norm"] > 0


def test_checkpoint_roundtrip(tiny_policy, rollout, tmp_path):
    _, batch = rollout
    a = Learner(tiny_policy, LearnerConfig(lr=1e-2), AlgoConfig(), 1.0, 12)
    a.train_step(batch)
    a.save(str(tmp_path / "ck"))
    b = Learner(tiny_policy, LearnerConfig(lr=1e-2), AlgoConfig(), 1.0, 12)
    assert b.load(str(tmp_path / "ck")) == 1
    for (k, va), (_, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(va, vb), k
    # the optimizer state came back too: the next step is identical
    ma, mb = a.train_step(batch), b.train_step(batch)
    assert ma["loss/policy"] == mb["loss/policy"] and ma["grad_norm"] == mb["grad_norm"]
    wa, wb = a.get_weights(), b.get_weights()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_user_estimators_advantages_are_the_ones_the_loss_uses(tiny_policy, rollout, tmp_path, monkeypatch):
    """An estimator loaded from a team's module by import path: on-policy the PPO term per token is -A, so
    the policy loss is exactly the aggregate of -A under the loss's aggregation; the estimator's own
    metric arrives with the step."""
    from rlreason.algos.losses import aggregate

    (tmp_path / "team_adv.py").write_text(
        "import torch\n"
        "from rlreason.algos import Estimate\n"
        "def position_ramp(batch, cfg, lt):\n"
        "    t = torch.arange(batch.response_ids.shape[1], dtype=torch.float32)\n"
        "    adv = (batch.rewards[:, None] - 0.5) * (1.0 + 0.1 * t) * batch.response_mask\n"
        "    return Estimate(adv, metrics={'team/called': 1.0})\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    _, batch = rollout
    t = torch.arange(batch.response_ids.shape[1], dtype=torch.float32)
    expected = (batch.rewards[:, None] - 0.5) * (1.0 + 0.1 * t) * batch.response_mask
    for agg in ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"):
        learner = Learner(tiny_policy, LearnerConfig(), AlgoConfig(estimator="team_adv:position_ramp", loss_agg=agg), 1.0, 12)
        m = learner.train_step(batch)
        assert m["team/called"] == 1.0 and m["ratio/mean"] == 1.0
        assert m["loss/policy"] == pytest.approx(float(aggregate(-expected, batch.response_mask, agg, 12)), rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("mode", ["token", "sequence-mask"])
def test_truncated_is_modes_in_the_learner(tiny_policy, rollout, mode):
    _, batch = rollout
    # sampling logprobs shifted down by log 4: every token ratio is 4, so token mode caps every weight at
    # 2 and sequence-mask mode drops every sequence (its product ratio is 4 ** |o| > 2)
    shifted = dataclasses.replace(batch, sampling_logprobs=(batch.sampling_logprobs - torch.log(torch.tensor(4.0))) * batch.response_mask)
    learner = Learner(tiny_policy, LearnerConfig(), AlgoConfig(tis_mode=mode, tis_cap=2.0), 1.0, 12)
    m = learner.train_step(shifted)
    if mode == "token":
        assert m["rollout_correction/weight_mean"] == pytest.approx(2.0, abs=1e-3)
        assert m["grad_norm"] > 0
    else:
        assert m["rollout_correction/masked_seq_frac"] == 1.0
        assert m["grad_norm"] == 0.0  # nothing left to learn from
    assert m["kl/rollout_vs_train"] > 0.5  # k3 of a log-ratio of log 4: 4 - 1 - log 4 = 1.61


def test_estimate_loss_mask_drops_samples_exactly(tiny_policy, rollout):
    """An estimator's loss_mask takes samples out of the loss and its normaliser: masking the first
    group's samples gives the same update as training on the other groups alone."""
    from rlreason.algos.advantages import ESTIMATORS, Estimate, register_estimator

    _, batch = rollout
    fixed = (batch.rewards - 0.5)[:, None] * batch.response_mask  # advantages that do not depend on the batch

    @register_estimator("test_masked")
    def masked(b, cfg, lt):
        keep = (b.group_index != 0).float()[:, None] * b.response_mask
        return Estimate((b.rewards - 0.5)[:, None] * b.response_mask, loss_mask=keep)

    @register_estimator("test_fixed")
    def plain(b, cfg, lt):
        return (b.rewards - 0.5)[:, None] * b.response_mask

    try:
        a = Learner(tiny_policy, LearnerConfig(lr=1e-2), AlgoConfig(estimator="test_masked"), 1.0, 12)
        ma = a.train_step(batch)
        b = Learner(tiny_policy, LearnerConfig(lr=1e-2), AlgoConfig(estimator="test_fixed"), 1.0, 12)
        rest = batch.select(torch.nonzero(batch.group_index != 0).flatten())
        mb = b.train_step(rest)
        assert ma["loss/policy"] == pytest.approx(mb["loss/policy"], rel=1e-5)
        # same gradient (compared before Adam, whose normalisation amplifies float noise in ~0 entries)
        assert ma["grad_norm"] == pytest.approx(mb["grad_norm"], rel=1e-4)
        assert ma["loss/token_frac"] < 1.0 and fixed.abs().sum() > 0
    finally:
        ESTIMATORS.unregister("test_masked")
        ESTIMATORS.unregister("test_fixed")


def test_token_weights_scale_the_loss_not_its_normaliser(tiny_policy, rollout):
    from rlreason.algos.advantages import ESTIMATORS, Estimate, register_estimator

    _, batch = rollout

    @register_estimator("test_weighted")
    def weighted(b, cfg, lt):
        adv = (b.rewards - 0.5)[:, None] * b.response_mask
        return Estimate(adv, token_weights=2.0 * b.response_mask)

    try:
        register_estimator("test_plain")(lambda b, cfg, lt: (b.rewards - 0.5)[:, None] * b.response_mask)
        base = Learner(tiny_policy, LearnerConfig(), AlgoConfig(estimator="test_plain", loss_agg="token-mean"), 1.0, 12)
        w = Learner(tiny_policy, LearnerConfig(), AlgoConfig(estimator="test_weighted", loss_agg="token-mean"), 1.0, 12)
        assert w.train_step(batch)["loss/policy"] == pytest.approx(2.0 * base.train_step(batch)["loss/policy"], rel=1e-5)
    finally:
        for k in ("test_weighted", "test_plain"):
            ESTIMATORS.unregister(k)


def test_nonfinite_loss_skips_the_update_and_stops_after_k_in_a_row(tiny_policy, rollout):
    from rlreason.algos.advantages import ESTIMATORS, register_estimator

    _, batch = rollout

    @register_estimator("test_nan")
    def nan_advantages(b, cfg, lt):
        return torch.full_like(b.response_mask, float("nan"), dtype=torch.float32)

    try:
        learner = Learner(tiny_policy, LearnerConfig(lr=1e-2, max_nonfinite_updates=3), AlgoConfig(estimator="test_nan"), 1.0, 12)
        before = {n: p.detach().clone() for n, p in learner.model.named_parameters()}
        m = learner.train_step(batch)
        assert m["train/skipped_updates"] == 1 and "loss/policy" not in m
        assert all(torch.equal(p, before[n]) for n, p in learner.model.named_parameters())  # nothing applied
        assert not learner.optimizer.state  # Adam's moments were never touched
        learner.estimator = ESTIMATORS.get("grpo")  # a finite update resets the streak
        assert learner.train_step(batch)["train/skipped_updates"] == 0 and learner.nonfinite_streak == 0
        learner.estimator = nan_advantages
        learner.train_step(batch)
        learner.train_step(batch)
        with pytest.raises(FloatingPointError, match="3 updates in a row"):
            learner.train_step(batch)
    finally:
        ESTIMATORS.unregister("test_nan")


def test_lora_trains_adapters_only_syncs_merged_weights_and_checkpoints_adapters(tiny_policy, rollout, tmp_path):
    import copy

    from rlreason.config import LoRAConfig

    worker, batch = rollout
    lora = LoRAConfig(r=4, alpha=8)
    learner = Learner(tiny_policy, LearnerConfig(lr=1e-2), AlgoConfig(kl_coef=0.1), 1.0, 12, lora_cfg=lora)
    assert learner.ref is None  # the reference is the base model with the adapters disabled
    frozen = {k: v.clone() for k, v in learner.model.named_parameters() if not v.requires_grad}
    trainable = {k: v.clone() for k, v in learner.model.named_parameters() if v.requires_grad}
    assert trainable and all("lora_" in k for k in trainable)
    m = learner.train_step(batch)
    assert m["kl/ref"] == pytest.approx(0.0, abs=1e-7)  # B = 0 at the start: policy == base
    m = learner.train_step(batch)
    assert m["kl/ref"] > 0 and m["grad_norm"] > 0
    for k, v in learner.model.named_parameters():
        if k in frozen:
            assert torch.equal(v, frozen[k]), k
    assert any(not torch.equal(v, trainable[k]) for k, v in learner.model.named_parameters() if k in trainable)

    # the merged weights equal peft's own merge, carry the base model's names, and are what the learner computes
    merged = learner.get_weights()
    reference = copy.deepcopy(learner.model).merge_and_unload().state_dict()
    assert merged.keys() == reference.keys()
    for k in reference:
        torch.testing.assert_close(merged[k], reference[k], rtol=0, atol=0)
    engine = RolloutWorker("hf", tiny_policy, threads=2)
    engine.load_weights(merged, 2)
    mask = batch.response_mask.bool()
    assert (engine.score_logprobs(batch) - learner.score_logprobs(batch))[mask].abs().max() < 1e-5

    # checkpoints hold the adapters only, and restore the adapters and the optimizer
    learner.save(str(tmp_path / "ckpt"))
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["adapter", "learner.pt"]
    assert (tmp_path / "ckpt" / "adapter" / "adapter_model.safetensors").stat().st_size < 200_000
    fresh = Learner(tiny_policy, LearnerConfig(lr=1e-2), AlgoConfig(kl_coef=0.1), 1.0, 12, lora_cfg=lora)
    assert fresh.load(str(tmp_path / "ckpt")) == 2
    for k, v in fresh.get_weights().items():
        assert torch.equal(v, merged[k]), k
    a, b = learner.train_step(batch), fresh.train_step(batch)
    assert a["loss/total"] == b["loss/total"] and a["grad_norm"] == b["grad_norm"]


# -- speed: one forward fewer (fuse_old_pass) and length buckets, with the same numbers --------------------
@pytest.fixture(scope="module")
def dense_policy(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlreason.data.tokenizer import build_char_tokenizer

    path = tmp_path_factory.mktemp("dense")
    tok = build_char_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=64, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def dense_rollout(dense_policy):
    worker = RolloutWorker("hf", dense_policy, threads=2)
    batch, _ = worker.generate(["1+2=", "10-3+4=", "7+7-1=", "3*3+12="], 0, 4, 16, 1.0, 1.0, seed=0)
    batch.rewards = torch.tensor([1.0, 0, 0, 1, 0, 1, 1, 1, 0, 0, 0, 1, 1, 0, 1, 0])
    return batch


def _assert_matches_padded_forward(policy_path, b, forward) -> None:
    """`forward(model, prompt_ids, prompt_mask, response_ids, response_mask, **kw)` gives one padded
    forward's logprobs, entropy, hidden states, vocabulary log-probs (finite where masked) and gradients."""
    from rlreason.forward import response_logprobs
    from rlreason.policy import load_policy

    model = load_policy(policy_path)
    args = (b.prompt_ids, b.prompt_mask, b.response_ids, b.response_mask)
    kw = dict(with_entropy=True, with_hidden=True, with_vocab_logprobs=True)
    ref = response_logprobs(model, *args, **kw)
    (ref["logprobs"] * b.response_mask).sum().backward()
    ref_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    out = forward(model, *args, **kw)
    (out["logprobs"] * b.response_mask).sum().backward()
    m = b.response_mask.bool()
    for key in ref:
        assert out[key].shape == ref[key].shape, key
        torch.testing.assert_close(out[key][m], ref[key][m], rtol=1e-4, atol=1e-5, msg=key)
        assert torch.isfinite(out[key][~m]).all(), key  # past a response: meaningless (masked) but finite
    for g, r in zip((p.grad for p in model.parameters()), ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)


def test_length_buckets_give_one_padded_forwards_values_and_gradients(dense_policy, dense_rollout):
    from rlreason.forward import bucketed_response_logprobs

    lens = dense_rollout.response_mask.sum(1)
    assert lens.min() < lens.max()  # the batch has padding for buckets to save
    _assert_matches_padded_forward(dense_policy, dense_rollout, lambda *a, **kw: bucketed_response_logprobs(*a, buckets=3, **kw))


@pytest.mark.parametrize("buckets", [1, 3])
def test_shared_prompt_forward_gives_one_padded_forwards_values_and_gradients(dense_policy, dense_rollout, buckets):
    """Each distinct prompt forwarded once, its KV cache gathered for its samples (prompts of different lengths)."""
    from rlreason.forward import shared_prompt_response_logprobs

    assert len(set(dense_rollout.prompt_mask.sum(1).tolist())) > 1  # left padding differs between prompts
    _assert_matches_padded_forward(dense_policy, dense_rollout,
                                   lambda *a, **kw: shared_prompt_response_logprobs(*a, buckets=buckets, **kw))


@pytest.mark.parametrize("arch", ["qwen3_moe", "mixtral", "olmoe"])  # peft's all-linear skips qwen2_moe's experts
def test_expert_lora_on_activations_is_pefts_function_with_pefts_gradients(arch):
    """`model.lora.expert_forward=activations` (x W^T + s (x B) A per routed token) against peft's fold of
    the whole expert stack: same logits, same gradient for every adapter, every experts module switched,
    and disabling the adapters (the KL reference) still gives the base model."""
    from rlreason.config import LoRAConfig, ModelConfig
    from rlreason.learner.expert_lora import route_expert_lora_through_activations
    from rlreason.learner.lora import add_lora
    from rlreason.policy import build_tiny_moe

    cfg = ModelConfig(arch=arch, hidden_size=32, moe_intermediate_size=24, intermediate_size=48, num_layers=2,
                      num_heads=4, num_kv_heads=2, num_experts=4, top_k=2)
    ids = torch.randint(3, 40, (3, 9), generator=torch.Generator().manual_seed(0))
    runs = {}
    for mode in ("weights", "activations"):
        model = add_lora(build_tiny_moe(cfg, 40, 0, 1, 2, seed=0), LoRAConfig(r=4, alpha=8, expert_forward=mode))
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():  # B starts at zero, which would hide any difference
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        logits = model(input_ids=ids).logits
        logits.logsumexp(-1).sum().backward()
        with torch.no_grad(), model.disable_adapter():
            base = model(input_ids=ids).logits
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        runs[mode] = logits.detach(), grads, base, model
    (lw, gw, bw, peft_model), (la, ga, ba, _) = runs["weights"], runs["activations"]
    assert route_expert_lora_through_activations(peft_model) == cfg.num_layers  # on the weights-mode twin
    torch.testing.assert_close(la, lw, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ba, bw, rtol=0, atol=0)
    assert gw.keys() == ga.keys() and any("experts" in n for n in ga)
    for name in gw:
        torch.testing.assert_close(ga[name], gw[name], rtol=1e-4, atol=1e-6, msg=name)
    assert not torch.allclose(la, ba, atol=1e-3)  # the adapters do change the function


def test_expert_lora_keeps_pefts_fold_where_its_forward_differs(caplog):
    """An experts module that computes something else than transformers' routed gated MLP (here: its
    output doubled) is left on peft's forward, with a warning naming it."""
    from peft.tuners.lora.layer import ParamWrapper

    from rlreason.config import LoRAConfig, ModelConfig
    from rlreason.learner.lora import add_lora
    from rlreason.policy import build_tiny_moe

    cfg = ModelConfig(arch="mixtral", hidden_size=32, moe_intermediate_size=24, num_layers=2, num_heads=4,
                      num_kv_heads=2, num_experts=4, top_k=2)
    model = build_tiny_moe(cfg, 40, 0, 1, 2, seed=0)
    for layer in model.model.layers:
        experts = layer.mlp.experts
        experts.forward = lambda *args, own=experts.forward: 2 * own(*args)
    with caplog.at_level("WARNING", logger="rlreason.learner.expert_lora"):
        peft_model = add_lora(model, LoRAConfig(r=4, alpha=8))
    assert caplog.text.count("keeps peft's per-forward weight fold") == cfg.num_layers
    assert not any("forward" in vars(m) for m in peft_model.modules() if isinstance(m, ParamWrapper))


@pytest.mark.parametrize("policy,dtype", [("dense", "fp32"), ("dense", "bf16"), ("moe", "fp32")])
def test_adapter_only_sync_serves_the_merged_weights_bit_for_bit(policy, dtype, dense_policy, tiny_policy):
    """With LoRA only the adapters travel (factors for linear layers, per-expert factors for the MoE's
    fused expert stacks, which peft wraps as parameters); the engine's weights then equal the learner's
    merge exactly, in the engine's dtype, after any number of updates."""
    from rlreason.config import LoRAConfig
    from rlreason.learner.lora import adapter_update, merged_state_dict

    path = dense_policy if policy == "dense" else tiny_policy
    learner = Learner(path, LearnerConfig(), AlgoConfig(), 1.0, 16, lora_cfg=LoRAConfig(r=4, alpha=8))
    worker = RolloutWorker("hf", path, threads=2, dtype=dtype)
    for step in range(2):
        with torch.no_grad():  # adapters as after some training (B starts at zero)
            for name, p in learner.model.named_parameters():
                if "lora_" in name:
                    p.add_(torch.randn_like(p) * 0.05)
        update = adapter_update(learner.model)
        assert update.factors and (policy == "dense") == (not update.stacked)
        for lhs, rhs, _ in update.stacked.values():  # [E, in, r] @ [E, r, out]: low-rank factors, never the stack
            assert lhs.dim() == rhs.dim() == 3 and lhs.shape[2] == rhs.shape[1] < min(lhs.shape[1], rhs.shape[2])
        worker.load_weights(update.to_transport(), step + 1)
        merged, served = merged_state_dict(learner.model), worker.engine.model.state_dict()
        changed = 0
        for key, value in merged.items():
            assert torch.equal(served[key], value.to(served[key].dtype)), key
            changed += key in update.keys()
        assert changed == len(update.keys()) and worker.weights_version == step + 1


def _step_and_grads(policy, batch, estimator, **learner_kw):
    """One train step's metrics and the gradients the optimizer stepped with (compared instead of the
    new weights: Adam's first step turns float noise in ~0 gradient entries into +-lr).
    `estimator` "<name>+r2" / "+r3" turns on MoE routing replay."""
    from rlreason.config import MoEConfig

    estimator, _, replay = estimator.partition("+")
    lr = Learner(policy, LearnerConfig(lr=1e-2, **learner_kw), AlgoConfig(estimator=estimator), 1.0, 16,
                 moe_cfg=MoEConfig(routing_replay=replay or "none"))
    grads = {}
    names = {id(p): n for n, p in lr.model.named_parameters()}
    lr.optimizer.register_step_pre_hook(
        lambda opt, *_: grads.update({names[id(p)]: p.grad.clone() for g in opt.param_groups for p in g["params"] if p.grad is not None}))
    m = lr.train_step(batch)
    return m, grads


@pytest.mark.parametrize("policy,estimator", [("dense", "grpo"), ("dense", "thr"), ("dense", "tempo"), ("dense", "d3s"),
                                              ("moe", "grpo"), ("moe", "tempo"), ("moe", "grpo+r2"), ("moe", "grpo+r3")])
def test_fused_old_pass_matches_the_separate_old_forward(policy, estimator, tiny_policy, rollout, dense_policy, dense_rollout):
    """The fused step (one forward) and the two-forward step give the same metrics and the same
    gradients; with length buckets too (MoE: mapped back for the router metrics, which agree)."""
    path, batch = (dense_policy, dense_rollout) if policy == "dense" else (tiny_policy, rollout[1])
    m0, g0 = _step_and_grads(path, batch, estimator, fuse_old_pass=False, length_buckets=1)
    for kw in ({"fuse_old_pass": True, "length_buckets": 1}, {"fuse_old_pass": True, "length_buckets": 3}):
        m1, g1 = _step_and_grads(path, batch, estimator, **kw)
        assert set(m0) == set(m1)
        for k in m0:
            if k.startswith(("throughput/", "memory/", "timing/", "moe/probe")):
                continue
            assert m1[k] == pytest.approx(m0[k], rel=1e-4, abs=1e-5), (kw, k)
        assert set(g0) == set(g1) and g0
        for k in g0:
            torch.testing.assert_close(g1[k], g0[k], rtol=1e-3, atol=1e-6, msg=f"{kw} {k}")
    assert m0["grad_norm"] > 0


def test_shared_prefix_generation_matches_prefilling_every_copy(dense_policy):
    """The HF engine prefills each distinct prompt once and copies its KV cache to the samples: the
    same greedy tokens and logprobs as prefilling every copy, with prompts of different lengths
    (left padding) and per-prompt sample counts; sampled logprobs still match the learner's."""
    from rlreason.rollout.hf import HFEngine

    prompts = ["1+2=", "10-3+4=", "7+7-1*2="]
    shared, copies = HFEngine(dense_policy, share_prefix=True), HFEngine(dense_policy, share_prefix=False)
    a, _ = shared.generate(prompts, [2, 3, 1], 10, greedy=True)
    b, _ = copies.generate(prompts, [2, 3, 1], 10, greedy=True)
    assert torch.equal(a.response_ids, b.response_ids)
    torch.testing.assert_close(a.sampling_logprobs, b.sampling_logprobs, rtol=1e-5, atol=1e-5)
    s, _ = shared.generate(prompts, 4, 12, seed=3)
    learner = Learner(dense_policy, LearnerConfig(), AlgoConfig(), 1.0, 12)
    lp = learner.score_logprobs(s)
    assert ((lp - s.sampling_logprobs) * s.response_mask).abs().max() < 1e-4
