"""Epoch-shuffled prompt sampler with a resumable position.

Order: a fresh permutation of the train set each epoch, drawn from (seed, epoch), so the state is
just (epoch, position) and a resumed run draws exactly the prompts the uninterrupted run would have.
"""

from __future__ import annotations

import hashlib
import random


class PromptSampler:
    def __init__(self, size: int, batch_size: int, seed: int):
        if size < 1:
            raise ValueError("the train split is empty")
        self.size = size
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.position = 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(self.size))
        random.Random(f"{self.seed}-{epoch}").shuffle(order)
        return order

    def next_batch(self) -> list[int]:
        out: list[int] = []
        while len(out) < self.batch_size:
            if self.position >= self.size:
                self.epoch += 1
                self.position = 0
                self._order = self._permutation(self.epoch)
            take = min(self.batch_size - len(out), self.size - self.position)
            out.extend(self._order[self.position : self.position + take])
            self.position += take
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "size": self.size}

    def load_state_dict(self, state: dict) -> None:
        if state["size"] != self.size or state["seed"] != self.seed:
            raise ValueError(
                f"sampler state is for a train split of {state['size']} (seed {state['seed']}), "
                f"this run has {self.size} (seed {self.seed})"
            )
        self.epoch = state["epoch"]
        self.position = state["position"]
        self._order = self._permutation(self.epoch)

    @property
    def consumed(self) -> int:
        """Prompts drawn so far, over all epochs."""
        return self.epoch * self.size + self.position


def indices_digest(indices: list[int]) -> str:
    return hashlib.sha1(",".join(map(str, indices)).encode()).hexdigest()[:12]
