"""Multi-turn environments and tools (docs/environments.md): the environment interface, its registry and
the built-in environments (`base.py`: single_turn, calculator, calculator_inline; `python_tool.py`: python),
the token-exact trajectory (`trajectory.py`), observations as the chat template's own ids (`render.py`),
the tool-call formats models emit (`tool_calls.py`) and the calculator (`calculator.py`). The episode loop
that drives them through an engine is `rlreason/rollout/episodes.py`."""
