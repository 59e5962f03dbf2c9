"""Running model-written Python: one fresh, confined process per run (`run_python`).

Each run is a new interpreter (`confined_run.py`, started with ``python -I -S``) in a new session, which
confines itself before the program starts (`sandbox.confine`) and runs it in a scratch directory of its
own. What holds where (`isolation()` says which applies here; the trainer logs it):

- privileged (root or CAP_SYS_ADMIN, as in the usual container): no network (an empty network namespace),
  every mount read-only but the scratch tmpfs (``scratch_mb``), the run directory and credential files
  hidden, an unprivileged uid of its own with ``RLIMIT_NPROC`` (a fork bomb stops at ``max_processes``);
- unprivileged: sockets refused inside Python only, files not confined, the process limit counts the user.
- always: ``RLIMIT_AS`` (``memory_mb``: a large allocation raises MemoryError), ``RLIMIT_CPU``,
  ``RLIMIT_FSIZE`` (no file, stdout included, over ``scratch_mb``), 64 open files, no core files, only the
  standard library importable, and the wall-clock ``timeout_s``.

When the run ends or times out its whole process group is killed, and (privileged) every process of its
uid, so children that started a session of their own (and left the group) die too. Not isolated: the
kernel itself (no seccomp), reading world-readable files outside the hidden paths, and CPU time taken
from other work on the machine; without a PID namespace a program can see other processes (not signal
them: it runs as another uid).

Runs are limited to one per core at a time in a process (`SLOTS`): a batch of tool calls or test runs
queues rather than oversubscribe the machine.

Graders never put expected outputs in the program: the parent compares what the program prints, and an
exit status of 0 alone never means a pass.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

LAUNCHER = str(Path(__file__).with_name("confined_run.py"))
SLOTS = threading.BoundedSemaphore(max(1, os.cpu_count() or 1))


@dataclass
class Run:
    stdout: str
    stderr: str
    returncode: int | None  # None: killed at the timeout
    timed_out: bool
    seconds: float

    @property
    def status(self) -> str:
        """ok | timeout | oom (a MemoryError) | output_limit (SIGXFSZ: a file or the output grew past the cap) | error"""
        if self.timed_out:
            return "timeout"
        if self.returncode == 0:
            return "ok"
        if "MemoryError" in self.stderr[-2000:]:
            return "oom"
        if self.returncode == -signal.SIGXFSZ or "[Errno 27] File too large" in self.stderr[-2000:]:
            return "output_limit"
        return "error"


def isolation() -> str:
    """What confines a run here, in words (logged once by the code tools and verifiers' users)."""
    from rewards.sandbox import plan

    return plan()


def run_python(program: str, stdin: str = "", timeout_s: float = 5.0, memory_mb: int = 512, scratch_mb: int = 16,
               max_processes: int = 16, max_output_chars: int = 1 << 16, hidden: list[str] | None = None) -> Run:
    """Run `program` as ``__main__`` with `stdin`; its stdout and stderr (each read to at most
    `max_output_chars` characters), exit status and time. Never raises for anything the program does."""
    with SLOTS:
        return _run(program, stdin, timeout_s, memory_mb, scratch_mb, max_processes, max_output_chars, hidden or [])


def _run(program, stdin, timeout_s, memory_mb, scratch_mb, max_processes, max_output_chars, hidden) -> Run:
    scratch = tempfile.mkdtemp(prefix="rlreason-run-")
    os.chmod(scratch, 0o777)  # unprivileged: the program writes here as this user; privileged: a tmpfs covers it
    job = {"program": program, "stdin": stdin, "scratch": scratch, "scratch_mb": scratch_mb, "max_processes": max_processes,
           "memory_mb": memory_mb, "cpu_s": max(1, int(timeout_s) + 1), "hidden": hidden}
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-I", "-S", LAUNCHER], stdin=subprocess.PIPE, stdout=out, stderr=err,
                                start_new_session=True, cwd=scratch, env={"PATH": os.defpath, "LANG": "C.UTF-8"})
        timed_out = False
        try:
            proc.stdin.write(json.dumps(job).encode())
            proc.stdin.close()
        except OSError:  # it died before reading its job (e.g. a broken interpreter): its stderr says why
            pass
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _kill_all(proc)
        seconds = time.perf_counter() - t0
        stdout, stderr = _read(out, max_output_chars), _read(err, max_output_chars)
    _remove(scratch)
    return Run(stdout, stderr, None if timed_out else proc.returncode, timed_out, seconds)


def _kill_all(proc: subprocess.Popen) -> None:
    """The run's process group, then (privileged) every process of its uid: children that left the group too."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    proc.wait()
    from rewards.sandbox import kill_uid, privileged, sandbox_uid

    if privileged() and sandbox_uid(proc.pid) != os.getuid():
        kill_uid(sandbox_uid(proc.pid))


def _read(f, limit: int) -> str:
    f.seek(0)
    data = f.read(limit * 4 + 4)  # UTF-8: at most 4 bytes a character
    text = data.decode("utf-8", errors="replace")
    return text[:limit]


def _remove(folder: str) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
