"""Verifiers that misbehave on purpose, for the containment tests (imported by the verifier pool)."""

import asyncio
import os
import time
import zlib

from rewards import VerifierResult, batched
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


class Threshold:
    """A class verifier with constructor arguments: 1.0 when the number after '#' is >= `at`."""

    def __init__(self, at: int = 0):
        self.at = at

    def __call__(self, completion: str, sample: dict) -> float:
        return 1.0 if int(completion.rsplit("#", 1)[1]) >= self.at else 0.0


@batched(batch_size=3)
def length_batch(completions: list[str], samples: list[dict]) -> list[float]:
    """Batched: one call scores up to 3 completions; records the batch sizes it saw in the extras."""
    return [VerifierResult(float(len(c)), {"batch": len(completions), "pid": os.getpid()}) for c in completions]


async def slow_async(completion: str, sample: dict) -> float:
    """Async: waits `sample["wait"]` seconds (a remote judge's latency), then checks the answer."""
    await asyncio.sleep(sample.get("wait", 0.5))
    return math_verifier(completion, sample).score


def spin(completion: str, sample: dict) -> float:
    """Burns CPU forever, inside a broad except that a CPU-limit signal must still get through."""
    try:
        x = 0
        while True:
            x += 1
    except Exception:  # noqa: BLE001 - the point: a verifier that swallows exceptions
        return 1.0


def hog(completion: str, sample: dict) -> float:
    """Allocates without bound: a memory limit must stop it."""
    blocks = []
    while True:
        blocks.append(bytearray(64 * 2**20))


def pid(completion: str, sample: dict):
    return VerifierResult(1.0, {"pid": os.getpid()})


def chaos(completion: str, sample: dict) -> float:
    """By a stable hash of the completion: hangs, raises, kills its process, or verifies."""
    kind = zlib.crc32(completion.encode()) % 4
    if kind == 0:
        sleep_forever(completion, sample)
    if kind == 1:
        boom(completion, sample)
    if kind == 2:
        die(completion, sample)
    return math_verifier(completion, sample).score


def even_length(completion: str, sample: dict) -> float:
    """1 for an even number of characters: a random policy's groups then mix 0s and 1s."""
    return float(len(completion) % 2 == 0)


def infinite(completion: str, sample: dict) -> float:
    return float("inf")


# -- attacks on the sandbox: each returns 1.0 only if the attack got through ---------------------------
def write_file(completion: str, sample: dict) -> float:
    with open(sample["path"], "w") as f:
        f.write("written by a verifier")
    return 1.0


def write_scratch(completion: str, sample: dict) -> float:
    """The one place a sandboxed verifier may write: its scratch ($TMPDIR, also its working directory)."""
    import tempfile

    with tempfile.NamedTemporaryFile(dir=os.environ.get("TMPDIR")) as f:
        f.write(b"scratch")
    with open("here.txt", "w") as f:
        f.write("scratch")
    return 1.0


def read_file(completion: str, sample: dict) -> float:
    with open(sample["path"], "rb") as f:
        return 1.0 if f.read() else 0.0


def connect(completion: str, sample: dict) -> float:
    import socket

    socket.create_connection(("127.0.0.1", sample["port"]), timeout=2).close()
    return 1.0


def fork_bomb(completion: str, sample: dict) -> float:
    while True:
        try:
            os.fork()
        except OSError:
            pass


def big_file(completion: str, sample: dict) -> float:
    with open(os.path.join(os.environ.get("TMPDIR", "."), "big.bin"), "wb") as f:
        for _ in range(sample.get("mb", 256)):
            f.write(b"x" * 2**20)
    return 1.0


def attack(completion: str, sample: dict, run_dir: str = "") -> float:
    """Attacks the machine, a different way per completion: 1.0 only if the attack got through."""
    kind = zlib.crc32(completion.encode()) % 3
    if kind == 0:
        return write_file(completion, {"path": os.path.join(os.path.dirname(run_dir), "pwned.txt")})
    if kind == 1:
        return read_file(completion, {"path": os.path.join(run_dir, "config.yaml")})
    children = []
    for _ in range(200):
        pid = os.fork()
        if pid == 0:
            time.sleep(5)
            os._exit(0)
        children.append(pid)
    return 1.0
