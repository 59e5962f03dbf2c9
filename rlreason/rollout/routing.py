"""Record the experts an MoE policy routes each generated token through, from HF's forward pass.

vLLM returns routed expert ids only on CUDA (Model Runner V2); on CPU the transformers engine
records them with forward hooks on the routers (modules named ``*TopKRouter``, DeepSeek's
``*TopkRouter``, in transformers 5, whose forward returns ``(logits, weights, indices)``).

Convention (as vLLM's per-completion ``routed_experts``): entry ``[b, t, l, :]`` holds the top-k expert
ids of MoE layer ``l`` at the position whose logits sampled response token ``t`` (for ``t = 0`` the
last prompt token, then each generated token in turn; the last sampled token is never forwarded).
Padding after EOS is -1. Shape ``[B, T, L, k]``, int16. The prompt's routing (the prefill) comes
with it as ``[B, P, L, k]`` aligned with the left-padded prompt ids (-1 on padding), so routing
replay (R3) can force every position the learner forwards, not only the response's.
"""

from __future__ import annotations

import logging

import torch

from rlreason.moe.router import find_routers

log = logging.getLogger(__name__)


class RoutingRecorder:
    """Context manager: hooks every router during `generate` and assembles [B, T, L, k]."""

    def __init__(self, model, batch_size: int):
        self.routers = find_routers(model)
        self.batch_size = batch_size
        self.steps: list[list[torch.Tensor]] = [[] for _ in self.routers]
        self.prefill: list[torch.Tensor | None] = [None for _ in self.routers]
        self._handles = []

    @property
    def available(self) -> bool:
        return bool(self.routers)

    def __enter__(self):
        for layer, router in enumerate(self.routers):
            self._handles.append(router.register_forward_hook(self._hook(layer)))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []

    def _hook(self, layer: int):
        def fn(module, inputs, output):
            indices = output[2].detach()  # [B * S, k]
            per_seq = indices.view(self.batch_size, -1, indices.shape[-1])
            if self.prefill[layer] is None:
                self.prefill[layer] = per_seq
            self.steps[layer].append(per_seq[:, -1])  # the position whose logits pick the next token
        return fn

    def result(self, response_mask: torch.Tensor) -> torch.Tensor:
        """[B, T, L, k] int16 for T = response_mask.shape[1]; -1 after EOS."""
        T = response_mask.shape[1]
        per_layer = [torch.stack(steps[:T], dim=1) for steps in self.steps]  # L x [B, T', k]
        routed = torch.stack(per_layer, dim=2).to(torch.int16)  # [B, T', L, k]
        if routed.shape[1] < T:  # cannot happen with generate; keep the shape contract anyway
            routed = torch.nn.functional.pad(routed, (0, 0, 0, 0, 0, T - routed.shape[1]), value=-1)
        return routed.masked_fill(~response_mask.bool()[:, :, None, None], -1)

    def prompt_result(self, prompt_mask: torch.Tensor) -> torch.Tensor:
        """[B, P, L, k] int16: the prefill's routing at every prompt position; -1 on padding."""
        routed = torch.stack(self.prefill, dim=2).to(torch.int16)  # [B, P, L, k]
        return routed.masked_fill(~prompt_mask.bool()[:, :, None, None], -1)


def validate_routed_experts(routed: torch.Tensor, num_experts: int, top_k: int) -> None:
    """Raise if a recorded row is malformed: wrong k, ids out of range, or repeated ids."""
    if routed.dim() != 4 or routed.shape[-1] != top_k:
        raise ValueError(f"routed experts must be [B, T, layers, {top_k}], got {tuple(routed.shape)}")
    rows = routed.reshape(-1, top_k)
    rows = rows[(rows >= 0).all(-1)]
    if rows.numel() == 0:
        return
    if int(rows.max()) >= num_experts:
        raise ValueError(f"routed expert id {int(rows.max())} out of range for {num_experts} experts")
    distinct = torch.sort(rows, dim=-1).values.diff(dim=-1) != 0
    if not bool(distinct.all()):
        raise ValueError("routed experts: a row repeats an expert id (capture failed)")
