"""Integration: DeepSpeed ZeRO learners as Ray actors against the single learner, and a rollout worker
killed mid-run."""

import dataclasses
import time

import pytest
import ray
import torch

from rlreason.config import AlgoConfig, LearnerConfig, MoEConfig
from rlreason.learner.learner import Learner
from rlreason.rollout.worker import RolloutWorker

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def batch(tiny_policy):
    worker = RolloutWorker("hf", tiny_policy, threads=1)
    # 5 prompts x 4: 20 sequences in 3 mini-batches of 7, 7, 6 (odd shares per rank)
    b, _ = worker.generate(["1+2=", "10-3+4=", "7+7-1=", "5+5=", "9-2="], 0, 4, 12, 1.0, 1.0, seed=0)
    b.rewards = torch.tensor([1.0, 0, 0, 1, 0, 1, 1, 1, 0, 0, 0, 1, 1, 0, 1, 0, 0, 0, 0, 1])
    return b


# stage 2 with aux-free balancing: each rank counts the loads of its share, and the bias step must use their sum
@pytest.mark.parametrize("stage,algo,moe", [(2, AlgoConfig(), MoEConfig(balance="aux_free", bias_update_rate=0.02)),
                                            (3, AlgoConfig(kl_coef=0.05, loss_agg="token-mean"), None)])
def test_deepspeed_two_actors_match_the_single_learner(ray_local, tiny_policy, batch, stage, algo, moe, tmp_path):
    cfg = LearnerConfig(lr=1e-3, mini_batches=3, threads=1, grad_clip=0.5)
    single = Learner(tiny_policy, cfg, algo, 1.0, 12, seed=0, moe_cfg=moe)
    want = [single.train_step(batch) for _ in range(2)]
    want_w = single.get_weights()

    # ZeRO-3 with every parameter partitioned (DeepSpeed keeps small ones whole by default)
    ds_cfg = dataclasses.replace(cfg, strategy="deepspeed", num_workers=2, zero_stage=stage,
                                 deepspeed_config={"zero_optimization": {"stage3_param_persistence_threshold": 0}})
    ranks = [ray.remote(num_cpus=1)(Learner).remote(tiny_policy, ds_cfg, algo, 1.0, 12, 0, moe, None, r) for r in range(2)]
    addr, port = ray.get(ranks[0].address.remote())
    assert ray.get([r.connect.remote(addr, port) for r in ranks]) == [0, 1]
    if stage == 3:  # the weights really are partitioned: a rank holds an empty local tensor
        assert ray.get(ranks[1].local_param_numel.remote()) == 0
    got = [ray.get([r.train_step.remote(batch) for r in ranks]) for _ in range(2)]
    for w, (g0, g1) in zip(want, got):
        for key in ("loss/policy", "loss/total", "grad_norm", "kl/ref", "clip/low_frac", "ratio/mean"):
            assert g0[key] == pytest.approx(w[key], rel=1e-4, abs=1e-6), key
            assert g1[key] == g0[key], key  # every rank reports the all-reduced value
        assert g0["throughput/train_tokens_per_s"] > 0
    w0, w1 = ray.get([r.get_weights.remote() for r in ranks])  # ZeRO-3: gathered for the sync
    assert w1 is None and w0.keys() == want_w.keys()
    init = Learner(tiny_policy, cfg, algo, 1.0, 12).get_weights()
    assert max(float((want_w[k] - init[k]).abs().max()) for k in init) > 1e-3  # the 6 updates moved the weights
    for k in want_w:
        # equal up to float summation order: Adam (lr 1e-3) turns round-off in near-zero gradient
        # coordinates into movement, so the bound is 2% of one step, and the mean difference is ~1e-8
        diff = (w0[k] - want_w[k]).abs()
        assert float(diff.max()) < 2e-5 and float(diff.mean()) < 2e-7, (k, float(diff.max()), float(diff.mean()))
    if moe is not None:  # every rank took the single learner's bias steps: the loads were summed over ranks
        ray.get([r.save.remote(str(tmp_path)) for r in ranks])
        biases = [torch.load(tmp_path / f, weights_only=False)["moe"]["bias"]["bias"] for f in ("learner.pt", "learner_rank1.pt")]
        assert single.moe.bias.bias.abs().max() > 0
        assert torch.equal(biases[0], single.moe.bias.bias) and torch.equal(biases[1], single.moe.bias.bias)
    for r in ranks:
        ray.kill(r)


