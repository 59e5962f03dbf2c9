"""The verifier sandbox (rewards/sandbox.py): every attack a verifier might make on the machine fails
inside the worker, is counted as an error or a timeout, and the pool goes on scoring."""

import os
import socket
import subprocess
import sys
import time

import pytest

from rewards.pool import VerifierPool
from rewards.sandbox import Policy, _processes_of, privileged, sandbox_uid

needs_privilege = pytest.mark.skipif(not privileged(), reason="namespaces need root or CAP_SYS_ADMIN")
FIX = "tests.verifiers_fixture"


@needs_privilege
def test_each_attack_fails_inside_the_sandbox_and_the_pool_goes_on(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("PRIVATE KEY")
    (home / ".netrc").write_text("machine example.com password hunter2")
    monkeypatch.setenv("HOME", str(home))  # the workers' credentials, hidden like the run directory
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "learner.pt").write_bytes(b"weights")
    outside = tmp_path / "outside.txt"
    repo_file = os.path.join(os.getcwd(), "written-by-verifier.txt")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    policy = Policy(scratch_mb=16, max_processes=16, hidden=[str(run_dir)])
    tasks = [
        (f"{FIX}:write_file", "", {"path": str(outside)}),  # a file next to the run
        (f"{FIX}:write_file", "", {"path": repo_file}),  # the checkout
        (f"{FIX}:write_file", "", {"path": "/etc/rlreason-sandbox-test"}),
        (f"{FIX}:connect", "", {"port": port}),  # a listener on this machine
        (f"{FIX}:read_file", "", {"path": str(run_dir / "checkpoints" / "learner.pt")}),  # the run's weights
        (f"{FIX}:read_file", "", {"path": str(home / ".ssh" / "id_ed25519")}),  # credentials
        (f"{FIX}:hog", "", {}),  # allocate without bound
        (f"{FIX}:big_file", "", {"mb": 64}),  # fill the disk
        (f"{FIX}:read_file", "", {"path": str(home / ".netrc")}),  # a credentials file (a nodev /dev/null over it)
        (f"{FIX}:write_scratch", "", {}),  # allowed: its own scratch
        (f"{FIX}:read_file", "", {"path": os.path.join(os.getcwd(), "README.md")}),  # allowed: reading code and data
        ("math", "#3", {"answer": "3"}),
    ]
    try:
        with VerifierPool(num_workers=2, timeout_s=5.0, memory_limit_mb=1024, sandbox=policy) as pool:
            res = pool.run(tasks)
            got = [(r.status, r.score) for r in res]
            why = "\n".join(f"{g} {(r.error or '')[:300]}" for g, r in zip(got, res))
            assert got == [("error", 0.0)] * 9 + [("ok", 1.0)] * 3, why
            assert "Read-only file system" in res[0].error and "Read-only file system" in res[1].error
            assert "unreachable" in res[3].error  # no route anywhere, not even to 127.0.0.1
            assert "No such file" in res[4].error  # the run directory is an empty tmpfs in the sandbox
            assert "No such file" in res[5].error
            assert "MemoryError" in res[6].error and "File too large" in res[7].error and "Permission denied" in res[8].error
            assert not outside.exists() and not os.path.exists(repo_file)
            # and the pool still scores after every attack
            assert [r.score for r in pool.run([("math", "#3", {"answer": "3"})] * 4)] == [1.0] * 4
    finally:
        listener.close()
        if os.path.exists(repo_file):
            os.remove(repo_file)


@needs_privilege
def test_a_fork_bomb_is_capped_timed_out_and_leaves_no_process_behind():
    with VerifierPool(num_workers=1, timeout_s=2.0, sandbox=Policy(max_processes=12)) as pool:
        assert pool.run([("math", "#3", {"answer": "3"})])[0].score == 1.0  # the worker has started and confined itself
        uid = sandbox_uid(pool.pids()[0])
        assert _processes_of(uid) == pool.pids()  # it runs as its own unprivileged uid
        res = pool.run([(f"{FIX}:fork_bomb", "", {}), ("math", "#3", {"answer": "3"})])
        assert [r.status for r in res] == ["timeout", "ok"] and pool.restarts == 1
        deadline = time.monotonic() + 10
        while _processes_of(uid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _processes_of(uid) == []  # the bomb's processes died with the worker they came from


def test_without_privilege_python_sockets_are_refused():
    """The fallback when namespaces are not allowed: an audit hook refuses network sockets (AF_UNIX still works)."""
    code = (
        "import socket\n"
        "from rewards.sandbox import _refuse_sockets\n"
        "_refuse_sockets()\n"
        "a, b = socket.socketpair()\n"
        "try:\n"
        "    socket.create_connection(('127.0.0.1', 9), timeout=1)\n"
        "except PermissionError as e:\n"
        "    print('refused:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=os.getcwd(), timeout=60)
    assert "refused: network access is not allowed" in out.stdout, out.stderr
