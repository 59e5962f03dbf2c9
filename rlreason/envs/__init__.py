"""Multi-turn environments and tools (issue 24, in progress): the token-exact trajectory
(`trajectory.py`), observations as the chat template's own ids (`render.py`), the tool-call formats
models emit (`tool_calls.py`) and the calculator tool (`calculator.py`). The environment interface and
the multi-turn rollout loop are not built yet."""
