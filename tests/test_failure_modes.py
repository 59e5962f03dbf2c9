"""Failure modes that end before anything heavy starts, or touch one piece: resume and run directories,
bad data, user imports that hang, verifier results that are not numbers, truncated metrics, stale
cache entries. (End-to-end: Ctrl-C and a bare resume in test_resume.py, sandbox attacks in
test_sandbox.py and test_cli.py, rollout-worker deaths in test_distributed.py, disks in test_cli.py.)"""

import json
import os
import subprocess
import sys
import time

import pytest

from rlreason.run import GROUPS, compose, main
from rlreason.run_dir import ResumeError, resumed_config, write_start


@pytest.fixture
def saved_run(tmp_path):
    """A run directory as `recipe=drgrpo total_steps=30` leaves it when it starts."""
    argv = ["recipe=drgrpo", "total_steps=30", f"run_dir={tmp_path}"]
    cfg, choices = compose(argv)
    write_start(tmp_path, cfg, choices, argv)
    return tmp_path


def test_resume_restores_the_saved_config_not_the_defaults(saved_run):
    cfg, changed, choices = resumed_config(saved_run, ["resume=true", f"run_dir={saved_run}"], GROUPS)
    assert cfg.algo.estimator == "drgrpo" and cfg.total_steps == 30 and cfg.resume and changed == {}
    assert choices["recipe"] == "drgrpo"
    # repeating the run's own values changes nothing (a sweep re-launches its jobs this way)
    cfg, changed, _ = resumed_config(saved_run, ["recipe=drgrpo", "total_steps=30", "seed=0"], GROUPS)
    assert changed == {}


def test_resume_allows_extending_and_telemetry_and_records_them(saved_run):
    cfg, changed, _ = resumed_config(saved_run, ["total_steps=60", "eval_every=5", "telemetry.tensorboard=false"], GROUPS)
    assert cfg.total_steps == 60 and cfg.eval_every == 5 and cfg.algo.estimator == "drgrpo"
    assert changed == {"eval_every": [25, 5], "telemetry.tensorboard": [True, False], "total_steps": [30, 60]}


@pytest.mark.parametrize("override,named", [
    ("recipe=grpo", "recipe=grpo (the run used recipe=drgrpo)"),
    ("algo=tempo", "algo=tempo (the run used algo=drgrpo)"),
    ("seed=3", "seed=3 (the run used 0)"),
    ("rollout.group_size=4", "rollout.group_size=4 (the run used 8)"),
    ("model.lora.r=8", "model.lora.r=8"),
    ("task.num_train=10", "task.num_train=10"),
])
def test_resume_refuses_overrides_that_change_the_run(saved_run, override, named):
    with pytest.raises(ResumeError) as err:
        resumed_config(saved_run, [override], GROUPS)
    assert named in str(err.value) and "start a new run" in str(err.value)


def test_resume_of_a_directory_with_nothing_to_resume_is_an_error(tmp_path, capsys):
    assert main([f"run_dir={tmp_path / 'typo'}", "resume=true"]) == 2
    assert "does not exist: nothing to resume" in capsys.readouterr().err
    assert not (tmp_path / "typo").exists()  # and nothing was started there
    assert main([f"run_dir={tmp_path}", "resume=true"]) == 2
    assert "holds no config.yaml" in capsys.readouterr().err


def test_no_argument_run_says_what_it_will_do():
    from rlreason.launch import plan_line

    cfg, choices = compose([])
    line = plan_line(cfg, choices, [], None)
    assert "recipe=grpo" in line and f"{cfg.total_steps} steps" in line and "no arguments: the defaults" in line
    assert "no arguments" not in plan_line(cfg, choices, ["scale=smoke"], None)


def test_help_prints_usage_and_starts_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["--help"]) == 0
    assert "config groups" in capsys.readouterr().out and not (tmp_path / "runs").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a read-only file system needs root")
def test_a_read_only_run_directory_is_named_in_one_line(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], check=True)
    try:
        assert main(["scale=smoke", f"run_dir={ro / 'run'}"]) == 2
        err = capsys.readouterr().err
        assert f"cannot write the run directory {ro / 'run'}" in err and "read-only" in err and "Traceback" not in err
    finally:
        subprocess.run(["umount", str(ro)], check=True)


