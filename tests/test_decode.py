"""The HF engine's decode loop (rollout/decode.py): HF generate's greedy output, the learner's log-probs
on what it samples, responses that end leave the batch, top-p restricts the support."""

import pytest
import torch

from rlreason.forward import response_logprobs
from rlreason.rollout.decode import sample


@pytest.fixture(scope="module")
def model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=24, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=64, pad_token_id=0, eos_token_id=1)
    return LlamaForCausalLM(cfg).eval()


def _prompts():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, 24, (6, 5), generator=g)
    mask = torch.ones(6, 5, dtype=torch.long)
    mask[0, :2] = 0  # left padding of different lengths
    mask[3, :1] = 0
    return ids * mask, mask


def test_greedy_equals_hf_generate_and_ends_are_padded(model):
    ids, mask = _prompts()
    out, logp = sample(model, ids, mask, 12, eos_id=1, pad_id=0, greedy=True)
    ref = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0, eos_token_id=1)
    ref = ref[:, ids.shape[1]:]
    ref = torch.nn.functional.pad(ref, (0, 12 - ref.shape[1]), value=0)
    ended = (ref == 1).cumsum(-1) - (ref == 1).long() > 0  # positions after a row's first EOS
    assert torch.equal(out, ref.masked_fill(ended, 0))
    assert (logp[out == 0] == 0).all() and (logp[out != 0] <= 0).all()


def test_sampled_logprobs_are_the_learners_and_ended_rows_leave_the_batch(model):
    ids, mask = _prompts()
    ids, mask = ids.repeat(4, 1), mask.repeat(4, 1)  # 24 rows
    calls = []
    hook = model.model.layers[0].register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    torch.manual_seed(3)
    out, logp = sample(model, ids, mask, 16, eos_id=1, pad_id=0)
    hook.remove()
    is_eos = out == 1
    resp_mask = ((is_eos.cumsum(-1) - is_eos.long()) == 0).long()
    assert is_eos.any(-1).sum() >= 6  # several rows ended early (24 tokens, EOS among them)...
    assert min(calls) < 24  # ...and later decode steps computed fewer rows
    with torch.no_grad():
        lp = response_logprobs(model, ids, mask, out, resp_mask)["logprobs"]
    torch.testing.assert_close(logp * resp_mask, lp * resp_mask, atol=1e-5, rtol=1e-5)


def test_top_p_keeps_only_the_nucleus(model):
    ids, mask = _prompts()
    torch.manual_seed(0)
    out, logp = sample(model, ids, mask, 1, eos_id=1, pad_id=0, top_p=1e-6)  # nucleus = the argmax alone
    greedy, _ = sample(model, ids, mask, 1, eos_id=1, pad_id=0, greedy=True)
    assert torch.equal(out, greedy)
    assert (logp < 0).all()  # the recorded log-prob is the unfiltered distribution's
