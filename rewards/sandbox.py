"""The verifier sandbox: what a verifier worker process can touch. Verifiers grade untrusted model
output, and code-running verifiers execute it, so each worker confines itself once, right after it
starts and before it imports any verifier (`confine`).

With root, or CAP_SYS_ADMIN (the usual container), every layer below applies:

- network: a private network namespace with no interface up: every connect, to the internet or to a
  listener on this machine, fails (ENETUNREACH). AF_UNIX socket pairs still work;
- files: a private mount namespace where every mount is remounted read-only, nosuid, nodev; the worker's
  scratch directory gets a fresh tmpfs of ``scratch_mb`` (the only writable place; ``$TMPDIR``, ``$HOME``
  and the working directory point there); each path in ``hidden`` (the run directory: checkpoints,
  metrics) and the usual credential locations (`SECRETS`: ~/.ssh, cloud and registry logins, the
  Hugging Face token, /etc/shadow) are covered by an empty read-only tmpfs or /dev/null;
- user: the worker drops to an unprivileged uid of its own (`sandbox_uid`) with no capabilities, so
  files only their owner may read (keys, tokens) are closed to it; when some of the code it imports is
  not world-readable (a checkout under a private home), it keeps CAP_DAC_READ_SEARCH to read (never
  write) it, and with it every file. ``no_new_privs`` stops a setuid binary from giving anything back;
- limits: ``RLIMIT_NPROC`` (processes and threads of that uid: a fork bomb stops at `max_processes`),
  ``RLIMIT_FSIZE`` (no file over ``scratch_mb``), no core files. Memory and CPU time are limited by the
  pool (``RLIMIT_AS``, ``RLIMIT_CPU``). When the pool replaces a worker it kills every process of its uid
  (`kill_uid`), so nothing a verifier started outlives it.

Without those privileges the namespaces cannot be made: the network is then closed inside Python only
(an audit hook refuses every socket that is not AF_UNIX; C code calling the kernel directly is not
stopped), files are not confined, and the process limit counts the whole user's processes. `plan()`
says which applies; the pool logs it. Not isolated in any mode: reading files the verifier can
already read (other than `hidden`), CPU time of other workers, and the kernel itself (no seccomp).
"""

from __future__ import annotations

import ctypes
import os
import resource
import sys
from dataclasses import dataclass, field

CLONE_NEWNS, CLONE_NEWNET = 0x00020000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
PR_SET_KEEPCAPS, PR_SET_NO_NEW_PRIVS = 8, 38
CAP_DAC_READ_SEARCH, CAP_SYS_ADMIN = 2, 21
SANDBOX_UID_BASE, SANDBOX_UID_SPAN = 1_600_000, 1_000_000  # uids no real account uses


@dataclass
class Policy:
    scratch: str = ""  # the worker's writable directory (made by the pool; a private tmpfs is mounted on it)
    scratch_mb: int = 64  # the scratch tmpfs's size, and the largest file a verifier may write
    max_processes: int = 32  # processes and threads of the worker's uid
    hidden: list[str] = field(default_factory=list)  # paths covered by an empty tmpfs (the run directory)


def sandbox_uid(pid: int) -> int:
    """The uid a worker with process id `pid` runs verifiers as (unique among live workers)."""
    return SANDBOX_UID_BASE + pid % SANDBOX_UID_SPAN


def privileged() -> bool:
    """Whether this process may create namespaces and change uid (root or CAP_SYS_ADMIN)."""
    return os.geteuid() == 0 or bool(_effective_caps() >> CAP_SYS_ADMIN & 1)


def plan() -> str:
    """What `confine` will isolate here, in words (for the log)."""
    if privileged():
        return ("network namespace (no network), read-only mounts but a private scratch tmpfs, run directory hidden, "
                "unprivileged uid, process and file-size limits")
    return ("not privileged to create namespaces: network refused inside Python only (audit hook), files NOT confined, "
            "process and file-size limits for the whole user")


