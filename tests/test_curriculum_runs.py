"""Curricula in real runs: resume restores their state exactly; engines honour per-prompt sample counts."""

import shutil

import pytest
from conftest import read_metrics, run_cli

pytestmark = pytest.mark.integration

BASE = ["scale=smoke", "total_steps=3", "checkpoint_every=2", "keep_checkpoints=5", "eval_every=0", "telemetry.tensorboard=false",
        "rollout.prompts_per_step=4"]


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """Both curricula run 3 steps in one sweep (one shared Ray cluster); a copy of each run "crashes" right
    after its step-2 checkpoint (later checkpoints and the summary gone), and re-running the sweep resumes both."""
    full, crashed = tmp_path_factory.mktemp("full"), tmp_path_factory.mktemp("crashed")
    sweep = ["-m", "recipe=sec,knapsack", *BASE]
    proc = run_cli([*sweep, f"sweep_dir={full}"], timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for job in ("recipe=sec", "recipe=knapsack"):
        shutil.copytree(full / job, crashed / job)
        shutil.rmtree(crashed / job / "checkpoints" / "step_000003")
        (crashed / job / "summary.json").unlink()
    proc = run_cli([*sweep, f"sweep_dir={crashed}"], timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("resume=true") == 2  # the sweep resumed both unfinished runs
    return full, crashed


@pytest.mark.parametrize("recipe", ["sec", "knapsack"])
def test_resume_restores_curriculum_state_exactly(resumed, recipe):
    import json

    full, crashed = (d / f"recipe={recipe}" for d in resumed)
    saved = json.loads((crashed / "checkpoints" / "step_000002" / "trainer.json").read_text())["curriculum"]
    assert saved["sampler"]["position"] >= 0 and ("q" in saved or "rates" in saved)
    a = {m["step"]: m for m in read_metrics(full) if "loss/policy" in m}
    b = {m["step"]: m for m in read_metrics(crashed) if "loss/policy" in m}
    assert sorted(b) == [1, 2, 3]
    for step in (3,):  # the same prompts, the same allocation / arm values as the uninterrupted run
        keys = [k for k in a[step] if k.startswith("curriculum/") or k in ("reward/mean", "loss/policy")]
        assert {k: b[step][k] for k in keys} == {k: a[step][k] for k in keys}, step
    end_a = json.loads((full / "checkpoints" / "step_000003" / "trainer.json").read_text())["curriculum"]
    end_b = json.loads((crashed / "checkpoints" / "step_000003" / "trainer.json").read_text())["curriculum"]
    assert end_a == end_b


def test_engines_honour_per_prompt_sample_counts(tiny_policy):
    import torch

    from rlreason.rollout.worker import RolloutWorker

    worker = RolloutWorker("hf", tiny_policy, threads=2)
    batch, texts = worker.generate(["1+2=", "3+4=", "5-1="], 10, [1, 3, 2], 8, 1.0, 1.0, seed=0)
    assert batch.group_index.tolist() == [10, 11, 11, 11, 12, 12] and len(texts) == 6
    assert torch.equal(batch.prompt_ids[1], batch.prompt_ids[3]) and not torch.equal(batch.prompt_ids[0], batch.prompt_ids[1])
    with pytest.raises(ValueError, match="one sample count"):
        worker.generate(["1+2=", "3+4="], 0, [2], 8, 1.0, 1.0, seed=0)
