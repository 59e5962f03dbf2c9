"""Stop strings on token ids: a multi-turn model turn ends where its text first contains one of
`rollout.stop` (e.g. "</tool_call>"). Engines stop sampling there (vLLM's `stop`, the hf engine's decode
loop), and the episode runner cuts every turn at the same place, so both engines end turns identically.
"""

from __future__ import annotations

import re

# Hydra passes an override's "\n" through as a backslash and an "n": `rollout.stop=["```\n"]` would name a string
# no model writes, and never end a turn. The escapes a stop string needs are decoded (`decode_escapes`).
ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}


def decode_escapes(s: str) -> str:
    r"""`\n`, `\t` and `\\` as newline, tab and backslash; any other backslash stays as written."""
    return re.sub(r"\\([nt\\])", lambda m: ESCAPES[m.group(1)], s)


class StopStrings:
    """Per-turn stop strings on sampled ids: where a turn's text first contains one of them."""

    def __init__(self, tokenizer, strings: list[str]):
        self.tokenizer, self.strings = tokenizer, [s for s in strings if s]
        # every token decodes to at least one character, so a string is inside the decoded last len(s) + 1 tokens
        self.window = max((len(s) for s in self.strings), default=0) + 1

    def hit(self, ids) -> bool:
        """Whether the text of `ids` ends in a way that contains a stop string (the last `window` ids are decoded)."""
        tail = self.tokenizer.decode(list(ids[-self.window:]), skip_special_tokens=False)
        return any(s in tail for s in self.strings)

    def cut(self, ids: list[int]) -> int | None:
        """The number of ids up to and including the one that completes the first stop string; None if none does."""
        if not self.strings:
            return None
        return next((n for n in range(1, len(ids) + 1) if self.hit(ids[:n])), None)
