"""Runs one untrusted Python program, confined: the launcher `code_exec.run_python` starts for each run.

Started as ``python -I -S confined_run.py`` (no user site, no site-packages, no environment variables read)
in a new session, it reads its job as JSON on stdin, confines itself with the verifier sandbox's layers
(`sandbox.confine`: network and mount namespaces with a private scratch tmpfs and an unprivileged uid
when privileged; else an in-Python network block), sets the memory, CPU-time and open-file limits, and
then runs the program as ``__main__`` in the scratch directory. Only the standard library is importable.
"""

import json
import os
import resource
import runpy
import sys
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> int:
    job = json.loads(sys.stdin.read())
    sys.path.insert(0, HERE)
    import sandbox  # the sibling module, imported by file (this process has no rlreason on its path)

    # only the standard library stays importable, so the uid dropped to needs no extra read rights
    sys.path[:] = [p for p in sys.path[1:] if p != HERE]
    memory = job["memory_mb"] * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (job["cpu_s"], job["cpu_s"] + 1))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    policy = sandbox.Policy(scratch=job["scratch"], scratch_mb=job["scratch_mb"], max_processes=job["max_processes"],
                            hidden=job["hidden"])
    for warning in sandbox.confine(policy):
        print(f"sandbox: {warning}", file=sys.stderr)
    with open("main.py", "w") as f:
        f.write(job["program"])
    with open(".stdin", "w") as f:
        f.write(job["stdin"])
    fd = os.open(".stdin", os.O_RDONLY)
    os.dup2(fd, 0)
    os.close(fd)
    os.unlink(".stdin")
    sys.stdin = open(0, closefd=False)
    sys.argv = ["main.py"]
    del sys.modules["sandbox"]
    try:
        runpy.run_path("main.py", run_name="__main__")
    except SystemExit as e:
        code = e.code
        if code is None or isinstance(code, int):
            return code or 0
        print(code, file=sys.stderr)
        return 1
    except BaseException:  # noqa: BLE001 - the program's failure is its output
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # no interpreter teardown: the program's threads or atexit hooks do not get to run on
