"""One forward pass over prompt + response, shared by the learner and the engines' self-checks.

Layout: prompts left-padded, responses right-padded, concatenated; position ids count only real
tokens (as HF `generate` does for left-padded batches), so the learner sees exactly the positions
the sampler saw. Logprobs are of the temperature-scaled distribution the sampler drew from.
"""

from __future__ import annotations

import torch


def build_inputs(prompt_ids, prompt_mask, response_ids, response_mask):
    input_ids = torch.cat([prompt_ids, response_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1).long()
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return input_ids, attention_mask, position_ids


def response_logprobs(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    with_hidden: bool = False,
    with_vocab_logprobs: bool = False,
) -> dict[str, torch.Tensor]:
    """Per-token logprobs [B, T] of the response tokens; on request also the entropy [B, T], the
    final-layer hidden states that produced each token's logits [B, T, d], and the full-vocabulary
    log-probabilities [B, T, V] (B*T*V floats: mind the memory on large vocabularies)."""
    input_ids, attention_mask, position_ids = build_inputs(prompt_ids, prompt_mask, response_ids, response_mask)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
                output_hidden_states=with_hidden)
    P = prompt_ids.shape[1]
    T = response_ids.shape[1]
    logits = out.logits[:, P - 1 : P - 1 + T].float() / temperature
    logsm = torch.log_softmax(logits, dim=-1)
    result = {"logprobs": logsm.gather(-1, response_ids.unsqueeze(-1)).squeeze(-1)}
    if with_entropy:
        result["entropy"] = -(logsm.exp() * logsm).sum(-1)
    if with_hidden:  # HF's last entry is after the final norm: the lm_head's input
        result["hidden"] = out.hidden_states[-1][:, P - 1 : P - 1 + T].float()
    if with_vocab_logprobs:
        result["vocab_logprobs"] = logsm
    return result
