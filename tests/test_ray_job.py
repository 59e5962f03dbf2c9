"""`ray job submit --working-dir . -- python rlreason/run.py recipe=grpo ...` against a real `ray start --head`:
2 rollout workers and 2 DeepSpeed learner ranks, in one placement group."""

import os
import shutil
import socket
import subprocess
import tempfile

import pytest
from conftest import ROOT, VENV_BIN, read_metrics

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_job_submit_two_rollout_workers_two_deepspeed_learners(tmp_path):
    ray = str(VENV_BIN / "ray")
    # a throw-away local cluster: no token auth (Ray 2.60's `ray start` enables it by default)
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    gcs_port, dash_port = _free_port(), _free_port()
    temp = tempfile.mkdtemp(prefix="rlr-ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    subprocess.run(
        [ray, "start", "--head", f"--port={gcs_port}", "--num-cpus=4", "--include-dashboard=true",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash_port}", f"--temp-dir={temp}", "--disable-usage-stats"],
        env=env, check=True, capture_output=True, text=True, timeout=180,
    )
    run_dir = tmp_path / "job_run"
    try:
        proc = subprocess.run(
            [ray, "job", "submit", f"--address=http://127.0.0.1:{dash_port}", "--working-dir", ".", "--",
             "python", "rlreason/run.py", "recipe=grpo", "scale=smoke", f"run_dir={run_dir}", "telemetry.tensorboard=false",
             "rollout.num_workers=2", "learner.strategy=deepspeed", "learner.num_workers=2", "ray.placement=pack",
             "reward.format_weight=0.5"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "succeeded" in proc.stdout
        assert f"run_dir: {run_dir}" in proc.stdout
        # the job joined the running cluster instead of starting its own
        assert "Connecting to existing Ray cluster" in proc.stdout + proc.stderr
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)
    steps = [m for m in read_metrics(run_dir) if "reward/mean" in m]
    assert [m["step"] for m in steps] == [1, 2]
    assert all(m["learner/version"] == m["step"] for m in steps)
    # each learner rank wrote its own ZeRO partition of the optimizer state
    state = run_dir / "checkpoints" / "step_000002" / "deepspeed" / "state"
    assert sorted(p.name for p in state.glob("zero_pp_rank_*_optim_states.pt")) == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
