"""The evaluation of the initial policy, computed once and shared by every run that would repeat it.

Every run of a sweep over estimators and seeds starts from the same policy and evaluates it on the
same held-out problems with the same sampling seed, so its step-0 evaluation is the same computation
each time (a third of a SmolLM2 run's wall time on 2 CPU cores). It is cached under
`$RLREASON_CACHE/evals/<key>.json` (default `~/.cache/rlreason`), keyed by everything that decides
its result: the policy's files (path, sizes, modification times), the eval prompts and answers, the
sampling settings, the engine settings that shape the random stream, the verifier, and the source
of the code that generates and scores (rollout/, envs/: multi-turn tools, evaluation.py, rewards/). `eval_cache=false`
turns it off. Only the initial policy's evaluation is cached, never one after training.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from rlreason.assets import remove_stale_tmp

ROOT = Path(__file__).resolve().parent.parent


def _code_digest() -> str:
    h = hashlib.sha256()
    files = sorted([*(ROOT / "rlreason" / "rollout").glob("*.py"), *(ROOT / "rlreason" / "envs").glob("*.py"),
                    ROOT / "rlreason" / "evaluation.py", *(ROOT / "rewards").glob("*.py")])
    for f in files:
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def initial_eval_key(policy_path: Path, prompts: list[str], samples: list[dict], settings: dict) -> str:
    """A digest of everything the initial evaluation's result depends on; `settings`: sampling, engine
    and verifier settings as plain data."""
    files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in Path(policy_path).iterdir() if p.is_file())
    blob = json.dumps({"policy": [str(Path(policy_path).resolve()), files], "prompts": prompts,
                       "answers": [str(s.get("answer")) for s in samples], "settings": settings, "code": _code_digest()},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def load(cache_dir: Path, key: str) -> dict | None:
    path = cache_dir / f"{key}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def store(cache_dir: Path, key: str, metrics: dict) -> None:
    """Write atomically (a temporary file renamed into place): a concurrent reader never sees half a file."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(cache_dir)
    tmp = cache_dir / f".{key}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(metrics))
    os.replace(tmp, cache_dir / f"{key}.json")
