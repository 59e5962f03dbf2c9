"""trainer.mode=async: the staleness gate and consume check by hand, then real runs (Ray actors, the HF
engine on the tiny MoE): max_staleness=0 is synchronous training bit for bit, every trained sample is
within the bound, and a worker killed mid-generation loses no sample and duplicates none."""

import os
import signal
import types

import pytest
import torch

from rlreason.batch import RolloutBatch
from rlreason.orchestrator.staleness import fresh_groups, may_start, sample_staleness, staleness_metrics


def test_the_gate_admits_a_step_only_within_max_staleness_of_the_published_weights():
    # step s trains from version s-1; generated with version >= published, its staleness is <= s-1-published
    assert may_start(1, 0, 0) and not may_start(2, 0, 0)  # eta = 0: step 2 waits for step 1's weights
    assert may_start(2, 1, 0)
    assert [s for s in range(1, 8) if may_start(s, 0, 2)] == [1, 2, 3]  # eta = 2: two steps ahead of step 1
    assert [s for s in range(1, 9) if may_start(s, 3, 2)] == [1, 2, 3, 4, 5, 6]
    assert may_start(11, 10, 0) and not may_start(12, 10, 0)  # after a resume at step 10: as from the start


def test_staleness_of_samples_and_tokens_by_hand():
    # learner at version 5; sample 0 all version 5; sample 1 tokens from 3 then 4 (a partial rollout);
    # sample 2 version 4 with one token and padding (-1)
    versions = torch.tensor([[5, 5, 5], [3, 4, 4], [4, -1, -1]], dtype=torch.int32)
    assert sample_staleness(versions, 5).tolist() == [0, 2, 1]  # the oldest token decides
    m = staleness_metrics(versions, 5)
    assert m["async/staleness_mean"] == pytest.approx(1.0) and m["async/staleness_max"] == 2.0
    # token staleness: 0,0,0, 2,1,1, 1 -> 5/7; older-policy tokens: 4 of 7
    assert m["async/token_staleness_mean"] == pytest.approx(5 / 7)
    assert m["async/old_policy_token_frac"] == pytest.approx(4 / 7)
    assert m["async/max_version_span"] == 1.0 and m["async/partial_frac"] == pytest.approx(1 / 3)  # sample 1: 3 and 4


def test_groups_are_kept_or_dropped_whole():
    staleness = torch.tensor([0, 3, 1, 1, 2, 0])
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    assert fresh_groups(staleness, groups, 2).tolist() == [False, False, True, True, True, True]
    assert fresh_groups(staleness, groups, 0).tolist() == [False] * 6
    assert fresh_groups(staleness, groups, 3).all()


def test_the_consume_check_drops_stale_groups_counts_them_and_keeps_the_order():
    from rlreason.orchestrator.async_rollouts import AsyncRollouts
    from rlreason.orchestrator.batches import RoundPlan

    B, T = 6, 3
    versions = torch.tensor([[4, 4, -1], [4, 4, 4], [1, 1, 1], [4, 2, -1], [4, 4, 4], [4, 4, 4]], dtype=torch.int32)
    batch = RolloutBatch(torch.zeros(B, 2, dtype=torch.long), torch.ones(B, 2), torch.arange(B * T).view(B, T),
                         (versions >= 0).float(), torch.zeros(B, T), torch.tensor([0, 0, 1, 1, 2, 2]), versions=versions)
    plan = RoundPlan(5, 0, [10, 11, 12], [2, 2, 2], ["a", "b", "c"], seed=0, max_new_tokens=3, budget=None)
    rollouts = AsyncRollouts.__new__(AsyncRollouts)  # the check needs only the bound and the counter
    rollouts.eta, rollouts.dropped, rollouts.fleet = 2, 0, types.SimpleNamespace(pad_id=0)
    texts = [f"t{i}" for i in range(B)]
    plan, out, kept_texts = rollouts._consume_check(plan, batch, texts, learner_version=4)
    # group 1 holds a sample from version 1 (staleness 3 > 2): both its samples go, the rest keep their order
    assert rollouts.dropped == 1 and plan.indices == [10, 12] and plan.counts == [2, 2]
    assert out.group_index.tolist() == [0, 0, 1, 1] and kept_texts == ["t0", "t1", "t4", "t5"]
    assert torch.equal(out.response_ids, batch.response_ids[[0, 1, 4, 5]])


# -- real runs -----------------------------------------------------------------------------------------


