"""Weights from the learner to the rollout workers through Ray's object store, with as few copies as possible.

The learner puts the state dict into the object store itself and hands the driver only the
reference, so the weights never pass through the driver. Tensors travel as numpy arrays, which Ray
serialises out of band and a worker maps zero-copy from shared memory: one copy into the store,
one copy into the engine's parameters. Tensors that share storage (tied embeddings) are sent once.
Dtypes numpy lacks (bfloat16) travel as torch tensors.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch


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
