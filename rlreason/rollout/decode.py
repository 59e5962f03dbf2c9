"""A sampling loop for dense policies that stops computing a response once it has ended.

HF `generate` keeps every row of the batch in every decode step until the last row ends, so on a
CPU, where a decode step costs in proportion to the rows it computes, a batch whose responses end
at different lengths pays for the longest one on every row. This loop samples the same
distribution (softmax(logits / temperature), top-p, no top-k; argmax when greedy), records each
sampled token's log-probability under the raw temperature-scaled logits (as the learner computes
it), and compacts the batch, KV cache included, whenever at least an eighth of the rows still in it
have ended (a compaction copies the cache, so doing it at every single end would cost more than it
saves). Per step the cost is that of the rows still running.

The cache is HF's `DynamicCache` (its `batch_select_indices` drops rows), so any dense HF causal
LM works; MoE policies whose routes are recorded use `generate` (the routing recorder follows its
fixed batch layout).
"""

from __future__ import annotations

import torch


def _pick(logits: torch.Tensor, temperature: float, top_p: float, greedy: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(token [b], its log-prob [b]) from last-position logits [b, V]."""
    logp = torch.log_softmax(logits.float() / (1.0 if greedy else temperature), dim=-1)
    if greedy:
        token = logp.argmax(-1)
    else:
        probs = logp.exp()
        if top_p < 1.0:  # nucleus: keep the smallest set of top tokens whose mass reaches top_p
            sorted_p, order = probs.sort(-1, descending=True)
            outside = sorted_p.cumsum(-1) - sorted_p >= top_p
            probs = probs.scatter(-1, order, sorted_p.masked_fill(outside, 0.0))
        token = torch.multinomial(probs, 1).squeeze(-1)
    return token, logp.gather(-1, token[:, None]).squeeze(-1)


@torch.no_grad()
def sample(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, max_new_tokens: int, eos_id: int, pad_id: int,
           temperature: float = 1.0, top_p: float = 1.0, greedy: bool = False, cache=None,
           stop=None, row_done=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample up to `max_new_tokens` for each left-padded prompt row. `cache`: the KV cache of every
    prompt token but the last (e.g. one prefill per distinct prompt, copied to its samples), else the
    prompts are prefilled here. `stop()`, asked after every token, ends the loop early (partial
    rollouts: the rows still running then hold as many tokens as steps ran, and no EOS). `row_done(ids)`,
    asked of every running row's tokens so far after each step, ends that row when True (stop strings;
    the row then holds no EOS, its tokens end where it was ended).
    Returns (response ids [B, T], sampling log-probs [B, T]), T the steps run: each row holds its tokens
    up to and including its first EOS, then `pad_id` (log-prob 0)."""
    B = prompt_ids.shape[0]
    device = prompt_ids.device
    mask = prompt_mask.long()
    position = (mask.cumsum(-1) - 1).clamp(min=0)
    if cache is None:
        out = model(input_ids=prompt_ids, attention_mask=mask, position_ids=position, use_cache=True, logits_to_keep=1)
    else:
        out = model(input_ids=prompt_ids[:, -1:], attention_mask=mask, position_ids=position[:, -1:], past_key_values=cache,
                    use_cache=True)
    cache, logits = out.past_key_values, out.logits[:, -1]
    next_position = position[:, -1] + 1
    response = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=device)
    logprobs = torch.zeros(B, max_new_tokens, device=device)
    rows = torch.arange(B, device=device)  # the batch rows still in the computation
    ended = torch.zeros(B, dtype=torch.bool, device=device)  # of those rows
    for t in range(max_new_tokens):
        token, token_logp = _pick(logits, temperature, top_p, greedy)
        live = ~ended
        response[rows[live], t] = token[live]
        logprobs[rows[live], t] = token_logp[live]
        ended |= token == eos_id
        if row_done is not None:
            for j in torch.nonzero(~ended).flatten().tolist():
                ended[j] = bool(row_done(response[rows[j], : t + 1]))
        if t == max_new_tokens - 1 or bool(ended.all()) or (stop is not None and stop()):
            break
        if int(ended.sum()) >= max(1, len(rows) // 8):  # compact: drop the ended rows and their cache
            keep = torch.nonzero(~ended).squeeze(-1)
            cache.batch_select_indices(keep)
            rows, token, mask, next_position, ended = rows[keep], token[keep], mask[keep], next_position[keep], ended[keep]
        mask = torch.cat([mask, mask.new_ones(len(rows), 1)], 1)
        out = model(input_ids=token[:, None], attention_mask=mask, position_ids=next_position[:, None], past_key_values=cache,
                    use_cache=True)
        logits = out.logits[:, -1]
        next_position = next_position + 1
    return response[:, :t + 1], logprobs[:, :t + 1]  # as many columns as steps ran (fewer when all ended or stop())