def _run(tmp_path, overrides, hook=None):
    """A smoke GRPO run of 4 steps in this process's Ray cluster; returns (metrics by step, the batches the
    learner trained on, its final weights, the number of training problems)."""
    import ray
    from conftest import read_metrics

    from rlreason.run import compose
    from rlreason.trainer import Trainer

    cfg, _ = compose(["recipe=grpo", "scale=smoke", "total_steps=4", "eval_every=0", "telemetry.tensorboard=false",
                      "telemetry.console=false", "learner.lr=1e-2", "task.eval_per_category=1", f"run_dir={tmp_path}",
                      *overrides])
    trainer = Trainer.from_config(cfg, tmp_path)
    trainer.start()
    trained = []
    submit = trainer.learners.submit

    def record(method, *args):
        if method == "train_step":
            trained.append(args[0])
        return submit(method, *args)

    trainer.learners.submit = record
    if hook is not None:
        hook(trainer)
    try:
        trainer.fit()
        weights = trainer.learners.call("get_weights")
        steps = {m["step"]: m for m in read_metrics(tmp_path) if "reward/mean" in m}
        return steps, trained, weights, len(trainer.data.train)
    finally:
        trainer.close()
        for actor in [*trainer.learners.actors, *trainer.fleet.workers]:
            ray.kill(actor)


@pytest.mark.integration
def test_async_with_max_staleness_0_is_synchronous_training_bit_for_bit(ray_local, tmp_path):
    sync_steps, sync_batches, sync_w, _ = _run(tmp_path / "sync", [])
    async_steps, async_batches, async_w, _ = _run(tmp_path / "async", ["trainer.mode=async", "trainer.max_staleness=0"])
    assert sorted(async_steps) == [1, 2, 3, 4]
    for a, b in zip(sync_batches, async_batches):
        assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.sampling_logprobs, b.sampling_logprobs)
        assert torch.equal(a.rewards, b.rewards) and torch.equal(a.versions, b.versions)
    for s in range(1, 5):
        for key in ("curriculum/batch_digest", "reward/mean", "loss/policy", "grad_norm"):
            assert async_steps[s][key] == sync_steps[s][key], (s, key)
        assert async_steps[s]["async/staleness_max"] == 0 and async_steps[s]["async/dropped_stale"] == 0
    assert sync_w.keys() == async_w.keys() and all(torch.equal(sync_w[k], async_w[k]) for k in sync_w)


@pytest.mark.integration
def test_async_trains_within_the_bound_and_a_killed_worker_loses_and_duplicates_nothing(ray_local, tmp_path):
    """max_staleness=2, 5 steps; rollout worker 0 is SIGKILLed just after step 2's weights are published,
    while it generates step 5's shard. Every step must still train on exactly the prompts the sampler
    drew for it, each answered group_size times, from weights at most 2 versions old."""
    import ray

    from rlreason.data.sampler import PromptSampler, indices_digest

    killed = {}

    def kill_after_publish_2(trainer):
        make = trainer._async_rollouts
        pid = ray.get(trainer.fleet.workers[0].pid.remote())  # asked now: later it would queue behind a generation

        def wrapped():
            rollouts = make()
            publish = rollouts.publish

            def publish_then_kill(version):
                publish(version)  # the gate now admits step 5, whose shard worker 0 starts generating
                if version == 2:
                    killed["pid"] = pid
                    os.kill(pid, signal.SIGKILL)

            rollouts.publish = publish_then_kill
            return rollouts

        trainer._async_rollouts = wrapped

    # decode steps slowed to 20 ms (rollout.simulated_step_latency_s): the shard is still running when the kill comes
    steps, batches, _, n_train = _run(tmp_path, ["trainer.mode=async", "trainer.max_staleness=2", "total_steps=5",
                                                 "rollout.simulated_step_latency_s=0.02"], hook=kill_after_publish_2)
    assert killed and sorted(steps) == [1, 2, 3, 4, 5]
    assert steps[5]["faults/rollout_recoveries"] >= 1
    B, G = 4, 4  # scale=smoke
    sampler = PromptSampler(n_train, B, seed=0)  # the run's seed
    for s, batch in enumerate(batches, start=1):
        assert steps[s]["curriculum/batch_digest"] == indices_digest(sampler.next_batch()), s  # none lost, none repeated
        assert batch.size == B * G and torch.bincount(batch.group_index).tolist() == [G] * B
        staleness = sample_staleness(batch.versions, s - 1)
        assert int(staleness.max()) <= 2 and steps[s]["async/staleness_max"] == float(staleness.max())
    # the gate let step 2 start with the initial weights while step 1 trained: it was really asynchronous
    assert steps[2]["async/staleness_max"] >= 1


