"""Multi-turn environments and tools (issue 24, in progress): the environment interface, its registry
and the single-turn and calculator environments (`base.py`), the token-exact trajectory
(`trajectory.py`), observations as the chat template's own ids (`render.py`), the tool-call formats
models emit (`tool_calls.py`) and the calculator (`calculator.py`). Not wired into the rollout yet:
no `rollout.env` config key, no multi-turn loop in the workers, no loss mask in the learner."""