def test_a_killed_rollout_worker_is_restarted_given_current_weights_and_the_run_finishes(ray_local, tmp_path):
    import os
    import signal

    from conftest import read_metrics

    from rlreason.run import compose
    from rlreason.trainer import Trainer

    cfg, _ = compose(["recipe=grpo", "scale=smoke", "total_steps=4", "eval_every=0", "telemetry.tensorboard=false",
                      "telemetry.console=false", "learner.lr=1e-2", f"run_dir={tmp_path}"])
    trainer = Trainer.from_config(cfg, tmp_path)
    trainer.start()
    worker = trainer.fleet.workers[0]
    first_pid = ray.get(worker.pid.remote())
    sync = trainer.fleet.sync

    def sync_then_kill(version, workers=None):
        sync(version, workers)
        if version == 2 and workers is None:  # after step 2's sync: the worker process dies, as on a lost node
            os.kill(first_pid, signal.SIGKILL)

    trainer.fleet.sync = sync_then_kill
    try:
        summary = trainer.fit()
        assert summary["steps"] == 4
        steps = {m["step"]: m for m in read_metrics(tmp_path) if "reward/mean" in m}
        assert sorted(steps) == [1, 2, 3, 4]
        assert steps[2]["faults/rollout_recoveries"] == 0 and steps[3]["faults/rollout_recoveries"] == 1
        assert steps[3]["rollout/weights_lag"] == 0  # step 3 was generated with step 2's weights, not the initial ones
        assert ray.get(worker.pid.remote()) != first_pid
        assert ray.get(worker.ping.remote()) == 4
        # the restarted worker serves exactly the learner's weights
        batch, _ = trainer.fleet.generate(["1+2=", "7-3="], seed=5)
        mask = batch.response_mask.bool()
        learner_lp = ray.get(trainer.learners.rank0.score_logprobs.remote(batch))
        assert (learner_lp - batch.sampling_logprobs)[mask].abs().max() < 1e-4
    finally:
        trainer.close()
        for actor in [*trainer.learners.actors, *trainer.fleet.workers]:
            ray.kill(actor)


@pytest.mark.parametrize("seed", [0, 1])
def test_rollout_worker_deaths_during_weight_sync_and_eval_leave_the_final_weights_unchanged(ray_local, tmp_path, seed):
    """Fault injection: a rollout worker is killed as a weight sync begins (step 2) and as an evaluation
    begins (step 3); the run finishes, every step is logged once, and the learner's final weights equal an
    uninterrupted run's (each retried call regenerates with the same seeds, so the design promises it)."""
    import os
    import signal

    from conftest import read_metrics

    from rlreason.run import compose
    from rlreason.trainer import Trainer

    def run(run_dir, faults: bool):
        cfg, _ = compose(["recipe=grpo", "scale=smoke", "total_steps=3", "eval_every=3", "eval_sampled=false", "eval_cache=false",
                          "telemetry.tensorboard=false", "telemetry.console=false", "learner.lr=1e-2", f"seed={seed}",
                          f"run_dir={run_dir}"])
        trainer = Trainer.from_config(cfg, run_dir)
        trainer.start()
        fleet = trainer.fleet
        kill = lambda: os.kill(ray.get(fleet.workers[0].pid.remote()), signal.SIGKILL)  # noqa: E731
        if faults:
            sync, generate = fleet.sync, fleet.generate

            def sync_killed_first(version, workers=None):
                if version == 2 and workers is None:
                    kill()
                return sync(version, workers)

            def eval_killed_first(prompts, seed, greedy=False, **kw):
                if greedy and trainer.steps_done == 3:
                    kill()
                return generate(prompts, seed, greedy, **kw)

            fleet.sync, fleet.generate = sync_killed_first, eval_killed_first
        try:
            trainer.fit()
            return trainer, ray.get(trainer.learners.rank0.get_weights.remote())
        finally:
            trainer.close()
            for actor in [*trainer.learners.actors, *trainer.fleet.workers]:
                ray.kill(actor)

    _, want = run(tmp_path / "ref", faults=False)
    trainer, got = run(tmp_path / "faults", faults=True)
    steps = [m for m in read_metrics(tmp_path / "faults") if "reward/mean" in m]
    assert [m["step"] for m in steps] == [1, 2, 3]
    assert steps[-1]["faults/rollout_recoveries"] >= 1 and trainer.fleet.restarts == 2
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    ref_eval = [m for m in read_metrics(tmp_path / "ref") if m.get("step") == 3 and "accuracy/eval" in m]
    got_eval = [m for m in read_metrics(tmp_path / "faults") if m.get("step") == 3 and "accuracy/eval" in m]
    assert got_eval[0]["accuracy/eval"] == ref_eval[0]["accuracy/eval"]


