"""The driver loop. One step: pick prompts -> generate G responses each -> verify -> learn -> sync weights.

`Trainer.fit` is the whole loop; the rest of this file is set-up (task, warm start, actors) and
bookkeeping (evaluation, checkpoints, metrics).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import ray
import torch

from rewards.pool import InlineRunner, Job, VerifierPool
from rlreason import QUIET_ENV
from rlreason.batch import RolloutBatch
from rlreason.data.sampler import PromptSampler, indices_digest
from rlreason.data.tasks import load_task
from rlreason.learner.learner import Learner
from rlreason.rollout.worker import RolloutWorker
from rlreason.telemetry.sinks import ConsoleSink, JSONLSink, Telemetry, TensorBoardSink

log = logging.getLogger(__name__)


class Trainer:
    def __init__(self, cfg, run_dir: Path):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.ckpt_root = self.run_dir / "checkpoints"
        from curricula.strategies import build_curriculum

        self.reward_plan = RewardPlan.from_config(cfg)
        self.bad_rows: list = []
        self.train, self.evals = load_task(cfg.task, self.reward_plan.validators(), self.bad_rows)
        if self.bad_rows:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with open(self.run_dir / "bad_rows.jsonl", "w") as f:
                for b in self.bad_rows:
                    f.write(json.dumps({"file": b.file, "row": b.row, "reason": b.reason}) + "\n")
            log.warning("task.bad_rows=skip: %d bad rows skipped, listed in %s", len(self.bad_rows), self.run_dir / "bad_rows.jsonl")
        self.sampler = PromptSampler(len(self.train), cfg.rollout.prompts_per_step, seed=cfg.seed)
        self.curriculum = build_curriculum(cfg, self.sampler, self.train)
        self.start_step = 0
        self.steps_done = 0
        self.rollout_tokens = 0  # response tokens generated for training so far (all rounds, kept or not)
        # the warm start runs here, before Ray starts, so it has the machine to itself
        self.policy_path, self.warmstart_info = self._initial_policy()

    def start(self) -> None:
        """Start the actors and the verifier pool (Ray must be initialised), and resume if asked."""
        cfg = self.cfg
        resume_dir = self.latest_checkpoint() if cfg.resume else None
        if cfg.resume and resume_dir is None:
            log.warning("resume=true but %s holds no checkpoint: starting from step 0", self.ckpt_root)
        self._start_actors()
        r = cfg.reward
        if r.isolation == "inline":
            self.pool = InlineRunner(r.timeout_s, r.async_concurrency)
        else:
            self.pool = VerifierPool(r.num_workers, r.timeout_s, memory_limit_mb=r.memory_limit_mb, cpu_limit_s=r.cpu_limit_s,
                                     async_concurrency=r.async_concurrency)
        if resume_dir is not None:
            self._load_checkpoint(resume_dir)
        sinks = [JSONLSink(self.run_dir / "metrics.jsonl", keep_through_step=self.start_step if cfg.resume else None)]
        if cfg.telemetry.tensorboard:
            sinks.append(TensorBoardSink(self.run_dir / "tensorboard"))
        if cfg.telemetry.console:
            sinks.append(ConsoleSink(cfg.total_steps, self.start_step))
        self.telemetry = Telemetry(sinks)

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
        for step in range(self.start_step + 1, cfg.total_steps + 1):
            t_step = time.perf_counter()
            # 1-3. the curriculum picks prompts, the workers generate, the verifiers score
            if prefetched is None:
                prefetched = self._collect_observed(step)
            batch, indices, reward_metrics, t_rollout, t_reward = prefetched
            prefetched = None
            self.steps_done = step
            self.data_state = self._data_state()  # what a checkpoint after this step records
            t0 = time.perf_counter()
            futures = [lr.train_step.remote(batch, self.progress(step)) for lr in self.learners]  # 4. learner
            last = step == cfg.total_steps or (cfg.rollout_token_budget and self.rollout_tokens >= cfg.rollout_token_budget)
            if cfg.trainer.off_policy_steps and not last:
                # generate step+1 with the weights from before this update while the learner trains
                prefetched = self._collect_observed(step + 1)
            train_metrics = self.learners_get(futures, "train_step")
            t_train = time.perf_counter() - t0
            t0 = time.perf_counter()
            self.sync_weights(train_metrics["learner/version"])  # 5. new weights to the rollout workers
            t_sync = time.perf_counter() - t0
            metrics = {"step": step, **reward_metrics, **train_metrics}
            # learner updates between the weights that sampled this batch and those it trained from
            metrics["rollout/weights_lag"] = train_metrics["learner/version"] - 1 - batch.weights_version
            metrics["faults/rollout_recoveries"] = self.rollout_restarts
            t_step = time.perf_counter() - t_step  # the step proper; evaluation is timed on its own
            metrics.update(self.memory_metrics())
            if last or (cfg.eval_every and step % cfg.eval_every == 0):
                t0 = time.perf_counter()
                eval_after = self.evaluate(step)
                metrics.update(eval_after)
                metrics["timing/eval_s"] = time.perf_counter() - t0
            n_tokens = int(batch.response_mask.sum())
            metrics.update(
                {
                    "response_length/mean": n_tokens / batch.size,
                    "response/truncated_frac": float(batch.truncated.float().mean()),
                    "timing/rollout_s": t_rollout,
                    "timing/reward_s": t_reward,
                    "timing/train_s": t_train,  # with off_policy_steps=1: the update, overlapped with the next rollout
                    "timing/sync_s": t_sync,
                    "timing/step_s": t_step,
                    "throughput/rollout_tokens_per_s": n_tokens / max(t_rollout, 1e-9),
                    "rollout/tokens_total": self.data_state["rollout_tokens"],
                    "curriculum/epoch": self.data_state["epoch"],
                    "curriculum/consumed": self.data_state["consumed"],
                    "curriculum/batch_digest": indices_digest(indices),
                }
            )
            self.telemetry.log(metrics)
            if last or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                self.save_checkpoint(step)
            if last:
                if step < cfg.total_steps:
                    log.info("rollout_token_budget=%d reached at step %d (%d tokens): stopping", cfg.rollout_token_budget,
                             step, self.rollout_tokens)
                break
        if eval_after is None:
            eval_after = self.evaluate(self.steps_done)
        return self._summary(eval_before, eval_after)

    def memory_metrics(self) -> dict:
        """Peak RSS so far of each kind of process (MiB): the driver, the largest rollout actor, the
        learner (in its train metrics), the largest verifier worker; CUDA peaks where there is a GPU."""
        from rlreason.telemetry.memory import peak_rss_mb, process_peak_rss_mb

        out = {"memory/driver_peak_rss_mb": peak_rss_mb()}
        try:
            peaks = ray.get([w.peak_memory_mb.remote() for w in self.workers], timeout=30)
        except Exception as e:  # noqa: BLE001 - a metric must not stop training; a dead worker is handled in generate
            log.debug("rollout peak memory not read: %s", e)
        else:
            out["memory/rollout_peak_rss_mb"] = max(p["rss"] for p in peaks)
            if peaks[0]["cuda"] is not None:
                out["memory/rollout_peak_cuda_mb"] = max(p["cuda"] for p in peaks)
        pool = [m for m in map(process_peak_rss_mb, getattr(self.pool, "pids", list)()) if m is not None]
        if pool:
            out["memory/verifier_peak_rss_mb"] = max(pool)
        return out

    # -- pieces of a step -----------------------------------------------------------------------
    def _collect_observed(self, step: int):
        batch, indices, reward_metrics, t_rollout, t_reward = self.collect(step)
        reward_metrics.update(self.curriculum.observe(step, indices, batch))
        return batch, indices, reward_metrics, t_rollout, t_reward

    def _data_state(self) -> dict:
        """The data position after the current step (before any prefetch): sampler, curriculum, tokens."""
        return {"sampler": self.sampler.state_dict(), "curriculum": self.curriculum.state_dict(),
                "rollout_tokens": self.rollout_tokens, "consumed": self.sampler.consumed, "epoch": self.sampler.epoch}

    def progress(self, step: int) -> float:
        """Training progress in [0, 1] for scheduled estimators: steps, or the token budget if that ends sooner."""
        p = step / self.cfg.total_steps
        if self.cfg.rollout_token_budget:
            p = max(p, self.rollout_tokens / self.cfg.rollout_token_budget)
        return min(p, 1.0)

    def collect(self, step: int):
        """Prompts -> groups of responses -> rewards, for one step. With `algo.dynamic_sampling`, groups
        whose pass rate falls outside the band are dropped and new prompts are drawn until the step
        has `rollout.prompts_per_step` groups or `algo.filter_max_rounds` rounds have run (then it
        trains on what it has; a round that keeps nothing at all is logged as such)."""
        from rlreason.algos.filtering import group_pass_rates, keep_groups

        cfg, a = self.cfg, self.cfg.algo
        G, want = cfg.rollout.group_size, cfg.rollout.prompts_per_step
        kept_parts, kept_indices = [], []
        rounds, seen_groups, passed, t_rollout, t_reward = 0, 0, 0, 0.0, 0.0
        reward_metrics = {}
        cur = self.curriculum
        budget = cur.budget(step)
        max_new = cur.cap(budget) if budget else cfg.rollout.max_new_tokens
        while True:
            rounds += 1
            indices = cur.prompts(step, rounds - 1)
            counts = cur.rollouts(step, indices) or [G] * len(indices)
            t0 = time.perf_counter()
            seed = cfg.seed * 1_000_003 + step + 7_919 * (rounds - 1)
            prompts = [self.prompt_text(self.train[i], budget) for i in indices]
            batch, texts = self.generate(prompts, seed=seed, n=counts, max_new_tokens=max_new)
            t_rollout += time.perf_counter() - t0
            self.rollout_tokens += int(batch.response_mask.sum())  # every round counts, kept or dropped
            t0 = time.perf_counter()
            samples = [self.train[i].as_sample() for i, c in zip(indices, counts) for _ in range(c)]
            round_metrics = self.score(batch, texts, samples, budget)
            t_reward += time.perf_counter() - t0
            if rounds == 1:
                reward_metrics = round_metrics
            if not a.dynamic_sampling:
                return batch, indices, reward_metrics, t_rollout, t_reward
            batch.group_index = batch.group_index + seen_groups
            seen_groups += len(indices)
            keep = keep_groups(batch.correct, batch.group_index, a.filter_low, a.filter_high, a.filter_inclusive)
            groups, _ = group_pass_rates(batch.correct, batch.group_index)
            passed += int(keep.sum())
            for g, k, i in zip(groups.tolist(), keep.tolist(), indices):
                if k and len(kept_indices) < want:
                    kept_parts.append(batch.select(torch.nonzero(batch.group_index == g).flatten()))
                    kept_indices.append(i)
            if len(kept_indices) >= want or rounds >= a.filter_max_rounds:
                break
        reward_metrics.update({
            "curriculum/filter_rounds": rounds,
            "curriculum/kept_frac": passed / seen_groups,  # share of generated groups inside the band
            "curriculum/short_batch": float(len(kept_indices) < want),
        })
        if not kept_parts:  # nothing passed the band: train on the last round as it is (zero-signal step)
            log.warning("step %d: no group passed the filter band in %d rounds; training on the last round unfiltered", step, rounds)
            return batch, indices, reward_metrics, t_rollout, t_reward
        out = RolloutBatch.concat(kept_parts, self.pad_id)
        # renumber the kept groups 0..n-1 in order
        _, out.group_index = torch.unique_consecutive(out.group_index, return_inverse=True)
        return out, kept_indices, reward_metrics, t_rollout, t_reward

    def prompt_text(self, problem, budget: int | None) -> str:
        text = problem.prompt
        if budget is not None and self.cfg.curriculum.length.in_prompt:
            text = f"budget {budget}: {text}"
        if self.cfg.model.chat_template:
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
        return text

    def generate(self, prompts: list[str], seed: int, greedy: bool = False, n: int | list[int] | None = None,
                 max_new_tokens: int | None = None):
        """Generate n samples per prompt (one n, or a list with one count per prompt) across the workers."""
        r = self.cfg.rollout
        n = n or (1 if greedy else r.group_size)
        counts = n if isinstance(n, list) else [n] * len(prompts)
        shards = np.array_split(np.arange(len(prompts)), len(self.workers))
        for attempt in range(r.max_restarts + 1):
            futures = [
                w.generate.remote([prompts[i] for i in shard], int(shard[0]) if len(shard) else 0, [counts[i] for i in shard],
                                  max_new_tokens or r.max_new_tokens, r.temperature, r.top_p, greedy, seed + k)
                for k, (w, shard) in enumerate(zip(self.workers, shards)) if len(shard)
            ]
            try:
                results = ray.get(futures)
                # a worker Ray restarted before this call came back with the initial weights
                if all(b.weights_version == self.weights_version for b, _ in results):
                    break
                problem = "a rollout worker answered with stale weights (it was restarted)"
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
                problem = f"a rollout worker died ({type(e).__name__})"
                if attempt == r.max_restarts:
                    raise RuntimeError(f"rollout workers failed {attempt + 1} times in one generation call; giving up") from e
            log.warning("%s; waiting for Ray to restart it, then retrying with the same seeds", problem)
            self._recover_workers()
        else:
            raise RuntimeError(f"rollout workers kept answering with stale weights after {r.max_restarts + 1} tries")
        batch = RolloutBatch.concat([b for b, _ in results], self.pad_id)
        texts = [t for _, ts in results for t in ts]
        return batch, texts

    def score(self, batch: RolloutBatch, texts: list[str], samples: list[dict], budget: int | None = None) -> dict:
        """Verify every response with every verifier of the reward plan. The reward is the weighted
        sum of their scores; a curriculum that shapes rewards (the length budget) replaces the
        accuracy and format terms with its own, and the other verifiers' terms are added to it.
        DAPO's overlong penalty is added when on."""
        plan = self.reward_plan
        shaped = budget is not None  # the length-budget reward has its own format term
        entries = plan.entries + ([plan.format_entry] if shaped and plan.format_entry not in plan.entries else [])
        jobs = [Job(e.name, texts, samples, dict(e.args), e.timeout_s) for e in entries]
        t0 = time.perf_counter()
        results = dict(zip((e.name for e in entries), self.pool.score(jobs)))
        t_verify = time.perf_counter() - t0
        scores = {name: torch.tensor([x.score for x in res], dtype=torch.float32) for name, res in results.items()}
        n = len(texts)
        correct = scores[plan.accuracy.name]
        rewards = None
        if shaped:
            rewards = self.curriculum.shape_rewards(correct, scores[plan.format_entry.name], batch.response_mask.sum(-1), budget)
        if rewards is None:
            rewards = sum(e.weight * scores[e.name] for e in plan.entries)
        else:
            rewards = rewards + sum((e.weight * scores[e.name] for e in plan.entries
                                     if e is not plan.accuracy and e.name != plan.format_entry.name), torch.zeros(n))
        if self.cfg.algo.overlong_shaping:
            from rlreason.algos.shaping import overlong_penalty

            rewards += overlong_penalty(batch.response_mask.sum(-1), self.cfg.rollout.max_new_tokens, self.cfg.algo.overlong_cache)
        batch.rewards, batch.correct = rewards, correct
        return {
            "reward/mean": float(rewards.mean()),
            "reward/std": float(rewards.std()) if n > 1 else 0.0,
            "reward/zero_std_group_frac": zero_std_group_frac(rewards, batch.group_index),
            "reward/nonzero_grad_sample_frac": nonzero_grad_sample_frac(rewards, batch.group_index),
            **pass_rate_histogram(correct, batch.group_index),
            "accuracy/train": float(correct.mean()),
            **{f"reward/{name}/mean": float(v.mean()) for name, v in scores.items()},
            **verifier_metrics(results, self.pool, t_verify),
            "data/bad_rows": len(self.bad_rows),
        }

    def sync_weights(self, version: int, workers: list | None = None) -> None:
        workers = self.workers if workers is None else workers
        if self.cfg.rollout.engine == "vllm":  # in-place reload from an HF folder the learner writes
            path = str((self.run_dir / "weights_sync").resolve())
            self.learners_call("save_weights", path)
            ray.get([w.load_weights_from_path.remote(path, version) for w in workers])
        else:
            # the learner puts the weights into the object store; the workers fetch them from there
            (weights,) = self.learners_call("put_weights")
            ray.get([w.load_weights.remote(weights, version) for w in workers])
        self.weights_version = version

    def _recover_workers(self, timeout_s: float = 600.0) -> None:
        """Wait until every rollout worker answers again (Ray restarts dead ones), then give the
        restarted ones, which came back with the initial weights, the learner's current weights."""
        deadline = time.monotonic() + timeout_s
        stale = []
        for w in self.workers:
            while True:
                try:
                    version = ray.get(w.ping.remote(), timeout=60)
                    break
                except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError) as e:
                    if time.monotonic() > deadline:
                        raise RuntimeError("a rollout worker died and Ray did not restart it (rollout.max_restarts spent?)") from e
                    time.sleep(1.0)
            if version != self.weights_version:
                stale.append(w)
        self.rollout_restarts += 1
        if stale and self.weights_version:
            self.sync_weights(self.weights_version, stale)
        log.warning("%d rollout worker(s) restarted and brought to weights version %d", len(stale), self.weights_version)

    def evaluate(self, step: int = 0) -> dict:
        """Held-out metrics (`rlreason/evaluation.py`): greedy accuracy and, with `eval_sampled`, pass@1
        and pass@k from k = `eval_samples` (0: `rollout.group_size`) samples per problem at the training
        temperature, overall and per category; under a length budget, with the step's budget in the
        prompt and as the cap. Includes `eval/response_length` (greedy)."""
        import dataclasses

        from rlreason import eval_cache
        from rlreason.assets import cache_root
        from rlreason.evaluation import eval_metrics

        cfg = self.cfg
        budget = self.curriculum.budget(max(step, 1))
        max_new = self.curriculum.cap(budget) if budget else None
        prompts = [self.prompt_text(p, budget) for p in self.evals]
        samples = [p.as_sample() for p in self.evals]
        acc = self.reward_plan.accuracy
        k = cfg.eval_samples or cfg.rollout.group_size
        cached = None
        if step == 0 and cfg.eval_cache:  # the initial policy's eval is the same in every run that starts from it
            settings = {"rollout": dataclasses.asdict(cfg.rollout), "k": k if cfg.eval_sampled else 0, "max_new": max_new,
                        "verifier": [acc.name, dict(acc.args)], "categories": [p.category for p in self.evals]}
            cached = (cache_root() / "evals", eval_cache.initial_eval_key(self.policy_path, prompts, samples, settings))
            hit = eval_cache.load(*cached)
            if hit is not None:
                log.info("initial evaluation read from the cache (%s.json; eval_cache=false recomputes it)", cached[1])
                return hit

        def scores(texts: list[str], repeat: int) -> list[float]:
            job = Job(acc.name, texts, [s for s in samples for _ in range(repeat)], dict(acc.args), acc.timeout_s)
            return [r.score for r in self.pool.score([job])[0]]

        batch, texts = self.generate(prompts, seed=0, greedy=True, max_new_tokens=max_new)
        greedy = scores(texts, 1)
        metrics = {"eval/response_length": float(batch.response_mask.sum(-1).float().mean())}
        sampled = None
        if cfg.eval_sampled:
            # one fixed seed for every evaluation of every run: differences between steps and runs come from the weights
            batch, texts = self.generate(prompts, seed=999_983, n=k, max_new_tokens=max_new)
            flat = scores(texts, k)
            sampled = [flat[i * k:(i + 1) * k] for i in range(len(prompts))]
            metrics["eval/sampled_response_length"] = float(batch.response_mask.sum(-1).float().mean())
        metrics.update(eval_metrics([p.category for p in self.evals], greedy, sampled))
        if cached is not None:
            eval_cache.store(*cached, metrics)
        return metrics

    # -- set-up -----------------------------------------------------------------------------------
    def _initial_policy(self) -> tuple[Path, dict | None]:
        from rlreason.data.tokenizer import build_char_tokenizer
        from rlreason.learner.warmstart import warm_start
        from rlreason.policy import build_tiny_moe

        m = self.cfg.model
        if m.kind == "pretrained":
            return Path(m.path), None
        if m.kind in ("smollm2", "smollm2_moe"):  # pretrained instruct models: no warm start
            from rlreason.assets import smollm2_folder

            path = smollm2_folder()
            if m.kind == "smollm2_moe":
                from rlreason.moe.upcycle import upcycled_folder

                path = upcycled_folder(path, m.num_experts, m.top_k)
            return path, None
        tok = build_char_tokenizer()
        if self.cfg.warmstart.enabled:
            return warm_start(m, self.cfg.task, self.cfg.warmstart, self.cfg.seed, tok, self.train, self.cfg.rollout.max_new_tokens)
        path = self.run_dir / "init_policy"
        if not (path / "config.json").exists():
            model = build_tiny_moe(m, len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, self.cfg.seed)
            model.save_pretrained(path)
            tok.save_pretrained(path)
        return path, None

    def _start_actors(self) -> None:
        """The learner actor(s) and rollout workers, with their Ray resources (`*.cpus`, `*.gpus`) and,
        with `ray.placement` other than none, in one placement group of that strategy."""
        cfg = self.cfg
        # threads=0: the node's cores, split among the actors that compute at the same time (the learner
        # ranks together; the rollout workers together; both at once with off_policy_steps=1), since
        # torch's thread pools oversubscribed on shared cores slow each other down manyfold
        share = (2 if cfg.trainer.off_policy_steps else 1)
        threads = lambda n, actors: n or max(1, (os.cpu_count() or 1) // share // actors)  # noqa: E731
        from rlreason.policy import load_tokenizer

        self.tokenizer = load_tokenizer(self.policy_path)  # the policy's own: padding, chat template
        self.pad_id = self.tokenizer.pad_token_id
        has_gpu = ray.cluster_resources().get("GPU", 0) >= 1
        gpus = lambda n: (1.0 if has_gpu else 0.0) if n == -1 else n  # noqa: E731
        L, R = cfg.learner.num_workers, cfg.rollout.num_workers
        learner_res = {"num_cpus": cfg.learner.cpus, "num_gpus": gpus(cfg.learner.gpus)}
        rollout_res = {"num_cpus": cfg.rollout.cpus, "num_gpus": gpus(cfg.rollout.gpus)}
        place = _placement(cfg.ray.placement, [learner_res] * L + [rollout_res] * R)
        # the actors' environment, whether this driver started the cluster or joined one (ray job submit)
        env = {"runtime_env": {"env_vars": dict(QUIET_ENV)}}
        self.learners = [
            ray.remote(Learner).options(**learner_res, **env, **place(k), max_restarts=0).remote(
                str(self.policy_path), _with_threads(cfg.learner, threads(cfg.learner.threads, L)), cfg.algo,
                cfg.rollout.temperature, cfg.rollout.max_new_tokens, cfg.seed, cfg.moe, cfg.model.lora, k,
            )
            for k in range(L)
        ]
        self.learner = self.learners[0]
        if cfg.learner.strategy == "deepspeed":
            addr, port = ray.get(self.learner.address.remote())
            ray.get([lr.connect.remote(addr, port) for lr in self.learners])
        # a rollout worker that dies is restarted by Ray (its __init__ runs again, with the initial
        # weights); `generate` notices, gives it the current weights and retries
        self.workers = [
            ray.remote(RolloutWorker).options(**rollout_res, **env, **place(L + k), max_restarts=cfg.rollout.max_restarts).remote(
                cfg.rollout.engine, str(self.policy_path), threads(cfg.rollout.threads, R), cfg.seed + k,
                cfg.rollout.vllm_kv_cache_gib, cfg.rollout.vllm_gpu_memory_utilization, cfg.rollout.dtype,
                cfg.rollout.share_prefix, cfg.rollout.compact_finished, cfg.rollout.max_batch,
            )
            for k in range(R)
        ]
        self.weights_version = 0
        self.rollout_restarts = 0
        self.learners_call("get_weights")
        ray.get([w.ping.remote() for w in self.workers])

    def learners_call(self, method: str, *args):
        """Call `method` on every learner rank (DeepSpeed steps and ZeRO-3 gathers are collectives) and
        return rank 0's answer. A learner that dies ends the run with `LearnerDied`."""
        return self.learners_get([getattr(lr, method).remote(*args) for lr in self.learners], method)

    def learners_get(self, futures: list, method: str):
        try:
            return ray.get(futures)[0]
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
            last = self.latest_checkpoint()
            raise LearnerDied(
                f"the learner actor died during {method} ({type(e).__name__}); "
                + (f"the last checkpoint is {last}: continue with resume=true run_dir={self.run_dir}" if last
                   else "no checkpoint had been written yet")
            ) from e

    # -- checkpoints ------------------------------------------------------------------------------
    def save_checkpoint(self, step: int) -> Path:
        final = self.ckpt_root / f"step_{step:06d}"
        tmp = self.ckpt_root / f".step_{step:06d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        self.learners_call("save", str(tmp))
        # fault injection for tests: hold the half-written checkpoint open (at one step, if one is named)
        delay = float(os.environ.get("RLREASON_FAULT_CHECKPOINT_DELAY_S", "0"))
        if delay and int(os.environ.get("RLREASON_FAULT_CHECKPOINT_DELAY_STEP", step)) == step:
            time.sleep(delay)
        # the learner saves its own torch RNG and shuffling generator; rollout seeds derive from
        # (seed, step), so the driver holds no random stream that a resume would need. With
        # off_policy_steps=1 the data position is the one before the next step's batch was drawn.
        data = getattr(self, "data_state", None) or self._data_state()
        state = {"step": step, "sampler": data["sampler"], "warmstart": self.warmstart_info,
                 "rollout_tokens": data["rollout_tokens"], "curriculum": data["curriculum"]}
        (tmp / "trainer.json").write_text(json.dumps(state, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        kept = sorted(p for p in self.ckpt_root.glob("step_*") if (p / "trainer.json").exists())
        for old in kept[: -self.cfg.keep_checkpoints] if self.cfg.keep_checkpoints > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def latest_checkpoint(self) -> Path | None:
        done = sorted(p for p in self.ckpt_root.glob("step_*") if (p / "trainer.json").exists())
        return done[-1] if done else None

    def _load_checkpoint(self, d: Path) -> None:
        state = json.loads((d / "trainer.json").read_text())
        self.sampler.load_state_dict(state["sampler"])
        if "curriculum" in state:
            self.curriculum.load_state_dict(state["curriculum"])
        version = self.learners_call("load", str(d))
        self.sync_weights(version)
        self.start_step = self.steps_done = state["step"]
        self.rollout_tokens = state.get("rollout_tokens", 0)
        log.info("resumed from %s: step %d, %d prompts consumed", d, self.start_step, self.sampler.consumed)

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
            "rollout_tokens": self.rollout_tokens,
            "eval_accuracy_before_rl": before.get("accuracy/eval") if before else None,
            "eval_accuracy_after_rl": after["accuracy/eval"],
            "eval_before_rl": before,
            "eval_after_rl": after,
            "warmstart": self.warmstart_info,
        }
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        return summary

    def close(self) -> None:
        for part in ("telemetry", "pool"):
            if hasattr(self, part):
                getattr(self, part).close()


class RewardPlan:
    """Which verifiers score a response, with what weight, and which one is accuracy.

    ``reward.verifiers`` when given; else ``reward.verifier`` (weight 1, accuracy) plus ``format``
    with ``reward.format_weight`` when that is non-zero."""

    def __init__(self, entries: list, accuracy_index: int):
        from rlreason.config import VerifierEntry

        self.entries = entries
        self.accuracy = entries[accuracy_index]
        named = [e for e in entries if e.name == "format"]
        self.format_entry = named[0] if named else VerifierEntry("format", weight=0.0)

    @classmethod
    def from_config(cls, cfg) -> "RewardPlan":
        from rlreason.config import VerifierEntry

        r = cfg.reward
        if r.verifiers:
            entries = list(r.verifiers)
            marked = [i for i, e in enumerate(entries) if e.accuracy]
            return cls(entries, marked[0] if marked else 0)
        entries = [VerifierEntry(r.verifier, 1.0, accuracy=True)]
        if r.format_weight:
            entries.append(VerifierEntry("format", r.format_weight))
        return cls(entries, 0)

    def validators(self) -> list:
        """The verifiers' ``validate(sample)`` functions, for checking data rows as they load."""
        from rewards import load

        found = (load(e.name, dict(e.args)).validate for e in self.entries)
        return [v for v in found if v is not None]


def verifier_metrics(results: dict, pool, seconds: float) -> dict:
    """Timeouts, errors and latency of one scoring round, overall and per verifier."""
    flat = [x for res in results.values() for x in res]
    lat = sorted(x.latency_s for x in flat)
    out = {
        "verifier/timeout_rate": sum(x.status == "timeout" for x in flat) / max(len(flat), 1),
        "verifier/error_rate": sum(x.status == "error" for x in flat) / max(len(flat), 1),
        "verifier/latency_mean_s": sum(lat) / max(len(lat), 1),
        "verifier/latency_p95_s": lat[min(len(lat) - 1, int(0.95 * len(lat)))] if lat else 0.0,
        "verifier/latency_max_s": lat[-1] if lat else 0.0,
        "verifier/restarts": pool.restarts,
        "throughput/verifier_per_s": len(flat) / max(seconds, 1e-9),
    }
    if len(results) > 1:
        for name, res in results.items():
            out[f"verifier/{name}/timeout_rate"] = sum(x.status == "timeout" for x in res) / max(len(res), 1)
            out[f"verifier/{name}/error_rate"] = sum(x.status == "error" for x in res) / max(len(res), 1)
    return out


def zero_std_group_frac(rewards: torch.Tensor, group_index: torch.Tensor) -> float:
    """Share of groups whose rewards are all equal (no GRPO gradient); groups may differ in size."""
    groups = torch.unique(group_index)
    flat = sum(bool((rewards[group_index == g] == rewards[group_index == g][0]).all()) for g in groups)
    return flat / max(len(groups), 1)


def nonzero_grad_sample_frac(rewards: torch.Tensor, group_index: torch.Tensor) -> float:
    """Share of responses in groups whose rewards differ (those that carry a GRPO gradient)."""
    live = 0
    for g in torch.unique(group_index):
        r = rewards[group_index == g]
        live += int(r.numel()) if bool((r != r[0]).any()) else 0
    return live / max(rewards.numel(), 1)


PASS_RATE_BINS = (("0", 0.0, 0.0), ("0-25", 0.0, 0.25), ("25-50", 0.25, 0.5), ("50-75", 0.5, 0.75), ("75-100", 0.75, 1.0),
                  ("100", 1.0, 1.0))


def pass_rate_histogram(correct: torch.Tensor, group_index: torch.Tensor) -> dict:
    """Share of groups by pass rate: exactly 0, (0, .25], (.25, .5], (.5, .75], (.75, 1), exactly 1."""
    from rlreason.algos.filtering import group_pass_rates

    _, rates = group_pass_rates(correct, group_index)
    out = {}
    for name, lo, hi in PASS_RATE_BINS:
        if lo == hi:
            hit = rates == lo
        elif hi == 1.0:
            hit = (rates > lo) & (rates < 1.0)
        else:
            hit = (rates > lo) & (rates <= hi)
        out[f"curriculum/pass_rate/{name}"] = float(hit.double().mean())
    return out


class LearnerDied(RuntimeError):
    """A learner actor died: the run stops (the last checkpoint is intact) and run.py says where it is."""


def _placement(strategy: str, bundles: list[dict]):
    """`place(i)` -> Ray options that put actor i into bundle i of one placement group (or none)."""
    if strategy == "none":
        return lambda i: {}
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    spec = [{"CPU": b["num_cpus"], **({"GPU": b["num_gpus"]} if b["num_gpus"] else {})} for b in bundles]
    pg = placement_group(spec, strategy=strategy.upper())
    ray.get(pg.ready(), timeout=600)
    return lambda i: {"scheduling_strategy": PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=i)}


def _with_threads(learner_cfg, threads: int):
    import dataclasses

    return dataclasses.replace(learner_cfg, threads=threads)
