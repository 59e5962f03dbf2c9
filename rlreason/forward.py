"""One forward pass over prompt + response, shared by the learner and the engines' self-checks.

Layout: prompts left-padded, responses right-padded, concatenated; position ids count only real
tokens (as HF `generate` does for left-padded batches), so the learner sees exactly the positions
the sampler saw. Logprobs are of the temperature-scaled distribution the sampler drew from.
"""

from __future__ import annotations

import contextlib

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
    entropy_grad: bool = True,
) -> dict[str, torch.Tensor]:
    """Per-token logprobs [B, T] of the response tokens; on request also the entropy [B, T], the
    final-layer hidden states that produced each token's logits [B, T, d], and the full-vocabulary
    log-probabilities [B, T, V] (B*T*V floats: mind the memory on large vocabularies).
    `entropy_grad=False` computes the entropy outside autograd (a metric only: no [B, T, V] kept)."""
    input_ids, attention_mask, position_ids = build_inputs(prompt_ids, prompt_mask, response_ids, response_mask)
    P = prompt_ids.shape[1]
    T = response_ids.shape[1]
    # the LM head only where a response token is predicted (positions P-1 .. P+T-2): no [B, P, V] logits
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
                output_hidden_states=with_hidden, logits_to_keep=T + 1)
    # HF's last hidden-state entry is after the final norm: the lm_head's input
    hidden = out.hidden_states[-1][:, P - 1 : P - 1 + T] if with_hidden else None
    return _token_outputs(out.logits[:, -(T + 1):-1], response_ids, temperature, with_entropy, entropy_grad, hidden,
                          with_vocab_logprobs)


def _token_outputs(logits, response_ids, temperature, with_entropy, entropy_grad, hidden, with_vocab_logprobs) -> dict:
    """From the logits [B, T, V] that predict each response token: its logprob, and on request the
    entropy, the hidden states and the full-vocabulary log-probs."""
    logits = logits.float()
    if temperature != 1.0:  # no extra [B, T, V] tensor at T=1
        logits = logits / temperature
    logsm = torch.log_softmax(logits, dim=-1)
    result = {"logprobs": logsm.gather(-1, response_ids.unsqueeze(-1)).squeeze(-1)}
    if with_entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            result["entropy"] = -(logsm.exp() * logsm).sum(-1)
    if hidden is not None:
        result["hidden"] = hidden.float()
    if with_vocab_logprobs:
        result["vocab_logprobs"] = logsm
    return result


