"""Projected gradients of every sampled token's log-prob: J[b, t] = P grad_theta log pi(o_{b,t}), P a
`dim` x |theta| Gaussian projection with E[P^T P] = I (Johnson-Lindenstrauss), so inner products, and
with them the lab's variances, biases and cosines, are those of the full gradients in expectation.

Row j of P is a random direction v_j over the trainable parameters (seeded, regenerated, never stored);
one forward-mode pass (`torch.func.jvp`) gives v_j . grad log pi for every token of the pool at once,
so the whole [B, T, dim] costs `dim` forward-mode passes, whatever the number of tokens. Why not full
gradients: [B, T, |theta|] does not fit for any real model; why not reverse mode: one backward pass per
token.
"""

from __future__ import annotations

import torch
from torch.func import functional_call, jvp

from rlreason.batch import RolloutBatch


def projected_token_grads(model, batch: RolloutBatch, dim: int, seed: int, temperature: float = 1.0, chunk: int = 64,
                          progress=None) -> torch.Tensor:
    """[B, T, dim]: the projection of grad_theta log pi(o_{b,t}) for each sampled token (0 on padding)."""
    from rlreason.forward import response_logprobs

    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    frozen = {k: v.detach() for k, v in model.named_parameters() if not v.requires_grad}
    out = torch.zeros(batch.size, batch.response_ids.shape[1], dim)

    class Functional:  # `response_logprobs` calls model(**inputs); route that through functional_call
        def __init__(self, p):
            self.p = p

        def __call__(self, **kw):
            return functional_call(model, {**frozen, **self.p}, (), kw)

    for j in range(dim):
        gen = torch.Generator().manual_seed(seed * 100_003 + j)
        v = {k: torch.randn(p.shape, generator=gen, dtype=p.dtype) / dim ** 0.5 for k, p in params.items()}
        for i in range(0, batch.size, chunk):
            b = batch.select(torch.arange(i, min(i + chunk, batch.size)))

            def logprobs(p, b=b):
                return response_logprobs(Functional(p), b.prompt_ids, b.prompt_mask, b.response_ids, b.response_mask,
                                         temperature)["logprobs"]

            _, tangent = jvp(logprobs, (params,), (v,))
            out[i:i + b.size, :, j] = tangent.detach() * b.response_mask
        if progress is not None:
            progress(j + 1, dim)
    return out
