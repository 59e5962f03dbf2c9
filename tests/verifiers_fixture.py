"""Verifiers that misbehave on purpose, for the containment tests (imported by the verifier pool)."""

import os
import time
import zlib

from rewards.math import math_verifier


def sleep_forever(completion: str, sample: dict) -> float:
    while True:
        time.sleep(3600)


def boom(completion: str, sample: dict) -> float:
    raise RuntimeError("verifier exploded")


def die(completion: str, sample: dict) -> float:
    os._exit(3)


def not_a_number(completion: str, sample: dict):
    return "high"


def flaky(completion: str, sample: dict) -> float:
    """Hangs on a third of completions, raises on a third, verifies the rest (by a stable hash)."""
    kind = zlib.crc32(completion.encode()) % 3
    if kind == 0:
        sleep_forever(completion, sample)
    if kind == 1:
        boom(completion, sample)
    return math_verifier(completion, sample).score
