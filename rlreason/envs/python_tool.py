"""The Python tool: model-written code run in a fresh confined process (`rewards/code_exec.py`, the code
verifier's sandbox: no network, a scratch directory only, memory, CPU-time, file-size and process limits,
only the standard library), its output returned as the observation.

`python` environment: the turn's last fenced Python block is the call (`code_fence`), and the tool replies
with what the program printed (stdout, then stderr when it failed), capped head and tail by the
environment. The call's wall clock is bounded twice: the run's own timeout kills the process group, and
`ToolEnv`'s per-call timeout answers the policy even if the run is still queued for a core (runs take one
slot per core in a process, `code_exec.SLOTS`).
"""

from __future__ import annotations

from rewards.code_exec import run_python
from rlreason.envs.base import ToolEnv


def python_tool(arguments: dict, timeout_s: float = 5.0, memory_mb: int = 512) -> str:
    code = arguments.get("code", arguments.get("input"))
    if not isinstance(code, str):
        raise ValueError('the python tool takes {"code": "<program>"}')
    run = run_python(code, timeout_s=timeout_s, memory_mb=memory_mb)
    if run.timed_out:  # a failed run raises: ToolEnv shows it as "error: ..." and counts it in env/tool_error_rate
        raise RuntimeError(f"the program did not finish within {timeout_s:g} s\n{run.stdout}")
    if run.returncode != 0:
        last = run.stderr.strip().splitlines()[-1:] or [f"exit status {run.returncode}"]
        raise RuntimeError(f"{last[0]}\n{run.stdout}".rstrip())
    return run.stdout if run.stdout else "(no output: print what you want to see)"


class PythonEnv(ToolEnv):
    """`python`: run the turn's last ```python block; the observation is its output (stdout, or the error)."""

    def __init__(self, max_turns: int = 4, timeout_s: float = 5.0, memory_mb: int = 512, call_format: str = "code_fence",
                 observation: str = "{output}"):
        super().__init__({"python": lambda args: python_tool(args, timeout_s, memory_mb)}, call_format, max_turns,
                         timeout_s + 2.0, observation=observation)  # the run's own timeout fires first
