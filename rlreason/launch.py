"""A composed run from start to end: Ray, the trainer, and one line for every way it can end.

`train(cfg, run_dir)` loads the task and makes the initial policy (before Ray starts), joins or starts
the Ray cluster, trains, and turns each ending into one line and an exit code: done (0), a data error
(2), Ctrl-C (130: the first finishes the step and checkpoints, the second stops at once), a learner
that died, non-finite losses, a full or read-only disk (1). Every resumable ending prints the resume
command.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from rlreason import QUIET_ENV

REPO_ROOT = Path(__file__).resolve().parent.parent


def local_cluster(cfgs) -> tuple[int, str]:
    """CPUs for a local cluster that fits every config's actors, and the workers' PYTHONPATH (the
    checkout and the working directory, so `module:attr` estimators and verifiers import)."""
    import math

    needed = max(c.learner.num_workers * c.learner.cpus + c.rollout.num_workers * c.rollout.cpus for c in cfgs)
    num_cpus = max(c.ray.num_cpus for c in cfgs) or max(os.cpu_count() or 1, math.ceil(needed))
    pythonpath = os.pathsep.join([str(REPO_ROOT), os.getcwd(), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return num_cpus, pythonpath


def init_ray(cfg) -> None:
    import ray

    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    num_cpus, pythonpath = local_cluster([cfg])
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        log_to_driver=True,
        runtime_env={"env_vars": {**QUIET_ENV, "PYTHONPATH": pythonpath}},
    )


def plan_line(cfg, choices: dict, argv: list[str], changed: dict | None) -> str:
    """What the run will do, in one line (a run with no arguments says that it runs the defaults)."""
    method = " ".join(f"{g}={c}" for g, c in choices.items() if c)
    r = cfg.rollout
    line = (f"rlreason: {'resuming' if changed is not None else 'training'} {method}: {cfg.total_steps} steps of "
            f"{r.prompts_per_step} prompts x {r.group_size} responses, eval every {cfg.eval_every or 'end'}")
    if changed:
        line += "; changed on resume: " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items())
    if not argv:
        line += " (no arguments: the defaults; python rlreason/run.py --help lists the choices)"
    return line


def resume_command(run_dir: Path) -> str:
    return f"python rlreason/run.py run_dir='{run_dir}' resume=true"


def disk_message(e: BaseException) -> str:
    """An OSError (or a Ray task's, wrapped) as 'PATH: what went wrong'."""
    import errno

    cause = getattr(e, "cause", None) or e
    why = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded", errno.EROFS: "the file system is read-only",
           errno.EACCES: "permission denied"}.get(getattr(cause, "errno", None))
    text = f"{getattr(cause, 'filename', None) or ''}: {getattr(cause, 'strerror', None) or cause}".lstrip(": ")
    return f"{text} ({why})" if why else text


class StopOnInterrupt:
    """SIGINT handler: the first Ctrl-C asks the trainer to stop after the current step (with a
    checkpoint); it then hands SIGINT back to Python, so a second Ctrl-C raises KeyboardInterrupt at once."""

    def __init__(self, trainer):
        self.trainer = trainer

    def __call__(self, signum, frame) -> None:
        import signal

        signal.signal(signal.SIGINT, signal.default_int_handler)
        self.trainer.request_stop()
        print(f"\nrlreason: Ctrl-C: stopping after step {self.trainer.step_in_progress} with a checkpoint; Ctrl-C again to "
              f"stop at once", file=sys.stderr, flush=True)


def train(cfg, run_dir: Path) -> int:
    """Load the task, make the policy, start Ray and the actors, and train; every way it can end is one line."""
    import signal

    import ray

    from rlreason.data.tasks import DataError
    from rlreason.orchestrator.fleet import SyncMismatch, SyncTimeout
    from rlreason.trainer import LearnerDied, StoppedEarly, Trainer

    try:
        trainer = Trainer.from_config(cfg, run_dir)  # the task and the initial policy, before Ray starts
    except DataError as e:
        print(f"rlreason: data error: {e}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("rlreason: stopped by Ctrl-C before training started; nothing to resume.", file=sys.stderr, flush=True)
        return 130

    previous = signal.signal(signal.SIGINT, StopOnInterrupt(trainer))
    init_ray(cfg)
    try:
        trainer.start()
        summary = trainer.fit()
    except StoppedEarly as e:
        print(f"rlreason: stopped by Ctrl-C after step {e.step} (checkpoint {e.checkpoint}). Resume with: "
              f"{resume_command(run_dir)}", file=sys.stderr, flush=True)
        return 130
    except KeyboardInterrupt:
        last = trainer.checkpoints.latest()
        where = (f"the last checkpoint is {last}. Resume with: {resume_command(run_dir)}" if last else
                 "no checkpoint was written yet, so there is nothing to resume")
        print(f"\nrlreason: stopped at once by a second Ctrl-C during step {trainer.steps_done}; {where}", file=sys.stderr,
              flush=True)
        return 130
    except FloatingPointError as e:  # the learner's non-finite guard (a RayTaskError subclasses it)
        cause = getattr(e, "cause", e)
        print(f"rlreason: training stopped at step {trainer.steps_done}: {cause}", file=sys.stderr, flush=True)
        return 1
    except (LearnerDied, SyncMismatch, SyncTimeout) as e:
        print(f"rlreason: training stopped at step {trainer.steps_done}: {e}", file=sys.stderr, flush=True)
        return 1
    except OSError as e:  # a full or read-only disk (from the driver, or a learner's checkpoint write)
        last = trainer.checkpoints.latest()
        print(f"rlreason: training stopped at step {trainer.steps_done}: cannot write {disk_message(e)}. "
              + (f"Free space, then resume with: {resume_command(run_dir)}" if last else "No checkpoint was written."),
              file=sys.stderr, flush=True)
        return 1
    finally:
        signal.signal(signal.SIGINT, previous)
        try:
            trainer.close()
        except OSError as e:
            print(f"rlreason: closing the run's files: {disk_message(e)}", file=sys.stderr, flush=True)
        ray.shutdown()
    before, after = summary["eval_before_rl"] or {}, summary["eval_after_rl"]
    fmt = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    start = "warm start" if summary["warmstart"] else "before RL"
    lines = [f"held-out eval accuracy (greedy): {start} {fmt(before.get('accuracy/eval'))} -> after RL {fmt(after['accuracy/eval'])}"]
    for key, name in (("accuracy/eval_sampled", "sampled pass@1"), ("accuracy/eval_pass_at_k", f"pass@{after.get('eval/k')}")):
        if key in after:
            lines.append(f"{name}: {fmt(before.get(key))} -> {fmt(after[key])}")
    print(f"done: {summary['steps']} steps. " + "; ".join(lines) + f". metrics: {run_dir / 'metrics.jsonl'}", flush=True)
    return 0
