"""The driver loop. One step: pick prompts -> generate G responses each -> verify -> learn -> sync weights.

`Trainer.fit` is the whole loop; it coordinates objects with one job each (`rlreason/orchestrator/`):
the batch builder (curriculum, rollouts, rewards, filtering), the learner group, the rollout fleet
(weight sync), the evaluator and the checkpointer. The trainer does not know which estimator, loss,
curriculum, verifier or engine it runs: those are names the pieces look up in their registries.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from rlreason.data.sampler import indices_digest
from rlreason.orchestrator.async_rollouts import AsyncRollouts
from rlreason.orchestrator.batches import BatchBuilder, PromptFormat, StepBatch
from rlreason.orchestrator.checkpoints import Checkpointer
from rlreason.orchestrator.evaluator import Evaluator
from rlreason.orchestrator.fleet import RolloutFleet
from rlreason.orchestrator.learners import LearnerDied, LearnerGroup  # noqa: F401  (LearnerDied: run.py catches it)
from rlreason.orchestrator.placement import gpus, placement, threads_per_actor
from rlreason.orchestrator.policy_source import InitialPolicy, initial_policy
from rlreason.orchestrator.scorer import RewardPlan, Scorer
from rlreason.orchestrator.staleness import staleness_metrics
from rlreason.orchestrator.task_data import TaskData, load_task_data
from rlreason.policy import load_tokenizer
from rlreason.telemetry.memory import peak_rss_mb
from rlreason.telemetry.sinks import run_telemetry

log = logging.getLogger(__name__)


class StoppedEarly(Exception):
    """`fit` stopped at the user's request (`request_stop`, Ctrl-C) after a whole step and its checkpoint."""

    def __init__(self, step: int, checkpoint: Path):
        super().__init__(f"stopped after step {step}; checkpoint {checkpoint}")
        self.step, self.checkpoint = step, checkpoint


