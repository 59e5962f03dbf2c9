"""A process pool that runs verifiers with a hard per-call timeout.

Each worker is a separate process that runs one call at a time on its main thread (so verifiers that
rely on ``signal.alarm``, such as math-verify, work). The dispatcher waits on the workers' pipes; a
call that outlives ``timeout_s`` gets its worker killed and replaced, and scores 0 with status
``timeout``. A verifier that raises, returns garbage or kills its own process scores 0 with status
``error``. Nothing a verifier does can stall or crash training.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import sys
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import wait

log = logging.getLogger(__name__)


@dataclass
class CallResult:
    score: float
    status: str  # ok | timeout | error
    extras: dict = field(default_factory=dict)
    error: str | None = None


def _worker_main(conn, sys_path: list[str]) -> None:  # runs in the child process
    sys.path[:] = sys_path
    from rewards import resolve, to_score

    cache: dict = {}
    while True:
        try:
            msg = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        if msg is None:
            return
        task_id, spec, completion, sample = msg
        try:
            fn = cache.get(spec) or cache.setdefault(spec, resolve(spec))
            score, extras = to_score(fn(completion, sample))
            if score != score:  # NaN
                raise ValueError("verifier returned NaN")
            safe = {k: v for k, v in extras.items() if isinstance(v, (int, float, str, bool, type(None)))}
            conn.send((task_id, "ok", score, safe, None))
        except BaseException as e:  # noqa: BLE001 - a verifier may raise anything
            conn.send((task_id, "error", 0.0, {}, f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}"))


class _Worker:
    def __init__(self, ctx):
        parent, child = ctx.Pipe(duplex=True)
        self.conn = parent
        self.proc = ctx.Process(target=_worker_main, args=(child, list(sys.path)), daemon=True)
        self.proc.start()
        child.close()
        self.task = None  # (task_id, deadline)

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.join(timeout=5)
        finally:
            self.conn.close()


class VerifierPool:
    def __init__(self, num_workers: int = 2, timeout_s: float = 5.0, start_method: str = "spawn"):
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.timeout_s = timeout_s
        self._ctx = mp.get_context(start_method)
        self._workers = [_Worker(self._ctx) for _ in range(num_workers)]
        self.restarts = 0

    def run(self, tasks: list[tuple[str, str, dict]]) -> list[CallResult]:
        """Run (spec, completion, sample) calls; results in the order given."""
        results: list[CallResult | None] = [None] * len(tasks)
        pending = deque(range(len(tasks)))
        while pending or any(w.task for w in self._workers):
            for w in self._workers:
                if w.task is None and pending:
                    i = pending.popleft()
                    spec, completion, sample = tasks[i]
                    try:
                        w.conn.send((i, spec, completion, sample))
                        w.task = (i, time.monotonic() + self.timeout_s)
                    except (BrokenPipeError, OSError) as e:
                        results[i] = CallResult(0.0, "error", error=f"worker pipe broken: {e}")
                        self._replace(w)
            busy = [w for w in self._workers if w.task]
            if not busy:
                continue
            now = time.monotonic()
            wait_s = max(0.0, min(w.task[1] for w in busy) - now)
            ready = wait([w.conn for w in busy], timeout=wait_s)
            for w in busy:
                i, deadline = w.task
                if w.conn in ready:
                    try:
                        task_id, status, score, extras, err = w.conn.recv()
                    except (EOFError, OSError):
                        results[i] = CallResult(0.0, "error", error="verifier process died")
                        self._replace(w)
                        continue
                    results[task_id] = CallResult(score, status, extras, err)
                    w.task = None
                elif time.monotonic() >= deadline:
                    results[i] = CallResult(0.0, "timeout", error=f"no answer within {self.timeout_s}s")
                    self._replace(w)
        return results  # type: ignore[return-value]

    def _replace(self, w: _Worker) -> None:
        w.kill()
        idx = self._workers.index(w)
        self._workers[idx] = _Worker(self._ctx)
        self.restarts += 1

    def close(self) -> None:
        for w in self._workers:
            try:
                w.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for w in self._workers:
            w.proc.join(timeout=2)
            if w.proc.is_alive():
                w.proc.kill()
            w.conn.close()
        self._workers = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
