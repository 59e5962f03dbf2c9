"""Where the actors run: Ray resources per actor, torch threads per actor, one optional placement group."""

from __future__ import annotations

import os

import ray


def threads_per_actor(requested: int, actors: int, overlapped: bool) -> int:
    """`requested`, or (0) the node's cores split among the actors that compute at the same time: the
    learner ranks together, the rollout workers together, both at once when generation overlaps the
    update (off_policy_steps=1). torch's thread pools oversubscribed on shared cores slow each other
    down manyfold."""
    share = 2 if overlapped else 1
    return requested or max(1, (os.cpu_count() or 1) // share // actors)


def gpus(requested: float) -> float:
    """`-1`: one GPU per actor when the cluster has GPUs, else none; anything else as given."""
    if requested != -1:
        return requested
    return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0


def placement(strategy: str, bundles: list[dict]):
    """`place(i)` -> Ray options that put actor i into bundle i of one placement group (or none)."""
    if strategy == "none":
        return lambda i: {}
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    spec = [{"CPU": b["num_cpus"], **({"GPU": b["num_gpus"]} if b["num_gpus"] else {})} for b in bundles]
    pg = placement_group(spec, strategy=strategy.upper())
    ray.get(pg.ready(), timeout=600)
    return lambda i: {"scheduling_strategy": PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=i)}