class Trainer:
    def __init__(self, cfg, run_dir: Path, data: TaskData, policy: InitialPolicy):
        self.cfg, self.run_dir, self.data, self.policy = cfg, Path(run_dir), data, policy
        self.checkpoints = Checkpointer(self.run_dir, cfg.keep_checkpoints)
        self.start_step = self.steps_done = 0
        self.step_in_progress = 1  # the step a stop request lets finish (the first, during start-up)
        self.stop_requested = False  # set by `request_stop` (a signal handler): finish this step, checkpoint, stop

    def request_stop(self) -> None:
        self.stop_requested = True

    @classmethod
    def from_config(cls, cfg, run_dir: Path) -> "Trainer":
        """Load the task and make the initial policy (a warm start runs here, before Ray starts, so it
        has the machine to itself); raises `DataError` for bad data."""
        data = load_task_data(cfg.task, RewardPlan.from_config(cfg.reward).validators(), Path(run_dir))
        return cls(cfg, run_dir, data, initial_policy(cfg, Path(run_dir), data.train))

    def start(self) -> None:
        """Start the actors and the verifier pool (Ray must be initialised), and resume if asked."""
        cfg = self.cfg
        resume_dir = self.checkpoints.latest() if cfg.resume else None
        if cfg.resume and resume_dir is None:
            log.warning("resume=true but %s holds no checkpoint: starting from step 0", self.checkpoints.root)
        tokenizer = load_tokenizer(self.policy.path)  # the policy's own: padding, chat template
        L, R = cfg.learner.num_workers, cfg.rollout.num_workers
        # learner and engines run at once (the threads are split between them); async with max_staleness=0 does not
        overlap = bool(cfg.trainer.off_policy_steps) or (cfg.trainer.mode == "async" and cfg.trainer.max_staleness > 0)
        learner_res = {"num_cpus": cfg.learner.cpus, "num_gpus": gpus(cfg.learner.gpus)}
        rollout_res = {"num_cpus": cfg.rollout.cpus, "num_gpus": gpus(cfg.rollout.gpus)}
        place = placement(cfg.ray.placement, [learner_res] * L + [rollout_res] * R)
        self.learners = LearnerGroup(cfg, self.policy.path, threads_per_actor(cfg.learner.threads, L, overlap), learner_res, place,
                                     self.checkpoints.latest)
        self.learners.call("pid")  # every rank has loaded the policy
        self.fleet = RolloutFleet(cfg, self.policy.path, self.learners, threads_per_actor(cfg.rollout.threads, R, overlap),
                                  rollout_res, lambda k: place(L + k), tokenizer.pad_token_id, self.run_dir)
        self.scorer = Scorer(cfg.reward, cfg.algo, cfg.rollout.max_new_tokens, len(self.data.bad_rows), self.run_dir)
        prompt = PromptFormat(tokenizer, cfg.model.chat_template, cfg.curriculum.length.in_prompt)
        self.batches = BatchBuilder(cfg, self.data.train, self.fleet, self.scorer, prompt)
        self.evaluate = Evaluator(cfg, self.data.evals, self.fleet, self.scorer, prompt, self.batches.curriculum, self.policy.path)
        if resume_dir is not None:
            self._resume(resume_dir)
        self.telemetry = run_telemetry(cfg, self.run_dir, self.start_step)

    # -- the loop -------------------------------------------------------------------------------
    def fit(self) -> dict:
        cfg = self.cfg
        if self.start_step == 0:
            eval_before = self.evaluate(0)
            self.telemetry.log({"step": 0, **eval_before})
        else:
            eval_before = self._logged_eval(step=0)
        eval_after = None
        prefetched = None  # trainer.off_policy_steps=1: the next step's batch, generated during this step's update
        rollouts = self._async_rollouts() if cfg.trainer.mode == "async" else None
        for step in range(self.start_step + 1, cfg.total_steps + 1):
            self.step_in_progress = step
            t_step = time.perf_counter()
            sb = prefetched or self.batches.next(step)  # 1-3. the curriculum picks prompts, the workers generate, the verifiers score
            prefetched = None
            self.steps_done = step
            t0 = time.perf_counter()
            futures = self.learners.submit("train_step", sb.batch, self.progress(step))  # 4. learner
            last = step == cfg.total_steps or bool(cfg.rollout_token_budget and self.batches.rollout_tokens >= cfg.rollout_token_budget)
            if rollouts is not None:
                rollouts.train(futures)  # the workers generate the next steps meanwhile, as far as the gate lets them
            elif cfg.trainer.off_policy_steps and not last:
                prefetched = self.batches.next(step + 1)  # generated with the weights from before this update
            train_metrics = self.learners.wait(futures, "train_step")
            t_train = time.perf_counter() - t0
            self.data_state = self.batches.state_after(step)  # what a checkpoint after this step records
            t0 = time.perf_counter()
            if rollouts is not None:
                rollouts.publish(train_metrics["learner/version"])  # 5. queued behind each worker's shard in flight
            else:
                self.fleet.sync(train_metrics["learner/version"])  # 5. new weights to the rollout workers
            t_sync = time.perf_counter() - t0  # sync: the load and its check; async: the export (the load is timed as sync/s)
            timings = {"timing/train_s": t_train, "timing/sync_s": t_sync, "sync/s": t_sync, **self.fleet.sync_metrics,
                       "timing/step_s": time.perf_counter() - t_step}  # the step proper; evaluation is timed on its own
            if rollouts is not None:
                timings.update({**rollouts.step_metrics(), **staleness_metrics(sb.batch.versions, step - 1)})
            metrics = self._step_metrics(step, sb, train_metrics, timings)
            if last or (cfg.eval_every and step % cfg.eval_every == 0):
                if rollouts is not None:
                    rollouts.settle()  # the evaluation reads the newest weights, checked
                t0 = time.perf_counter()
                eval_after = self.evaluate(step)
                metrics.update({**eval_after, "timing/eval_s": time.perf_counter() - t0})
            self.telemetry.log(metrics)
            if last or self.stop_requested or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                saved = self.checkpoints.save(step, self.learners, self.data_state, self.policy.warmstart)
                if self.stop_requested and not last:
                    raise StoppedEarly(step, saved)
            if last:
                if step < cfg.total_steps:
                    log.info("rollout_token_budget=%d reached at step %d (%d tokens): stopping", cfg.rollout_token_budget,
                             step, self.batches.rollout_tokens)
                break
        if eval_after is None:
            eval_after = self.evaluate(self.steps_done)
        return self._summary(eval_before, eval_after)

    def _async_rollouts(self) -> AsyncRollouts:
        """trainer.mode=async: the batch builder's rounds come from workers that generate ahead."""
        cfg = self.cfg
        rollouts = AsyncRollouts(self.fleet, self.batches.plan, cfg.trainer.max_staleness, cfg.total_steps,
                                 version=self.start_step, check_sync=cfg.rollout.check_sync)
        self.batches.source = rollouts
        return rollouts

    def progress(self, step: int) -> float:
        """Training progress in [0, 1] for scheduled estimators: steps, or the token budget if that ends sooner."""
        p = step / self.cfg.total_steps
        if self.cfg.rollout_token_budget:
            p = max(p, self.batches.rollout_tokens / self.cfg.rollout_token_budget)
        return min(p, 1.0)

    def _step_metrics(self, step: int, sb: StepBatch, train_metrics: dict, timings: dict) -> dict:
        batch, data = sb.batch, self.data_state
        n_tokens = int(batch.response_mask.sum())
        return {
            "step": step, **sb.metrics, **train_metrics,
            # learner updates between the weights that sampled this batch and those it trained from
            "rollout/weights_lag": train_metrics["learner/version"] - 1 - batch.weights_version,
            "faults/rollout_recoveries": self.fleet.restarts,
            # async: the workers' answer to last step's question; asking now would queue behind their generation
            "memory/driver_peak_rss_mb": peak_rss_mb(), **self.fleet.peak_memory(wait=self.cfg.trainer.mode != "async"),
            **self.scorer.peak_memory(),
            "response_length/mean": n_tokens / batch.size,
            "response/truncated_frac": float(batch.truncated.float().mean()),
            "timing/rollout_s": sb.rollout_s,
            "timing/reward_s": sb.reward_s,
            **timings,  # timing/train_s with off_policy_steps=1: the update, overlapped with the next rollout
            "throughput/rollout_tokens_per_s": n_tokens / max(sb.rollout_s, 1e-9),
            "rollout/tokens_total": data["rollout_tokens"],
            "curriculum/epoch": data["epoch"],
            "curriculum/consumed": data["consumed"],
            "curriculum/batch_digest": indices_digest(sb.indices),
        }

    # -- resume and summary -----------------------------------------------------------------------
    def _resume(self, directory: Path) -> None:
        state = self.checkpoints.read_state(directory)
        self.batches.load_state(state)
        self.fleet.sync(self.learners.call("load", str(directory)))
        self.start_step = self.steps_done = state["step"]
        self.step_in_progress = self.start_step + 1
        log.info("resumed from %s: step %d, %d prompts consumed", directory, self.start_step, self.batches.sampler.consumed)

    def _logged_eval(self, step: int) -> dict | None:
        """The eval metrics logged at `step` (a resumed run's step-0 evaluation)."""
        path = self.run_dir / "metrics.jsonl"
        for line in path.read_text().splitlines() if path.exists() else []:
            rec = json.loads(line)
            if rec.get("step") == step and "accuracy/eval" in rec:
                return {k: v for k, v in rec.items() if k.startswith(("accuracy/eval", "eval/"))}
        return None

    def _summary(self, before: dict | None, after: dict) -> dict:
        """summary.json: the greedy accuracy before and after RL (as always), and every eval metric of both."""
        summary = {
            "run_dir": str(self.run_dir),
            "steps": self.steps_done,
            "rollout_tokens": self.batches.rollout_tokens,
            "eval_accuracy_before_rl": before.get("accuracy/eval") if before else None,
            "eval_accuracy_after_rl": after["accuracy/eval"],
            "eval_before_rl": before,
            "eval_after_rl": after,
            "warmstart": self.policy.warmstart,
        }
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        return summary

    def close(self) -> None:
        for part in ("telemetry", "scorer"):
            if hasattr(self, part):
                getattr(self, part).close()
