"""The rollout fleet: `rollout.num_workers` RolloutWorker actors, one engine each, and their weights.

Engine-agnostic: an engine is named once, in the worker (`rlreason/rollout/engine.py`); the fleet only
reads the engine class's `weights_format` to ask the learner for the right payload.

- `generate` splits the prompts across the workers and retries with the same seeds when a worker
  died (Ray restarts it with the initial weights) or answered with stale weights, after bringing
  the restarted ones to the current weights (`rollout.max_restarts` tries).
- `sync(version)` moves the learner's weights (`export`) to every worker: through Ray's object store
  (TENSORS: the learner puts them there itself, the driver only passes the reference) or as an HF
  folder under the run directory that each engine reloads in place (HF_FOLDER). A worker that dies
  during the sync is waited for (Ray restarts it) and the load is repeated; one that does not finish
  within `rollout.sync_timeout_s` is killed, restarted and loaded again. Then every worker's
  fingerprint of the weights it serves is compared with the learner's (`rollout.check_sync`).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np
import ray

from rlreason import QUIET_ENV
from rlreason.batch import RolloutBatch
from rlreason.rollout.engine import ENGINES
from rlreason.rollout.worker import RolloutWorker
from rlreason.transfer import HF_FOLDER, WeightsFolder
from rlreason.weights_check import mismatches

log = logging.getLogger(__name__)


class SyncMismatch(RuntimeError):
    """A rollout worker serves other weights than the learner sent (`RolloutFleet.check_served`)."""


class SyncTimeout(RuntimeError):
    """Rollout workers kept failing to load new weights within `rollout.sync_timeout_s`."""


DEAD = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)


class RolloutFleet:
    def __init__(self, cfg, policy_path, learners, threads: int, resources: dict, place, pad_id: int, run_dir: Path):
        """`place(k)`: Ray options for worker k; `learners`: the LearnerGroup whose weights it serves."""
        r = cfg.rollout
        self.cfg = r
        self.learners = learners
        self.pad_id = pad_id
        self.weights_format = ENGINES.get(r.engine).weights_format
        self.sync_dir = str((Path(run_dir) / "weights_sync").resolve())  # HF_FOLDER engines reload from here
        env = {"runtime_env": {"env_vars": dict(QUIET_ENV)}}  # as the learners' (learners.py)
        # rollout.partial: `interrupt` runs on its own thread ("control"), beside the generation it interrupts
        actor = ray.remote(concurrency_groups={"control": 1})(RolloutWorker) if r.partial else ray.remote(RolloutWorker)
        # a worker that dies is restarted by Ray (its __init__ runs again, with the initial weights);
        # `generate` notices, gives it the current weights and retries
        self.workers = [
            actor.options(**resources, **env, **place(k), max_restarts=r.max_restarts).remote(
                r.engine, str(policy_path), threads, r, cfg.seed + k, cfg.model.chat_template)
            for k in range(r.num_workers)
        ]
        self.weights_version = 0
        self.restarts = 0  # recoveries so far (faults/rollout_recoveries)
        self.sync_metrics: dict = {}  # the last checked sync's sync/* metrics
        self._unchecked_warned = False
        self._exported = None  # (version, payload or None when it went by broadcast) of the last sync
        self._peak_refs = None  # peak_memory(wait=False): the question asked last
        self.group_ok = False  # rollout.weight_transport=collective: every worker is in the learner's weights group
        self._expected: dict = {}  # (version, grouping, dtype) -> futures of the learner's fingerprint of that export
        self.async_mode = False  # trainer.mode=async (AsyncRollouts): syncs of restarted workers only, never by broadcast
        self.published_async: int | None = None  # trainer.mode=async: the version last published by broadcast
        ray.get([w.ping.remote() for w in self.workers])
        if r.weight_transport == "collective":
            self.join_group()

    def generate(self, prompts: list[str], seed: int, greedy: bool = False, n: int | list[int] | None = None,
                 max_new_tokens: int | None = None, samples: list[dict] | None = None) -> tuple[RolloutBatch, list[str]]:
        """n samples per prompt (one n, or a list with one count per prompt) across the workers; `samples`
        (one per prompt) reset multi-turn environments."""
        r = self.cfg
        n = n or (1 if greedy else r.group_size)
        counts = n if isinstance(n, list) else [n] * len(prompts)
        shards = np.array_split(np.arange(len(prompts)), len(self.workers))
        for attempt in range(r.max_restarts + 1):
            futures = [
                w.generate.remote([prompts[i] for i in shard], int(shard[0]) if len(shard) else 0, [counts[i] for i in shard],
                                  max_new_tokens or r.max_new_tokens, r.temperature, r.top_p, greedy, seed + k,
                                  [samples[i] for i in shard] if samples else None)
                for k, (w, shard) in enumerate(zip(self.workers, shards)) if len(shard)
            ]
            try:
                results = ray.get(futures)
                # a worker Ray restarted before this call came back with the initial weights
                if all(b.weights_version == self.weights_version for b, _ in results):
                    break
                problem = "a rollout worker answered with stale weights (it was restarted)"
            except DEAD as e:
                problem = f"a rollout worker died ({type(e).__name__})"
                if attempt == r.max_restarts:
                    raise RuntimeError(f"rollout workers failed {attempt + 1} times in one generation call; giving up") from e
            log.warning("%s; waiting for Ray to restart it, then retrying with the same seeds", problem)
            self.recover()
        else:
            raise RuntimeError(f"rollout workers kept answering with stale weights after {r.max_restarts + 1} tries")
        batch = RolloutBatch.concat([b for b, _ in results], self.pad_id)
        texts = [t for _, ts in results for t in ts]
        return batch, texts

    def export(self, version: int):
        """The learner's current weights as the workers' payload, labelled `version`: a reference into the
        object store (TENSORS: the learner puts them there itself, the driver never fetches them) or an HF
        folder under the run directory, one per version (HF_FOLDER). The last export is kept, so a worker
        restarted later gets the very same weights even if the learner has trained on since (async)."""
        if self._exported is not None and self._exported[0] == version and self._exported[1] is not None:
            return self._exported[1]
        if self.published_async == version:  # broadcast under async: from the learner's copy (it has trained on since)
            if self.weights_format == HF_FOLDER:
                payload = WeightsFolder(self.learners.call("export_published", version, f"{self.sync_dir}/v{version}"))
            else:
                (payload,) = self.learners.call("export_published", version)
        elif self.weights_format == HF_FOLDER:
            payload = WeightsFolder(self.learners.call("save_weights", f"{self.sync_dir}/v{version}"))
        else:
            (payload,) = self.learners.call("put_weights")
        self._exported = (version, payload)
        return payload

    def expect(self, version: int, grouping: str, dtype: str) -> list:
        """Futures of the learner's fingerprint of export `version`, as `grouping`/`dtype` engines see it.
        Under async the driver asks right after `export`, before the learner trains on; it is kept until
        that version is checked."""
        key = (version, grouping, dtype)
        if key not in self._expected:
            if self._exported is None or self._exported[0] != version:
                raise RuntimeError(f"the learner's fingerprint of weights version {version} was not taken when they were exported")
            self._expected[key] = self.learners.submit("weights_fingerprint", grouping, dtype)
        return self._expected[key]

    def join_group(self) -> None:
        """rollout.weight_transport=collective: learner rank 0 and every worker form a new weights group
        (`rlreason/collective.py`), on a fresh port, so a worker Ray restarted is in it again."""
        host, port = self.learners.call("address")
        world, timeout = 1 + len(self.workers), self.cfg.sync_timeout_s
        refs = [*self.learners.submit("join_weights_group", host, port, world, timeout),
                *[w.join_weights_group.remote(host, port, k + 1, world, timeout) for k, w in enumerate(self.workers)]]
        ray.get(refs, timeout=timeout)
        self.group_ok = True

    def broadcast(self, version: int) -> bool:
        """The collective sync to every worker; False (and the group marked broken) when a member died or
        timed out, after which the caller syncs through the object store."""
        if not self.group_ok:
            try:
                self._versions()
                self.join_group()
            except (*DEAD, ray.exceptions.GetTimeoutError) as e:
                log.warning("rollout: the weights group could not be formed again (%s); syncing through the object store",
                            type(e).__name__)
                return False
        bucket = self.cfg.collective_bucket_mb
        checkpoint_layout = self.weights_format == HF_FOLDER  # engines that load checkpoints get the whole (merged) weights
        refs = [*self.learners.submit("broadcast_weights", version, bucket, checkpoint_layout),
                *[w.receive_weights.remote(version, bucket) for w in self.workers]]
        try:
            ray.get(refs, timeout=self.cfg.sync_timeout_s)
        except (*DEAD, ray.exceptions.GetTimeoutError, ray.exceptions.RayTaskError) as e:
            log.warning("rollout: the collective weight sync failed (%s); syncing through the object store, and the "
                        "group is formed again at the next sync", type(e).__name__)
            self.group_ok = False
            self.restarts += 1
            return False
        self._exported = (version, None)
        return True

    def publish_async(self, version: int) -> bool:
        """trainer.mode=async, rollout.weight_transport=collective: the learner copies `version` and broadcasts it
        in the background (`Learner.publish_weights`); the caller queues each worker's `receive_weights`. False
        when the group is broken (a worker died or a broadcast failed): the caller then loads through the object
        store, as for the rest of the run (forming the group again would wait for every worker's generation)."""
        if self.cfg.weight_transport != "collective" or not self.group_ok:
            return False
        self.learners.submit("publish_weights", version, self.cfg.collective_bucket_mb, self.weights_format == HF_FOLDER)
        self.published_async = version
        self._exported = (version, None)
        return True

    def sync(self, version: int, workers: list | None = None) -> None:
        """Give `workers` (default: all) the learner's weights labelled `version`; block until they serve them.
        Under rollout.weight_transport=collective a sync to every worker goes by broadcast."""
        workers = self.workers if workers is None else workers
        if (self.cfg.weight_transport == "collective" and len(workers) == len(self.workers) and not self.async_mode
                and self.broadcast(version)):  # under async only `publish_async` broadcasts (the learner trains meanwhile)
            self._finish_sync(version, workers)
            return
        payload = self.export(version)
        timeout = self.cfg.sync_timeout_s
        for attempt in range(self.cfg.max_restarts + 1):
            refs = [w.load_weights.remote(payload, version) for w in workers]
            try:  # loading is idempotent: after a death or a hang, every worker of the call loads again
                ray.get(refs, timeout=timeout)
                break
            except ray.exceptions.GetTimeoutError as e:
                _, pending = ray.wait(refs, num_returns=len(refs), timeout=0)
                hung = [self.workers.index(workers[refs.index(r)]) for r in pending]
                if attempt == self.cfg.max_restarts:
                    raise SyncTimeout(f"rollout worker(s) {hung} did not finish loading the weights of version {version} within "
                                      f"rollout.sync_timeout_s={timeout:g} s, {attempt + 1} times (each time restarted); "
                                      "giving up rather than waiting forever.") from e
                log.warning("rollout worker(s) %s did not load the weights within rollout.sync_timeout_s=%g s; restarting "
                            "them and syncing again", hung, timeout)
                self.restart(hung)
            except DEAD as e:
                if attempt == self.cfg.max_restarts:
                    raise RuntimeError(f"rollout workers died {attempt + 1} times in one weight sync; giving up") from e
                log.warning("a rollout worker died during the weight sync (%s); waiting for Ray to restart it, then "
                            "syncing again", type(e).__name__)
                self._versions()
                self.restarts += 1
                self.group_ok = False
        self._finish_sync(version, workers)

    def _finish_sync(self, version: int, workers: list) -> None:
        self.weights_version = version
        if self.cfg.check_sync:
            try:
                self.check_served(version, workers)
            except DEAD as e:  # died between its load and its check: restarted, reloaded (and checked), then all again
                log.warning("a rollout worker died before its weights were checked (%s); reloading it", type(e).__name__)
                self.recover()
                self.check_served(version, workers)
        if len(workers) == len(self.workers):
            self.prune_folders(version)
            self.forget_expected(version)

    def forget_expected(self, version: int) -> None:
        """Drop the learner's fingerprints of versions before `version` (every worker serves it or newer)."""
        for key in [k for k in self._expected if k[0] < version]:
            del self._expected[key]

    def restart(self, hung: list[int]) -> None:
        """Kill workers that hang (Ray restarts them with the initial weights) and wait until they answer."""
        for k in hung:
            ray.kill(self.workers[k], no_restart=False)
        self._versions()
        self.restarts += 1
        self.group_ok = False  # a restarted worker is in no weights group

    def prune_folders(self, version: int) -> None:
        """Every worker serves `version`: the HF folders of older versions can go."""
        root = Path(self.sync_dir)
        for folder in root.glob("v*") if root.is_dir() else ():
            if folder.name[1:].isdigit() and int(folder.name[1:]) < version:
                shutil.rmtree(folder, ignore_errors=True)

    def check_served(self, version: int, workers: list, served: list | None = None) -> None:
        """Every worker's fingerprint of the weights it now serves must equal the learner's
        (`rlreason/weights_check.py`); a difference stops the run naming the worker and the weights.
        `served`: the workers' `served_weights()` answers when the caller has them. Sets `sync_metrics`
        (sync/fingerprint_ok, sync/bytes) for the step's log."""
        if served is None:
            try:
                served = ray.get([w.served_weights.remote() for w in workers], timeout=self.cfg.sync_timeout_s)
            except ray.exceptions.GetTimeoutError as e:
                raise SyncTimeout(f"rollout workers did not fingerprint the weights of version {version} within "
                                  f"rollout.sync_timeout_s={self.cfg.sync_timeout_s:g} s; giving up rather than wait forever.") from e
        if served[0] is None:
            if not self._unchecked_warned:
                log.warning("rollout.engine=%s cannot fingerprint its weights: weight syncs are not checked", self.cfg.engine)
                self._unchecked_warned = True
            return
        grouping, dtype = served[0]["grouping"], served[0]["dtype"]
        if (version, grouping, dtype) not in self._expected and self._exported is not None and version < self._exported[0]:
            return  # superseded: its fingerprint is gone and every worker has a newer version queued, which is checked
        expected = self.learners.wait(self.expect(version, grouping, dtype), "weights_fingerprint")
        for w, answer in zip(workers, served):
            bad = mismatches(expected, answer["groups"])
            if bad or answer["version"] != version:
                first = bad[0] if bad else f"it serves version {answer['version']}"
                raise SyncMismatch(
                    f"the weight sync to version {version} was not served as sent: rollout worker {self.workers.index(w)} "
                    f"differs from the learner in {len(bad)} of {len(expected)} weight groups (first: {first}). The "
                    f"transfer or the engine's load is broken; the run stops rather than train on samples from other weights.")
        self.sync_metrics = {"sync/fingerprint_ok": 1.0, "sync/bytes": float(sum(a["bytes"] for a in served))}

    def recover(self) -> None:
        """Wait until every worker answers again (Ray restarts dead ones), then give the restarted
        ones, which came back with the initial weights, the current weights."""
        stale = [w for w, version in zip(self.workers, self._versions()) if version != self.weights_version]
        self.restarts += 1
        self.group_ok = self.group_ok and not stale  # a restarted worker is in no weights group
        if stale and self.weights_version:
            self.sync(self.weights_version, stale)
        log.warning("%d rollout worker(s) restarted and brought to weights version %d", len(stale), self.weights_version)

    def _versions(self, timeout_s: float = 600.0) -> list[int]:
        """Every worker's weights version, waiting for Ray to restart the dead ones."""
        deadline = time.monotonic() + timeout_s
        versions = []
        for w in self.workers:
            while True:
                try:
                    versions.append(ray.get(w.ping.remote(), timeout=60))
                    break
                except (*DEAD, ray.exceptions.GetTimeoutError) as e:
                    if time.monotonic() > deadline:
                        raise RuntimeError("a rollout worker died and Ray did not restart it (rollout.max_restarts spent?)") from e
                    time.sleep(1.0)
        return versions

    def peak_memory(self, wait: bool = True) -> dict:
        """Peak RSS of the largest worker (and CUDA peak where there is a GPU), MiB. `wait=False`
        (trainer.mode=async): the answer to the previous call, so the driver never queues behind a
        generation in flight; the first call returns {}."""
        ask = lambda: [w.peak_memory_mb.remote() for w in self.workers]  # noqa: E731
        if wait:
            refs = ask()
        else:
            refs = self._peak_refs
            if refs is None or ray.wait(refs, num_returns=len(refs), timeout=0)[1]:  # none asked yet, or not answered
                self._peak_refs = refs or ask()
                return {}
            self._peak_refs = ask()
        try:
            peaks = ray.get(refs, timeout=30)
        except Exception as e:  # noqa: BLE001 - a metric must not stop training; a dead worker is handled in generate
            log.debug("rollout peak memory not read: %s", e)
            return {}
        out = {"memory/rollout_peak_rss_mb": max(p["rss"] for p in peaks)}
        if peaks[0]["cuda"] is not None:
            out["memory/rollout_peak_cuda_mb"] = max(p["cuda"] for p in peaks)
        return out
