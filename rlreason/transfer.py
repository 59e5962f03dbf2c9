"""Weights from the learner to the rollout workers through Ray's object store, with as few copies as possible.

The learner puts the state dict into the object store itself and hands the driver only the
reference, so the weights never pass through the driver. Tensors travel as numpy arrays, which Ray
serialises out of band and a worker maps zero-copy from shared memory: one copy into the store,
one copy into the engine's parameters. Tensors that share storage (tied embeddings) are sent once.
Dtypes numpy lacks (bfloat16) travel as torch tensors.

With LoRA only the adapters change, so only they travel (`AdapterUpdate`): per adapted weight the
factors A [r, in] and B [out, r] and the scale alpha / r (4.9 M numbers for SmolLM2 at rank 16,
instead of 134.5 M), and the engine rebuilds W = W0 + (B @ A) * scale from its own fp32 copy of the
base W0, by the same operations as the learner's merge, so the served weights are bit for bit the
merged ones (`merge_adapter_update`). Fused MoE expert stacks W [E, a, b] travel as per-expert
factors too (lhs [E, a, r], rhs [E, r, b], in the stack's own layout): W = W0 + scale * lhs @ rhs,
one `baddbmm`, the fold peft's forward itself uses, so the upcycled SmolLM2 sends ~20 M numbers a
sync instead of 373 M.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch


@dataclass
class AdapterUpdate:
    """The LoRA adapters as the rollout engines need them: `factors[key] = (A, B, scale)` for a plain
    linear weight, `stacked[key] = (lhs, rhs, scale)` for a fused expert stack, `deltas[key]` = the
    whole delta for anything else (several adapters, DoRA, 2-D wrapped parameters such as routers).
    Keys are the base model's state-dict names of the adapted weights. `extras`: state the engine
    keeps besides the weights, sent whole (the MoE selection bias, `moe/balance.py`)."""

    factors: dict = field(default_factory=dict)
    deltas: dict = field(default_factory=dict)
    stacked: dict = field(default_factory=dict)
    extras: dict = field(default_factory=dict)

    def keys(self) -> list[str]:
        return [*self.factors, *self.deltas, *self.stacked]

    def _map(self, convert) -> "AdapterUpdate":
        one = lambda t: convert({"t": t})["t"]  # noqa: E731
        triples = lambda d: {k: (one(a), one(b), s) for k, (a, b, s) in d.items()}  # noqa: E731
        return AdapterUpdate(triples(self.factors), convert(self.deltas), triples(self.stacked), convert(self.extras))

    def to_transport(self) -> "AdapterUpdate":
        return self._map(to_transport)

    def from_transport(self) -> "AdapterUpdate":
        return self._map(from_transport)


def lora_delta(a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """(B @ A) * scale, computed as peft's `Linear.get_delta_weight` does (fp32, no fan-in/fan-out transpose)."""
    return (b.float() @ a.float()) * scale


def stacked_merge(w: torch.Tensor, lhs: torch.Tensor, rhs: torch.Tensor, scale: float) -> torch.Tensor:
    """W + scale * lhs @ rhs over an expert stack, in fp32 (peft's `_LoraFactorsProxy` fold)."""
    return torch.baddbmm(w.float(), lhs.float(), rhs.float(), alpha=scale)


@torch.no_grad()
def merge_adapter_update(params: dict, base: dict, update: AdapterUpdate) -> None:
    """Write W0 + delta into every adapted weight of `params` (the engine's state dict, any dtype)
    from `base` (fp32 copies of the initial weights under the same keys)."""
    for key, (a, b, scale) in update.factors.items():
        params[key].copy_(base[key] + lora_delta(a, b, scale).to(base[key].dtype))
    for key, delta in update.deltas.items():
        params[key].copy_(base[key] + delta.to(base[key].dtype))
    for key, (lhs, rhs, scale) in update.stacked.items():
        params[key].copy_(stacked_merge(base[key], lhs, rhs, scale))


def to_transport(state_dict: dict) -> dict:
    """CPU numpy views of the tensors (no copy on CPU); tensors sharing storage map to one array."""
    out, seen = {}, {}
    for k, v in state_dict.items():
        v = v.detach().cpu()
        if v.dtype == torch.bfloat16:
            out[k] = v
            continue
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), tuple(v.stride()), v.dtype)
        if key not in seen:
            seen[key] = v.numpy()
        out[k] = seen[key]
    return out


def from_transport(state_dict: dict) -> dict:
    """Tensors over the received arrays (read-only shared memory: load them with a copy, e.g.
    `load_state_dict`, and do not write to them)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in state_dict.items()}


# How an engine takes new weights (its `weights_format`): in memory through the object store (a state
# dict or an `AdapterUpdate`), or as an HF folder the learner writes and the engine reloads in place.
TENSORS = "tensors"
HF_FOLDER = "hf_folder"


@dataclass
class WeightsFolder:
    """A new policy as an HF folder on storage every rollout worker sees (weights_format hf_folder)."""

    path: str


def unpack(payload):
    """What a rollout worker received -> what its engine's `load_weights` takes: tensors over the
    object store's arrays, an `AdapterUpdate` of tensors, or the `WeightsFolder` as it is."""
    if isinstance(payload, AdapterUpdate):
        return payload.from_transport()
    if isinstance(payload, WeightsFolder):
        return payload
    return from_transport(payload)


def payload_bytes(payload) -> int:
    """Bytes one weight sync moved to a worker: the arrays or tensors of a state dict or an
    `AdapterUpdate` (transport form; an array under two names, a tied embedding, travels once), or the
    files of a `WeightsFolder`."""
    seen: set[int] = set()

    def size(x) -> int:
        if isinstance(x, (np.ndarray, torch.Tensor)):
            if id(x) in seen:
                return 0
            seen.add(id(x))
            return x.nbytes
        if isinstance(x, dict):
            return sum(size(v) for v in x.values())
        if isinstance(x, tuple):
            return sum(size(v) for v in x)
        return 0

    if isinstance(payload, WeightsFolder):
        return sum(f.stat().st_size for f in Path(payload.path).iterdir() if f.is_file())
    if isinstance(payload, AdapterUpdate):
        return sum(size(d) for d in (payload.factors, payload.deltas, payload.stacked, payload.extras))
    return size(payload)
