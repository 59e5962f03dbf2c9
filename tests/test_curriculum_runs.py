"""Curricula in real runs: resume restores their state exactly; GSM8K loads from a local folder."""

import shutil

import pytest
from conftest import read_metrics, run_cli
from test_curricula import gsm8k_dir

pytestmark = pytest.mark.integration

BASE = ["scale=smoke", "total_steps=4", "checkpoint_every=2", "keep_checkpoints=5", "eval_every=0", "telemetry.tensorboard=false",
        "rollout.prompts_per_step=4"]


@pytest.mark.parametrize("recipe", ["sec", "knapsack"])
def test_resume_restores_curriculum_state_exactly(tmp_path, recipe):
    import json

    full = tmp_path / "full"
    proc = run_cli([f"recipe={recipe}", *BASE, f"run_dir={full}"], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # a copy that "crashed" right after its step-2 checkpoint: later checkpoints and the summary are gone
    crashed = tmp_path / "crashed"
    shutil.copytree(full, crashed)
    shutil.rmtree(crashed / "checkpoints" / "step_000004")
    (crashed / "summary.json").unlink()
    saved = json.loads((crashed / "checkpoints" / "step_000002" / "trainer.json").read_text())["curriculum"]
    assert saved["sampler"]["position"] >= 0 and ("q" in saved or "rates" in saved)
    proc = run_cli([f"recipe={recipe}", *BASE, f"run_dir={crashed}", "resume=true"], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = {m["step"]: m for m in read_metrics(full) if "loss/policy" in m}
    b = {m["step"]: m for m in read_metrics(crashed) if "loss/policy" in m}
    assert sorted(b) == [1, 2, 3, 4]
    for step in (3, 4):  # the same prompts, the same allocation / arm values as the uninterrupted run
        keys = [k for k in a[step] if k.startswith("curriculum/") or k in ("reward/mean", "loss/policy")]
        assert {k: b[step][k] for k in keys} == {k: a[step][k] for k in keys}, step
    end_a = json.loads((full / "checkpoints" / "step_000004" / "trainer.json").read_text())["curriculum"]
    end_b = json.loads((crashed / "checkpoints" / "step_000004" / "trainer.json").read_text())["curriculum"]
    assert end_a == end_b


def test_gsm8k_task_runs_from_a_local_folder(tmp_path):
    run_dir = tmp_path / "gsm8k"
    proc = run_cli(["recipe=grpo", "task=gsm8k", f"task.path={gsm8k_dir()}", "scale=smoke", "warmstart.enabled=false",
                    "model.max_position_embeddings=1024", "task.num_train=8", "task.num_eval=4", "total_steps=1",
                    "rollout.prompts_per_step=2", "telemetry.tensorboard=false", f"run_dir={run_dir}"], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = [m for m in read_metrics(run_dir) if "loss/policy" in m]
    assert len(steps) == 1 and steps[0]["rollout/tokens_total"] > 0
    proc = run_cli(["recipe=grpo", "task=gsm8k", f"task.path={tmp_path / 'nowhere'}", "scale=smoke", f"run_dir={tmp_path / 'x'}"],
                   timeout=120)
    assert proc.returncode == 2 and "train.jsonl" in proc.stderr and "Traceback" not in proc.stderr


def test_engines_honour_per_prompt_sample_counts(tiny_policy):
    import torch

    from rlreason.rollout.worker import RolloutWorker

    worker = RolloutWorker("hf", tiny_policy, threads=2)
    batch, texts = worker.generate(["1+2=", "3+4=", "5-1="], 10, [1, 3, 2], 8, 1.0, 1.0, seed=0)
    assert batch.group_index.tolist() == [10, 11, 11, 11, 12, 12] and len(texts) == 6
    assert torch.equal(batch.prompt_ids[1], batch.prompt_ids[3]) and not torch.equal(batch.prompt_ids[0], batch.prompt_ids[1])
    with pytest.raises(ValueError, match="one sample count"):
        worker.generate(["1+2=", "3+4="], 0, [2], 8, 1.0, 1.0, seed=0)
