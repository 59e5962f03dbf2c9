"""The environment interface: what a multi-turn rollout asks after each model turn.

    env = ENVS.get(name)(**options)      one per rollout (a registered name, or module:Class)
    env.reset(sample, seed=...)          the task's sample (its prompt, gold answer, test cases)
    result = env.step(turn)              after every model turn: observations to append, done, reward

A `Turn` is the model's turn as sampled: its decoded text (what tool calls are parsed from) and its token
ids (what the trajectory keeps; `trajectory.py`). `StepResult.observations` are the texts of the messages
that follow it (one per tool call), which the rollout turns into ids once (`render.py`); an empty list
with `done=False` is a bare "continue". `reward` is None when the task's verifier scores the final text
(the usual case); an environment may score itself instead. `info` feeds the env/* metrics.

Methods are plain (synchronous): the rollout calls them from its own threads. Tool calls of one turn run
concurrently (`ToolEnv`), each with a timeout. A thread cannot stop a busy loop, so tools that run
untrusted or unbounded code must run it in another process (the sandbox), never in the thread itself;
the calculator is bounded by construction.

`single_turn` is today's behaviour: one turn, scored by the verifier.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Callable, Protocol

from rlreason.envs.calculator import CalculatorError, calculate
from rlreason.envs.tool_calls import FORMATS, ToolCall
from rlreason.registry import Registry


@dataclass
class Turn:
    text: str
    token_ids: list[int]
    finish_reason: str  # stop (the end-of-turn token) | length (the token budget ran out) | stop_string
    index: int  # 0 for the first model turn


@dataclass
class StepResult:
    observations: list[str]
    done: bool
    reward: float | None = None
    info: dict = field(default_factory=dict)  # tool_calls, tool_errors, tool_timeouts, tool_s


class Environment(Protocol):
    max_turns: int

    def reset(self, sample: dict, seed: int = 0) -> None: ...

    def step(self, turn: Turn) -> StepResult: ...


ENVS = Registry("environment", "rollout.env")
ENVS.register_path("python", "rlreason.envs.python_tool:PythonEnv")  # imports the sandbox only when chosen


@ENVS.register("single_turn")
class SingleTurn:
    """One model turn, then done: the task's verifier scores it (every task before multi-turn)."""

    max_turns = 1

    def reset(self, sample: dict, seed: int = 0) -> None:
        pass

    def step(self, turn: Turn) -> StepResult:
        return StepResult([], done=True)


def calculator_tool(arguments: dict) -> str:
    """{"expression": "3*7"} (or the paren format's {"input": "3*7"}) -> "21"."""
    expression = arguments.get("expression", arguments.get("input"))
    if not isinstance(expression, str):
        raise CalculatorError('the calculator takes {"expression": "<arithmetic>"}')
    return calculate(expression)


class ToolEnv:
    """Turns that call tools get the tools' outputs back; a turn without a call (or cut by the token budget)
    ends the episode, as does the last allowed turn. Each call's failure (an unknown tool, bad arguments,
    an exception, a timeout) is its observation, `error: ...`, never an exception out of `step`."""

    def __init__(self, tools: dict[str, Callable[[dict], str]], call_format: str = "hermes", max_turns: int = 4,
                 timeout_s: float = 5.0, max_parallel_calls: int = 4, max_output_chars: int = 2000,
                 observation: str = "{output}"):
        """`observation`: how a call's output is shown to the policy (e.g. "={output}" continues a plain-text
        line; with a chat template each output is its own tool message, so "{output}")."""
        if call_format not in FORMATS:
            raise ValueError(f"unknown tool-call format {call_format!r}; one of {sorted(FORMATS)}")
        if "{output}" not in observation:
            raise ValueError(f"the observation template {observation!r} must contain {{output}}")
        self.tools, self.parse, self.max_turns = tools, FORMATS[call_format], max_turns
        self.timeout_s, self.max_output_chars, self.observation = timeout_s, max_output_chars, observation
        self.pool = ThreadPoolExecutor(max_parallel_calls, thread_name_prefix="tool")

    def reset(self, sample: dict, seed: int = 0) -> None:
        pass

    def step(self, turn: Turn) -> StepResult:
        calls = self.parse(turn.text) if turn.finish_reason != "length" else []
        if not calls:
            return StepResult([], done=True, info={"tool_calls": 0})
        t0 = time.perf_counter()
        futures = [None if c.error else self.pool.submit(self._call, c) for c in calls]
        observations, errors, timeouts = [], 0, 0
        deadline = t0 + self.timeout_s
        for call, future in zip(calls, futures):
            if future is None:
                text, failed = f"error: {call.error}", True
            else:
                try:
                    text, failed = future.result(timeout=max(0.0, deadline - time.perf_counter()))
                except FutureTimeout:
                    text, failed = f"error: {call.name} did not answer within {self.timeout_s:g} s", True
                    timeouts += 1
            errors += failed
            observations.append(self.observation.replace("{output}", self._cap(text)))
        done = turn.index + 1 >= self.max_turns
        return StepResult(observations, done, info={"tool_calls": len(calls), "tool_errors": errors,
                                                    "tool_timeouts": timeouts, "tool_s": time.perf_counter() - t0})

    def close(self) -> None:
        """Let the call threads go (a call still running past its timeout finishes on its own)."""
        self.pool.shutdown(wait=False)

    def _call(self, call: ToolCall) -> tuple[str, bool]:
        tool = self.tools.get(call.name)
        if tool is None:
            return f"error: no tool named {call.name!r}; tools: {', '.join(sorted(self.tools))}", True
        try:
            return str(tool(call.arguments)), False
        except Exception as e:  # noqa: BLE001 - a tool's failure is the policy's observation
            return f"error: {e}", True

    def _cap(self, text: str) -> str:
        """At most max_output_chars: the head and the tail, the middle elided."""
        if len(text) <= self.max_output_chars:
            return text
        half = self.max_output_chars // 2
        return f"{text[:half]}\n... [{len(text) - 2 * half} characters elided] ...\n{text[-half:]}"


@ENVS.register("calculator")
class CalculatorEnv(ToolEnv):
    """The calculator tool, `calculator`: a hermes call (`{"name": "calculator", "arguments": {"expression": ...}}`)
    by default, or `calculator(3*7)` under call_format=paren."""

    def __init__(self, max_turns: int = 4, timeout_s: float = 5.0, call_format: str = "hermes", observation: str = "{output}"):
        super().__init__({"calculator": calculator_tool}, call_format, max_turns, timeout_s, observation=observation)


@ENVS.register("calculator_inline")
class InlineCalculatorEnv(CalculatorEnv):
    """The calculator inline in plain text: the policy writes `calculator(47*29)` (stop string ")"), the reply
    `=1363` continues the line, and the policy goes on (`#1363`): for a policy without a chat template or
    with a tiny vocabulary (task=arith_tools on the tiny policy)."""

    def __init__(self, max_turns: int = 2, timeout_s: float = 5.0):
        super().__init__(max_turns, timeout_s, call_format="paren", observation="={output}")
