"""Tasks, tokenizers and prompt samplers."""