def shared_prompt_response_logprobs(model, prompt_ids, prompt_mask, response_ids, response_mask, buckets: int = 1,
                                    temperature: float = 1.0, with_entropy: bool = False, with_hidden: bool = False,
                                    with_vocab_logprobs: bool = False, entropy_grad: bool = True) -> dict:
    """`response_logprobs` with each distinct prompt forwarded once: a GRPO batch holds G copies of
    every prompt, so the prompt tokens cost 1/G of a padded forward. The prompts' KV cache (with its
    autograd graph: LoRA and full fine-tuning both train through the prompt) is gathered for each
    response, then the responses are forwarded over it, in `buckets` length buckets (as
    `bucketed_response_logprobs`). The first response token is predicted by the prompt's last
    position; the last response token is never fed (nothing is predicted from it). Same values and
    gradients as one padded forward, up to float summation order (tests). Dense attention caches
    only (the learner uses it for policies without a router tap)."""
    from transformers import DynamicCache

    B, T = response_ids.shape
    rows = torch.cat([prompt_ids, prompt_mask.to(prompt_ids.dtype)], 1)
    unique_rows, owner = torch.unique(rows, dim=0, return_inverse=True)  # owner[i]: prompt of sequence i
    P = prompt_ids.shape[1]
    p = max(int(prompt_mask.sum(1).max()), 1)
    u_ids, u_mask = unique_rows[:, P - p:P], unique_rows[:, 2 * P - p:]
    u_pos = (u_mask.cumsum(-1) - 1).clamp(min=0)
    head = model(input_ids=u_ids, attention_mask=u_mask, position_ids=u_pos, use_cache=True, logits_to_keep=1,
                 output_hidden_states=with_hidden)
    layers = [(layer.keys, layer.values) for layer in head.past_key_values.layers]
    first_logits = head.logits[:, -1]
    first_hidden = head.hidden_states[-1][:, -1] if with_hidden else None

    rlen = response_mask.sum(1)
    order = torch.argsort(rlen, stable=True)
    n_buckets = buckets if buckets > 1 and B >= 2 * buckets else 1
    outs = []
    for idx in torch.tensor_split(order, n_buckets):
        t = max(int(rlen[idx].max()), 1)
        own = owner[idx]
        logits, hidden = first_logits[own][:, None], first_hidden[own][:, None] if with_hidden else None
        if t > 1:
            cache = DynamicCache(config=model.config)
            for i, (k, v) in enumerate(layers):
                cache.update(k[own], v[own], i)
            mask = torch.cat([u_mask[own], response_mask[idx, : t - 1].to(u_mask.dtype)], 1)
            pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, p:]
            out = model(input_ids=response_ids[idx, : t - 1], attention_mask=mask, position_ids=pos, past_key_values=cache,
                        use_cache=True, output_hidden_states=with_hidden)
            logits = torch.cat([logits, out.logits], 1)
            if with_hidden:
                hidden = torch.cat([hidden, out.hidden_states[-1]], 1)
        outs.append(_token_outputs(logits, response_ids[idx, :t], temperature, with_entropy, entropy_grad, hidden,
                                   with_vocab_logprobs))
    return _unbucket(outs, order, T, prompt_ids.device)


def bucketed_response_logprobs(model, prompt_ids, prompt_mask, response_ids, response_mask, buckets: int, segment=None,
                               **kw) -> dict:
    """`response_logprobs` in `buckets` length buckets: sequences sorted by real response (then
    prompt) length, split into equal-count groups, each trimmed to its own longest prompt (left
    padding) and response (right padding), then the outputs padded back to [B, T, ...] in the
    original order. Same values on response tokens as one padded forward (past a response's end,
    masked positions hold pad-token values or zeros, as meaningless as there), less pad compute;
    gradients flow through. `buckets <= 1` (or fewer than 2 sequences per bucket) is one forward.
    `segment(rows, n_total)`: a context each bucket's forward runs in, told which rows of the flat
    [B * (P + T)] token layout its tokens occupy (the MoE router tap's `segment`)."""
    B, P = prompt_ids.shape
    T = response_ids.shape[1]
    if buckets <= 1 or B < 2 * buckets:
        return response_logprobs(model, prompt_ids, prompt_mask, response_ids, response_mask, **kw)
    plen, rlen = prompt_mask.sum(1), response_mask.sum(1)
    order = torch.argsort(rlen * (P + 1) + plen, stable=True)
    outs = []
    for idx in torch.tensor_split(order, buckets):
        p, t = max(int(plen[idx].max()), 1), max(int(rlen[idx].max()), 1)
        rows = (idx[:, None] * (P + T) + torch.arange(P - p, P + t)[None]).reshape(-1)
        with segment(rows, B * (P + T)) if segment else contextlib.nullcontext():
            outs.append(response_logprobs(model, prompt_ids[idx, P - p:], prompt_mask[idx, P - p:], response_ids[idx, :t],
                                          response_mask[idx, :t], **kw))
    return _unbucket(outs, order, T, prompt_ids.device)


def _unbucket(outs: list[dict], order: torch.Tensor, T: int, device) -> dict:
    """Bucket outputs (in `order`, each [b, t, ...]) padded to T along dim 1 and put back in batch order."""
    inverse = torch.argsort(order).to(device)
    result = {}
    for key in outs[0]:
        padded = [torch.nn.functional.pad(o[key], (0, 0) * (o[key].dim() - 2) + (0, T - o[key].shape[1])) for o in outs]
        result[key] = torch.cat(padded, 0).index_select(0, inverse)
    return result
