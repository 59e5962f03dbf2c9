"""How the learner applies gradients: one process (`LocalStrategy`) or data-parallel DeepSpeed ZeRO.

Both expose the same small surface the learner's update loop needs:

- `backward(loss)`, then `step() -> (applied, grad_norm)`: clip to `learner.grad_clip` and step, unless
  the global gradient norm is not finite (then the update is dropped and the gradients cleared);
- `all_reduce(t)` (sum over ranks; identity on one process) and `all_finite(flag)`;
- `full_params()`: a context in which every parameter is whole (ZeRO-3 gathers the partitions);
- `save(d)` / `load(d, extra)`: the optimizer state.

`DeepSpeedStrategy` (`learner.strategy=deepspeed learner.num_workers=N`): N learner actors, each with a
full copy of the batch; every update mini-batch is split across the ranks, each rank's loss weighted by
the whole mini-batch's denominators and multiplied by N (DeepSpeed averages gradients over ranks), so
the gradient equals the single learner's. gloo on CPU, nccl on CUDA. The client optimizer is the same
torch AdamW (`zero_allow_untested_optimizer`): no DeepSpeed op has to be compiled.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
from pathlib import Path

import torch


class LocalStrategy:
    rank, world_size = 0, 1

    def __init__(self, model, optimizer, grad_clip: float):
        self.model, self.optimizer = model, optimizer
        self.max_norm = grad_clip if grad_clip > 0 else float("inf")

    def backward(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()

    def step(self) -> tuple[bool, float]:
        norm = float(torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], self.max_norm))
        if not math.isfinite(norm):
            self.optimizer.zero_grad(set_to_none=True)
            return False, norm
        self.optimizer.step()
        return True, norm

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def all_finite(self, flag: bool) -> bool:
        return flag

    def full_params(self):
        return contextlib.nullcontext()

    def save(self, directory: Path) -> dict:
        return {"optimizer": self.optimizer.state_dict()}

    def load(self, directory: Path, extra: dict) -> None:
        self.optimizer.load_state_dict(extra["optimizer"])


def free_address() -> tuple[str, int]:
    """This node's IP and a free TCP port (rank 0 calls it; the other ranks connect there)."""
    import ray

    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    return ray.util.get_node_ip_address(), port


def deepspeed_config(stage: int, grad_clip: float, world_size: int, overrides: dict | None = None) -> dict:
    """The DeepSpeed config of a learner rank: one micro-batch per step (the learner's own loop does the
    mini-batching), ZeRO `stage`, clipping, no compiled optimizer; `overrides` merge in recursively."""
    cfg = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "train_batch_size": world_size,
        "zero_optimization": {"stage": stage},
        "gradient_clipping": grad_clip,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
    }

    def merge(dst, src):
        for k, v in src.items():
            if isinstance(v, dict) and isinstance(dst.get(k), dict):
                merge(dst[k], v)
            else:
                dst[k] = v

    merge(cfg, overrides or {})
    return cfg


class DeepSpeedStrategy:
    def __init__(self, model, optimizer, grad_clip: float, stage: int, rank: int, world_size: int, master_addr: str,
                 master_port: int, overrides: dict | None = None):
        import deepspeed
        import torch.distributed as dist

        # one device per actor (Ray sets CUDA_VISIBLE_DEVICES), so the local rank is 0
        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(rank), WORLD_SIZE=str(world_size),
                          LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if not dist.is_initialized():
            deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)
        self.rank, self.world_size, self.stage = rank, world_size, stage
        self.config = deepspeed_config(stage, grad_clip, world_size, overrides)
        self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=self.config)
        self.model = self.engine.module
        self._dist = dist

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> tuple[bool, float]:
        # DeepSpeed's fp32 ZeRO step drops the update itself when the global norm is not finite
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        norm = float("nan") if norm is None else float(norm)
        return math.isfinite(norm), norm

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        self._dist.all_reduce(t)
        return t

    def all_finite(self, flag: bool) -> bool:
        return bool(self.all_reduce(torch.tensor([0.0 if flag else 1.0], device=self.engine.device)).item() == 0)

    def full_params(self):
        if self.stage < 3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters([p for p in self.model.parameters()], modifier_rank=None)

    def save(self, directory: Path) -> dict:
        # every rank writes its own partition of the optimizer (and, under ZeRO-3, of the weights)
        self.engine.save_checkpoint(str(directory / "deepspeed"), tag="state", save_latest=False,
                                    exclude_frozen_parameters=True)
        return {}

    def load(self, directory: Path, extra: dict) -> None:
        path, _ = self.engine.load_checkpoint(str(directory / "deepspeed"), tag="state", load_module_strict=False)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed state under {directory / 'deepspeed'}")
