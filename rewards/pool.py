"""Verifier execution: a sandboxed process pool, and an in-process runner for trusted verifiers.

`VerifierPool` runs verifiers in worker processes, one call at a time each, on the worker's main
thread (so verifiers that rely on ``signal.alarm``, such as math-verify, work). Every call is bounded:

- wall clock: a call that outlives its ``timeout_s`` gets its worker killed and replaced, and scores
  0 with status ``timeout``;
- CPU time: ``RLIMIT_CPU`` is set to the worker's usage so far plus ``cpu_limit_s`` before each call;
  the ``SIGXCPU`` that follows an overrun raises inside the verifier (as a `BaseException`, so a
  verifier's own ``except Exception`` cannot swallow it) and the call scores 0 with status
  ``timeout``. A verifier stuck in C code past the limit is killed by the wall clock;
- memory: ``RLIMIT_AS`` (address space) of ``memory_limit_mb`` on each worker; a call that runs out
  scores 0 with status ``error`` and its worker is replaced.

A verifier that raises, returns garbage or kills its own process scores 0 with status ``error``.
Nothing a verifier does can stall or crash training.

Batched verifiers get up to ``batch_size`` completions per call; async verifiers get a chunk of
``async_concurrency`` completions per worker, awaited together, each with its own timeout.
`InlineRunner` calls the same code in the calling process with no isolation and no limits, for
trusted verifiers (``reward.isolation=inline``) and for measuring what the isolation costs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing as mp
import resource
import signal
import sys
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import wait

log = logging.getLogger(__name__)
ASYNC_GRACE_S = 2.0  # an async chunk's deadline is its per-item timeout plus this


@dataclass
class CallResult:
    score: float
    status: str  # ok | timeout | error
    extras: dict = field(default_factory=dict)
    error: str | None = None
    latency_s: float = 0.0  # the call's wall time (a batched or async call: the whole call's)


@dataclass
class Job:
    """One verifier over a list of completions."""

    spec: str  # registered name, entry point or import path
    completions: list[str]
    samples: list[dict]
    args: dict = field(default_factory=dict)
    timeout_s: float | None = None  # None: the pool's


class CpuLimitExceeded(BaseException):
    """Raised in a verifier call by SIGXCPU; a BaseException so that ``except Exception`` in the
    verifier does not swallow it."""


def _on_sigxcpu(signum, frame):
    raise CpuLimitExceeded("CPU time limit exceeded")


def _clean_extras(extras: dict) -> dict:
    return {k: v for k, v in extras.items() if isinstance(v, (int, float, str, bool, type(None)))}


def _item(result) -> tuple:
    from rewards import to_score

    score, extras = to_score(result)
    if score != score:  # NaN
        raise ValueError("verifier returned NaN")
    return ("ok", score, _clean_extras(extras), None)


def _failure(e: BaseException) -> tuple:
    status = "timeout" if isinstance(e, (CpuLimitExceeded, asyncio.TimeoutError)) else "error"
    msg = f"{type(e).__name__}: {e}"
    if status == "error":
        msg += "\n" + traceback.format_exc(limit=3)
    return (status, 0.0, {}, msg)


def execute(loaded, items: list[tuple[str, dict]], timeout_s: float) -> list[tuple]:
    """Call a loaded verifier on (completion, sample) items; one (status, score, extras, error) each.
    Plain verifiers take one item per call, batched ones the list, async ones are awaited together."""
    if loaded.batched:
        try:
            out = list(loaded.call([c for c, _ in items], [s for _, s in items]))
            if len(out) != len(items):
                raise ValueError(f"batched verifier returned {len(out)} scores for {len(items)} completions")
        except (Exception, CpuLimitExceeded) as e:  # noqa: BLE001 - a verifier may raise anything
            return [_failure(e)] * len(items)
        results = []
        for r in out:
            try:
                results.append(_item(r))
            except Exception as e:  # noqa: BLE001
                results.append(_failure(e))
        return results
    if loaded.is_async:
        async def one(c, s):
            try:
                return _item(await asyncio.wait_for(loaded.call(c, s), timeout_s))
            except Exception as e:  # noqa: BLE001
                return _failure(e)

        async def together():
            return await asyncio.gather(*(one(c, s) for c, s in items))

        try:
            return asyncio.run(together())
        except CpuLimitExceeded as e:
            return [_failure(e)] * len(items)
    results = []
    for c, s in items:
        try:
            results.append(_item(loaded.call(c, s)))
        except (Exception, CpuLimitExceeded) as e:  # noqa: BLE001
            results.append(_failure(e))
    return results


def _worker_main(conn, sys_path: list[str], memory_limit_mb: int, cpu_limit_s: float) -> None:  # child process
    sys.path[:] = sys_path
    if memory_limit_mb > 0:
        limit = memory_limit_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    signal.signal(signal.SIGXCPU, _on_sigxcpu)
    _, cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)
    from rewards import load

    cache: dict = {}
    while True:
        try:
            msg = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        if msg is None:
            return
        task_id, spec, args_json, items, timeout_s = msg
        t0 = time.perf_counter()
        retire = False
        try:
            if cpu_limit_s > 0:
                usage = resource.getrusage(resource.RUSAGE_SELF)
                soft = int(usage.ru_utime + usage.ru_stime + cpu_limit_s) + 1
                resource.setrlimit(resource.RLIMIT_CPU, (soft, cpu_hard))
            key = (spec, args_json)
            if key not in cache:
                cache[key] = load(spec, json.loads(args_json))
            out = execute(cache[key], items, timeout_s)
        except MemoryError as e:
            out, retire = [_failure(e)] * len(items), True
        except (Exception, CpuLimitExceeded) as e:  # noqa: BLE001 - loading the verifier failed
            out = [_failure(e)] * len(items)
        finally:
            if cpu_limit_s > 0:
                resource.setrlimit(resource.RLIMIT_CPU, (cpu_hard, cpu_hard))
        retire = retire or any(r[3] and r[3].startswith("MemoryError") for r in out)
        try:
            conn.send((task_id, out, time.perf_counter() - t0, retire))
        except MemoryError:
            return
        if retire:  # memory may be fragmented or a verifier's state half-built: start clean
            return


class _Worker:
    def __init__(self, ctx, memory_limit_mb: int, cpu_limit_s: float):
        parent, child = ctx.Pipe(duplex=True)
        self.conn = parent
        self.proc = ctx.Process(target=_worker_main, args=(child, list(sys.path), memory_limit_mb, cpu_limit_s), daemon=True)
        self.proc.start()
        child.close()
        self.task = None  # (task_id, deadline)

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.join(timeout=5)
        finally:
            self.conn.close()


def _chunks(job: Job, loaded, async_concurrency: int) -> list[list[int]]:
    n = len(job.completions)
    size = loaded.batch_size if loaded.batched else (async_concurrency if loaded.is_async else 1)
    return [list(range(i, min(i + size, n))) for i in range(0, n, size)]


class _Runner:
    """What the pool and the inline runner share: job splitting and the `run` shorthand."""

    timeout_s: float
    async_concurrency: int

    def __init__(self):
        self._loaded: dict = {}
        self.calls = 0

    def describe(self, spec: str, args: dict):
        from rewards import load

        key = (spec, json.dumps(args, sort_keys=True))
        if key not in self._loaded:
            self._loaded[key] = load(spec, args)
        return self._loaded[key]

    def run(self, tasks: list[tuple[str, str, dict]]) -> list[CallResult]:
        """Run (spec, completion, sample) calls; results in the order given."""
        jobs = [Job(spec, [c], [s]) for spec, c, s in tasks]
        return [r[0] for r in self.score(jobs)]

    def score(self, jobs: list[Job]) -> list[list[CallResult]]:
        raise NotImplementedError


class VerifierPool(_Runner):
    def __init__(self, num_workers: int = 2, timeout_s: float = 5.0, start_method: str = "spawn",
                 memory_limit_mb: int = 4096, cpu_limit_s: float = 0.0, async_concurrency: int = 16):
        super().__init__()
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.timeout_s = timeout_s
        self.memory_limit_mb = memory_limit_mb
        self.cpu_limit_s = cpu_limit_s if cpu_limit_s > 0 else timeout_s
        self.async_concurrency = async_concurrency
        self._ctx = mp.get_context(start_method)
        self._workers = [self._spawn() for _ in range(num_workers)]
        self.restarts = 0

    def _spawn(self) -> _Worker:
        return _Worker(self._ctx, self.memory_limit_mb, self.cpu_limit_s)

    def score(self, jobs: list[Job]) -> list[list[CallResult]]:
        """Every job's results, in order; the calls of all jobs share the workers."""
        results: list[list[CallResult | None]] = [[None] * len(j.completions) for j in jobs]
        from rewards import import_path

        calls = []  # (job index, item indices, message without id, deadline seconds)
        for ji, job in enumerate(jobs):
            loaded = self.describe(job.spec, job.args)
            args_json = json.dumps(job.args, sort_keys=True)
            timeout = job.timeout_s or self.timeout_s
            path = import_path(job.spec)
            for idx in _chunks(job, loaded, self.async_concurrency):
                items = [(job.completions[i], job.samples[i]) for i in idx]
                calls.append((ji, idx, (path, args_json, items, timeout), timeout + (ASYNC_GRACE_S if loaded.is_async else 0.0)))
        pending = deque(range(len(calls)))

        def fill(ci: int, status: str, error: str, latency: float = 0.0) -> None:
            ji, idx, _, _ = calls[ci]
            for i in idx:
                results[ji][i] = CallResult(0.0, status, error=error, latency_s=latency)

        while pending or any(w.task for w in self._workers):
            for w in self._workers:
                if w.task is None and pending:
                    ci = pending.popleft()
                    try:
                        w.conn.send((ci, *calls[ci][2]))
                        w.task = (ci, time.monotonic() + calls[ci][3], time.monotonic())
                    except (BrokenPipeError, OSError) as e:
                        fill(ci, "error", f"worker pipe broken: {e}")
                        self._replace(w)
            busy = [w for w in self._workers if w.task]
            if not busy:
                continue
            wait_s = max(0.0, min(w.task[1] for w in busy) - time.monotonic())
            ready = wait([w.conn for w in busy], timeout=wait_s)
            for w in busy:
                ci, deadline, started = w.task
                if w.conn in ready:
                    try:
                        _, out, latency, retire = w.conn.recv()
                    except (EOFError, OSError):
                        fill(ci, "error", "verifier process died", time.monotonic() - started)
                        self._replace(w)
                        continue
                    ji, idx, _, _ = calls[ci]
                    for i, (status, score, extras, err) in zip(idx, out):
                        results[ji][i] = CallResult(score, status, extras, err, latency)
                    self.calls += 1
                    w.task = None
                    if retire:
                        self._replace(w)
                elif time.monotonic() >= deadline:
                    fill(ci, "timeout", f"no answer within {calls[ci][2][3]}s", time.monotonic() - started)
                    self.calls += 1
                    self._replace(w)
        return results  # type: ignore[return-value]

    def _replace(self, w: _Worker) -> None:
        w.kill()
        idx = self._workers.index(w)
        self._workers[idx] = self._spawn()
        self.restarts += 1

    def pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers]

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


class InlineRunner(_Runner):
    """The pool's interface, calling verifiers in this process: no timeout for synchronous
    verifiers, no limits, no isolation. For trusted verifiers only."""

    restarts = 0

    def __init__(self, timeout_s: float = 5.0, async_concurrency: int = 16):
        super().__init__()
        self.timeout_s, self.async_concurrency = timeout_s, async_concurrency

    def score(self, jobs: list[Job]) -> list[list[CallResult]]:
        out = []
        for job in jobs:
            loaded = self.describe(job.spec, job.args)
            res: list[CallResult | None] = [None] * len(job.completions)
            for idx in _chunks(job, loaded, self.async_concurrency):
                t0 = time.perf_counter()
                got = execute(loaded, [(job.completions[i], job.samples[i]) for i in idx], job.timeout_s or self.timeout_s)
                latency = time.perf_counter() - t0
                self.calls += 1
                for i, (status, score, extras, err) in zip(idx, got):
                    res[i] = CallResult(score, status, extras, err, latency)
            out.append(res)
        return out

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
