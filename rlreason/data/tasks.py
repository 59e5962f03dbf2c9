"""Task loading: the procedural arithmetic task, or GSM8K from a local folder (or the hub when online)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from rlreason.data.arithmetic import Problem, make_splits

log = logging.getLogger(__name__)


def load_task(task_cfg) -> tuple[list[Problem], list[Problem]]:
    """(train, eval) problems for `task.name`."""
    if task_cfg.name == "arithmetic":
        return make_splits(task_cfg.seed, task_cfg.num_train, task_cfg.num_eval, task_cfg.num_terms, task_cfg.max_value,
                           task_cfg.eval_fraction, list(task_cfg.levels) or None)
    if task_cfg.name == "gsm8k":
        train = gsm8k_split(task_cfg.path, "train")[: task_cfg.num_train]
        evals = gsm8k_split(task_cfg.path, "test")[: task_cfg.num_eval]
        return train, evals
    raise ValueError(f"unknown task {task_cfg.name!r}")


def gsm8k_answer(solution: str) -> str:
    """The final answer after '####', with thousands separators removed."""
    if "####" not in solution:
        raise ValueError("no '####' final answer")
    return solution.rsplit("####", 1)[1].strip().replace(",", "")


def gsm8k_problem(row: dict) -> Problem:
    question, solution = row["question"], row["answer"]
    answer = gsm8k_answer(solution)
    worked = solution.rsplit("####", 1)[0].strip()
    return Problem(prompt=f"Question: {question.strip()}\nAnswer:", solution=f" {worked} #{answer}", answer=answer,
                   category="gsm8k")


def gsm8k_split(path: str | None, split: str) -> list[Problem]:
    """Rows of `<path>/<split>.jsonl`; with no path, the `openai/gsm8k` (main) split from the hub."""
    if path:
        file = Path(path) / f"{split}.jsonl"
        if not file.exists():
            raise FileNotFoundError(f"task=gsm8k: {file} does not exist (task.path must hold train.jsonl and test.jsonl)")
        rows = []
        for n, line in enumerate(file.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(gsm8k_problem(json.loads(line)))
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{file}:{n}: bad GSM8K row ({e})") from None
        return rows
    from datasets import load_dataset  # online only: HF_HUB_OFFLINE makes this fail fast offline

    log.info("task=gsm8k: no task.path, loading openai/gsm8k from the hub")
    return [gsm8k_problem(r) for r in load_dataset("openai/gsm8k", "main", split=split)]
