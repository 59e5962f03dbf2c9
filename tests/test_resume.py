"""Kill a run while it writes a checkpoint, resume it: step counter, data position and metrics continue
exactly as in the uninterrupted run."""

import json
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


def test_ctrl_c_stops_after_the_step_with_a_checkpoint_and_a_bare_resume_continues_the_same_run(tmp_path):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) finishes the step, checkpoints
    and prints the resume command; that command alone (no recipe, no steps) continues the run with its
    saved config: drgrpo for 5 steps, not the default grpo for 100, and config.yaml is left as written."""
    run_dir = tmp_path / "run"
    args = ["recipe=drgrpo", "scale=smoke", "total_steps=5", "checkpoint_every=0", "eval_every=0", "telemetry.tensorboard=false",
            f"run_dir={run_dir}"]
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "rlreason" / "run.py"), *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 400
    try:
        while not any("reward/mean" in m for m in (read_metrics(run_dir) if (run_dir / "metrics.jsonl").exists() else [])):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no training step in time"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert f"Resume with: python rlreason/run.py run_dir='{run_dir}' resume=true" in err
    stopped = [m["step"] for m in read_metrics(run_dir) if "reward/mean" in m]
    assert stopped and max(stopped) < 5 and (run_dir / "checkpoints" / f"step_{max(stopped):06d}" / "trainer.json").exists()
    config_before = (run_dir / "config.yaml").read_text()

    refused = run_cli([f"run_dir={run_dir}", "resume=true", "algo.kl_coef=0.5"])
    assert refused.returncode == 2 and "algo.kl_coef=0.5 (the run used 0.0)" in refused.stderr, refused.stderr[-2000:]

    resumed = run_cli([f"run_dir={run_dir}", "resume=true", "telemetry.console=false"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming recipe=drgrpo" in resumed.stdout and "5 steps" in resumed.stdout, resumed.stdout
    steps = [m["step"] for m in read_metrics(run_dir) if "reward/mean" in m]
    assert steps == [1, 2, 3, 4, 5]  # each step logged once, and the run ended where it was meant to
    assert (run_dir / "config.yaml").read_text() == config_before  # the history is kept, not overwritten
    history = [json.loads(line) for line in (run_dir / "resumes.jsonl").read_text().splitlines()]
    assert history[-1]["changed"] == {"telemetry.console": [True, False]}
