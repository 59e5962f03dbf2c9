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

A verifier that raises, returns garbage (a non-number, NaN or inf) or kills its own process scores 0
with status ``error``.
Nothing a verifier does can stall or crash training.

Batched verifiers get up to ``batch_size`` completions per call; async verifiers get a chunk of
``async_concurrency`` completions per worker, awaited together, each with its own timeout.
With a `rewards.sandbox.Policy` (``reward.isolation=sandbox``, the default) each worker also confines
itself before importing any verifier: no network, read-only files but a private scratch directory
(emptied after every call), the run directory hidden, its own unprivileged uid, process and file-size
limits; a replaced worker takes every process of its uid with it. `InlineRunner` calls the same code
in the calling process with no isolation and no limits, for trusted verifiers
(``reward.isolation=inline``) and for measuring what the isolation costs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import multiprocessing as mp
import os
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
MAX_STREAM_CHUNK = 32  # completions of a plain verifier sent to a worker in one message
LOAD_TIMEOUT_S = 120.0  # a fresh worker's start, the verifier's import and construction (before any call's clock)


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
    if not math.isfinite(score):  # NaN or inf would reach the advantages and the loss
        raise ValueError(f"verifier returned a non-finite score ({score})")
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


def _worker_main(conn, sys_path: list[str], memory_limit_mb: int, cpu_limit_s: float, policy) -> None:  # child process
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is for the trainer, which stops the pool itself
    sys.path[:] = [os.path.abspath(p) if p else os.getcwd() for p in sys_path]  # the sandbox changes directory
    if memory_limit_mb > 0:
        limit = memory_limit_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    if policy is not None:
        from rewards.sandbox import confine

        for warning in confine(policy):
            print(f"rlreason verifier sandbox: {warning}", file=sys.stderr, flush=True)
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
        task_id, spec, args_json, items, timeout_s, stream = msg
        key = (spec, args_json)
        if key not in cache:  # import and construct outside any call's deadline, then say so
            try:
                cache[key] = load(spec, json.loads(args_json))
            except BaseException as e:  # noqa: BLE001 - a broken verifier module may raise anything
                conn.send((task_id, 0, [_failure(e)] * len(items), 0.0, isinstance(e, MemoryError)))
                continue
            conn.send((task_id, -1, [], 0.0, False))
        # a streamed chunk is one call per item, each answered as soon as it is done; otherwise the
        # chunk is one call (batched, or async completions awaited together)
        units = [[it] for it in items] if stream else [items]
        k = 0
        for unit in units:
            t0 = time.perf_counter()
            out, retire = _call(cache[key], unit, timeout_s, cpu_limit_s, cpu_hard)
            if policy is not None:  # no call sees what another left (or finds its scratch full)
                _empty(policy.scratch)
            try:
                conn.send((task_id, k, out, time.perf_counter() - t0, retire))
            except MemoryError:
                return
            if retire:  # memory may be fragmented or a verifier's state half-built: start clean
                return
            k += len(unit)


def _empty(folder: str) -> None:
    import shutil

    with os.scandir(folder) as entries:
        for e in entries:
            try:
                shutil.rmtree(e.path) if e.is_dir(follow_symlinks=False) else os.unlink(e.path)
            except OSError:
                pass


def _call(loaded, items, timeout_s, cpu_limit_s, cpu_hard) -> tuple[list, bool]:
    retire = False
    try:
        if cpu_limit_s > 0:
            usage = resource.getrusage(resource.RUSAGE_SELF)
            soft = int(usage.ru_utime + usage.ru_stime + cpu_limit_s) + 1
            resource.setrlimit(resource.RLIMIT_CPU, (soft, cpu_hard))
        out = execute(loaded, items, timeout_s)
    except MemoryError as e:
        out, retire = [_failure(e)] * len(items), True
    except (Exception, CpuLimitExceeded) as e:  # noqa: BLE001
        out = [_failure(e)] * len(items)
    finally:
        if cpu_limit_s > 0:
            resource.setrlimit(resource.RLIMIT_CPU, (cpu_hard, cpu_hard))
    return out, retire or any(r[3] and r[3].startswith("MemoryError") for r in out)


