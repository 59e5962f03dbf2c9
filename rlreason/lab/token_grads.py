"""Projected gradients of every sampled token's log-prob: J[b, t] = P grad_theta log pi(o_{b,t}), P a
`dim` x |theta| Gaussian projection with E[P^T P] = I (Johnson-Lindenstrauss), so inner products, and
with them the lab's variances, biases and cosines, are those of the full gradients in expectation.

theta is what the learner would train: every parameter, or with `model.lora.r > 0` only the LoRA
adapters (`pool.differentiable_policy`), which is also what makes SmolLM2 affordable: the directions are 4.9 M
long instead of 135 M, and no tangent is carried through the frozen base's own weights.

Row j of P is a random direction v_j over theta (seeded per j, so the result does not depend on how the
rows are blocked); one forward-mode pass (`torch.func.jvp`) gives v_j . grad log pi for every token at
once, so the whole [B, T, dim] costs `dim` tangent passes, whatever the number of tokens. A block of
directions goes through one `vmap`, which runs the primal forward once for all of them; and each prompt
is forwarded once for its group, its KV cache (with its tangents) shared by the group's responses
(`shared_prompt_response_logprobs`, as the learner's `learner.share_prompt`). Why not full gradients:
[B, T, |theta|] does not fit for any real model; why not reverse mode: one backward pass per token.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch.func import functional_call, jvp, vmap

from rlreason.batch import RolloutBatch


def directions(params: dict, rows: range, seed: int, dim: int, padding_rows: dict | None = None) -> dict:
    """Rows `rows` of P, stacked: name -> [len(rows), *shape], entries N(0, 1/dim), except the rows
    `padding_rows` (name -> index) names, which are 0 (see `embedding_padding_rows`)."""
    out = {k: torch.empty(len(rows), *p.shape, dtype=p.dtype) for k, p in params.items()}
    for i, j in enumerate(rows):
        gen = torch.Generator().manual_seed(seed * 100_003 + j)
        for k, p in params.items():
            out[k][i] = torch.randn(p.shape, generator=gen, dtype=p.dtype) / dim ** 0.5
    for k, row in (padding_rows or {}).items():
        out[k][:, row] = 0
    return out


def embedding_padding_rows(model) -> dict:
    """name -> padding_idx for each trainable nn.Embedding weight with a padding_idx. Reverse mode (the
    learner) never updates that row through the lookup, forward mode would: so the lab leaves the row
    out of theta. It matters where pad doubles as a real token (SmolLM2: pad = eos = <|im_end|>, in every
    prompt); with tied embeddings it also leaves out that one token's output-logit row."""
    names = {id(p): k for k, p in model.named_parameters() if p.requires_grad}
    return {names[id(m.weight)]: m.padding_idx for m in model.modules()
            if isinstance(m, torch.nn.Embedding) and m.padding_idx is not None and id(m.weight) in names}


def prompt_chunks(batch: RolloutBatch, max_rows: int) -> list[torch.Tensor]:
    """Row indices in chunks of whole groups (rows sharing a prompt), each at most `max_rows` rows unless
    one group alone is larger."""
    chunks, current = [], []
    for g in torch.unique(batch.group_index).tolist():
        rows = torch.nonzero(batch.group_index == g).flatten().tolist()
        if current and len(current) + len(rows) > max_rows:
            chunks.append(torch.tensor(current))
            current = []
        current += rows
    if current:
        chunks.append(torch.tensor(current))
    return chunks


def block_shape(batch: RolloutBatch, vocab: int, dim: int, memory_mb: int, max_rows: int) -> tuple[int, int]:
    """(directions per vmapped block, rows per chunk) within `memory_mb` of vocabulary-sized tensors (the
    logits, their log-softmax and both tangents: 12 bytes per row, token, vocabulary entry and direction).
    Directions come first, since they share the primal pass: as many as fit beside the largest group;
    then as many whole groups per chunk as fit beside them."""
    largest = int(torch.bincount(batch.group_index - batch.group_index.min()).max())
    units = max(1, memory_mb * 2 ** 20 // (batch.response_ids.shape[1] * vocab * 12))  # (row, direction) pairs
    block = max(1, min(dim, units // largest))
    return block, max(largest, min(max_rows, units // block))


def projected_token_grads(model, batch: RolloutBatch, dim: int, seed: int, temperature: float = 1.0, max_rows: int = 64,
                          memory_mb: int = 4096, progress=None) -> torch.Tensor:
    """[B, T, dim]: the projection of grad_theta log pi(o_{b,t}) for each sampled token (0 on padding),
    theta = the parameters with requires_grad. `memory_mb` bounds the vocabulary-sized tangents of one
    block (directions x rows x T x V floats), which sets how many directions share a primal pass."""
    from rlreason.forward import shared_prompt_response_logprobs

    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    frozen = {k: v.detach() for k, v in model.named_parameters() if not v.requires_grad}
    out = torch.zeros(batch.size, batch.response_ids.shape[1], dim)
    block, rows_per_chunk = block_shape(batch, model.get_output_embeddings().weight.shape[0], dim, memory_mb, max_rows)
    chunks = prompt_chunks(batch, rows_per_chunk)

    class Functional:  # the forward helpers call model(**inputs) and read model.config; route through functional_call
        config = model.config

        def __init__(self, p):
            self.p = p

        def __call__(self, **kw):
            return functional_call(model, {**frozen, **self.p}, (), kw)

    done, total = 0, len(chunks) * -(-dim // block)
    for j0 in range(0, dim, block):
        V = directions(params, range(j0, min(j0 + block, dim)), seed, dim, embedding_padding_rows(model))
        for rows in chunks:
            b = batch.select(rows)

            def logprobs(p, b=b):
                return shared_prompt_response_logprobs(Functional(p), b.prompt_ids, b.prompt_mask, b.response_ids,
                                                       b.response_mask, temperature=temperature)["logprobs"]

            tangents = vmap(lambda v, f=logprobs: jvp(f, (params,), (v,))[1])(V)  # [block, rows, T]
            out[rows, :, j0:j0 + tangents.shape[0]] = (tangents * b.response_mask).permute(1, 2, 0).detach()
            done += 1
            if progress is not None:
                progress(done, total)
    return out


def theta_fingerprint(model) -> str:
    """A digest of theta (names, shapes and value sums of the trainable parameters): cached token
    gradients are reused only for the same theta."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        if p.requires_grad:
            v = p.detach().double()
            h.update(f"{name}{tuple(p.shape)}{float(v.sum()):.10e}{float(v.abs().sum()):.10e}".encode())
    return h.hexdigest()[:12]


def cached_token_grads(cache_dir, pool, model, dim: int, seed: int, temperature: float, progress=None) -> torch.Tensor:
    """`projected_token_grads` of the pool, read from `cache_dir` when this pool, theta, dim, seed and
    temperature were computed before (a re-run with other arms or group sizes then skips the long part)."""
    path = Path(cache_dir) / f"{pool.key}-J{dim}-s{seed}-t{temperature:g}-{theta_fingerprint(model)}.pt" if pool.key else None
    if path is not None and path.exists():
        return torch.load(path)
    J = projected_token_grads(model, pool.batch, dim, seed, temperature, progress=progress)
    if path is not None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save(J, tmp)
        tmp.replace(path)
    return J