@pytest.mark.integration
def test_async_publishes_by_broadcast_serve_what_the_object_store_serves(ray_local, tmp_path):
    """max_staleness=0, 2 workers: the same run with every publish broadcast in the background
    (rollout.weight_transport=collective) and through the object store is the same run, bit for bit, and
    each broadcast version passes the sync check."""
    seen = {}
    runs = {t: _run(tmp_path / t, ["trainer.mode=async", "trainer.max_staleness=0", "rollout.num_workers=2",
                                   f"rollout.weight_transport={t}", "rollout.collective_bucket_mb=0.05"],
                    hook=lambda trainer, t=t: seen.setdefault(t, trainer))
            for t in ("object_store", "collective")}
    (a_steps, a_batches, a_w, _), (b_steps, b_batches, b_w, _) = runs["object_store"], runs["collective"]
    assert seen["collective"].fleet.published_async == 4 and seen["collective"].fleet.group_ok  # every publish broadcast
    for a, b in zip(a_batches, b_batches):
        assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.sampling_logprobs, b.sampling_logprobs)
    for s in range(1, 5):
        for key in ("curriculum/batch_digest", "reward/mean", "loss/policy", "grad_norm"):
            assert a_steps[s][key] == b_steps[s][key], (s, key)
        assert b_steps[s]["faults/rollout_recoveries"] == 0
    assert all(m["sync/fingerprint_ok"] == 1.0 for m in b_steps.values() if "sync/fingerprint_ok" in m)
    assert all(torch.equal(a_w[k], b_w[k]) for k in a_w)


@pytest.mark.integration
def test_async_broadcast_with_a_killed_worker_goes_over_to_the_object_store(ray_local, tmp_path):
    """max_staleness=2 with partial rollouts and broadcast publishes, 2 workers; worker 0 is SIGKILLed right
    after version 2 is published, before it receives it. The broadcast fails, that version and every later
    one go through the object store (version 2 from the learner's kept copy: it has trained on since), and
    every step still trains on exactly its prompts, within the bound, each load checked."""
    import ray

    from rlreason.data.sampler import PromptSampler, indices_digest

    seen = {}

    def kill_after_publish_2(trainer):
        seen["trainer"] = trainer
        make = trainer._async_rollouts
        pid = ray.get(trainer.fleet.workers[0].pid.remote())

        def wrapped():
            rollouts = make()
            publish = rollouts.publish

            def publish_then_kill(version):
                publish(version)
                if version == 2:
                    os.kill(pid, signal.SIGKILL)

            rollouts.publish = publish_then_kill
            return rollouts

        trainer._async_rollouts = wrapped

    steps, batches, _, n_train = _run(tmp_path, ["trainer.mode=async", "trainer.max_staleness=2", "total_steps=5",
                                                 "rollout.partial=true", "rollout.num_workers=2", "rollout.sync_timeout_s=60",
                                                 "rollout.weight_transport=collective", "rollout.simulated_step_latency_s=0.02"],
                                      hook=kill_after_publish_2)
    fleet = seen["trainer"].fleet
    assert sorted(steps) == [1, 2, 3, 4, 5] and steps[5]["faults/rollout_recoveries"] >= 1
    assert fleet.published_async == 2 and not fleet.group_ok  # 1 and 2 were broadcast, then the object store
    assert all(m["sync/fingerprint_ok"] == 1.0 for m in steps.values() if "sync/fingerprint_ok" in m)
    sampler = PromptSampler(n_train, 4, seed=0)
    for s, batch in enumerate(batches, start=1):
        assert steps[s]["curriculum/batch_digest"] == indices_digest(sampler.next_batch()), s
        assert torch.bincount(batch.group_index).tolist() == [4] * 4
        assert int(sample_staleness(batch.versions, s - 1).max()) <= 2


# -- partial rollouts ---------------------------------------------------------------------------------


