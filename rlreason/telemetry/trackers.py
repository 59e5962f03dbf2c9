"""Experiment trackers: Weights & Biases (`telemetry.wandb=true`) and MLflow (`telemetry.mlflow=true`),
through their own packages (the optional extra ``rlreason[track]``; `make install` installs it).

Each is a metric sink like metrics.jsonl: every record the run logs (train steps and evaluations) goes
to it under the same names, at its `step`. A run is named after its run directory and tagged with its
config-group choices (recipe, algo, curriculum, ...); the full config goes with it (W&B: the nested
config; MLflow: flattened parameters). A resumed run continues the same tracker run:
- W&B: the run id is derived from the run directory, ``resume="allow"``. W&B keeps the first value it
  received for a step, so steps run again after a resume keep their first logging (on the HF engine a
  resume reproduces them bit for bit).
- MLflow: the run tagged with the run directory's path is found again and logging continues.

W&B's mode is `telemetry.wandb_mode` (online | offline: no network; ``wandb sync <run_dir>/wandb/...``
uploads it later). MLflow logs to `telemetry.mlflow_uri`, by default ``sqlite:///mlruns.db`` in the
working directory (MLflow 3 has put the plain-file store into maintenance mode; one database holds every
run started from that directory, as ./mlruns did), or to a tracking server's URI.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from pathlib import Path

from rlreason import flat_keys

log = logging.getLogger(__name__)
RUN_DIR_TAG = "rlreason.run_dir"


def _scalars(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items() if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v)}


class WandbSink:
    def __init__(self, tel, config: dict, run_dir: Path, tags: dict):
        import wandb

        run_dir = Path(run_dir).resolve()
        self.run = wandb.init(
            project=tel.wandb_project, entity=tel.wandb_entity, name=run_dir.name, dir=str(run_dir), mode=tel.wandb_mode,
            config=config, tags=[f"{k}={v}" for k, v in tags.items() if v] + list(tel.wandb_tags),
            id=hashlib.sha1(str(run_dir).encode()).hexdigest()[:16], resume="allow", reinit="create_new",
        )
        log.info("W&B run %s (%s mode) in %s", self.run.id, tel.wandb_mode, run_dir / "wandb")

    def log(self, metrics: dict) -> None:
        self.run.log(_scalars(metrics), step=int(metrics.get("step", 0)))

    def close(self) -> None:
        self.run.finish()


class MLflowSink:
    MAX_PARAM_LEN = 500  # MLflow's limit on a parameter's value

    def __init__(self, tel, config: dict, run_dir: Path, tags: dict):
        from mlflow import MlflowClient
        from mlflow.entities import Param

        run_dir = Path(run_dir).resolve()
        uri = tel.mlflow_uri or f"sqlite:///{Path.cwd() / 'mlruns.db'}"
        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(tel.mlflow_experiment)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(tel.mlflow_experiment)
        found = self.client.search_runs([exp_id], filter_string=f"tags.`{RUN_DIR_TAG}` = '{run_dir}'", max_results=1)
        if found:  # a resume: continue the same MLflow run
            self.run_id = found[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            run = self.client.create_run(exp_id, run_name=run_dir.name,
                                         tags={RUN_DIR_TAG: str(run_dir), **{k: str(v) for k, v in tags.items() if v}})
            self.run_id = run.info.run_id
            params = [Param(k, str(v)[: self.MAX_PARAM_LEN]) for k, v in flat_keys(config).items()]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters a call
                self.client.log_batch(self.run_id, params=params[i:i + 100])
        log.info("MLflow run %s in %s (experiment %s)", self.run_id, uri, tel.mlflow_experiment)

    def log(self, metrics: dict) -> None:
        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), int(metrics.get("step", 0))
        batch = [Metric(k, v, now, step) for k, v in _scalars(metrics).items()]
        for i in range(0, len(batch), 1000):  # MLflow takes at most 1000 metrics a call
            self.client.log_batch(self.run_id, metrics=batch[i:i + 1000])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)
