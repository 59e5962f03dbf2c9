"""Kill a run after its first checkpoint, resume it: step counter and data position continue."""

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, VENV_BIN, read_metrics, run_cli

from rlreason.data.sampler import PromptSampler, indices_digest

pytestmark = pytest.mark.integration

ARGS = ["recipe=grpo", "scale=smoke", "total_steps=30", "checkpoint_every=3", "eval_every=0", "telemetry.tensorboard=false"]


def test_kill_after_checkpoint_then_resume(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    # its own process group, so the kill takes the local Ray cluster down with it, like a lost node
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "rlreason" / "run.py"), *ARGS, f"run_dir={run_dir}"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    ckpt = run_dir / "checkpoints" / "step_000003" / "trainer.json"
    deadline = time.monotonic() + 400
    try:
        while not ckpt.exists():
            assert proc.poll() is None, "run ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    killed = read_metrics(run_dir)
    last_killed = max(m["step"] for m in killed)
    assert last_killed < 30, "the run finished before it was killed"
    latest = sorted(p.name for p in (run_dir / "checkpoints").glob("step_*"))[-1]
    resumed_from = int(latest.split("_")[1])

    proc = run_cli([*ARGS, f"run_dir={run_dir}", "resume=true"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = [m for m in read_metrics(run_dir) if "reward/mean" in m]
    # every step exactly once, in order: those after the checkpoint were run again, not duplicated
    assert [m["step"] for m in steps] == list(range(1, 31))

    # the data position continues where the checkpoint left it: the same prompts, in the same order,
    # as an uninterrupted sampler would have drawn
    sampler = PromptSampler(2000, 4, seed=0)
    for m in steps:
        digest = indices_digest(sampler.next_batch())
        assert m["curriculum/batch_digest"] == digest, m["step"]
        assert m["curriculum/consumed"] == sampler.consumed
    assert resumed_from >= 3
    assert f"resumed from {run_dir / 'checkpoints' / latest}: step {resumed_from}" in proc.stderr


EXACT = ["recipe=grpo", "scale=smoke", "total_steps=6", "checkpoint_every=2", "eval_every=0", "telemetry.tensorboard=false",
         "reward.format_weight=0.5", "learner.lr=1e-2"]
# every metric that depends on the data, the sampled tokens or the weights (timings do not)
DETERMINISTIC = ("reward/mean", "accuracy/train", "loss/total", "loss/policy", "grad_norm", "entropy/mean",
                 "kl/rollout_vs_train", "response_length/mean", "curriculum/batch_digest", "rollout/tokens_total")


def test_kill_during_a_checkpoint_write_then_resume_reproduces_the_uninterrupted_run(tmp_path):
    reference = run_cli([*EXACT, f"run_dir={tmp_path / 'ref'}"])
    assert reference.returncode == 0, reference.stderr[-3000:]
    want = {m["step"]: m for m in read_metrics(tmp_path / "ref") if "reward/mean" in m}
    assert any(want[s]["grad_norm"] > 0 for s in want)  # the weights move, so resuming them wrongly would show

    run_dir = tmp_path / "run"
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", "RLREASON_FAULT_CHECKPOINT_DELAY_S": "120"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "rlreason" / "run.py"), *EXACT, f"run_dir={run_dir}"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ckpts = run_dir / "checkpoints"
    partial = ckpts / ".step_000004.tmp"
    deadline = time.monotonic() + 400
    try:  # the step-4 checkpoint is half written: the learner's files are there, trainer.json is not
        while not (partial / "learner.pt").exists():
            assert proc.poll() is None, "run ended before its second checkpoint"
            assert time.monotonic() < deadline, "no checkpoint write in time"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert sorted(p.name for p in ckpts.iterdir()) == [".step_000004.tmp", "step_000002"]

    resumed = run_cli([*EXACT, f"run_dir={run_dir}", "resume=true"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {ckpts / 'step_000002'}: step 2" in resumed.stderr
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_000004", "step_000006"]  # the partial write is gone
    got = {m["step"]: m for m in read_metrics(run_dir) if "reward/mean" in m}
    assert sorted(got) == [1, 2, 3, 4, 5, 6]
    for step in (3, 4, 5, 6):  # the steps after the checkpoint, run again: bit for bit the uninterrupted run's
        for key in DETERMINISTIC:
            assert got[step][key] == want[step][key], (step, key, got[step][key], want[step][key])
