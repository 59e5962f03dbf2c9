"""Reward shaping on response length."""

from __future__ import annotations

import torch


def overlong_penalty(lengths: torch.Tensor, max_len: int, cache_len: int) -> torch.Tensor:
    """DAPO's soft overlong punishment (arXiv 2503.14476), added to the reward:

        0                                   if |o| <= max_len - cache_len
        ((max_len - cache_len) - |o|) / cache_len   if max_len - cache_len < |o| <= max_len
        -1                                  if |o| > max_len
    """
    lengths = lengths.to(torch.float32)
    start = max_len - cache_len
    pen = (start - lengths) / cache_len
    pen = torch.where(lengths <= start, torch.zeros_like(pen), pen)
    return torch.where(lengths > max_len, torch.full_like(pen, -1.0), pen)
