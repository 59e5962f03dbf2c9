"""Peak memory of the calling process, for the `memory/*` metrics each actor reports."""

from __future__ import annotations

import resource
import sys


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (VmHWM), in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (2**20 if sys.platform == "darwin" else 1024)


def peak_cuda_mb() -> float | None:
    """Peak CUDA memory allocated by torch in this process (MiB), or None without CUDA."""
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def process_peak_rss_mb(pid: int) -> float | None:
    """Peak RSS (VmHWM) of another process on this machine, in MiB; None if it cannot be read."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None
