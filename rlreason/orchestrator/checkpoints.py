"""Checkpoints: `run_dir/checkpoints/step_NNNNNN/`, written atomically (a temporary directory renamed
into place once complete), the newest `keep_checkpoints` kept.

Each holds what the learner saves (its weights or adapters, optimizer, random state: `Learner.save`)
and `trainer.json`: the step, the data position (sampler and curriculum state, rollout tokens so
far) and what the warm start did. Rollout seeds derive from (seed, step), so the driver holds no
random stream that a resume would need.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path


class Checkpointer:
    def __init__(self, run_dir: Path, keep: int):
        self.root = Path(run_dir) / "checkpoints"
        self.keep = keep

    def save(self, step: int, learners, data_state: dict, warmstart: dict | None) -> Path:
        final = self.root / f"step_{step:06d}"
        tmp = self.root / f".step_{step:06d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        learners.call("save", str(tmp))
        # fault injection for tests: hold the half-written checkpoint open (at one step, if one is named)
        delay = float(os.environ.get("RLREASON_FAULT_CHECKPOINT_DELAY_S", "0"))
        if delay and int(os.environ.get("RLREASON_FAULT_CHECKPOINT_DELAY_STEP", step)) == step:
            time.sleep(delay)
        state = {"step": step, "sampler": data_state["sampler"], "warmstart": warmstart,
                 "rollout_tokens": data_state["rollout_tokens"], "curriculum": data_state["curriculum"]}
        (tmp / "trainer.json").write_text(json.dumps(state, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in self.complete()[: -self.keep] if self.keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def complete(self) -> list[Path]:
        """Complete checkpoints, oldest first (a half-written one has no trainer.json)."""
        return sorted(p for p in self.root.glob("step_*") if (p / "trainer.json").exists())

    def latest(self) -> Path | None:
        done = self.complete()
        return done[-1] if done else None

    @staticmethod
    def read_state(directory: Path) -> dict:
        return json.loads((Path(directory) / "trainer.json").read_text())
