"""Learner: the Learner actor (plain torch, AdamW), the shared forward pass, the TRL warm start."""
