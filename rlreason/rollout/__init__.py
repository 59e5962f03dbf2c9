"""Rollout: the RolloutWorker actor and its engines (hf.py today; vLLM in the vLLM issue)."""
