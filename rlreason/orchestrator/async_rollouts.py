"""trainer.mode=async: the rollout workers generate the batches of future steps while the learner
trains, up to `trainer.max_staleness` weight versions ahead (`staleness.py`).

Work is planned a step at a time, exactly as the synchronous fleet would do it: the curriculum draws
the step's prompts (`BatchBuilder.plan`), and they are split over the workers in the same shards and
with the same seeds as `RolloutFleet.generate`. Each worker then runs its shards one after another,
one call in flight at a time, so a weight load queued behind the call in flight takes effect before
its next shard: a worker never waits for the slowest worker, only for the gate. With
max_staleness = 0 the batches are those of synchronous training, bit for bit.

New weights are published without waiting: the learner exports them (and fingerprints them, before
it trains on), every worker's load is queued, and the loads are checked against the fingerprint as
they complete. A worker that dies, or answers with weights older than it was given (Ray restarted
it), is brought to the published weights again and its shard generated again with the same seed;
a shard is accepted once, so a fault neither loses a sample nor duplicates one.

With rollout.weight_transport=collective the learner copies the weights and broadcasts the copy from a
thread of its own, and each worker receives it in place of the load. A broadcast completes only when
every worker has come to it, so there a worker does wait for the slowest worker's shard at each
publish (rollout.partial cuts that wait to one token). A failed broadcast (a worker died or timed out)
sends that version, and every later one, through the object store.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import ray
import torch

from rlreason.batch import RolloutBatch
from rlreason.orchestrator.fleet import DEAD, SyncTimeout
from rlreason.orchestrator.staleness import fresh_groups, may_start, sample_staleness

log = logging.getLogger(__name__)


@dataclass
class Shard:
    """One worker's share of one round of one step."""
    step: int
    round: int
    worker: int
    rows: np.ndarray  # the round's prompt positions it generates
    seed: int
    published: int = 0  # the version published when it was dispatched: its answer must be at least as new
    partial: RolloutBatch | None = None  # rollout.partial: what it had generated when a weight update interrupted it
    resumes: int = 0


@dataclass
class Load:
    """One worker's load of a published version, with its fingerprint answer."""
    worker: int
    version: int
    refs: list  # [load_weights] or [load_weights, served_weights]
    ready_since: float | None = None  # when the worker had nothing before it (the sync timeout counts from here)
    answers: dict = field(default_factory=dict)  # position in refs -> its answer
    broadcast: bool = False  # received by broadcast: it completes only once every worker has come to it


