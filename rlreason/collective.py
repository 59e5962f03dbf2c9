"""Weights by collective broadcast (`rollout.weight_transport=collective`): a torch.distributed group of
the learner (rank 0) and every rollout worker, gloo on CPU and NCCL on GPUs, so CI runs the code a
cluster runs.

A payload (a state dict, or the LoRA `AdapterUpdate`, with any state sent beside it) is split into a
skeleton and its tensors (`split`). The skeleton, a few KB of names, shapes and dtypes, travels by Ray;
the tensors travel by broadcast, packed into flat buckets of at most `bucket_mb` of one dtype each, so
a 7 B model goes as a few hundred large messages rather than thousands of small ones. Each receiver
allocates the buckets from the skeleton, unpacks them and rebuilds the payload (`join`), which the
engine loads as it loads one from the object store. A tensor under two names (tied embeddings) is sent
once.

The group is its own process group, not torch's default one, so it coexists with the DeepSpeed group of
the learner ranks: only learner rank 0 joins it.
"""

from __future__ import annotations

import dataclasses
import datetime
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Slot:
    """A tensor's place in a skeleton: its index in the broadcast order, shape and dtype."""
    index: int
    shape: tuple
    dtype: str  # a torch dtype name


def _map(x, is_leaf, fn):
    """`x` with every leaf replaced by fn(leaf), through dicts, lists, tuples and dataclasses."""
    if is_leaf(x):
        return fn(x)
    if isinstance(x, dict):
        return {k: _map(v, is_leaf, fn) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_map(v, is_leaf, fn) for v in x)
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return dataclasses.replace(x, **{f.name: _map(getattr(x, f.name), is_leaf, fn) for f in dataclasses.fields(x)})
    return x


def split(payload) -> tuple[object, list[torch.Tensor]]:
    """(skeleton, tensors): the payload with every tensor (or numpy array) replaced by a `Slot`."""
    tensors: list[torch.Tensor] = []
    seen: dict[tuple, Slot] = {}

    def slot(x) -> Slot:
        x = torch.from_numpy(x) if isinstance(x, np.ndarray) else x
        # the same storage under two names (tied embeddings) is sent once
        key = (x.untyped_storage().data_ptr(), x.storage_offset(), tuple(x.shape), tuple(x.stride()), x.dtype)
        if key not in seen:
            seen[key] = Slot(len(tensors), tuple(x.shape), str(x.dtype).removeprefix("torch."))
            tensors.append(x.detach().contiguous())
        return seen[key]

    return _map(payload, lambda x: isinstance(x, (torch.Tensor, np.ndarray)), slot), tensors


def slots(skeleton) -> list[Slot]:
    """The skeleton's slots in broadcast order."""
    found: dict[int, Slot] = {}
    _map(skeleton, lambda x: isinstance(x, Slot), lambda s: found.setdefault(s.index, s))
    return [found[i] for i in range(len(found))]


def join(skeleton, tensors: list[torch.Tensor]):
    """The payload again: every `Slot` replaced by its tensor."""
    return _map(skeleton, lambda x: isinstance(x, Slot), lambda s: tensors[s.index])


def buckets(specs: list[Slot], bucket_bytes: int) -> list[list[int]]:
    """Consecutive slots of one dtype, at most `bucket_bytes` a bucket (a larger tensor goes alone)."""
    out: list[list[int]] = []
    size, dtype = 0, None
    for s in specs:
        nbytes = int(np.prod(s.shape, dtype=np.int64)) * getattr(torch, s.dtype).itemsize
        if not out or s.dtype != dtype or size + nbytes > bucket_bytes:
            out.append([])
            size, dtype = 0, s.dtype
        out[-1].append(s.index)
        size += nbytes
    return out