def test_weight_sync_faults_a_hung_load_is_restarted_and_an_altered_tensor_is_caught(ray_local, tmp_path):
    """rollout.sync_timeout_s=5. Step 2's sync: rollout worker 0 hangs loading; it is killed, Ray restarts it,
    the sync is repeated, and the step is logged with the recovery counted. Step 3's sync: one element of
    one tensor is changed after the learner put the weights and before the workers load them; the
    fingerprint check stops the run naming that tensor. Steps 1 and 2 logged sync/fingerprint_ok and the bytes."""
    from conftest import read_metrics

    from rlreason.orchestrator.fleet import SyncMismatch
    from rlreason.run import compose
    from rlreason.trainer import Trainer

    cfg, _ = compose(["recipe=grpo", "scale=smoke", "total_steps=3", "eval_every=0", "eval_sampled=false", "eval_cache=false",
                      "telemetry.tensorboard=false", "telemetry.console=false", "rollout.sync_timeout_s=5", f"run_dir={tmp_path}"])

    class HangsOnce(RolloutWorker):  # defined here so that Ray pickles it by value (its workers cannot import tests/)
        """Its first load of version 2 hangs (the marker file outlives the restart)."""

        def __init__(self, marker: str, *args, **kw):
            super().__init__(*args, **kw)
            self.marker = marker

        def load_weights(self, payload, version):
            import os

            if version == 2 and not os.path.exists(self.marker):
                open(self.marker, "w").close()
                time.sleep(600)
            return super().load_weights(payload, version)

    trainer = Trainer.from_config(cfg, tmp_path)
    trainer.start()
    fleet = trainer.fleet
    ray.kill(fleet.workers[0], no_restart=True)
    fleet.workers[0] = ray.remote(num_cpus=0, max_restarts=3)(HangsOnce).remote(
        str(tmp_path / "hung"), "hf", str(trainer.policy.path), 1, cfg.rollout, cfg.seed)
    call, altered = trainer.learners.call, []

    def altering_call(method, *args):
        out = call(method, *args)
        if method == "put_weights" and trainer.steps_done == 3:
            weights = dict(ray.get(out[0]))
            name = sorted(weights)[len(weights) // 2]
            weights[name] = weights[name].copy()
            weights[name].flat[0] += 1e-3
            altered.append(name)
            return [ray.put(weights)]
        return out

    trainer.learners.call = altering_call
    start = time.monotonic()
    try:
        with pytest.raises(SyncMismatch) as caught:
            trainer.fit()
    finally:
        trainer.close()
        for actor in [*trainer.learners.actors, *trainer.fleet.workers]:
            ray.kill(actor)
    assert (tmp_path / "hung").exists() and time.monotonic() - start < 300
    assert f"{altered[0]}: sum" in str(caught.value) and "version 3" in str(caught.value)
    steps = [m for m in read_metrics(tmp_path) if "reward/mean" in m]
    assert [m["step"] for m in steps] == [1, 2] and [m["faults/rollout_recoveries"] for m in steps] == [0, 1]
    assert all(m["sync/fingerprint_ok"] == 1.0 and m["sync/bytes"] > 0 for m in steps)
