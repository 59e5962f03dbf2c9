"""Metric sinks: JSONL (one object per step), TensorBoard, the console, and the trackers (W&B, MLflow:
`trackers.py`).

The console sink owns the terminal: one rich line per step with reward, accuracy, tokens/s and ETA.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

log = logging.getLogger(__name__)


class JSONLSink:
    def __init__(self, path: Path, keep_through_step: int | None = None):
        """Open `path` for appending. With `keep_through_step` (a resume), lines of later steps are
        moved to `<name>.discarded.jsonl` first, since those steps are about to be run again."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if keep_through_step is not None and self.path.exists():
            kept, dropped = [], []
            for line in self.path.read_text().splitlines():
                if not line.strip():
                    continue
                try:
                    step = json.loads(line).get("step", 0)
                except json.JSONDecodeError:  # a line cut by the kill
                    dropped.append(line)
                    continue
                (kept if step <= keep_through_step else dropped).append(line)
            if dropped:
                with open(self.path.with_suffix(".discarded.jsonl"), "a") as f:
                    f.write("\n".join(dropped) + "\n")
            self.path.write_text("".join(line + "\n" for line in kept))
        self._f = open(self.path, "a", buffering=1)

    def log(self, metrics: dict) -> None:
        self._f.write(json.dumps(metrics, default=float) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


class TensorBoardSink:
    def __init__(self, logdir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(logdir))

    def log(self, metrics: dict) -> None:
        step = int(metrics.get("step", 0))
        for k, v in metrics.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class ConsoleSink:
    def __init__(self, total_steps: int, start_step: int = 0):
        from rich.console import Console

        self.console = Console(highlight=False)
        self.total = total_steps
        self.start_step = start_step
        self.t0 = time.monotonic()

    def log(self, m: dict) -> None:
        step = m.get("step", 0)
        if "accuracy/eval" in m:
            self.console.print(eval_line(m), soft_wrap=True)
        if "reward/mean" not in m:  # eval-only record
            return
        done = step - self.start_step
        elapsed = time.monotonic() - self.t0
        eta = elapsed / max(done, 1) * (self.total - step)
        parts = [
            f"[bold]step {step:>4}/{self.total}[/]",
            f"reward [green]{m['reward/mean']:.3f}[/]",
            f"acc [green]{m.get('accuracy/train', float('nan')):.3f}[/]",
        ]
        parts += [
            f"len {m.get('response_length/mean', 0):.1f}",
            f"{m.get('throughput/rollout_tokens_per_s', 0):,.0f} tok/s",
            f"{m.get('timing/step_s', 0):.2f}s/step",
            f"ETA {int(eta) // 60}:{int(eta) % 60:02d}",
        ]
        # a verifier failing quietly scores 0 and looks like a hard task: show it whenever it happens
        for key, name in (("verifier/error_rate", "verifier errors"), ("verifier/timeout_rate", "verifier timeouts")):
            if m.get(key):
                parts.append(f"[red]{name} {m[key]:.0%}[/]")
        self.console.print(" | ".join(parts), soft_wrap=True)

    def close(self) -> None:
        pass


def eval_line(m: dict) -> str:
    """One console line per evaluation: greedy, sampled pass@1 and pass@k, each with its binomial std,
    then the categories."""
    def one(key: str, name: str) -> str | None:
        if key not in m:
            return None
        std = m.get({"accuracy/eval": "eval/binomial_std", "accuracy/eval_sampled": "eval/binomial_std_sampled"}.get(key, ""))
        return f"{name} [cyan]{m[key]:.3f}[/]" + (f" ±{std:.3f}" if std is not None else "")

    k = m.get("eval/k")
    metrics = (("accuracy/eval", "greedy"), ("accuracy/eval_sampled", "pass@1"), ("accuracy/eval_pass_at_k", f"pass@{k}"))
    parts = [p for p in (one(key, name) for key, name in metrics) if p]
    cats = sorted({key.rsplit("/", 1)[1] for key in m if key.startswith("accuracy/eval/")})
    for c in cats:
        shown = "/".join(f"{m[f'{key}/{c}']:.2f}" for key, _ in metrics if f"{key}/{c}" in m)  # greedy/pass@1/pass@k
        parts.append(f"{c} {shown}")
    return f"[bold]eval[/] step {m.get('step', 0)}: " + " | ".join(parts)


class Telemetry:
    def __init__(self, sinks: list):
        self.sinks = sinks

    def log(self, metrics: dict) -> None:
        for s in self.sinks:
            try:
                s.log(metrics)
            except Exception:  # noqa: BLE001 - a broken sink must not stop training
                log.exception("metric sink %s failed", type(s).__name__)

    def close(self) -> None:
        for s in self.sinks:
            s.close()


def run_telemetry(cfg, run_dir: Path, start_step: int) -> Telemetry:
    """A run's sinks: metrics.jsonl always (a resumed run keeps the lines through its checkpoint's
    step), TensorBoard, the console, W&B and MLflow as `telemetry.*` asks."""
    tel, run_dir = cfg.telemetry, Path(run_dir)
    sinks = [JSONLSink(run_dir / "metrics.jsonl", keep_through_step=start_step if cfg.resume else None)]
    if tel.tensorboard:
        sinks.append(TensorBoardSink(run_dir / "tensorboard"))
    if tel.console:
        sinks.append(ConsoleSink(cfg.total_steps, start_step))
    if tel.wandb or tel.mlflow:
        import dataclasses

        from rlreason.telemetry.trackers import MLflowSink, WandbSink

        config = dataclasses.asdict(cfg)
        tags = _choices(run_dir)
        sinks += [sink(tel, config, run_dir, tags) for flag, sink in (("wandb", WandbSink), ("mlflow", MLflowSink))
                  if getattr(tel, flag)]
    return Telemetry(sinks)


def _choices(run_dir: Path) -> dict:
    """The run's config-group choices (choices.yaml), the trackers' tags."""
    import yaml

    path = run_dir / "choices.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}