class WeightsGroup:
    """Rank 0 (the learner) broadcasts, ranks 1.. (the rollout workers) receive."""

    def __init__(self, host: str, port: int, rank: int, world: int, timeout_s: float, device: str = "cpu"):
        import torch.distributed as dist

        timeout = datetime.timedelta(seconds=timeout_s)
        self.rank, self.device = rank, torch.device(device)
        self.store = dist.TCPStore(host, port, world, rank == 0, timeout=timeout)
        if self.device.type == "cuda":
            self.group = dist.ProcessGroupNCCL(self.store, rank, world)
        else:
            self.group = dist.ProcessGroupGloo(self.store, rank, world, timeout)

    def send(self, version: int, payload, bucket_mb: float) -> int:
        """Rank 0: the payload of weights `version`, its skeleton through the store and its tensors by
        broadcast. Returns the bytes broadcast."""
        return self.send_split(version, *split(payload), bucket_mb)

    def send_split(self, version: int, skeleton, tensors: list[torch.Tensor], bucket_mb: float) -> int:
        """`send` of a payload already split."""
        import pickle

        self.store.set(f"skeleton/{version}", pickle.dumps(skeleton))
        self.broadcast(slots(skeleton), tensors, bucket_mb)
        self.store.delete_key(f"skeleton/{version}")  # every receiver read it before the broadcast could finish
        return sum(t.numel() * t.element_size() for t in tensors)

    def receive(self, version: int, bucket_mb: float) -> tuple[object, int]:
        """Ranks 1..: (the payload rank 0 sends as weights `version`, its bytes)."""
        import pickle

        skeleton = pickle.loads(self.store.get(f"skeleton/{version}"))
        tensors = self.broadcast(slots(skeleton), None, bucket_mb)
        return join(skeleton, tensors), sum(t.numel() * t.element_size() for t in tensors)

    def broadcast(self, specs: list[Slot], tensors: list[torch.Tensor] | None, bucket_mb: float) -> list[torch.Tensor]:
        """Rank 0 passes its `tensors`; every rank gets them back (receivers: new tensors on the device)."""
        import torch.distributed as dist

        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        out: list[torch.Tensor | None] = [None] * len(specs)
        for bucket in buckets(specs, int(bucket_mb * 2**20)):
            shapes = [specs[i].shape for i in bucket]
            numels = [int(np.prod(s, dtype=np.int64)) for s in shapes]
            dtype = getattr(torch, specs[bucket[0]].dtype)
            if self.rank == 0:
                flat = torch.cat([tensors[i].reshape(-1).to(self.device) for i in bucket])
            else:
                flat = torch.empty(sum(numels), dtype=dtype, device=self.device)
            self.group.broadcast([flat], opts).wait()
            for i, part, shape in zip(bucket, flat.split(numels), shapes):
                out[i] = part.view(shape)
        return out


class BackgroundSender:
    """trainer.mode=async: rank 0's broadcasts run on a thread of their own, in the order published, so the
    learner trains on while each worker receives when it comes to it (after the generation it has in
    flight). A payload is copied when published (training moves the originals); the last one is kept, for a
    worker restarted before it could receive it (`kept`). After a failed broadcast the thread sends nothing
    more: the driver has gone over to the object store (it learns of the failure from the receivers)."""

    def __init__(self, group: WeightsGroup):
        import queue
        import threading

        self.group = group
        self.queue: queue.Queue = queue.Queue()
        self.last: tuple | None = None  # (version, skeleton, tensors) of the last publish
        self.failed: str | None = None
        threading.Thread(target=self._run, name="weights-sender", daemon=True).start()

    def publish(self, version: int, payload, bucket_mb: float) -> int:
        """Copy `payload` and queue its broadcast as weights `version`; returns its bytes."""
        skeleton, tensors = split(payload)
        tensors = [t.clone() for t in tensors]
        self.last = (version, skeleton, tensors)
        self.queue.put((version, skeleton, tensors, bucket_mb))
        return sum(t.numel() * t.element_size() for t in tensors)

    def kept(self, version: int):
        """The payload published last, which must be `version`."""
        if self.last is None or self.last[0] != version:
            raise RuntimeError(f"weights version {version} is not the last published "
                               f"({None if self.last is None else self.last[0]}); its copy is gone")
        return join(self.last[1], self.last[2])

    def _run(self) -> None:
        import logging

        while True:
            version, skeleton, tensors, bucket_mb = self.queue.get()
            if self.failed is not None:
                continue
            try:
                self.group.send_split(version, skeleton, tensors, bucket_mb)
            except Exception as e:  # a receiver died or timed out: every later broadcast would fail too
                self.failed = f"version {version}: {type(e).__name__}: {e}"
                logging.getLogger(__name__).warning("the broadcast of weights %s failed; sending no more", self.failed)