class _Worker:
    def __init__(self, ctx, memory_limit_mb: int, cpu_limit_s: float, sandbox=None):
        parent, child = ctx.Pipe(duplex=True)
        self.conn = parent
        self.policy = None
        if sandbox is not None:  # the worker's own scratch directory (a private tmpfs is mounted on it)
            import tempfile

            self.policy = dataclasses.replace(sandbox, scratch=tempfile.mkdtemp(prefix="rlreason-verifier-"))
        self.proc = ctx.Process(target=_worker_main, args=(child, list(sys.path), memory_limit_mb, cpu_limit_s, self.policy),
                                daemon=True)
        self.proc.start()
        child.close()
        self.task = None  # _InFlight while a call is out
        self.loaded: set = set()  # (path, args_json) this worker has imported and constructed

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.join(timeout=5)
        finally:
            self.conn.close()
            self.clean_up()

    def clean_up(self) -> None:
        """Kill whatever the worker started (every process of its sandbox uid) and remove its scratch."""
        if self.policy is None:
            return
        import shutil

        from rewards.sandbox import kill_uid, privileged, sandbox_uid

        if privileged() and sandbox_uid(self.proc.pid) != os.getuid():
            kill_uid(sandbox_uid(self.proc.pid))
        shutil.rmtree(self.policy.scratch, ignore_errors=True)


@dataclass
class _Call:
    ji: int  # job index
    idx: list[int]  # the job's completions in this call (a streamed chunk: one call each)
    path: str
    args_json: str
    timeout_s: float
    stream: bool
    deadline_s: float  # per answer the dispatcher waits for


@dataclass
class _InFlight:
    call: _Call
    next: int  # position in call.idx of the first completion not answered yet
    deadline: float
    started: float


def _chunks(job: Job, loaded, async_concurrency: int, plain_chunk: int = 1) -> list[list[int]]:
    n = len(job.completions)
    size = loaded.batch_size if loaded.batched else (async_concurrency if loaded.is_async else plain_chunk)
    return [list(range(i, min(i + size, n))) for i in range(0, n, size)]


class _Runner:
    """What the pool and the inline runner share: job splitting and the `run` shorthand."""

    timeout_s: float
    async_concurrency: int

    def __init__(self):
        self.calls = 0

    def describe(self, spec: str, args: dict):
        from rewards import load

        return load(spec, args)

    def run(self, tasks: list[tuple[str, str, dict]]) -> list[CallResult]:
        """Run (spec, completion, sample) calls; results in the order given."""
        jobs = [Job(spec, [c], [s]) for spec, c, s in tasks]
        return [r[0] for r in self.score(jobs)]

    def score(self, jobs: list[Job]) -> list[list[CallResult]]:
        raise NotImplementedError


