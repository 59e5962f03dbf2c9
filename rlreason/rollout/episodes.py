"""Multi-turn rollouts, token in and token out: the model's turns and the environment's replies as one
trajectory of token ids per response.

    for turn in 1..max_turns:
        every live episode's ids so far  ->  engine.generate_ids  ->  its turn's sampled ids (cut at a stop string)
        env.step(turn) for every live episode, concurrently (tool calls run there, each with a timeout)
        episodes not done get [end-of-turn] + the observation's ids appended (`envs/render.py`), never re-rendered

The engine is fed each episode's `Trajectory.input_ids()` and the ids it reports as fed are checked
against them (`Trajectory.check_fed`), so what the learner trains on is what was sampled, token for
token. The response the learner sees is every segment after the prompt; `loss_mask` is 1 on the sampled
tokens only, so observations and template tokens get no gradient, and their log-probs (0) and versions
(-1) are never read.

Turn boundaries:
- a turn ends on the end-of-turn token (EOS), on one of `rollout.stop` (the sampled ids are kept up to and
  including the token that completes the string; with a chat template an end-of-turn token is then
  appended as a `bridge` token, as the template would close the turn), or on its token budget;
- a turn cut by its budget ends the episode (truncated), as does the environment's `done`, the last turn
  (`min(rollout.max_turns, env.max_turns)`) and `rollout.max_total_tokens` (prompt + every segment): an
  observation that does not fit is cut to what fits and ends the episode (truncated).

The task's verifier scores the text of the final model turn (`texts`). Per response, what its episode
did is in `RolloutBatch.env_stats` (columns `ENV_STATS`), summarised by `env_metrics`. Not carried on
multi-turn batches: routed experts (routing replay needs every turn's routes; the config refuses it).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import torch

from rlreason.batch import RolloutBatch, per_prompt_counts
from rlreason.envs.base import Environment, Turn
from rlreason.envs.render import ObservationRenderer
from rlreason.envs.trajectory import Segment, Trajectory
from rlreason.rollout.stop_strings import StopStrings, decode_escapes

ENV_STATS = ("turns", "tool_calls", "tool_errors", "tool_timeouts", "tool_s", "obs_tokens", "truncated")


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, width - len(r):], mask[b, width - len(r):] = torch.tensor(r, dtype=torch.long), 1
    return ids, mask


class EpisodeRunner:
    """Runs the episodes of one generation call through an engine with `generate_ids`."""

    def __init__(self, engine, make_env: Callable[[], Environment], max_turns: int, max_total_tokens: int = 0,
                 stop: list[str] = (), chat_template: bool = False):
        self.engine, self.make_env = engine, make_env
        self.max_turns, self.max_total_tokens = max_turns, max_total_tokens or 1 << 30
        self.tokenizer = engine.tokenizer
        self.stops = StopStrings(self.tokenizer, [decode_escapes(s) for s in stop])  # an override's \n: a newline
        self.renderer = ObservationRenderer(self.tokenizer, use_template=chat_template)
        self.chat = chat_template

    def run(self, prompts: list[str], samples: list[dict] | None, n: int | list[int], max_new_tokens: int,
            temperature: float, top_p: float, greedy: bool, seed: int | None, version: int) -> tuple[RolloutBatch, list[str]]:
        """n episodes of each prompt (`samples[i]` resets prompt i's environments). Returns the batch and the
        final model turn's text of each episode."""
        counts = per_prompt_counts(n, len(prompts))
        enc = self.tokenizer(prompts, add_special_tokens=False).input_ids
        owner = torch.arange(len(prompts)).repeat_interleave(counts).tolist()
        trajs = [Trajectory(list(enc[i])) for i in owner]
        envs = [self.make_env() for _ in owner]
        for k, (env, i) in enumerate(zip(envs, owner)):
            env.reset(samples[i] if samples else {"prompt": prompts[i]}, seed=(seed or 0) * 1_000 + k)
        stats = torch.zeros(len(trajs), len(ENV_STATS))
        col = {name: j for j, name in enumerate(ENV_STATS)}
        texts = [""] * len(trajs)
        turns_allowed = min(self.max_turns, *(getattr(e, "max_turns", self.max_turns) for e in envs))
        live = list(range(len(trajs)))
        with ThreadPoolExecutor(max_workers=min(32, len(trajs)), thread_name_prefix="env") as pool:
            for t in range(turns_allowed):
                budget = {k: min(max_new_tokens, self.max_total_tokens - trajs[k].length) for k in live}
                for k in [k for k in live if budget[k] <= 0]:
                    stats[k, col["truncated"]] = 1
                live = [k for k in live if budget[k] > 0]
                if not live:
                    break
                turns = self._generate(trajs, live, budget, t, temperature, top_p, greedy, seed, version)
                for k, turn in turns.items():
                    texts[k] = turn.text
                results = list(pool.map(lambda k, turns=turns: envs[k].step(turns[k]), live))
                still = []
                for k, res in zip(live, results):
                    stats[k, col["turns"]] += 1
                    for name in ("tool_calls", "tool_errors", "tool_timeouts", "tool_s"):
                        stats[k, col[name]] += float(res.info.get(name, 0))
                    if turns[k].finish_reason == "length":
                        stats[k, col["truncated"]] = 1
                    elif not res.done and t + 1 < turns_allowed and self._observe(trajs[k], turns[k], res.observations, stats[k], col):
                        still.append(k)
                live = still
        for env in envs:
            getattr(env, "close", lambda: None)()
        return self._batch(trajs, torch.tensor(owner), stats), texts

    def _generate(self, trajs, live, budget, t, temperature, top_p, greedy, seed, version) -> dict[int, Turn]:
        """One turn of every live episode in one engine call; the sampled ids are appended as `gen` segments."""
        engine = self.engine
        ids, mask = left_pad([trajs[k].input_ids() for k in live], engine.pad_id)
        out, _ = engine.generate_ids(ids, mask, max(budget.values()), temperature, top_p, greedy,
                                     None if seed is None else seed * 7_919 + t, stop_strings=self.stops.strings or None)
        turns = {}
        for j, k in enumerate(live):
            trajs[k].check_fed(out.prompt_ids[j][out.prompt_mask[j].bool()].tolist())
            n = int(out.response_mask[j].sum())
            gen, logprobs = out.response_ids[j, :n].tolist(), out.sampling_logprobs[j, :n].tolist()
            finish = "stop" if gen and gen[-1] == engine.eos_id else "length"
            cut = self.stops.cut(gen)
            if cut is not None and (cut < n or finish != "stop"):
                gen, logprobs, finish = gen[:cut], logprobs[:cut], "stop_string"
            if len(gen) > budget[k]:  # one call serves every episode's budget; this one had fewer tokens left
                gen, logprobs, finish = gen[: budget[k]], logprobs[: budget[k]], "length"
            trajs[k].append(Segment("gen", gen, t, logprobs, [version] * len(gen)))
            turns[k] = Turn(self.tokenizer.decode(gen, skip_special_tokens=True), gen, finish, t)
        return turns

    def _observe(self, traj: Trajectory, turn: Turn, observations: list[str], stats: torch.Tensor, col: dict) -> bool:
        """Append the bridge and the observation's ids; False when the episode must end (no room left)."""
        bridge = [self.engine.eos_id] if self.chat and turn.finish_reason == "stop_string" else []
        obs = self.renderer.ids(observations)
        room = self.max_total_tokens - traj.length - len(bridge)
        if bridge:
            traj.append(Segment("bridge", bridge, turn.index))
        fits = len(obs) < room  # the next turn needs at least one token of room
        obs = obs if fits else obs[: max(0, room)]
        if obs:
            traj.append(Segment("obs", obs, turn.index))
        stats[col["obs_tokens"]] += len(obs)
        if not fits:
            stats[col["truncated"]] = 1
        return fits

    def _batch(self, trajs: list[Trajectory], group_index: torch.Tensor, stats: torch.Tensor) -> RolloutBatch:
        pad = self.engine.pad_id
        flat = [t.flatten() for t in trajs]
        prompt_ids, prompt_mask = left_pad([t.prompt_ids for t in trajs], pad)
        B, T = len(trajs), max(1, max(len(f["response_ids"]) for f in flat))
        response_ids = torch.full((B, T), pad, dtype=torch.long)
        response_mask = torch.zeros((B, T), dtype=torch.long)
        loss_mask = torch.zeros((B, T), dtype=torch.long)
        logprobs = torch.zeros((B, T), dtype=torch.float32)
        versions = torch.full((B, T), -1, dtype=torch.int32)
        for b, f in enumerate(flat):
            n = len(f["response_ids"])
            response_ids[b, :n] = torch.tensor(f["response_ids"], dtype=torch.long)
            response_mask[b, :n] = 1
            loss_mask[b, :n] = torch.tensor(f["loss_mask"], dtype=torch.long)
            logprobs[b, :n] = torch.tensor(f["logprobs"], dtype=torch.float32)
            versions[b, :n] = torch.tensor(f["versions"], dtype=torch.int32)
        return RolloutBatch(prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=response_ids,
                            response_mask=response_mask, sampling_logprobs=logprobs, group_index=group_index,
                            truncated=stats[:, ENV_STATS.index("truncated")].bool(), versions=versions,
                            loss_mask=loss_mask, env_stats=stats)


def env_metrics(stats: torch.Tensor, gen_tokens: float, prefix: str = "env") -> dict:
    """env/* metrics of a batch's `env_stats` (one row per episode); `gen_tokens`: its sampled tokens."""
    s = {name: stats[:, j] for j, name in enumerate(ENV_STATS)}
    calls = float(s["tool_calls"].sum())
    obs = float(s["obs_tokens"].sum())
    return {
        f"{prefix}/turns_mean": float(s["turns"].mean()),
        f"{prefix}/tool_calls_mean": float(s["tool_calls"].mean()),
        f"{prefix}/tool_call_rate": float((s["tool_calls"] > 0).float().mean()),  # episodes with at least one call
        f"{prefix}/tool_error_rate": float(s["tool_errors"].sum()) / calls if calls else 0.0,
        f"{prefix}/tool_timeout_rate": float(s["tool_timeouts"].sum()) / calls if calls else 0.0,
        f"{prefix}/tool_s": float(s["tool_s"].mean()),
        f"{prefix}/obs_token_frac": obs / max(obs + gen_tokens, 1.0),
        f"{prefix}/truncated_rate": float(s["truncated"].mean()),
    }
