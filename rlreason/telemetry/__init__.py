"""Metric sinks: JSONL, TensorBoard, console."""
