"""The run's problems: the task's train and held-out splits, each row checked by the reward plan's
verifiers as it loads. With `task.bad_rows=skip` the rows they reject are listed in the run
directory's bad_rows.jsonl and counted in `data/bad_rows`; with `error` the first one stops the run."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from rlreason.data.tasks import DataError, load_task

log = logging.getLogger(__name__)


@dataclass
class TaskData:
    train: list
    evals: list
    bad_rows: list = field(default_factory=list)


def load_task_data(task_cfg, validators: list, run_dir: Path) -> TaskData:
    bad_rows: list = []
    train, evals = load_task(task_cfg, validators, bad_rows)
    if bad_rows:
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / "bad_rows.jsonl", "w") as f:
            for b in bad_rows:
                f.write(json.dumps({"file": b.file, "row": b.row, "reason": b.reason}) + "\n")
        log.warning("task.bad_rows=skip: %d bad rows skipped, listed in %s", len(bad_rows), run_dir / "bad_rows.jsonl")
    for split, problems in (("training", train), ("held-out", evals)):
        if not problems:
            raise DataError(f"task={task_cfg.name} has no usable {split} problems"
                            + (f" ({len(bad_rows)} bad rows skipped; see {run_dir / 'bad_rows.jsonl'})" if bad_rows else "") + ".")
    return TaskData(train, evals, bad_rows)
