"""Verifier failures made visible: a verifier that fails on every call otherwise looks like a hard task
("reward 0.000"), so each failure's message is kept where a user will find it.

Per verifier, the first `max_messages` distinct failure messages (an exception's type and text, a
timeout, a non-finite score) go to the log and to ``run_dir/verifier_errors.jsonl`` with where they
happened, the completion's index in its batch and the start of its prompt; after that only the
counts grow (``verifier/error_rate`` and ``verifier/timeout_rate`` in the metrics and on the console).
A verifier that fails on more than half its calls in one scoring round gets a warning each time.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


class VerifierHealth:
    def __init__(self, run_dir: Path | None, max_messages: int = 5, warn_above: float = 0.5):
        self.path = Path(run_dir) / "verifier_errors.jsonl" if run_dir is not None else None
        self.max_messages, self.warn_above = max_messages, warn_above
        self.seen: dict[str, set[str]] = {}  # verifier -> distinct messages recorded

    def record(self, where: str, results: dict, samples: list[dict]) -> None:
        """`results`: verifier name -> one CallResult per completion, in the order of `samples`."""
        lines = []
        for name, res in results.items():
            failed = [(i, r) for i, r in enumerate(res) if r.status != "ok"]
            if res and len(failed) / len(res) > self.warn_above:
                log.warning("verifier %r failed on %d of %d calls (%s); first message: %s", name, len(failed), len(res), where,
                            _headline(failed[0][1]))
            seen = self.seen.setdefault(name, set())
            for i, r in failed:
                head = _headline(r)
                if head in seen or len(seen) >= self.max_messages:
                    continue
                seen.add(head)
                log.warning("verifier %r %s on completion %d (%s): %s", name, r.status, i, where, head)
                prompt = str(samples[i].get("prompt", ""))[:200] if i < len(samples) else ""
                lines.append({"where": where, "verifier": name, "status": r.status, "completion": i, "prompt": prompt,
                              "error": r.error or r.status})
        if lines and self.path is not None:
            with open(self.path, "a") as f:
                f.write("".join(json.dumps(x) + "\n" for x in lines))


def _headline(result) -> str:
    """The message's first line: the exception type and text, without the traceback."""
    return (result.error or result.status).splitlines()[0][:500]
