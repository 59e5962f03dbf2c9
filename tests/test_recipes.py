"""Every recipe composes, validates and trains a learner step; the recipes whose options reach the
trainer's loop run end to end (smoke scale, one multirun); the report turns the sweep into a table and a plot."""

import math
from pathlib import Path

import pytest
from conftest import ROOT, read_metrics, run_cli

pytestmark = pytest.mark.integration

RECIPES = sorted(p.stem for p in (ROOT / "recipes" / "recipe").glob("*.yaml"))
# End to end here (each run costs 25-45 s of CI): dapo (refill, filtering and overlong shaping in the
# trainer's loop, and the sweep the report reads), the composed algo=tempo curriculum=knapsack moe=r3 (R3's
# recorded routes; recipe=moe_r3 is exactly algo=grpo moe=r3, test_config_groups.py) and a user estimator.
# Elsewhere: grpo (test_cli's smoke run), knapsack and sec (test_curriculum_runs: resume), the length budget
# and balanced filtering (the batch builder's unit tests in test_orchestrator.py). The other recipes change
# only what the learner computes (estimator, loss, replay of its own routes), which
# `test_every_recipe_composes_and_trains_a_learner_step` runs on a real rollout batch.
END_TO_END = ["dapo"]
COMPOSED = ["algo=tempo", "curriculum=knapsack", "moe=r3"]


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_composes_and_trains_a_learner_step(recipe, tiny_policy, rollout):
    from rlreason.learner.learner import Learner
    from rlreason.run import compose

    _, batch = rollout
    cfg, choices = compose([f"recipe={recipe}", "scale=smoke"])
    assert choices["recipe"] == recipe
    learner = Learner(tiny_policy, cfg.learner, cfg.algo, cfg.rollout.temperature, 12, cfg.seed, moe_cfg=cfg.moe)
    m = learner.train_step(batch)
    assert math.isfinite(m["loss/policy"]) and m["grad_norm"] > 0, m
    if recipe == "d3s":  # down-sampled: some samples and tokens left out of the loss
        assert m["d3s/sample_share"] < 1.0 and m["loss/token_frac"] < 1.0
    if recipe in ("moe_r2", "moe_r3"):  # replayed passes used exactly the replayed experts
        assert m["moe/replay_vs_used/mismatch_rate"] == 0.0
    if recipe == "moe_r3":  # ... which are the rollout engine's
        assert m["moe/rollout_vs_used/mismatch_rate"] == 0.0


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """One `run.py -m` over the end-to-end recipes, then a run with a user estimator loaded by import path
    from a module outside the package (the working directory is the team's checkout, not the framework's)."""
    team = tmp_path_factory.mktemp("team")
    (team / "team_estimators.py").write_text(
        "import torch\n"
        "from rlreason.algos import Estimate\n"
        "def sign_only(batch, cfg, learner_tensors):\n"
        "    centred = batch.rewards - batch.rewards.mean()\n"
        "    adv = torch.where(centred >= 0, 0.375, -0.375)[:, None] * batch.response_mask\n"
        "    return Estimate(adv, metrics={'team/abs_sum': float(adv.abs().sum()), 'team/tokens': float(batch.response_mask.sum())})\n"
    )
    sweep_dir = tmp_path_factory.mktemp("sweep")
    proc = run_cli(["-m", f"recipe={','.join(END_TO_END)}", "scale=smoke", f"sweep_dir={sweep_dir}", "telemetry.tensorboard=false",
                    "total_steps=2", "rollout.prompts_per_step=2"], timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    proc = run_cli(["algo.estimator=team_estimators:sign_only", "scale=smoke", f"run_dir={sweep_dir / 'user'}",
                    "telemetry.tensorboard=false", "total_steps=1"], cwd=team, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    proc = run_cli([*COMPOSED, "scale=smoke", f"run_dir={sweep_dir / 'composed'}", "telemetry.tensorboard=false", "total_steps=2",
                    "rollout.prompts_per_step=2"], timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return sweep_dir


@pytest.mark.parametrize("recipe", END_TO_END)
def test_recipe_runs_end_to_end(sweep, recipe):
    steps = [m for m in read_metrics(sweep / f"recipe={recipe}") if "loss/policy" in m]
    assert [m["step"] for m in steps] == [1, 2]
    for m in steps:
        assert m["loss/policy"] == m["loss/policy"]  # not NaN
        assert m["rollout/tokens_total"] > 0
    if recipe == "dapo":
        assert "curriculum/kept_frac" in steps[0]
    for m in steps:  # every recipe trains the default MoE: router health is logged
        assert m["moe/load/max_over_mean"] >= 1 and "moe/rollout_vs_live/mismatch_rate" in m


def test_composed_groups_run_end_to_end(sweep):
    """algo=tempo curriculum=knapsack moe=r3: TEMPO's advantages, knapsack's allocation, R3's replay, in one run."""
    import yaml

    assert yaml.safe_load((sweep / "composed" / "choices.yaml").read_text())["algo"] == "tempo"
    steps = [m for m in read_metrics(sweep / "composed") if "loss/policy" in m]
    assert [m["step"] for m in steps] == [1, 2]
    for m in steps:
        assert any(k.startswith("curriculum/alloc_n") for k in m) and m["curriculum/prompts_tracked"] >= 2  # knapsack
        # replayed passes used exactly the rollout engine's experts (R3)
        assert m["moe/replay_vs_used/mismatch_rate"] == 0.0 and m["moe/rollout_vs_used/mismatch_rate"] == 0.0
    config = yaml.safe_load((sweep / "composed" / "config.yaml").read_text())
    assert config["algo"]["estimator"] == "tempo"


def test_user_estimator_from_outside_the_package(sweep):
    """The learner's advantages are the user function's: |A| = 0.375 on every token (GRPO's would vary, and
    be 0 for a group whose rewards are all equal), and the user's own metrics arrive with the step."""
    steps = [m for m in read_metrics(sweep / "user") if "loss/policy" in m]
    assert len(steps) == 1
    m = steps[0]
    assert m["team/tokens"] > 0 and m["team/abs_sum"] == pytest.approx(0.375 * m["team/tokens"])
    assert m["advantage/abs_mean"] == pytest.approx(0.375, abs=1e-6)


def test_multirun_skips_finished_jobs_and_refuses_run_dir(sweep):
    proc = run_cli(["-m", "recipe=dapo", "scale=smoke", f"sweep_dir={sweep}", "telemetry.tensorboard=false", "total_steps=2",
                    "rollout.prompts_per_step=2"], timeout=120)
    assert proc.returncode == 0 and "already finished, skipped" in proc.stdout
    proc = run_cli(["-m", "recipe=grpo,tempo", "run_dir=/tmp/x"], timeout=60)
    assert proc.returncode == 2 and "cannot be given with -m" in proc.stderr
    proc = run_cli(["-m", "recipe=grpo,tempoo"], timeout=60)
    assert proc.returncode == 2 and "tempoo" in proc.stderr


def test_report_writes_table_and_plot(sweep):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "rlreason.report", str(sweep), "--target", "0.5"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    table = (sweep / "report.md").read_text()
    for recipe in END_TO_END:
        assert f"| {recipe} " in table or f"| {recipe} (" in table
    assert "team_estimators:sign_only" in table  # labelled by what differs: the estimator
    png = (sweep / "eval_vs_tokens.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