def confine(policy: Policy) -> list[str]:
    """Apply every layer this process is allowed to; returns warnings for those that could not be."""
    warnings = []
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    limit = policy.scratch_mb * 2**20
    if privileged():
        try:
            _namespaces(policy)
        except OSError as e:
            warnings.append(f"namespaces unavailable ({e}); falling back to the in-Python network block, files not confined")
            _refuse_sockets()
        try:
            _drop_user(policy.max_processes)
        except OSError as e:
            warnings.append(f"could not drop to an unprivileged uid ({e}); process limit not enforced for root")
    else:
        _refuse_sockets()
        try:
            resource.setrlimit(resource.RLIMIT_NPROC, (_user_processes() + policy.max_processes,) * 2)
        except (OSError, ValueError) as e:
            warnings.append(f"process limit not set ({e})")
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    if policy.scratch:
        os.environ.update({"TMPDIR": policy.scratch, "HOME": policy.scratch})
        os.chdir(policy.scratch)
    return warnings


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _namespaces(policy: Policy) -> None:
    libc = _libc()
    _check(libc.unshare(CLONE_NEWNET | CLONE_NEWNS), "unshare")
    mount = libc.mount
    mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    _check(mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make mounts private")
    for target in sorted(_mount_points(), key=len, reverse=True):  # nested mounts first
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | _kept_flags(target)
        mount(None, target.encode(), None, flags, None)  # best effort: a few pseudo filesystems refuse
    size = f"size={policy.scratch_mb}m,mode=1777".encode()
    _check(mount(b"tmpfs", policy.scratch.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, size), "mount the scratch tmpfs")
    for path in [*policy.hidden, *secret_paths()]:
        if os.path.isdir(path):  # an empty read-only tmpfs over a folder
            _check(mount(b"tmpfs", path.encode(), b"tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, b"size=4k,mode=0555"),
                   f"hide {path}")
        elif os.path.isfile(path):  # /dev/null over a file (on a nodev mount now: opening it is refused)
            _check(mount(b"/dev/null", path.encode(), None, MS_BIND, None), f"hide {path}")


# where credentials usually live, hidden from verifiers as the run directory is (when they exist)
SECRETS = ("~/.ssh", "~/.aws", "~/.azure", "~/.config/gcloud", "~/.docker", "~/.kube", "~/.gnupg", "~/.netrc",
           "~/.git-credentials", "~/.cache/huggingface/token", "~/.huggingface", "~/.config/wandb",
           "/etc/shadow", "/etc/gshadow")


def secret_paths() -> list[str]:
    return sorted({os.path.expanduser(p) for p in SECRETS})


def _mount_points() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4].replace("\\040", " ") for line in f]


def _kept_flags(target: str) -> int:
    """noexec must be kept on a remount of a mount that has it (the kernel refuses to drop it)."""
    try:
        return 8 if os.statvfs(target).f_flag & os.ST_NOEXEC else 0  # MS_NOEXEC
    except OSError:
        return 0


def _drop_user(max_processes: int) -> None:
    libc = _libc()
    uid = sandbox_uid(os.getpid())
    keep = 0 if all(map(_world_readable, sys.path)) else 1 << CAP_DAC_READ_SEARCH  # decided while still root
    resource.setrlimit(resource.RLIMIT_NPROC, (max_processes, max_processes))
    _check(libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0), "keep capabilities")
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    _set_caps(keep)
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


def _world_readable(path: str) -> bool:
    """Whether any user can import from `path`: every directory above it searchable by others, and it readable."""
    import stat

    if not path or not os.path.exists(path):
        return True
    parts = os.path.abspath(path).split(os.sep)
    for i in range(1, len(parts) + 1):
        mode = os.stat(os.sep.join(parts[:i]) or os.sep).st_mode
        if not mode & stat.S_IXOTH or (i == len(parts) and not mode & stat.S_IROTH):
            return False
    return True


def _set_caps(mask: int) -> None:
    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    header = Header(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (Data * 2)(Data(mask & 0xFFFFFFFF, mask & 0xFFFFFFFF, 0), Data(mask >> 32, mask >> 32, 0))
    libc = _libc()
    _check(libc.capset(ctypes.byref(header), data), "capset")


def _effective_caps() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def _refuse_sockets() -> None:
    """An audit hook that refuses every socket but AF_UNIX (Python code only: C code is not stopped)."""
    import socket

    def hook(event, args):
        if event == "socket.__new__" and args[1] != socket.AF_UNIX:
            raise PermissionError("network access is not allowed in the verifier sandbox")

    sys.addaudithook(hook)


def _processes_of(uid: int) -> list[int]:
    """Process ids whose real uid is `uid` (from /proc/<pid>/status: a process that changed uid is not
    dumpable, and its /proc entry is owned by root, not by the uid it runs as)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("State:") and line.split()[1] in "ZX":  # already dead, awaiting its reaper
                        break
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) == uid:
                            found.append(int(pid))
                        break
        except (OSError, ValueError):
            pass
    return found


def _user_processes() -> int:
    return len(_processes_of(os.getuid()))


def kill_uid(uid: int) -> int:
    """SIGKILL every process owned by `uid` (a replaced worker's leftovers, fork bombs included); how many."""
    import signal

    killed = 0
    for _ in range(5):  # a fork bomb may fork between the scan and the kill: scan until nothing is left
        found = _processes_of(uid)
        if not found:
            break
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
    return killed
