"""Tool calls as instruct models already write them, parsed from a model turn's text.

- `hermes`: ``<tool_call>{"name": "calculator", "arguments": {"expression": "3*7"}}</tool_call>``, any number
  per turn (Qwen, Hermes and SmolLM2's own tool-use template); a turn's calls run concurrently.
- `code_fence`: the turn's last fenced Python block (```python ... ``` or ```py ... ```) is one call of the
  `python` tool, with the code as its argument; earlier blocks are drafts. Small models write this without
  being taught a schema.
- `paren`: ``calculator(347*29)``, the turn's last ``name(text)`` with no parentheses inside, as a call of
  tool `name` with the text as its one argument, `input`. For policies with a tiny vocabulary (the
  character tokenizer has no ``<``, ``{`` or backtick); pair it with the stop string ``)``.

A malformed call is not dropped: it becomes a `ToolCall` with an `error`, whose message the environment
returns as the observation (the policy learns from it; the run never crashes on it). The text is parsed as
the engine returned it; the trajectory keeps the sampled ids (`trajectory.py`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field


@dataclass
class ToolCall:
    name: str
    arguments: dict = field(default_factory=dict)
    error: str | None = None  # a call that could not be parsed: this is its observation


_HERMES = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.S)
_FENCE = re.compile(r"```(?:python|py)[ \t]*\n(.*?)```", re.S)


def hermes_calls(text: str) -> list[ToolCall]:
    """Every <tool_call>{json}</tool_call> in order; an unclosed last one is parsed to the end of the text."""
    calls = []
    for body in _HERMES.findall(text):
        try:
            obj = json.loads(body.strip())
        except json.JSONDecodeError as e:
            calls.append(ToolCall("", error=f"the tool call is not valid JSON ({e.msg} at character {e.pos})"))
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            calls.append(ToolCall("", error='a tool call must be a JSON object with a "name" and "arguments"'))
            continue
        args = obj.get("arguments", {})
        if isinstance(args, str):  # some models send the arguments JSON-encoded a second time
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                pass
        if not isinstance(args, dict):
            calls.append(ToolCall(obj["name"], error='"arguments" must be a JSON object'))
            continue
        calls.append(ToolCall(obj["name"], args))
    return calls


def code_fence_calls(text: str) -> list[ToolCall]:
    """The last complete ```python block as a call of the `python` tool (none when there is no block)."""
    blocks = _FENCE.findall(text)
    return [ToolCall("python", {"code": blocks[-1]})] if blocks else []


_PAREN = re.compile(r"([a-z_][a-z0-9_]*)\(([^()]*)\)")


def paren_calls(text: str) -> list[ToolCall]:
    """The last name(text) as a call of tool `name` with {"input": text} (none when there is none)."""
    found = _PAREN.findall(text)
    return [ToolCall(found[-1][0], {"input": found[-1][1]})] if found else []


FORMATS = {"hermes": hermes_calls, "code_fence": code_fence_calls, "paren": paren_calls}