class AsyncRollouts:
    def __init__(self, fleet, plan, max_staleness: int, last_step: int, version: int, check_sync: bool):
        """`plan(step, round)`: BatchBuilder.plan; `version`: the weights the workers serve now."""
        self.fleet, self.plan, self.eta, self.last_step = fleet, plan, max_staleness, last_step
        self.published = version
        self.next_step = version + 1  # the next step whose round 0 is planned
        self.plans: dict[tuple[int, int], object] = {}  # (step, round) -> RoundPlan
        self.results: dict[tuple[int, int], dict[int, tuple]] = {}  # (step, round) -> worker -> (batch, texts)
        self.queues = [deque() for _ in fleet.workers]  # shards waiting for each worker
        self.running: dict = {}  # ref -> Shard (at most one per worker)
        self.loads: dict = {}  # ref -> Load
        self.published_at: dict[int, float] = {}
        self.served: dict[int, dict] = {}  # version -> worker -> its fingerprint answer, until all have loaded
        self.idle_since = [time.perf_counter()] * len(fleet.workers)
        self.idle_s = [0.0] * len(fleet.workers)
        self.wait_s = 0.0  # the learner's wait for its batch, this step
        self.dropped = 0  # groups dropped at the consume check, all run
        self.hung_restarts = 0
        self.interrupted = 0  # shards a weight update interrupted (rollout.partial), this step
        self.resumed_tokens = 0  # the tokens they had generated, kept and continued, this step
        self.layout = None  # (grouping, dtype) of the engines' fingerprints
        fleet.async_mode = True
        # the weights served now, and their fingerprint, kept for a worker restarted before the first publish
        # (the learner is training by then)
        fleet.export(version)
        if check_sync:
            first = ray.get(fleet.workers[0].served_weights.remote(), timeout=fleet.cfg.sync_timeout_s)
            self.layout = None if first is None else (first["grouping"], first["dtype"])
            if first is None:
                fleet.check_served(version, fleet.workers[:1], served=[None])  # says once that syncs go unchecked
            else:
                fleet.expect(version, *self.layout)

    # -- the learner's side ------------------------------------------------------------------------
    def round(self, step: int, rnd: int):
        """(plan, batch, texts) of round `rnd` of `step`, which trains from version step - 1: waits for
        its shards (generating what the gate allows meanwhile) and drops groups staler than the bound."""
        t0 = time.perf_counter()
        key = (step, rnd)
        if rnd > 0:  # a refill round (dynamic sampling): planned now, ahead of every later step's shards
            self._enqueue(step, rnd, urgent=True)
        elif step >= self.next_step:  # planned in step order, as the gate would have
            self.next_step = step
            self._enqueue(step, 0)
            self.next_step += 1
        self._pump()
        while len(self.results.get(key, {})) < self._n_shards(key):
            self._wait_any([])
        self.wait_s += time.perf_counter() - t0
        plan = self.plans.pop(key)
        parts = self.results.pop(key)
        batch = RolloutBatch.concat([parts[k][0] for k in sorted(parts)], self.fleet.pad_id)
        texts = [t for k in sorted(parts) for t in parts[k][1]]
        return self._consume_check(plan, batch, texts, learner_version=step - 1)

    def train(self, futures: list) -> None:
        """Keep the workers generating until the learner's `futures` are done."""
        self._pump()
        while ray.wait(futures, num_returns=len(futures), timeout=0)[1]:
            self._wait_any(futures)

    def publish(self, version: int) -> None:
        """The learner has finished the update to `version`: export it and queue its load on every
        worker, behind at most the shard each is generating; the gate then admits one step more."""
        fleet = self.fleet
        broadcast = fleet.publish_async(version)
        if broadcast:  # each worker receives after its shard in flight
            bucket = fleet.cfg.collective_bucket_mb
            start_load = lambda w: w.receive_weights.remote(version, bucket)  # noqa: E731
        else:
            payload = fleet.export(version)
            start_load = lambda w: w.load_weights.remote(payload, version)  # noqa: E731
        if self.layout is not None:
            fleet.expect(version, *self.layout)  # fingerprinted now, before the learner trains on
        now = time.perf_counter()
        busy = {s.worker for s in self.running.values()}
        if fleet.cfg.partial:  # generations on older weights end at their next token, and continue after the load
            for k in busy:
                fleet.workers[k].interrupt.options(concurrency_group="control").remote(version)
        for k, w in enumerate(fleet.workers):
            refs = [start_load(w)]
            if self.layout is not None:
                refs.append(w.served_weights.remote())
            load = Load(k, version, refs, ready_since=None if k in busy else now, broadcast=broadcast)
            for ref in refs:
                self.loads[ref] = load
        self.published = fleet.weights_version = version
        self.published_at[version] = now
        self._pump()

    def settle(self) -> None:
        """Wait until every worker serves the published weights, checked (before an evaluation, at the end)."""
        while self.loads:
            self._wait_any([])

    def step_metrics(self) -> dict:
        """async/*, timing/wait_batch_s and timing/rollout_idle_s since the last call (one step)."""
        now = time.perf_counter()
        idle = [s + (now - t if not self._busy(k) else 0.0) for k, (s, t) in enumerate(zip(self.idle_s, self.idle_since))]
        self.idle_s = [0.0] * len(idle)
        self.idle_since = [now] * len(idle)
        out = {
            "async/version": self.published,
            "async/queue_groups": sum(len(self.plans[k].indices) for k in self.results if k in self.plans
                                      and len(self.results[k]) == self._n_shards(k)),
            "async/inflight_groups": sum(len(s.rows) for s in self.running.values()),
            "async/dropped_stale": self.dropped,
            "async/interrupted": self.interrupted,
            "async/resumed_tokens": self.resumed_tokens,
            "timing/wait_batch_s": self.wait_s,
            "timing/rollout_idle_s": float(np.mean(idle)),  # per worker
        }
        self.wait_s, self.interrupted, self.resumed_tokens = 0.0, 0, 0
        return out

    # -- the workers' side -------------------------------------------------------------------------
    def _enqueue(self, step: int, rnd: int, urgent: bool = False) -> None:
        """Plan a round and queue its shards, split as `RolloutFleet.generate` splits a call."""
        plan = self.plans[(step, rnd)] = self.plan(step, rnd)
        shards = np.array_split(np.arange(len(plan.prompts)), len(self.fleet.workers))
        for k, rows in enumerate(shards):
            if len(rows):
                shard = Shard(step, rnd, k, rows, plan.seed + k)
                (self.queues[k].appendleft if urgent else self.queues[k].append)(shard)

    def _n_shards(self, key) -> int:
        return min(len(self.plans[key].prompts), len(self.fleet.workers))

    def _busy(self, k: int) -> bool:
        return any(s.worker == k for s in self.running.values())

    def _pump(self) -> None:
        """Plan every step the gate admits, and give each idle worker its next shard."""
        while self.next_step <= self.last_step and may_start(self.next_step, self.published, self.eta):
            self._enqueue(self.next_step, 0)
            self.next_step += 1
        for k, queue in enumerate(self.queues):
            if queue and not self._busy(k):
                self._dispatch(queue.popleft())

    def _dispatch(self, shard: Shard) -> None:
        k, plan, r = shard.worker, self.plans[(shard.step, shard.round)], self.fleet.cfg
        shard.published = self.published
        worker = self.fleet.workers[k]
        if shard.partial is not None:  # continue from its tokens, on the weights loaded since
            ref = worker.resume.remote(shard.partial, plan.max_new_tokens, r.temperature, r.top_p,
                                       shard.seed + 1_000_003 * shard.resumes)
        else:
            prompts = [plan.prompts[i] for i in shard.rows]
            counts = [plan.counts[i] for i in shard.rows]
            ref = worker.generate.remote(prompts, int(shard.rows[0]), counts, plan.max_new_tokens, r.temperature, r.top_p,
                                         False, shard.seed, [plan.samples[i] for i in shard.rows] if plan.samples else None)
        self.running[ref] = shard
        self.idle_s[k] += time.perf_counter() - self.idle_since[k]

    def _wait_any(self, futures: list) -> None:
        """Handle the next finished shard or load (or return when one of `futures` finishes)."""
        pending = [*self.running, *self.loads]
        timeout = self._load_deadline()
        done, _ = ray.wait(pending + futures, num_returns=1, timeout=timeout)
        if not done:
            self._restart_hung_loads()
            return
        ref = done[0]
        if ref in self.running:
            self._shard_done(ref)
        elif ref in self.loads:
            self._load_done(ref)
        self._pump()

    def _shard_done(self, ref) -> None:
        shard = self.running.pop(ref)
        k = shard.worker
        self.idle_since[k] = time.perf_counter()
        for load in self.loads.values():  # a load queued behind this shard starts now
            if load.worker == k and load.ready_since is None:
                load.ready_since = self.idle_since[k]
        try:
            batch, texts = ray.get(ref)
            problem = None if batch.weights_version >= shard.published else "answered with weights older than it was given"
        except DEAD as e:
            problem = f"died ({type(e).__name__})"
        if problem is not None:
            log.warning("rollout worker %d %s; bringing it to weights version %d and generating its shard again", k, problem,
                        self.published)
            self._recover()
            self.queues[k].appendleft(shard)
            return
        if batch.meta.get("unfinished"):  # rollout.partial: a weight update cut it short
            self.interrupted += 1
            self.resumed_tokens += batch.meta["unfinished_tokens"]
            shard.partial, shard.resumes = batch, shard.resumes + 1
            self.queues[k].appendleft(shard)  # behind the load that interrupted it
            return
        self.results.setdefault((shard.step, shard.round), {})[k] = (batch, texts)

    def _load_done(self, ref) -> None:
        load = self.loads.pop(ref)
        try:
            load.answers[load.refs.index(ref)] = ray.get(ref)
        except (*DEAD, ray.exceptions.RayTaskError) as e:
            if not isinstance(e, DEAD):  # a failed broadcast (a peer died or timed out); anything else is a bug
                if self.fleet.published_async is None:
                    raise
                log.warning("rollout worker %d could not receive weights version %d by broadcast (%s); loading through "
                            "the object store from now on", load.worker, load.version, type(e).__name__)
            for other in [r for r, ld in self.loads.items() if ld is load]:
                del self.loads[other]
            self._recover()
            return
        if len(load.answers) < len(load.refs):
            return
        served = self.served.setdefault(load.version, {})
        served[load.worker] = load.answers.get(1)
        if any(ld.version == load.version for ld in self.loads.values()):
            return
        # every worker serves it (or serves a newer version already): check all, then log the sync
        if self.layout is not None:
            workers = sorted(served)
            self.fleet.check_served(load.version, [self.fleet.workers[k] for k in workers], served=[served[k] for k in workers])
        self.fleet.sync_metrics = {**self.fleet.sync_metrics, "sync/s": time.perf_counter() - self.published_at.pop(load.version)}
        del self.served[load.version]
        self.fleet.prune_folders(load.version)
        # versions still loading keep their fingerprints (their loads may be handled after a newer version's), and
        # so does the published one (a worker restarted later is checked against it; the learner has moved on)
        self.fleet.forget_expected(min([ld.version for ld in self.loads.values()] + [self.published]))

    def _recover(self) -> None:
        """Wait for Ray to restart dead workers; give every worker behind the published version its
        weights again (the very payload published, `RolloutFleet.export`) and check them."""
        fleet = self.fleet
        fleet.group_ok = False  # under async the group is not formed again: publishes go through the object store
        versions = fleet._versions()
        stale = [w for w, v in zip(fleet.workers, versions) if v != self.published]
        fleet.restarts += bool(stale)
        stale_ids = {fleet.workers.index(w) for w in stale}
        for ref in [r for r, ld in self.loads.items() if ld.worker in stale_ids]:
            del self.loads[ref]
        for ref in [r for r, s in self.running.items() if s.worker in stale_ids]:  # lost with the process
            shard = self.running.pop(ref)
            self.queues[shard.worker].appendleft(shard)
        if stale:
            fleet.sync(self.published, stale)

    def _load_deadline(self) -> float | None:
        """Seconds until the oldest started load passes rollout.sync_timeout_s (None: no load started)."""
        started = [t for t in map(self._started, self.loads.values()) if t is not None]
        if not started:
            return None
        return max(0.0, min(started) + self.fleet.cfg.sync_timeout_s - time.perf_counter())

    def _started(self, load: Load) -> float | None:
        """When `load` could start: its worker had nothing before it, and for a broadcast every worker had."""
        if not load.broadcast:
            return load.ready_since
        peers = [ld.ready_since for ld in self.loads.values() if ld.version == load.version]
        return None if None in peers else max(peers)

    def _restart_hung_loads(self) -> None:
        timeout = self.fleet.cfg.sync_timeout_s
        hung = sorted({ld.worker for ld in self.loads.values()
                       if self._started(ld) is not None and time.perf_counter() - self._started(ld) >= timeout})
        if not hung:
            return
        self.hung_restarts += 1
        if self.hung_restarts > self.fleet.cfg.max_restarts:
            raise SyncTimeout(f"rollout worker(s) {hung} did not load the weights of version {self.published} within "
                              f"rollout.sync_timeout_s={timeout:g} s, and the restarts are spent; giving up rather than wait forever.")
        log.warning("rollout worker(s) %s did not load the weights within rollout.sync_timeout_s=%g s; restarting them", hung, timeout)
        for k in hung:
            ray.kill(self.fleet.workers[k], no_restart=False)
        self._recover()

    # -- the consume check -------------------------------------------------------------------------
    def _consume_check(self, plan, batch: RolloutBatch, texts: list[str], learner_version: int):
        """Drop (and count) the groups staler than the bound; the rest keep their order."""
        staleness = sample_staleness(batch.versions, learner_version)
        keep = fresh_groups(staleness, batch.group_index, self.eta)
        if bool(keep.all()):
            return plan, batch, texts
        groups = sorted(set(batch.group_index[keep].tolist()))
        self.dropped += len(plan.indices) - len(groups)
        log.warning("step %d: %d group(s) were generated more than trainer.max_staleness=%d versions ago; dropped",
                    plan.step, len(plan.indices) - len(groups), self.eta)
        if not groups:
            raise RuntimeError(f"step {plan.step}: every group is staler than trainer.max_staleness={self.eta}; the "
                               "staleness gate is broken (this should not happen)")
        rows = torch.nonzero(keep).flatten()
        out = batch.select(rows)
        _, out.group_index = torch.unique_consecutive(out.group_index, return_inverse=True)
        plan.indices = [plan.indices[g] for g in groups]
        plan.counts = [plan.counts[g] for g in groups]
        return plan, out, [texts[i] for i in rows.tolist()]
