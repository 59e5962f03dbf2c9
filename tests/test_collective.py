"""rollout.weight_transport=collective: the payload's skeleton and buckets by hand, a gloo broadcast between
threads, and a real run whose collective syncs serve exactly what the object store would."""

import socket
import threading

import numpy as np
import pytest
import torch

from rlreason.collective import Slot, WeightsGroup, buckets, join, slots, split
from rlreason.transfer import AdapterUpdate


def test_split_and_join_a_state_dict_and_an_adapter_update():
    emb = torch.randn(4, 3)
    state = {"embed.weight": emb, "lm_head.weight": emb, "norm": np.ones(3, dtype=np.float32), "step": 7}
    skeleton, tensors = split(state)
    assert len(tensors) == 2  # the tied embedding travels once
    assert skeleton["embed.weight"] == skeleton["lm_head.weight"] == Slot(0, (4, 3), "float32")
    assert skeleton["step"] == 7 and skeleton["norm"] == Slot(1, (3,), "float32")
    back = join(skeleton, [t.clone() for t in tensors])
    assert torch.equal(back["lm_head.weight"], emb) and torch.equal(back["norm"], torch.ones(3))

    update = AdapterUpdate(factors={"q": (torch.ones(2, 3), torch.zeros(3, 2), 0.5)}, extras={"bias": torch.arange(4.0)})
    skeleton, tensors = split(update)
    assert [s.shape for s in slots(skeleton)] == [(2, 3), (3, 2), (4,)]
    back = join(skeleton, tensors)
    assert isinstance(back, AdapterUpdate) and back.factors["q"][2] == 0.5 and torch.equal(back.extras["bias"], torch.arange(4.0))


def test_buckets_hold_one_dtype_and_at_most_the_size():
    specs = [Slot(0, (256,), "float32"), Slot(1, (256,), "float32"), Slot(2, (512,), "float32"), Slot(3, (8,), "bfloat16"),
             Slot(4, (8,), "float32")]
    # 1 KB each for the first two, 2 KB the third; with 2 KB buckets: [0, 1], [2], then a dtype change, then float32 again
    assert buckets(specs, 2048) == [[0, 1], [2], [3], [4]]
    assert buckets(specs, 10**6) == [[0, 1, 2], [3], [4]]


def test_gloo_broadcast_delivers_every_tensor_to_every_rank():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sent = [torch.randn(5, 7), torch.arange(12, dtype=torch.int64).view(3, 4), torch.randn(3).to(torch.bfloat16)]
    skeleton, tensors = split({"a": sent[0], "b": sent[1], "c": sent[2]})
    got = {}

    def rank(r):
        group = WeightsGroup("127.0.0.1", port, r, 3, timeout_s=60)
        got[r] = group.broadcast(slots(skeleton), tensors if r == 0 else None, bucket_mb=1e-4)  # 100-byte buckets

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for r in (1, 2):
        back = join(skeleton, got[r])
        assert all(torch.equal(back[k], v) for k, v in zip("abc", sent)), r


@pytest.mark.integration
def test_collective_syncs_serve_what_the_object_store_serves(ray_local, tmp_path):
    """The same seeded 3-step run through the object store and by broadcast (2 workers, small buckets): every
    sync passes the fingerprint check, and the runs are identical step for step."""
    import ray
    from conftest import read_metrics

    from rlreason.run import compose
    from rlreason.trainer import Trainer

    runs = {}
    for transport in ("object_store", "collective"):
        run_dir = tmp_path / transport
        cfg, _ = compose(["recipe=grpo", "scale=smoke", "total_steps=3", "eval_every=0", "telemetry.tensorboard=false",
                          "telemetry.console=false", "learner.lr=1e-2", "task.eval_per_category=1", f"run_dir={run_dir}",
                          "rollout.num_workers=2", f"rollout.weight_transport={transport}", "rollout.collective_bucket_mb=0.05"])
        trainer = Trainer.from_config(cfg, run_dir)
        trainer.start()
        try:
            trainer.fit()
            runs[transport] = {m["step"]: m for m in read_metrics(run_dir) if "reward/mean" in m}
        finally:
            trainer.close()
            for actor in [*trainer.learners.actors, *trainer.fleet.workers]:
                ray.kill(actor)
    for step in (1, 2, 3):
        a, b = runs["object_store"][step], runs["collective"][step]
        assert b["sync/fingerprint_ok"] == 1.0 and b["faults/rollout_recoveries"] == 0
        for key in ("curriculum/batch_digest", "reward/mean", "loss/policy", "grad_norm", "kl/rollout_vs_train"):
            assert a[key] == b[key], (step, key)
    assert runs["collective"][3]["sync/bytes"] > 0


@pytest.mark.integration
def test_a_worker_killed_between_collective_syncs_is_reloaded_and_the_group_formed_again(ray_local, tmp_path):
    """Worker 0 is SIGKILLed right after step 1's broadcast, before the sync's fingerprint check: the check finds
    it dead, it is restarted and loaded through the object store, and all are checked. Step 2's sync then forms
    the group again, on a fresh port, and broadcasts; every sync passes the fingerprint check."""
    import os
    import signal

    import ray
    from conftest import read_metrics

    from rlreason.run import compose
    from rlreason.trainer import Trainer

    cfg, _ = compose(["recipe=grpo", "scale=smoke", "total_steps=3", "eval_every=0", "telemetry.tensorboard=false",
                      "telemetry.console=false", "task.eval_per_category=1", f"run_dir={tmp_path}", "rollout.num_workers=2",
                      "rollout.weight_transport=collective"])
    trainer = Trainer.from_config(cfg, tmp_path)
    trainer.start()
    fleet = trainer.fleet
    broadcast, broadcasts = fleet.broadcast, []

    def broadcast_then_kill(version):
        ok = broadcast(version)
        broadcasts.append((version, ok))
        if version == 1:
            os.kill(ray.get(fleet.workers[0].pid.remote()), signal.SIGKILL)
        return ok

    fleet.broadcast = broadcast_then_kill
    try:
        trainer.fit()
        steps = {m["step"]: m for m in read_metrics(tmp_path) if "reward/mean" in m}
        assert sorted(steps) == [1, 2, 3] and steps[3]["faults/rollout_recoveries"] >= 1
        assert all(m["sync/fingerprint_ok"] == 1.0 for m in steps.values())
        assert broadcasts == [(1, True), (2, True), (3, True)] and fleet.group_ok
    finally:
        trainer.close()
        for actor in [*trainer.learners.actors, *trainer.fleet.workers]:
            ray.kill(actor)
