"""The entry point as a user runs it: config errors, and end-to-end smoke runs of rlreason/run.py."""

from types import SimpleNamespace

import pytest
from conftest import ROOT, read_metrics, run_cli

REQUIRED_KEYS = {
    "step", "reward/mean", "reward/std", "accuracy/train", "response_length/mean", "loss/policy", "kl/ref",
    "kl/rollout_vs_train", "entropy/mean", "grad_norm", "timing/rollout_s", "timing/reward_s", "timing/train_s",
    "timing/sync_s", "timing/step_s", "throughput/rollout_tokens_per_s", "throughput/train_tokens_per_s",
    "verifier/timeout_rate", "verifier/error_rate",
}


def _one_paragraph_error(proc, stdout_ok=False):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    if not stdout_ok:
        assert "run_dir" not in proc.stdout  # failed before anything started
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.parametrize(
    "args,expect",
    [
        (["recipe=grpo", "algo.kl_coeff=0.1"], ["'algo.kl_coeff'", "Did you mean 'algo.kl_coef'", "clip_eps_low"]),
        (["recipe=grpo", "rollout.group_sise=4"], ["'rollout.group_sise'", "rollout.group_size"]),
        (["recipe=nope"], ["recipe='nope'", "grpo"]),
        (["recipe=grpo", "scale=huge"], ["scale='huge'", "smoke", "default"]),
        (["recipe=grpo", "algo.kl_coef=lots"], ["'algo.kl_coef'", "lots"]),
        (["recipe=grpo", "algo.loss_agg=sum"], ["algo.loss_agg='sum'", "token-mean", "seq-mean-token-sum-norm"]),
        (["recipe=grpo", "reward.verifier=maths"], ["reward.verifier", "maths", "math"]),
        (["recipe=grpo", "rollout.top_p=1.5"], ["rollout.top_p"]),
        (["recipe=grpo", "resume=true"], ["run_dir"]),
        (["grpo"], ["key=value"]),
        (["recipe=moe_r3", "moe.routing_replay=r4"], ["moe.routing_replay='r4'", "none", "r2", "r3"]),
        (["recipe=moe_r3", "rollout.engine=vllm"], ["moe.routing_replay=r3", "CUDA", "rollout.engine=hf"]),
        (["recipe=grpo", "model.arch=gpt_oss"], ["model.arch='gpt_oss'", "qwen3_moe", "mixtral", "olmoe"]),
        (["recipe=moe_r2", "model=smollm2"], ["moe.routing_replay=r2", "dense", "smollm2-moe"]),
        (["recipe=grpo", "moe.z_coef=-1"], ["moe.z_coef"]),
        (["recipe=grpo", "rollout.engine=vllm", "rollout.dtype=bf16"], ["rollout.dtype", "hf engine"]),
        (["recipe=grpo", "learner.num_workers=2"], ["learner.num_workers=2", "learner.strategy=deepspeed"]),
        (["recipe=grpo", "learner.strategy=fsdp"], ["learner.strategy='fsdp'", "single", "deepspeed"]),
        (["recipe=grpo", "learner.strategy=deepspeed", "learner.zero_stage=1"], ["learner.zero_stage=1", "2, 3"]),
        (["recipe=grpo", "model.lora.r=8", "learner.strategy=deepspeed", "learner.zero_stage=3"], ["model.lora.r", "zero_stage=2"]),
        (["recipe=grpo", "trainer.off_policy_steps=2"], ["trainer.off_policy_steps=2", "0, 1"]),
        (["recipe=grpo", "trainer.mode=overlap"], ["trainer.mode='overlap'", "sync", "async"]),
        (["recipe=grpo", "trainer.mode=async", "trainer.max_staleness=-1"], ["trainer.max_staleness=-1", ">= 0"]),
        (["recipe=grpo", "trainer.mode=async", "trainer.off_policy_steps=1"], ["trainer.off_policy_steps=1", "max_staleness=1"]),
        (["recipe=grpo", "rollout.partial=true"], ["rollout.partial=true", "trainer.mode=async"]),
        (["recipe=grpo", "ray.placement=cluster"], ["ray.placement='cluster'", "pack", "spread"]),
        (["recipe=grpo", "rollout.gpus=-2"], ["rollout.gpus=-2", "-1"]),
        (["recipe=grpo", "moe=sinkhorn", "moe.routing_replay=r3"], ["moe.router=sinkhorn", "r3", "r2"]),
        (["recipe=grpo", "moe=aux_free", "rollout.engine=vllm"], ["moe.balance=aux_free", "rollout.engine=hf"]),
        (["recipe=grpo", "moe=aux_free", "model=smollm2"], ["moe.balance=aux_free", "dense", "smollm2-moe"]),
        (["recipe=grpo", "moe=erc", "model.lora.r=8"], ["moe.erc_coef", "LoRA", "model.lora.r=0"]),
        (["recipe=grpo", "moe.balance=auxfree"], ["moe.balance='auxfree'", "aux_free"]),
        (["recipe=grpo", "moe=sinkhorn", "moe.sinkhorn_prob=2"], ["moe.sinkhorn_prob=2", "[0, 1]"]),
        (["recipe=grpo", "model.upcycle.method=drop"], ["model.upcycle.method=drop", "smollm2-moe"]),
        (["recipe=grpo", "model=smollm2-moe", "model.upcycle.drop_ratio=1.5"], ["model.upcycle.drop_ratio=1.5"]),
        (["recipe=grpo", "model.upcycle.warmup_steps=10"], ["model.upcycle.warmup_steps", "smollm2-moe"]),
        (["recipe=grpo", "model=smollm2-moe", "model.upcycle.warmup_lr=0"], ["model.upcycle.warmup_lr=0", "> 0"]),
    ],
)
def test_user_mistakes_give_one_paragraph(args, expect, capsys):
    """In-process through `run.main` (the CLI's own function; a subprocess per case cost 3-4 s of interpreter
    and import start-up each); `test_existing_run_dir_is_not_overwritten` takes the same path as a process."""
    from rlreason.run import main

    rc = main(args)
    out = capsys.readouterr()
    line = _one_paragraph_error(SimpleNamespace(returncode=rc, stdout=out.out, stderr=out.err))
    for fragment in expect:
        assert fragment in line, line


