"""The experiment trackers through their own packages, offline: W&B in offline mode (its run file read
back record by record) and MLflow on a local SQLite store (read back through its client)."""

import glob
import struct
from pathlib import Path

import pytest

from rlreason.run import compose
from rlreason.run_dir import write_start
from rlreason.telemetry.sinks import run_telemetry

RECORDS = [{"step": 0, "accuracy/eval": 0.5}, {"step": 1, "reward/mean": 0.25, "loss/total": float("nan")},
           {"step": 2, "reward/mean": 0.5, "accuracy/eval": 0.75, "learner/skipped": True}]


def wandb_records(run_dir: Path) -> list:
    """The records of a W&B offline run file, once its `exit` record is written (W&B's core process
    writes the file; `finish` may return a moment before the last block lands)."""
    import time

    for _ in range(50):
        (path,) = glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb"))
        records = _parse_run_file(Path(path).read_bytes())
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            break
        time.sleep(0.2)
    return records


def _parse_run_file(data: bytes) -> list:
    """A 7-byte header, then 32 KiB blocks of records framed as (crc32 u32, length u16, type u8: 1 full,
    2 first, 3 middle, 4 last) + payload, each a `Record` proto."""
    from wandb.proto import wandb_internal_pb2 as pb

    pos, out, cur = 7, [], b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        cur += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(cur)
            out.append(rec)
            cur = b""
    return out


def _run(tmp_path, *overrides, resume=False):
    run_dir = tmp_path / "run"
    argv = ["recipe=drgrpo", "scale=smoke", "telemetry.console=false", "telemetry.tensorboard=false", f"run_dir={run_dir}",
            *overrides]
    cfg, choices = compose(argv)
    if not resume:
        run_dir.mkdir()
        write_start(run_dir, cfg, choices, argv)
    cfg.resume = resume
    return cfg, run_dir


def test_wandb_offline_run_has_every_step_the_config_and_the_choices_as_tags(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg, run_dir = _run(tmp_path, "telemetry.wandb=true", "telemetry.wandb_mode=offline", "telemetry.wandb_tags=[lab]")
    tel = run_telemetry(cfg, run_dir, 0)
    for rec in RECORDS:
        tel.log(rec)
    tel.close()
    records = wandb_records(run_dir)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.display_name == "run" and run.project == "rlreason"
    assert {"recipe=drgrpo", "algo=drgrpo", "scale=smoke", "lab"} <= set(run.tags)
    config = {i.key or "/".join(i.nested_key): i.value_json for i in run.config.update}
    assert '"drgrpo"' in config["algo"] and config["total_steps"] == "2"
    history = [{i.key or "/".join(i.nested_key): i.value_json for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    assert [(h["_step"], h.get("reward/mean"), h.get("accuracy/eval")) for h in history] == [
        ("0", None, "0.5"), ("1", "0.25", None), ("2", "0.5", "0.75")]
    assert all("loss/total" not in h and "learner/skipped" not in h for h in history)  # NaN and booleans are not sent


def test_mlflow_run_has_params_tags_and_metrics_and_a_resume_continues_it(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg, run_dir = _run(tmp_path, "telemetry.mlflow=true", f"telemetry.mlflow_uri={uri}")
    tel = run_telemetry(cfg, run_dir, 0)
    for rec in RECORDS[:2]:
        tel.log(rec)
    tel.close()
    cfg, _ = _run(tmp_path, "telemetry.mlflow=true", f"telemetry.mlflow_uri={uri}", resume=True)
    tel = run_telemetry(cfg, run_dir, 1)  # resumed from the step-1 checkpoint
    tel.log(RECORDS[2])
    tel.close()

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("rlreason")
    (run,) = client.search_runs([exp.experiment_id])  # one run, resumed, not two
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert run.data.tags["recipe"] == "drgrpo" and run.data.tags["rlreason.run_dir"] == str(run_dir.resolve())
    assert run.data.params["algo.estimator"] == "drgrpo" and run.data.params["rollout.group_size"] == "4"
    reward = client.get_metric_history(run.info.run_id, "reward/mean")
    assert sorted((m.step, m.value) for m in reward) == [(1, 0.25), (2, 0.5)]
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "accuracy/eval")) == [0, 2]
    assert client.get_metric_history(run.info.run_id, "loss/total") == []  # NaN is not logged


def test_a_tracker_without_its_package_is_a_config_error(monkeypatch):
    import importlib.util

    from rlreason.run import UserError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(UserError, match=r"telemetry.wandb=true needs the wandb package: pip install 'rlreason\[track\]'"):
        compose(["telemetry.wandb=true"])
