"""Kill a run while it writes a checkpoint, resume it: step counter, data position and metrics continue
exactly as in the uninterrupted run."""

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, VENV_BIN, read_metrics, run_cli

from rlreason.data.sampler import PromptSampler, indices_digest

pytestmark = pytest.mark.integration

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
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", "RLREASON_FAULT_CHECKPOINT_DELAY_S": "120",
           "RLREASON_FAULT_CHECKPOINT_DELAY_STEP": "4"}  # step 2's checkpoint completes at once
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
    # and the data position is the one a fresh sampler reaches: the same prompts, in the same order
    sampler = PromptSampler(2000, 4, seed=0)
    for step in range(1, 7):
        assert got[step]["curriculum/batch_digest"] == indices_digest(sampler.next_batch()), step
        assert got[step]["curriculum/consumed"] == sampler.consumed