def test_existing_run_dir_is_not_overwritten(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    line = _one_paragraph_error(run_cli(["recipe=grpo", f"run_dir={tmp_path}"], timeout=120))
    assert "resume=true" in line and str(tmp_path) in line
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1}\n'


@pytest.mark.integration
def test_hanging_raising_attacking_and_infinite_verifiers_are_contained_and_reported(tmp_path):
    """Three verifiers: one that hangs or raises (accuracy), one that attacks the machine (writes beside the
    run, reads the run's files, forks 200 processes), one that returns +inf. The run finishes; no attack
    gets through (the sandbox); +inf is an error, not a reward; the failures' messages are in
    verifier_errors.jsonl and their rates on the console."""
    import json

    run_dir = tmp_path / "flaky"
    verifiers = ("[{name: 'tests.verifiers_fixture:flaky', accuracy: true}, "
                 f"{{name: 'tests.verifiers_fixture:attack', weight: 0.5, args: {{run_dir: '{run_dir}'}}}}, "
                 "{name: 'tests.verifiers_fixture:infinite', weight: 0.1}]")
    proc = run_cli(
        ["recipe=grpo", "scale=smoke", f"run_dir={run_dir}", f"reward.verifiers={verifiers}",
         "reward.timeout_s=1", "reward.num_workers=2", "eval_every=0", "task.num_eval=4", "eval_sampled=false",
         "telemetry.tensorboard=false"]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = [m for m in read_metrics(run_dir) if "reward/mean" in m]
    assert [m["step"] for m in steps] == [1, 2]
    assert sum(m["verifier/tests.verifiers_fixture:flaky/timeout_rate"] for m in steps) > 0
    assert sum(m["verifier/tests.verifiers_fixture:flaky/error_rate"] for m in steps) > 0
    for name in ("attack", "infinite"):  # every call failed, and scored 0
        assert all(m[f"verifier/tests.verifiers_fixture:{name}/error_rate"] == 1.0 for m in steps), name
        assert all(m[f"reward/tests.verifiers_fixture:{name}/mean"] == 0.0 for m in steps), name
    assert all(0.0 <= m["reward/mean"] <= 1.0 for m in steps)
    assert not (tmp_path / "pwned.txt").exists()
    errors = [json.loads(line) for line in (run_dir / "verifier_errors.jsonl").read_text().splitlines()]
    messages = " ".join(e["error"] for e in errors)
    for fragment in ("Read-only file system", "No such file", "non-finite score (inf)", "RuntimeError: verifier exploded"):
        assert fragment in messages, fragment
    assert all({"where", "verifier", "completion", "prompt"} <= e.keys() for e in errors)
    assert "verifier errors" in proc.stdout and "verifier timeouts" in proc.stdout  # the console line says so
    assert "failed on" in proc.stderr  # and warns: the attack and +inf verifiers fail on every call


@pytest.mark.integration
def test_nonfinite_losses_stop_the_run_with_a_message_and_keep_the_checkpoint(tmp_path):
    """A loss that turns NaN from step 3 on: step 3's update is skipped and logged, step 4's second
    skip in a row stops the run (exit 1, one clear line); step 2's checkpoint is left intact."""
    (tmp_path / "nan_estimator.py").write_text(
        "import torch\n"
        "from rlreason.algos.advantages import ESTIMATORS\n"
        "def late_nan(batch, cfg, lt):\n"
        "    adv = ESTIMATORS.get('grpo')(batch, cfg, lt)\n"
        "    return adv * float('nan') if lt['progress'] > 0.5 else adv\n"
    )
    run_dir = tmp_path / "run"
    proc = run_cli(["recipe=grpo", "scale=smoke", "total_steps=4", "algo.estimator=nan_estimator:late_nan",
                    "learner.max_nonfinite_updates=2", "telemetry.tensorboard=false", f"run_dir={run_dir}"], cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "training stopped at step 4" in proc.stderr and "2 updates in a row" in proc.stderr
    steps = {m["step"]: m for m in read_metrics(run_dir) if "train/skipped_updates" in m}
    assert sorted(steps) == [1, 2, 3] and steps[3]["train/skipped_updates"] == 1 and steps[2]["train/skipped_updates"] == 0
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_000002"]
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(run_dir / "checkpoints" / "step_000002" / "policy")  # loads


@pytest.mark.integration
def test_learner_death_stops_the_run_with_a_message_and_the_checkpoint_intact(tmp_path):
    """The learner process dies at step 3 (a user estimator exits it): exit 1, one line naming the
    last checkpoint and how to resume; step 2's checkpoint is complete."""
    (tmp_path / "dying_estimator.py").write_text(
        "import os\n"
        "from rlreason.algos.advantages import ESTIMATORS\n"
        "def dies_late(batch, cfg, lt):\n"
        "    if lt['progress'] > 0.5:\n"
        "        os._exit(1)\n"
        "    return ESTIMATORS.get('grpo')(batch, cfg, lt)\n"
    )
    run_dir = tmp_path / "run"
    proc = run_cli(["recipe=grpo", "scale=smoke", "total_steps=4", "algo.estimator=dying_estimator:dies_late",
                    "telemetry.tensorboard=false", f"run_dir={run_dir}"], cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    ckpt = run_dir / "checkpoints" / "step_000002"
    line = [x for x in proc.stderr.splitlines() if x.startswith("rlreason:")]
    assert len(line) == 1 and "training stopped at step 3" in line[0] and "learner actor died" in line[0], proc.stderr[-3000:]
    assert f"the last checkpoint is {ckpt}" in line[0] and "resume=true" in line[0]
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["step_000002"]
    assert {p.name for p in ckpt.iterdir()} == {"policy", "learner.pt", "trainer.json"}


@pytest.mark.integration
def test_lora_with_one_step_off_policy_runs_end_to_end(tmp_path):
    """LoRA adapters trained with generation one step ahead: the batch of step t >= 2 was sampled by
    the weights before step t-1's update, the learner sees that gap (kl/rollout_vs_train > 0) and the
    IS correction weighs it; checkpoints hold the adapters only."""
    run_dir = tmp_path / "run"
    proc = run_cli(["recipe=grpo", "scale=smoke", "total_steps=3", "model.lora.r=8", "learner.lr=2e-2", "trainer.off_policy_steps=1",
                    "algo.tis_mode=token", "reward.format_weight=0.5", "telemetry.tensorboard=false", f"run_dir={run_dir}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = {m["step"]: m for m in read_metrics(run_dir) if "reward/mean" in m}
    assert [steps[s]["rollout/weights_lag"] for s in (1, 2, 3)] == [0, 1, 1]
    assert steps[1]["kl/rollout_vs_train"] < 1e-9  # on-policy: the sampler's weights are the learner's
    moved = [s for s in (2, 3) if steps[s - 1]["grad_norm"] > 0]
    assert moved, "no update moved the adapters"
    for s in moved:
        assert steps[s]["kl/rollout_vs_train"] > 1e-9 and steps[s]["rollout_correction/weight_mean"] != 1.0
    assert [m["step"] for m in read_metrics(run_dir) if "curriculum/consumed" in m] == [1, 2, 3]
    assert [steps[s]["curriculum/consumed"] for s in (1, 2, 3)] == [4, 8, 12]
    ckpt = run_dir / "checkpoints" / "step_000003"
    assert {p.name for p in ckpt.iterdir()} == {"adapter", "learner.pt", "trainer.json"}
    assert (ckpt / "adapter" / "adapter_config.json").exists()


def _check_smoke_run(proc, run_dir) -> None:
    """What every smoke run (recipe=grpo scale=smoke) must leave behind."""
    assert f"run_dir: {run_dir}" in proc.stdout
    metrics = read_metrics(run_dir)
    steps = [m for m in metrics if "reward/mean" in m]
    assert [m["step"] for m in steps] == [1, 2]
    for m in steps:
        missing = REQUIRED_KEYS - set(m)
        assert not missing, missing
        assert m["verifier/timeout_rate"] == 0.0 and m["verifier/error_rate"] == 0.0
    assert "accuracy/eval" in metrics[0] and metrics[0]["step"] == 0
    assert "accuracy/eval" in steps[-1] and steps[-1]["timing/eval_s"] > 0
    for record in (metrics[0], steps[-1]):  # sampled pass@1 and pass@k (k = group size) beside greedy
        assert record["eval/k"] == 4
        assert 0 <= record["accuracy/eval_sampled"] <= record["accuracy/eval_pass_at_k"] <= 1
    assert (run_dir / "checkpoints" / "step_000002" / "policy" / "config.json").exists()
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert "held-out eval accuracy" in proc.stdout


def _docs_block(marker: str) -> str:
    text = (ROOT / "docs" / "verifiers.md").read_text()
    after = text.split(f"<!-- verifier-example: {marker} -->", 1)[1]
    return after.split("```", 2)[1].split("\n", 1)[1]


@pytest.mark.integration
def _check_trackers(run_dir, mlflow_uri, steps):
    """W&B (offline) and MLflow hold the run's step metrics, equal to metrics.jsonl's."""
    from mlflow import MlflowClient
    from test_trackers import wandb_records

    history = {int(h["_step"]): h for h in ({i.key or "/".join(i.nested_key): i.value_json for i in r.history.item}
                                            for r in wandb_records(run_dir) if r.WhichOneof("record_type") == "history")}
    client = MlflowClient(tracking_uri=mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("rlreason").experiment_id])
    logged = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "reward/mean")}
    for m in steps:
        assert float(history[m["step"]]["reward/mean"]) == pytest.approx(m["reward/mean"])
        assert logged[m["step"]] == pytest.approx(m["reward/mean"])
    assert "accuracy/eval" in history[0] and run.data.params["reward.verifiers"]


def test_smoke_run_with_the_docs_verifier_example_from_a_module_outside_the_package(tmp_path):
    """docs/verifiers.md's `my_team/verifiers.py` and command, run from a directory outside the checkout:
    a plain function, a class with args, an async and a batched verifier, weighted with `math`. It is also
    the suite's plain smoke run: every required metric, evaluations, checkpoint, TensorBoard, console, and
    W&B (offline) and MLflow (SQLite) holding the same step metrics."""
    import shlex

    (tmp_path / "my_team").mkdir()
    (tmp_path / "my_team" / "verifiers.py").write_text(_docs_block("module"))
    command = shlex.split(_docs_block("command").strip())
    assert command[:2] == ["python", "rlreason/run.py"] and "scale=smoke" in command
    run_dir = tmp_path / "run"
    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # and the trackers, offline, as a user would turn them on
    trackers = ["telemetry.wandb=true", "telemetry.wandb_mode=offline", "telemetry.mlflow=true", f"telemetry.mlflow_uri={mlflow_uri}"]
    proc = run_cli([*command[2:], *trackers, f"run_dir={run_dir}"], cwd=tmp_path, env={"WANDB_SILENT": "true"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_smoke_run(proc, run_dir)
    steps = [m for m in read_metrics(run_dir) if "reward/mean" in m]
    assert [m["step"] for m in steps] == [1, 2]
    _check_trackers(run_dir, mlflow_uri, steps)
    names = ["math", "my_team.verifiers:brevity", "my_team.verifiers:ShowsWork", "my_team.verifiers:judge",
             "my_team.verifiers:distinct"]
    weights = [1.0, 0.1, 0.2, 0.5, 0.1]
    for m in steps:
        assert m["verifier/timeout_rate"] == 0.0 and m["verifier/error_rate"] == 0.0
        means = [m[f"reward/{n}/mean"] for n in names]
        assert all(0.0 <= x <= 1.0 for x in means)
        assert m["reward/mean"] == pytest.approx(sum(w * x for w, x in zip(weights, means)), abs=1e-5)
        assert m["accuracy/train"] == m["reward/math/mean"]  # the first entry is accuracy
        assert m["verifier/latency_max_s"] > 0 and m["verifier/restarts"] == 0
        assert m["verifier/my_team.verifiers:judge/error_rate"] == 0.0
    # the user's verifiers did run and see the data: brevity and ShowsWork disagree somewhere
    assert any(m["reward/my_team.verifiers:brevity/mean"] != m["reward/my_team.verifiers:ShowsWork/mean"] for m in steps)


def test_bad_data_row_stops_the_run_with_file_and_row(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text('{"question": "1+1=", "answer": "2"}\n{"question": "2+2="}\n' * 3)
    line = _one_paragraph_error(run_cli(["recipe=grpo", "task.name=jsonl", f"task.path={data}", "task.num_eval=1",
                                         f"run_dir={tmp_path / 'run'}"], timeout=120), stdout_ok=True)
    assert line.startswith(f"rlreason: data error: {data}:2: missing field 'answer'") and "task.bad_rows=skip" in line
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.parametrize("args,expect", [
    (["reward.verifiers=[{name: maths}]"], ["reward.verifiers[0]", "maths", "registered verifiers"]),
    (["reward.verifiers=[{name: regex, args: {patern: x}}]"], ["reward.verifiers[0]", "patern"]),
    (["reward.verifiers=[{name: math}, {name: math}]"], ["repeat"]),
    (["reward.verifiers=[{name: math, accuracy: true}, {name: format, accuracy: true}]"], ["at most one"]),
    (["reward.isolation=none"], ["reward.isolation='none'", "sandbox", "process", "inline"]),
    (["reward.verifiers=[{name: math, wieght: 1}]"], ["unknown key 'wieght' in an entry of reward.verifiers", "Did you mean 'weight'"]),
    (["rollout.group_size=1"], ["rollout.group_size=1", "algo.estimator=grpo", "every advantage is 0"]),
    (["task.bad_rows=ignore"], ["task.bad_rows='ignore'", "error", "skip"]),
    (["task.name=reasoning_gym", "task.dataset=chain_summ"], ["task.dataset='chain_summ'", "chain_sum"]),
    (["task.name=jsonl", "task.path=/nonexistent.jsonl"], ["task.path=/nonexistent.jsonl", "not a file"]),
])
def test_verifier_and_data_config_errors(args, expect):
    """In-process (`compose` is what run.py calls before printing the paragraph; the subprocess path
    is covered above): the message names the key and the valid choices."""
    from rlreason.run import UserError, compose

    with pytest.raises(UserError) as err:
        compose(["recipe=grpo", *args])
    line = str(err.value)
    assert "\n" not in line
    for fragment in expect:
        assert fragment in line, line


@pytest.mark.integration
@pytest.mark.skipif(__import__("os").geteuid() != 0, reason="mounting a small file system needs root")
def test_a_full_disk_stops_the_run_with_the_path_and_no_traceback(tmp_path):
    """The run directory on a 512 KiB file system: the first checkpoint (a learner's write, in a Ray actor)
    fills it. One line names the path and the cause; no traceback, no 'iostream error'."""
    import subprocess

    disk = tmp_path / "small"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(disk)], check=True)
    try:
        proc = run_cli(["recipe=grpo", "scale=smoke", "eval_every=0", "eval_sampled=false", "telemetry.tensorboard=false",
                        f"run_dir={disk / 'run'}"])
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "iostream" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("rlreason: training stopped at step 2: cannot write") and "the disk is full" in last, last
    assert str(disk / "run" / "checkpoints") in last, last