def test_stitch_appends_a_continuation_with_its_version_by_hand():
    from rlreason.rollout.partial import continuation_inputs, stitch, unfinished

    pad, eos = 0, 9
    # budget 3: row 0 ended (EOS) after 2 tokens; row 1 was cut after 2 tokens, row 2 after 1
    batch = RolloutBatch(
        prompt_ids=torch.tensor([[0, 5, 6], [7, 7, 7], [0, 0, 4]]), prompt_mask=torch.tensor([[0, 1, 1], [1, 1, 1], [0, 0, 1]]),
        response_ids=torch.tensor([[3, 9], [1, 2], [8, 0]]), response_mask=torch.tensor([[1, 1], [1, 1], [1, 0]]),
        sampling_logprobs=torch.tensor([[-0.1, -0.2], [-0.3, -0.4], [-0.5, 0.0]]), group_index=torch.tensor([0, 0, 1]),
        truncated=torch.tensor([False, True, True]), versions=torch.tensor([[3, 3], [3, 3], [3, -1]], dtype=torch.int32))
    cut = unfinished(batch, 3, eos)
    assert cut.tolist() == [False, True, True]
    ids, mask = continuation_inputs(batch, torch.tensor([1, 2]), pad)
    assert ids.tolist() == [[7, 7, 7, 1, 2], [0, 0, 0, 4, 8]] and mask.tolist() == [[1] * 5, [0, 0, 0, 1, 1]]
    cont = RolloutBatch(ids, mask, torch.tensor([[9, 0], [5, 6]]), torch.tensor([[1, 0], [1, 1]]),
                        torch.tensor([[-0.6, 0.0], [-0.7, -0.8]]), torch.arange(2), truncated=torch.tensor([False, True]))
    out = stitch(batch, torch.tensor([1, 2]), cont, 4, pad)
    assert out.response_ids.tolist() == [[3, 9, 0], [1, 2, 9], [8, 5, 6]]
    assert out.response_mask.tolist() == [[1, 1, 0], [1, 1, 1], [1, 1, 1]]
    assert out.versions.tolist() == [[3, 3, -1], [3, 3, 4], [3, 4, 4]]
    assert torch.allclose(out.sampling_logprobs, torch.tensor([[-0.1, -0.2, 0.0], [-0.3, -0.4, -0.6], [-0.5, -0.7, -0.8]]))
    assert out.truncated.tolist() == [False, False, True] and out.group_index.tolist() == [0, 0, 1]
    assert not unfinished(out, 3, eos).any()  # row 1 ended, row 2 used its whole budget


@pytest.mark.parametrize("record_routing", [True, False])  # HF generate with a stopping criterion | rollout/decode.py
def test_an_interrupted_greedy_generation_continues_to_the_same_tokens(tiny_policy, record_routing):
    """Interrupt exactness (conftest.interrupted_and_resumed): fixed weights, greedy, stopped after 3 tokens and
    continued: the uninterrupted ids and log-probs, the versions switching at token 4, and on the generate path
    the MoE routes of each token as the uninterrupted run recorded them."""
    from conftest import interrupted_and_resumed

    from rlreason.rollout.worker import RolloutWorker

    worker = RolloutWorker("hf", tiny_policy, threads=1, record_routing=record_routing)
    ref, _, cut, out, _ = interrupted_and_resumed(worker, steps=3)
    assert int(cut.response_mask.sum(-1).max()) == 3  # every row was still running at the cut
    mask = out.response_mask.bool()
    if record_routing:  # each token's routes recorded once, by the weights that sampled it
        same = (out.routed_experts == ref.routed_experts[:, :mask.shape[1]])[mask]
        assert float(same.float().mean()) > 0.99


@pytest.mark.integration
@pytest.mark.parametrize("engine", ["hf", "vllm"])
def test_partial_rollouts_under_async_continue_interrupted_generations_within_the_bound(engine, ray_local, tmp_path):
    """max_staleness=1 with rollout.partial=true, and decode steps slowed to 30 ms (rollout.simulated_step_latency_s)
    so that generation is the bottleneck and weight updates land while workers generate: generations are
    interrupted and continued, samples then carry two versions, and every step still trains on whole groups
    within the bound. Every published version passes the sync check on both engines."""
    steps, batches, _, _ = _run(tmp_path, ["trainer.mode=async", "trainer.max_staleness=1", "rollout.partial=true",
                                           "rollout.simulated_step_latency_s=0.03", "rollout.max_new_tokens=48", "total_steps=5",
                                           f"rollout.engine={engine}"])
    assert sorted(steps) == [1, 2, 3, 4, 5]
    assert all(m["sync/fingerprint_ok"] == 1.0 for m in steps.values() if "sync/fingerprint_ok" in m)
    assert any("sync/fingerprint_ok" in m for m in steps.values())
    assert sum(m["async/interrupted"] for m in steps.values()) > 0
    assert sum(m["async/resumed_tokens"] for m in steps.values()) > 0
    spans = [float(m["async/max_version_span"]) for m in steps.values()]
    assert max(spans) >= 1  # some sample holds tokens of two versions
    for s, batch in enumerate(batches, start=1):
        assert batch.size == 16 and torch.bincount(batch.group_index).tolist() == [4] * 4
        assert int(sample_staleness(batch.versions, s - 1).max()) <= 1
        assert int(batch.response_mask.sum(-1).max()) <= 48  # a continuation gets the budget left, not a new one
        generated = batch.versions >= 0
        assert torch.equal(generated, batch.response_mask.bool())  # every response token has its version
