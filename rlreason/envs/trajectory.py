"""A multi-turn trajectory kept as token ids end to end: never decoded and encoded again.

    prompt | gen_1 | obs_1 | gen_2 | obs_2 | ... | gen_n

A trajectory is the prompt's ids and a list of segments, each of one kind:
- `gen`: tokens the policy sampled, with their sampling log-probs and the weights version of each;
- `obs`: an observation (a tool's output, the environment's reply), tokenised once when it arrived;
- `bridge`: template tokens between turns (the end-of-turn after a stop string, the next turn's header).

What the engine is fed for turn t + 1 is exactly the prompt and every segment so far
(`input_ids`); `check_fed` asserts it, so a re-rendered or re-tokenised prefix (the usual multi-turn
bug: the trained tokens are not the sampled ones) fails loudly instead of training on the wrong tokens.
`flatten` gives the learner's view: the response is every segment in order; the loss mask is 1 on
`gen` tokens only, so observations and template tokens get no gradient. Log-probs are 0 and versions
-1 off the `gen` tokens (the RolloutBatch conventions for tokens that were not sampled).
"""

from __future__ import annotations

from dataclasses import dataclass, field

KINDS = ("gen", "obs", "bridge")


@dataclass
class Segment:
    kind: str  # gen | obs | bridge
    ids: list[int]
    turn: int
    logprobs: list[float] | None = None  # gen: the sampling log-prob of each token
    versions: list[int] | None = None  # gen: the weights version that sampled each token

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"segment kind {self.kind!r} is not one of {KINDS}")
        if self.kind == "gen":
            if self.logprobs is None or self.versions is None or not len(self.logprobs) == len(self.versions) == len(self.ids):
                raise ValueError("a gen segment needs one log-prob and one version per token")
        elif self.logprobs is not None or self.versions is not None:
            raise ValueError(f"an {self.kind} segment was not sampled: it has no log-probs or versions")


@dataclass
class Trajectory:
    prompt_ids: list[int]
    segments: list[Segment] = field(default_factory=list)

    def input_ids(self) -> list[int]:
        """The prompt and every segment so far: what the engine continues from."""
        return [*self.prompt_ids, *(t for s in self.segments for t in s.ids)]

    @property
    def length(self) -> int:
        """Tokens in the trajectory, prompt included (what `rollout.max_total_tokens` bounds)."""
        return len(self.prompt_ids) + sum(len(s.ids) for s in self.segments)

    @property
    def turns(self) -> int:
        return sum(s.kind == "gen" for s in self.segments)

    def append(self, segment: Segment) -> None:
        self.segments.append(segment)

    def check_fed(self, fed: list[int]) -> None:
        """`fed` (the ids an engine was given) must be the trajectory so far, token for token."""
        expected = self.input_ids()
        if list(fed) != expected:
            at = next((i for i, (a, b) in enumerate(zip(fed, expected)) if a != b), min(len(fed), len(expected)))
            raise AssertionError(f"the engine was fed {len(fed)} ids that differ from the trajectory's {len(expected)} "
                                 f"at position {at}: a turn was re-tokenised instead of appended")

    def flatten(self) -> dict[str, list]:
        """The response as the learner sees it: ids, loss mask (1 on gen), log-probs and versions (0 and -1
        off gen), and each token's segment kind."""
        out: dict[str, list] = {"response_ids": [], "loss_mask": [], "logprobs": [], "versions": [], "kinds": []}
        for s in self.segments:
            gen = s.kind == "gen"
            out["response_ids"] += s.ids
            out["loss_mask"] += [int(gen)] * len(s.ids)
            out["logprobs"] += s.logprobs if gen else [0.0] * len(s.ids)
            out["versions"] += s.versions if gen else [-1] * len(s.ids)
            out["kinds"] += [s.kind] * len(s.ids)
        return out
