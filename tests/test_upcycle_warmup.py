"""The distillation warm-up of an upcycled MoE (rlreason/moe/distill.py) on a small random Llama."""

import json
import math
from types import SimpleNamespace

import pytest
import torch

from rlreason.moe.distill import collate, distilled_folder, forward_kl
from rlreason.moe.upcycle import upcycled_folder


def test_forward_kl_by_hand_over_the_masked_positions_only():
    teacher = torch.tensor([[[0.0, 0.0], [5.0, -5.0]]])  # p = (1/2, 1/2) at t=0
    student = torch.tensor([[[torch.log(torch.tensor(3.0)), 0.0], [-5.0, 5.0]]])  # q = (3/4, 1/4) at t=0
    # KL = 1/2 ln(2/3) + 1/2 ln 2 = 0.143841; position 1 (very different) is masked out
    expected = 0.5 * math.log(2 / 3) + 0.5 * math.log(2)
    assert float(forward_kl(teacher, student, torch.tensor([[1.0, 0.0]]))) == pytest.approx(expected, abs=1e-6)


def test_collate_marks_the_positions_that_predict_response_tokens():
    ids, attn, predicts = collate([{"prompt_ids": [5, 6, 7], "response_ids": [8, 9]}, {"prompt_ids": [5], "response_ids": [4]}], pad_id=0)
    assert ids.tolist() == [[5, 6, 7, 8, 9], [5, 4, 0, 0, 0]]
    assert attn.tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert predicts.tolist() == [[0, 0, 1, 1, 0], [1, 0, 0, 0, 0]]  # logits at t predict token t+1


@pytest.fixture(scope="module")
def dense_folder(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlreason.data.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True, initializer_range=0.3,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    folder = tmp_path_factory.mktemp("models") / "dense"
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def settings(steps):
    return SimpleNamespace(warmup_steps=steps, warmup_kl_target=0.05, warmup_batch=4, warmup_lr=3e-3, warmup_prompts=8)


PROMPTS = [f"{a}+{b}=" for a in range(4) for b in range(3)]


def test_a_drop_upcycle_is_pulled_toward_its_dense_parent_once_and_then_reused(dense_folder):
    drop = upcycled_folder(dense_folder, 4, 2, drop_ratio=0.5)
    out = distilled_folder(drop, dense_folder, settings(25), PROMPTS, max_new_tokens=8, seed=0)
    info = json.loads((out / "warmup.json").read_text())
    assert info["prompts"] == 8 and info["steps_taken"] == 25 and len(info["kl"]) == 25
    assert info["kl"][0] > 0.05 and sum(info["kl"][-5:]) / 5 < 0.5 * info["kl"][0]  # the gap closes
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert distilled_folder(drop, dense_folder, settings(25), PROMPTS, max_new_tokens=8, seed=0) == out  # cached
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    assert distilled_folder(drop, dense_folder, settings(26), PROMPTS, max_new_tokens=8, seed=0) != out  # keyed by settings
    from rlreason.policy import load_tokenizer

    assert load_tokenizer(out).get_vocab() == load_tokenizer(dense_folder).get_vocab()


def test_a_sparse_upcycle_is_already_the_dense_function_and_is_left_untouched(dense_folder):
    from safetensors.torch import load_file

    sparse = upcycled_folder(dense_folder, 4, 2)
    out = distilled_folder(sparse, dense_folder, settings(25), PROMPTS, max_new_tokens=8, seed=0)
    info = json.loads((out / "warmup.json").read_text())
    assert info["steps_taken"] == 0 and info["kl"][0] < 1e-5  # stopped before the first step
    before, after = load_file(sparse / "model.safetensors"), load_file(out / "model.safetensors")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
