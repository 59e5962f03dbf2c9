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

    # and freshly sampled tokens carry sampling logprobs equal to the learner's for the new weights
    batch2, _ = ray.get(worker.generate.remote(["2+2=", "9-1="], 0, 4, 12, 1.0, 1.0, False, 1))
    assert batch2.weights_version == 1
    lp2 = ray.get(learner.score_logprobs.remote(batch2))
    assert (lp2 - batch2.sampling_logprobs)[batch2.response_mask.bool()].abs().max() < 1e-4