class VerifierPool(_Runner):
    def __init__(self, num_workers: int = 2, timeout_s: float = 5.0, start_method: str = "spawn",
                 memory_limit_mb: int = 4096, cpu_limit_s: float = 0.0, async_concurrency: int = 16, sandbox=None):
        """`sandbox`: a `rewards.sandbox.Policy` each worker confines itself with (None: limits only)."""
        super().__init__()
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.timeout_s = timeout_s
        self.memory_limit_mb = memory_limit_mb
        self.cpu_limit_s = cpu_limit_s if cpu_limit_s > 0 else timeout_s
        self.async_concurrency = async_concurrency
        self.sandbox = sandbox
        if sandbox is not None:
            from rewards.sandbox import plan

            log.info("verifier sandbox: %s", plan())
        self._ctx = mp.get_context(start_method)
        self._workers = [self._spawn() for _ in range(num_workers)]
        self.restarts = 0

    def _spawn(self) -> _Worker:
        return _Worker(self._ctx, self.memory_limit_mb, self.cpu_limit_s, self.sandbox)

    def score(self, jobs: list[Job]) -> list[list[CallResult]]:
        """Every job's results, in order; the calls of all jobs share the workers.

        Plain verifiers travel in chunks of several completions to save round trips; the worker
        still makes one call per completion and answers each at once, and each call gets its own
        deadline (the previous answer's arrival plus the timeout). When a worker is killed or dies in
        a chunk, the call in progress fails and the rest of the chunk is sent again."""
        from rewards import import_path

        results: list[list[CallResult | None]] = [[None] * len(j.completions) for j in jobs]
        calls: list[_Call] = []
        n_plain = sum(len(j.completions) for j in jobs if not (self.describe(j.spec, j.args).batched or
                                                               self.describe(j.spec, j.args).is_async))
        plain_chunk = max(1, min(MAX_STREAM_CHUNK, -(-n_plain // (4 * len(self._workers)))))
        for ji, job in enumerate(jobs):
            loaded = self.describe(job.spec, job.args)
            stream = not (loaded.batched or loaded.is_async)
            timeout = job.timeout_s or self.timeout_s
            base = _Call(ji, [], import_path(job.spec), json.dumps(job.args, sort_keys=True), timeout, stream,
                         timeout + (ASYNC_GRACE_S if loaded.is_async else 0.0))
            for idx in _chunks(job, loaded, self.async_concurrency, plain_chunk):
                calls.append(dataclasses.replace(base, idx=idx))
        pending = deque(calls)

        def fail(w: _Worker, status: str, error: str) -> None:
            """The call in progress on `w` fails; the unstarted rest of a streamed chunk goes back."""
            c, k = w.task.call, w.task.next
            failed = c.idx[k:k + 1] if c.stream else c.idx[k:]
            for i in failed:
                results[c.ji][i] = CallResult(0.0, status, error=error, latency_s=time.monotonic() - w.task.started)
            self.calls += 1
            if c.stream and k + 1 < len(c.idx):
                pending.appendleft(dataclasses.replace(c, idx=c.idx[k + 1:]))
            self._replace(w)

        while pending or any(w.task for w in self._workers):
            for w in self._workers:
                if w.task is None and pending:
                    c = pending.popleft()
                    items = [(jobs[c.ji].completions[i], jobs[c.ji].samples[i]) for i in c.idx]
                    first = max(c.deadline_s, LOAD_TIMEOUT_S) if (c.path, c.args_json) not in w.loaded else c.deadline_s
                    w.task = _InFlight(c, 0, time.monotonic() + first, time.monotonic())
                    try:
                        w.conn.send((0, c.path, c.args_json, items, c.timeout_s, c.stream))
                    except (BrokenPipeError, OSError) as e:
                        fail(w, "error", f"worker pipe broken: {e}")
            busy = [w for w in self._workers if w.task]
            if not busy:
                continue
            wait_s = max(0.0, min(w.task.deadline for w in busy) - time.monotonic())
            ready = wait([w.conn for w in busy], timeout=wait_s)
            for w in busy:
                if w.conn in ready:
                    try:
                        _, k, out, latency, retire = w.conn.recv()
                    except (EOFError, OSError):
                        fail(w, "error", "verifier process died")
                        continue
                    c = w.task.call
                    if k < 0:  # the worker has loaded the verifier: the first call's clock starts now
                        w.loaded.add((c.path, c.args_json))
                        w.task.deadline, w.task.started = time.monotonic() + c.deadline_s, time.monotonic()
                        continue
                    for i, (status, score, extras, err) in zip(c.idx[k:], out):
                        results[c.ji][i] = CallResult(score, status, extras, err, latency)
                    self.calls += 1
                    now = time.monotonic()
                    w.task.next, w.task.deadline, w.task.started = k + len(out), now + c.deadline_s, now
                    if w.task.next >= len(c.idx):
                        w.task = None
                        if retire:
                            self._replace(w)
                    elif retire:  # the worker exits after this answer: the rest of the chunk goes elsewhere
                        pending.appendleft(dataclasses.replace(c, idx=c.idx[w.task.next:]))
                        w.task = None
                        self._replace(w)
                elif time.monotonic() >= w.task.deadline:
                    fail(w, "timeout", f"no answer within {w.task.call.timeout_s}s")
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
            w.clean_up()
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
