"""The run directory: what a run writes when it starts, and what `resume=true` reads back.

A run writes ``config.yaml`` (the composed config), ``choices.yaml`` (its config-group choices) and
``overrides.yaml`` (what was typed) once, when it starts; they are never overwritten. ``resume=true
run_dir=R`` continues R with R's saved config, not the defaults: an override given with it may
only change what does not alter the run's meaning (`RESUMABLE`: how long it runs, how often it
evaluates and checkpoints, telemetry, the Ray cluster it joins), and each resume appends what it
changed to ``resumes.jsonl``. An override that would change the algorithm, model, task, batch shape
or seed is refused, naming the key; repeating the run's own values (a sweep re-launching its jobs)
changes nothing and is allowed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rlreason import flat_keys

# leaves that a resume may change: the run's length, eval and checkpoint cadence, telemetry, the cluster
RESUMABLE = ("total_steps", "rollout_token_budget", "eval_every", "eval_sampled", "eval_samples", "eval_cache",
             "checkpoint_every", "keep_checkpoints", "reward.num_workers", "telemetry.", "ray.")
NOT_COMPARED = ("run_dir", "resume")


class ResumeError(Exception):
    """`resume=true` cannot continue this run directory (the message says why and what to do)."""


def resumable(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUMABLE)


def resumed_config(run_dir: Path, argv: list[str], groups: tuple[str, ...]):
    """R's saved config with the resumable overrides in `argv` applied, validated; the changed leaves
    {key: [saved, new]}; and R's config-group choices. Raises `ResumeError` when R holds nothing to resume or an override
    would change the run's meaning."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from rlreason.config import Config, ConfigError, validate

    run_dir = Path(run_dir)
    saved_path = run_dir / "config.yaml"
    if not run_dir.is_dir():
        raise ResumeError(f"resume=true but run_dir={run_dir} does not exist: nothing to resume. Check the path "
                          f"(runs are under runs/ by default), or drop resume=true to start a new run there.")
    if not saved_path.is_file():
        raise ResumeError(f"resume=true but {run_dir} holds no config.yaml, so it is not a run's directory: nothing to "
                          f"resume. Check the path, or drop resume=true to start a new run there.")
    saved = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(saved_path))
    saved_choices = OmegaConf.to_container(OmegaConf.load(run_dir / "choices.yaml")) if (run_dir / "choices.yaml").is_file() else {}
    effective = saved.copy()
    refused = []
    for ov in OverridesParser.create().parse_overrides([a for a in argv if "=" in a]):
        key = ov.key_or_group
        if key in NOT_COMPARED:
            continue
        value = ov.value()
        if key in groups:
            if saved_choices.get(key) != value:
                refused.append(f"{key}={value} (the run used {key}={saved_choices.get(key)})")
            continue
        OmegaConf.update(effective, key, value, merge=True, force_add=ov.is_force_add() or ov.is_add())
    before, after = flat_keys(OmegaConf.to_container(saved)), flat_keys(OmegaConf.to_container(effective))
    changed = {k: [before.get(k), after.get(k)] for k in sorted(set(before) | set(after))
               if k not in NOT_COMPARED and before.get(k) != after.get(k)}
    refused += [f"{k}={v[1]} (the run used {v[0]})" for k, v in changed.items() if not resumable(k)]
    if refused:
        raise ResumeError(
            f"resume=true continues {run_dir} with its saved config.yaml; these overrides would change what the run "
            f"is and are refused: {'; '.join(refused)}. A resume may change only: "
            f"{', '.join(k.rstrip('.') + ('.*' if k.endswith('.') else '') for k in RESUMABLE)}. "
            f"To try the change, start a new run (a new run_dir).")
    cfg = OmegaConf.to_object(effective)
    cfg.run_dir, cfg.resume = str(run_dir), True
    try:
        validate(cfg)
    except ConfigError as e:
        raise ResumeError(str(e)) from None
    return cfg, changed, saved_choices


def write_start(run_dir: Path, cfg, choices: dict, argv: list[str]) -> None:
    """A new run's config.yaml, choices.yaml and overrides.yaml (what the user typed: report labels)."""
    from omegaconf import OmegaConf

    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    (run_dir / "choices.yaml").write_text(OmegaConf.to_yaml(choices))
    given = [ov for ov in argv if ov.split("=", 1)[0] not in NOT_COMPARED]
    (run_dir / "overrides.yaml").write_text(OmegaConf.to_yaml(given))


def record_resume(run_dir: Path, argv: list[str], changed: dict) -> None:
    """Append this resume (when, what was typed, what it changed) to resumes.jsonl; config.yaml stays as written."""
    line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "argv": argv, "changed": changed}
    with open(run_dir / "resumes.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")