# -- imports of user code --------------------------------------------------------------------------
def test_a_user_module_that_hangs_or_fails_at_import_is_named_before_anything_starts(tmp_path, monkeypatch):
    from rlreason.run import UserError

    (tmp_path / "hangs_at_import.py").write_text("import time\ntime.sleep(120)\ndef adv(b, c, t): pass\n")
    (tmp_path / "fails_at_import.py").write_text("raise RuntimeError('no licence server')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("RLREASON_IMPORT_TIMEOUT_S", "1")
    t0 = time.monotonic()
    with pytest.raises(UserError, match=r"algo.estimator.*'hangs_at_import' did not finish within 1 s"):
        compose(["algo.estimator=hangs_at_import:adv"])
    assert time.monotonic() - t0 < 30
    with pytest.raises(UserError, match=r"importing module 'fails_at_import'.*RuntimeError: no licence server"):
        compose(["reward.verifier=fails_at_import:score"])


# -- data -----------------------------------------------------------------------------------------
def _jsonl_task(path, **kw):
    from rlreason.config import TaskConfig

    return TaskConfig(name="jsonl", path=str(path), num_eval=1, **kw)


def test_an_empty_jsonl_file_is_a_data_error_naming_it(tmp_path):
    from rlreason.data.tasks import DataError, load_task

    for text in ("", "\n\n  \n"):
        (tmp_path / "empty.jsonl").write_text(text)
        with pytest.raises(DataError, match=r"empty.jsonl holds no rows"):
            load_task(_jsonl_task(tmp_path / "empty.jsonl"))


def test_an_oversized_line_is_a_bad_row_read_no_further_than_the_cap(tmp_path):
    import resource

    from rlreason.data.tasks import DataError, load_task

    good = json.dumps({"question": "1+1?", "answer": "2"}) + "\n"
    huge = json.dumps({"question": "x" * 10_000_000, "answer": "1"}) + "\n"
    (tmp_path / "t.jsonl").write_text(good + huge + good * 3)
    with pytest.raises(DataError, match=r"t.jsonl:2: the line is longer than task.max_row_bytes=1048576"):
        load_task(_jsonl_task(tmp_path / "t.jsonl"))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report = []
    train, evals = load_task(_jsonl_task(tmp_path / "t.jsonl", bad_rows="skip", max_row_bytes=4096), report=report)
    assert len(train) + len(evals) == 4 and [(b.row, "max_row_bytes" in b.reason) for b in report] == [(2, True)]
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB: the 10 MB line was never held


def test_invalid_utf8_is_a_bad_row_not_silently_replaced(tmp_path):
    from rlreason.data.tasks import DataError, load_task

    good = json.dumps({"question": "1+1?", "answer": "2"}).encode() + b"\n"
    (tmp_path / "t.jsonl").write_bytes(good + b'{"question": "caf\xe9?", "answer": "3"}\n' + good * 2)
    with pytest.raises(DataError, match=r"t.jsonl:2: not valid UTF-8 \(byte 0xe9 at byte 18"):
        load_task(_jsonl_task(tmp_path / "t.jsonl"))


# -- verifier results and health --------------------------------------------------------------------
def test_a_non_finite_score_is_an_error_never_a_reward():
    from rewards.pool import InlineRunner

    res = InlineRunner().run([("tests.verifiers_fixture:infinite", "x", {})])[0]
    assert (res.status, res.score) == ("error", 0.0) and "non-finite score (inf)" in res.error


def test_verifier_health_keeps_the_first_distinct_messages_and_warns_above_half(tmp_path, caplog):
    from rewards.pool import CallResult
    from rlreason.orchestrator.verifier_health import VerifierHealth

    health = VerifierHealth(tmp_path, max_messages=2)
    boom = CallResult(0.0, "error", error="RuntimeError: boom\nTraceback ...")
    results = {"judge": [boom, boom, CallResult(0.0, "timeout", error="no answer within 1s"),
                         CallResult(0.0, "error", error="KeyError: 'x'"), CallResult(1.0, "ok")]}
    samples = [{"prompt": f"p{i}"} for i in range(5)]
    with caplog.at_level("WARNING"):
        health.record("step 3", results, samples)
        health.record("step 4", results, samples)
    lines = [json.loads(x) for x in (tmp_path / "verifier_errors.jsonl").read_text().splitlines()]
    assert [(x["where"], x["completion"], x["status"], x["prompt"]) for x in lines] == [("step 3", 0, "error", "p0"),
                                                                                       ("step 3", 2, "timeout", "p2")]
    assert lines[0]["error"].startswith("RuntimeError: boom\nTraceback")  # the whole message, traceback included
    assert sum("failed on 4 of 5 calls" in r.message for r in caplog.records) == 2


# -- metrics and caches ----------------------------------------------------------------------------
def test_report_reads_a_truncated_metrics_file_and_says_so(tmp_path, capsys):
    from rlreason import report

    run = tmp_path / "sweep" / "run"
    run.mkdir(parents=True)
    lines = [{"step": 0, "accuracy/eval": 0.5}, {"step": 1, "reward/mean": 0.2, "timing/step_s": 1.0, "response_length/mean": 9,
                                                 "rollout/tokens_total": 100, "accuracy/eval": 0.6}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"step": 2, "reward/me')
    assert report.main([str(tmp_path / "sweep"), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr()
    assert "metrics.jsonl:3: skipped a partial line" in out.err and "(1 runs)" in out.out


def test_stale_temporary_cache_entries_are_removed_and_live_ones_kept(tmp_path):
    from rlreason.assets import remove_stale_tmp

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    (tmp_path / f".abc123.{dead}.tmp" / "policy").mkdir(parents=True)  # a warm start killed mid-write
    (tmp_path / f".eval.{dead}.tmp").write_text("{}")
    (tmp_path / f".old123.tmp-{dead}").mkdir()  # the naming warm starts used before
    live = tmp_path / f".def456.{os.getpid()}.tmp"
    live.mkdir()
    (tmp_path / "abc123").mkdir()  # a finished entry
    removed = remove_stale_tmp(tmp_path)
    assert sorted(p.name for p in removed) == sorted([f".abc123.{dead}.tmp", f".eval.{dead}.tmp", f".old123.tmp-{dead}"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["abc123", live.name])


def test_the_first_ctrl_c_asks_for_a_stop_and_the_second_interrupts_at_once(capsys):
    import signal
    from types import SimpleNamespace

    from rlreason.launch import StopOnInterrupt

    trainer = SimpleNamespace(step_in_progress=5, stop_requested=False)
    trainer.request_stop = lambda: setattr(trainer, "stop_requested", True)
    previous = signal.signal(signal.SIGINT, StopOnInterrupt(trainer))
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)  # the handler runs between bytecodes
        assert trainer.stop_requested and "stopping after step 5" in capsys.readouterr().err
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    finally:
        signal.signal(signal.SIGINT, previous)
