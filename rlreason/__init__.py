"""rlreason: RL post-training for reasoning LLMs (GRPO and its variants on Ray)."""

# Environment for the driver and every actor: offline, quiet libraries.
QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_DEDUP_LOGS": "1",
}


def flat_keys(node, prefix: str = "") -> dict:
    """A nested dict as {"a.b.c": leaf}; an empty dict is a leaf of its own (so adding its first key shows)."""
    if isinstance(node, dict) and node:
        out = {}
        for k, v in node.items():
            out.update(flat_keys(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}
