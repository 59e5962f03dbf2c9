"""Routed-expert capture in the HF engine (the CPU path; vLLM's capture is CUDA-only)."""

import pytest
import torch

from rlreason.forward import build_inputs
from rlreason.rollout.hf import HFEngine
from rlreason.rollout.routing import validate_routed_experts


def test_hf_engine_records_routing_that_matches_a_full_forward(tiny_policy):
    engine = HFEngine(tiny_policy, threads=2)
    batch, _ = engine.generate(["1+2=", "10-3+4=", "7+7-1="], 3, 12, seed=0)
    routed = batch.routed_experts
    B, T = batch.response_ids.shape
    assert routed.shape == (B, T, 2, 2) and routed.dtype == torch.int16  # [B, T, moe layers, top_k]
    validate_routed_experts(routed, num_experts=4, top_k=2)
    mask = batch.response_mask.bool()
    assert (routed[~mask] == -1).all() and (routed[mask] >= 0).all()

    # the same ids come out of one teacher-forced pass over prompt + response
    input_ids, attention_mask, position_ids = build_inputs(batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.response_mask)
    dev = engine.device
    with torch.no_grad():
        out = engine.model(input_ids=input_ids.to(dev), attention_mask=attention_mask.to(dev), position_ids=position_ids.to(dev),
                           output_router_logits=True)
    P = batch.prompt_ids.shape[1]
    agree = total = 0
    for layer, logits in enumerate(out.router_logits):
        top = logits.view(B, -1, logits.shape[-1]).topk(2, dim=-1).indices[:, P - 1 : P - 1 + T].cpu()
        same = (top.sort(-1).values == routed[:, :, layer].long().sort(-1).values).all(-1)
        agree += int(same[mask].sum())
        total += int(mask.sum())
    assert agree / total > 0.99  # KV-cache vs full pass may flip an exact near-tie, nothing more

    # the prefill's routing covers every real prompt position, -1 on the left padding
    prompt_routes = batch.prompt_routed_experts
    assert prompt_routes.shape == (B, P, 2, 2)
    pmask = batch.prompt_mask.bool()
    assert (prompt_routes[~pmask] == -1).all() and (prompt_routes[pmask] >= 0).all()
    assert torch.equal(prompt_routes[:, P - 1], routed[:, 0])  # the last prompt position sampled token 0
    for layer, logits in enumerate(out.router_logits):
        top = logits.view(B, -1, logits.shape[-1]).topk(2, dim=-1).indices[:, :P].cpu()
        same = (top.sort(-1).values == prompt_routes[:, :, layer].long().sort(-1).values).all(-1)
        assert same[pmask].float().mean() > 0.99


def test_validate_routed_experts_rejects_bad_rows():
    good = torch.tensor([[[[0, 3]], [[-1, -1]]]], dtype=torch.int16)
    validate_routed_experts(good, num_experts=4, top_k=2)
    with pytest.raises(ValueError, match="repeats"):
        validate_routed_experts(torch.tensor([[[[1, 1]]]]), num_experts=4, top_k=2)
    with pytest.raises(ValueError, match="out of range"):
        validate_routed_experts(torch.tensor([[[[1, 4]]]]), num_experts=4, top_k=2)
    with pytest.raises(ValueError, match=r"\[B, T, layers, 2\]"):
        validate_routed_experts(torch.zeros(2, 3, 2, dtype=torch.int16), num_experts=4, top_k=2)


def test_dense_policy_records_none(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlreason.data.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=64, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    batch, _ = HFEngine(str(tmp_path)).generate(["1+1="], 2, 5, seed=0)
    assert batch.routed_experts is None


def test_batches_from_several_workers_concatenate(tiny_policy):
    from rlreason.batch import RolloutBatch
    from rlreason.rollout.worker import RolloutWorker

    w = RolloutWorker("hf", tiny_policy, threads=2)
    a, _ = w.generate(["1+2="], 0, 2, 4, 1.0, 1.0, seed=0)
    b, _ = w.generate(["10-3+4=", "5+5="], 1, 2, 9, 1.0, 1.0, seed=1)
    c = RolloutBatch.concat([a, b], pad_id=0)
    assert c.response_ids.shape == (6, max(a.response_ids.shape[1], b.response_ids.shape[1]))
    assert c.prompt_ids.shape[1] == b.prompt_ids.shape[1]
    assert c.group_index.tolist() == [0, 0, 1, 1, 2, 2]
    assert c.routed_experts.shape[:2] == c.response_ids.shape
    assert (c.routed_experts[:2, a.response_ids.shape[1]:] == -1).all()
    assert c.prompt_routed_experts.shape[:2] == c.prompt_ids.shape  # left-padded with -1 like the ids
    assert (c.prompt_routed_experts[c.prompt_mask == 0] == -1).all() and (c.prompt_routed_experts[c.prompt_mask == 1] >= 0).all()


def test_vllm_routes_are_sliced_to_the_response_positions():
    """vLLM's per-completion routed_experts covers every forwarded token; the batch keeps the rows
    whose logits sampled each response token (prompt_len - 1 onward), padded with -1 (CUDA-only in
    vLLM, so this checks the slicing on a stand-in completion)."""
    import types

    from rlreason.rollout.vllm import VLLMEngine, _stack_routes

    engine = VLLMEngine.__new__(VLLMEngine)
    engine.capture_routing, engine._routing_warned = True, False
    routes = torch.arange(6 * 2 * 2).reshape(6, 2, 2).numpy()  # 4 prompt + 3 response tokens, last not forwarded
    prompt_rows, rows = engine._split_routes(types.SimpleNamespace(token_ids=[5, 6, 7], routed_experts=routes), prompt_len=4)
    assert rows[:, 0, 0].tolist() == [12, 16, 20]
    assert prompt_rows[:, 0, 0].tolist() == [0, 4, 8, 12]
    short_prompt, short = engine._split_routes(types.SimpleNamespace(token_ids=[5], routed_experts=routes[:2]), prompt_len=2)
    stacked = _stack_routes([rows, short], 3)
    assert stacked.shape == (2, 3, 2, 2) and stacked.dtype == torch.int16
    assert stacked[1, :, 0, 0].tolist() == [4, -1, -1]
    prompts = _stack_routes([prompt_rows, short_prompt], 4, left=True)  # left-padded like the prompt ids
    assert prompts[1, :, 0, 0].tolist() == [-1, -1, 0, 4]
    # too few rows for the response: refused (None), not misaligned
    assert engine._split_routes(types.SimpleNamespace(token_ids=[5, 6, 7], routed_experts=routes[:4]), prompt_len=4) is None
    assert _stack_routes([rows, None], 3) is None
