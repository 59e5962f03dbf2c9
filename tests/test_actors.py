"""Integration: the Learner and RolloutWorker as real Ray actors exchanging weights."""

import pytest
import ray
import torch

from rlreason.config import AlgoConfig, LearnerConfig
from rlreason.learner.learner import Learner
from rlreason.rollout.worker import RolloutWorker

pytestmark = pytest.mark.integration


def test_weights_flow_learner_to_rollout_worker(ray_local, tiny_policy):
    learner = ray.remote(num_cpus=1)(Learner).remote(tiny_policy, LearnerConfig(lr=1e-2, threads=1), AlgoConfig(), 1.0, 12, 0)
    worker = ray.remote(num_cpus=1)(RolloutWorker).remote("hf", tiny_policy, 1)
    batch, texts = ray.get(worker.generate.remote(["1+2=", "10-3+4=", "7+7-1=", "5+5="], 0, 4, 12, 1.0, 1.0, False, 0))
    assert batch.response_ids.shape[0] == 16 and len(texts) == 16
    assert batch.group_index.tolist() == [g for g in range(4) for _ in range(4)]
    mask = batch.response_mask.bool()

    # same weights: the learner's teacher-forced logprobs equal the sampler's (fp32, KV cache vs full pass)
    before = ray.get(learner.score_logprobs.remote(batch))
    assert (before - batch.sampling_logprobs)[mask].abs().max() < 1e-4

    batch.rewards = torch.tensor([1.0, 0.0] * 8)
    metrics = ray.get(learner.train_step.remote(batch))
    assert metrics["learner/version"] == 1
    assert metrics["kl/rollout_vs_train"] < 1e-6

    # before the sync the worker still serves the old weights; after it, the learner's
    stale = ray.get(worker.score_logprobs.remote(batch))
    after = ray.get(learner.score_logprobs.remote(batch))
    assert (stale - after)[mask].abs().max() > 1e-3
    assert ray.get(worker.load_weights.remote(learner.get_weights.remote(), 1)) == 1
    synced = ray.get(worker.score_logprobs.remote(batch))
    assert (synced - after)[mask].abs().max() < 1e-5
    # the trainer's path: the learner puts the weights into the object store, the worker maps them
    ray.get(learner.train_step.remote(batch))
    (ref,) = ray.get(learner.put_weights.remote())
    assert isinstance(ref, ray.ObjectRef)
    assert ray.get(worker.load_weights.remote(ref, 2)) == 2
    synced2, after2 = ray.get(worker.score_logprobs.remote(batch)), ray.get(learner.score_logprobs.remote(batch))
    assert (synced2 - after2)[mask].abs().max() < 1e-5 and (synced2 - synced)[mask].abs().max() > 1e-4

    # and freshly sampled tokens carry sampling logprobs equal to the learner's for the new weights
    batch2, _ = ray.get(worker.generate.remote(["2+2=", "9-1="], 0, 4, 12, 1.0, 1.0, False, 1))
    assert batch2.weights_version == 2
    lp2 = ray.get(learner.score_logprobs.remote(batch2))
    assert (lp2 - batch2.sampling_logprobs)[batch2.response_mask.bool()].abs().max() < 1e-4


def test_weight_transport_sends_shared_storage_once_and_roundtrips():
    import pickle

    from rlreason.transfer import from_transport, to_transport

    emb = torch.randn(50, 8)
    sd = {"embed.weight": emb, "lm_head.weight": emb, "w": torch.randn(3, 4), "half": torch.randn(2).bfloat16(),
          "view": emb[10:20]}
    out = to_transport(sd)
    assert out["embed.weight"] is out["lm_head.weight"]  # tied: one array, serialised once
    assert out["view"] is not out["embed.weight"]
    tied_once = len(pickle.dumps(out, protocol=5))
    assert tied_once < len(pickle.dumps({**out, "lm_head.weight": out["lm_head.weight"].copy()}, protocol=5)) - 50 * 8 * 4 + 100
    back = from_transport(out)
    for k, v in sd.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
