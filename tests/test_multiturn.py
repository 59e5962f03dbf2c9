"""Multi-turn rollouts end to end on a real engine: token in, token out, the loss mask, the learner."""

import dataclasses

import pytest
import torch

from rlreason.envs.base import StepResult


class Scripted:
    """Answers every turn with an observation until turn `turns` (a tool that always replies)."""

    max_turns = 8

    def __init__(self, turns: int = 3, reply: str = "=ok."):
        self.turns, self.reply = turns, reply

    def reset(self, sample, seed=0):
        self.sample = sample

    def step(self, turn):
        return StepResult([self.reply], done=turn.index + 1 >= self.turns, info={"tool_calls": 1})


class Recording:
    """The engine, with every generate_ids call's fed ids and sampled ids kept."""

    def __init__(self, engine):
        self.engine, self.calls = engine, []

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def generate_ids(self, ids, mask, *args, **kw):
        out, texts = self.engine.generate_ids(ids, mask, *args, **kw)
        fed = [r[m.bool()].tolist() for r, m in zip(ids, mask)]
        sampled = [out.response_ids[j, : int(out.response_mask[j].sum())].tolist() for j in range(out.size)]
        self.calls.append((fed, sampled))
        return out, texts


def gen_runs(loss_mask: list[int]) -> list[tuple[int, int]]:
    """(start, end) of each run of 1s."""
    runs, start = [], None
    for i, m in enumerate([*loss_mask, 0]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            runs.append((start, i))
            start = None
    return runs


def run_episodes(engine, stop=("a", "e", "1"), max_total=0, max_new=10, n=3):
    from rlreason.rollout.episodes import EpisodeRunner

    rec = Recording(engine)
    runner = EpisodeRunner(rec, lambda: Scripted(3), max_turns=3, max_total_tokens=max_total, stop=list(stop))
    batch, texts = runner.run(["1+2=", "10-3+4="], None, n, max_new, 1.0, 1.0, False, 5, version=7)
    return rec, batch, texts


def check_token_exact(rec, batch, stop):
    """Every sampled turn is in the learner's ids exactly where it was sampled, after exactly what the engine was
    fed; only those tokens are in the loss mask; a turn ends at EOS, right after a stop string, or at its budget."""
    from rlreason.forward import build_inputs

    input_ids, attention, _ = build_inputs(batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.response_mask)
    tok = rec.engine.tokenizer
    multi = 0
    for k in range(batch.size):
        full = input_ids[k][attention[k].bool()].tolist()
        plen = int(batch.prompt_mask[k].sum())
        mask = batch.loss_mask[k, : int(batch.response_mask[k].sum())].tolist()
        runs = gen_runs(mask)
        multi += len(runs) > 1
        assert 1 <= len(runs) <= 3 and batch.env_stats[k, 0] == len(runs)
        for t, (a, b) in enumerate(runs):
            live = [j for j in range(batch.size) if len(gen_runs(batch.loss_mask[j].tolist())) > t]
            fed, sampled = rec.calls[t][0][live.index(k)], rec.calls[t][1][live.index(k)]
            assert fed == full[: plen + a]  # the engine was fed the trajectory so far, token for token
            gen = full[plen + a: plen + b]
            assert gen == sampled[: len(gen)]  # the trained ids are the sampled ids
            text = tok.decode(gen)
            hit = [s for s in stop if s in text]
            if len(gen) < len(sampled) or (hit and gen[-1] != rec.engine.eos_id):  # cut at a stop string: its last token completes it
                assert hit and not any(s in tok.decode(gen[:-1]) for s in stop)
            assert (batch.versions[k, a:b] == 7).all() and (batch.sampling_logprobs[k, a:b] < 0).all()
            if b < len(mask):  # an observation follows: "=ok." as plain ids, no gradient, no version
                obs = full[plen + b: plen + b + 4]
                assert tok.decode(obs) == "=ok." and mask[b: b + 4] == [0, 0, 0, 0]
                assert (batch.versions[k, b:b + 4] == -1).all() and (batch.sampling_logprobs[k, b:b + 4] == 0).all()
    assert multi >= 2  # the test exercised several turns


def test_hf_multi_turn_trains_on_the_sampled_ids_and_masks_the_observations(tiny_policy):
    from rlreason.rollout.hf import HFEngine

    engine = HFEngine(tiny_policy, threads=2, record_routing=False)  # the compact decode loop (rollout/decode.py)
    rec, batch, texts = run_episodes(engine)
    check_token_exact(rec, batch, ("a", "e", "1"))
    assert batch.routed_experts is None  # not carried on multi-turn batches (the config refuses r3)
    last = [gen_runs(batch.loss_mask[k].tolist())[-1] for k in range(batch.size)]
    plen = batch.prompt_mask.sum(-1)
    for k, (a, b) in enumerate(last):  # the verifier reads the final turn's text
        ids = batch.response_ids[k, a:b].tolist()
        assert texts[k] == engine.tokenizer.decode(ids, skip_special_tokens=True) and int(plen[k]) > 0


def test_the_token_budget_cuts_an_observation_and_ends_the_episode(tiny_policy):
    from rlreason.rollout.hf import HFEngine

    engine = HFEngine(tiny_policy, threads=2)
    _, batch, _ = run_episodes(engine, stop=("a", "e", "1", "2", "3", "+", "="), max_total=14, max_new=6)
    lengths = batch.prompt_mask.sum(-1) + batch.response_mask.sum(-1)
    assert int(lengths.max()) <= 14
    cut = [k for k in range(batch.size) if batch.response_mask[k].sum() > batch.loss_mask[k].sum()]
    assert cut and all(batch.truncated[k] or batch.env_stats[k, 0] == 3 for k in range(batch.size))


def test_the_hf_decode_path_with_routes_recorded_ends_turns_at_stop_strings_too(tiny_policy):
    """The tiny MoE records routes, so its turns go through HF generate, not the compact decode loop."""
    from rlreason.rollout.hf import HFEngine

    engine = HFEngine(tiny_policy, threads=2)
    assert engine.record_routing
    rec, batch, _ = run_episodes(engine)
    check_token_exact(rec, batch, ("a", "e", "1"))


def test_observation_tokens_get_no_gradient(tiny_policy):
    """One learner step on a multi-turn batch: changing what lies under the observations' loss mask (their
    recorded log-probs) changes nothing; dropping the mask (training on the observations) changes the update."""
    from rlreason.config import AlgoConfig, LearnerConfig
    from rlreason.learner.learner import Learner
    from rlreason.rollout.hf import HFEngine

    engine = HFEngine(tiny_policy, threads=2)
    _, batch, _ = run_episodes(engine, max_new=6)
    batch.rewards = torch.arange(batch.size, dtype=torch.float32) % 2
    obs = (batch.response_mask - batch.loss_mask).bool()
    assert obs.any()
    noisy = dataclasses.replace(batch, sampling_logprobs=batch.sampling_logprobs.masked_fill(obs, -3.0))
    unmasked = dataclasses.replace(batch, loss_mask=None)

    def step(b):
        learner = Learner(tiny_policy, LearnerConfig(lr=1e-2), AlgoConfig(), 1.0, 64)
        m = learner.train_step(b)
        return m, torch.cat([p.detach().flatten() for p in learner.model.parameters()])

    m_a, w_a = step(batch)
    m_b, w_b = step(noisy)
    _, w_c = step(unmasked)
    assert torch.equal(w_a, w_b)
    assert not torch.allclose(w_a, w_c)
    # token means count sampled tokens only: the mean |advantage| is over the gen tokens (observations would dilute it)
    from rlreason.algos.advantages import grpo

    adv = grpo(batch, AlgoConfig(), {})
    assert m_a["advantage/abs_mean"] == pytest.approx(float(adv.abs().sum() / batch.loss_mask.sum()), rel=1e-5)
    assert m_a["loss/token_frac"] == 1.0


def test_env_metrics_by_hand():
    from rlreason.rollout.episodes import env_metrics

    # turns, tool_calls, tool_errors, tool_timeouts, tool_s, obs_tokens, truncated
    stats = torch.tensor([[3, 2, 1, 0, 0.5, 10, 0], [1, 0, 0, 0, 0.0, 0, 1]], dtype=torch.float32)
    m = env_metrics(stats, gen_tokens=30.0)
    assert m["env/turns_mean"] == 2.0 and m["env/tool_calls_mean"] == 1.0 and m["env/tool_call_rate"] == 0.5
    assert m["env/tool_error_rate"] == 0.5 and m["env/tool_timeout_rate"] == 0.0 and m["env/tool_s"] == 0.25
    assert m["env/obs_token_frac"] == 0.25 and m["env/truncated_rate"] == 0.5


def test_stop_strings_cut_where_the_text_first_contains_one():
    from rlreason.data.tokenizer import build_char_tokenizer
    from rlreason.rollout.stop_strings import StopStrings

    tok = build_char_tokenizer()
    ids = tok("calc(3+4)=7", add_special_tokens=False).input_ids
    assert StopStrings(tok, [")"]).cut(ids) == 9
    assert StopStrings(tok, ["+4)", "="]).cut(ids) == 9  # a string spanning several tokens
    assert StopStrings(tok, ["#"]).cut(ids) is None and StopStrings(tok, []).cut(ids) is None


def test_escapes_in_stop_strings_are_decoded_as_an_override_writes_them():
    """Hydra hands `rollout.stop=["```\\n"]` over as a backslash and an "n"; the runner stops at the newline."""
    from types import SimpleNamespace

    from rlreason.data.tokenizer import build_char_tokenizer
    from rlreason.rollout.episodes import EpisodeRunner
    from rlreason.rollout.stop_strings import decode_escapes
    from rlreason.run import compose

    assert decode_escapes("a\\tb\\n") == "a\tb\n" and decode_escapes("\\\\n") == "\\n" and decode_escapes("\\d+") == "\\d+"
    cfg, _ = compose(["rollout.env=python", 'rollout.stop=["```\\n"]'])
    assert list(cfg.rollout.stop) == ["```\\n"]  # as Hydra gives it
    runner = EpisodeRunner(SimpleNamespace(tokenizer=build_char_tokenizer()), lambda: None, 2, stop=list(cfg.rollout.stop))
    assert runner.stops.strings == ["```\n"]


@pytest.mark.parametrize("overrides, why", [
    (["rollout.env=nope"], "rollout.env"),
    (["rollout.env=calculator", "rollout.partial=true", "trainer.mode=async"], "partial"),
    (["rollout.env=calculator", "moe.routing_replay=r3"], "r3"),
    (["rollout.env=calculator", "rollout.env_args.colour=1"], "env_args"),
    (["rollout.max_turns=0"], "max_turns"),
    (["rollout.stop=[')']"], "single_turn"),
    (["rollout.env_args.timeout_s=5"], "single_turn"),
    (["task.name=arith_tools", "task.max_value=5"], "arith_tools"),
])
def test_the_config_refuses_what_multi_turn_cannot_run(overrides, why):
    from rlreason.run import UserError, compose

    with pytest.raises(UserError, match=why):
        compose(overrides)


def test_an_environment_loads_from_an_import_path_as_the_docs_show(tmp_path, monkeypatch):
    from rlreason.envs.base import ENVS, Turn
    from rlreason.run import compose

    (tmp_path / "team_envs.py").write_text(
        "from rlreason.envs.base import ToolEnv\n\n\n"
        "def lookup(arguments: dict) -> str:\n"
        "    return {'paris': 'France', 'rome': 'Italy'}.get(arguments.get('city', '').lower(), 'unknown city')\n\n\n"
        "class Capitals(ToolEnv):\n"
        "    def __init__(self, max_turns: int = 3):\n"
        "        super().__init__({'lookup': lookup}, call_format='hermes', max_turns=max_turns)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg, _ = compose(["rollout.env=team_envs:Capitals", "rollout.env_args.max_turns=2", "rollout.stop=['</tool_call>']"])
    env = ENVS.get(cfg.rollout.env)(**cfg.rollout.env_args)
    env.reset({})
    result = env.step(Turn('<tool_call>{"name": "lookup", "arguments": {"city": "Paris"}}</tool_call>', [1], "stop_string", 0))
    assert result.observations == ["France"] and not result.done and env.max_turns == 2


@pytest.mark.integration
@pytest.mark.parametrize("engine, task", [("vllm", "arith_tools"), ("hf", "code_tests")])
def test_the_multi_turn_tool_task_and_the_code_task_run_from_the_cli(engine, task, tmp_path):
    """The calculator task (multi-turn, the warm-started tiny policy calls the tool) on vLLM, the code-execution
    task (its verifier runs every response in the sandbox, with the python tool in the loop) on hf; two steps each."""
    from conftest import read_metrics, run_cli

    extra = ["rollout.env=python", "rollout.stop=['```\\n']"] if task == "code_tests" else []
    proc = run_cli([f"task={task}", "scale=smoke", f"rollout.engine={engine}", f"run_dir={tmp_path / 'run'}",
                    "telemetry.tensorboard=false", "eval_sampled=false", *extra], timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = read_metrics(tmp_path / "run")
    steps = [m for m in metrics if "loss/policy" in m]
    assert [m["step"] for m in steps] == [1, 2]
    for m in steps:
        assert 1.0 <= m["env/turns_mean"] <= 4.0 and m["loss/policy"] == m["loss/policy"] and m["sync/fingerprint_ok"] == 1.0
    if task == "arith_tools":  # the warm start writes half its answers through the tool: observations were appended
        assert metrics[0]["eval/env/turns_mean"] > 1.0 and metrics[0]["eval/env/obs_token_frac"] > 0.0
    else:
        assert all(m["verifier/error_rate"] == 0.0 for m in steps) and "reward/code_tests/mean" in steps[0]


def test_tempo_on_multi_turn_keys_the_tree_on_every_id_and_gives_advantages_to_sampled_tokens_only():
    """Two episodes of one group: the same first turn (5, 6) and the same tool reply (obs 7, 8), then different
    second turns. The tree shares the nodes up to the branch (observations are edges like any other id), so the
    branch-gated TD term appears only on the second turn's first token; the observation tokens get 0."""
    from rlreason.algos.advantages import tempo
    from rlreason.algos.tempo import tempo_advantages
    from rlreason.batch import RolloutBatch
    from rlreason.config import AlgoConfig

    ids = torch.tensor([[5, 6, 7, 8, 1, 2], [5, 6, 7, 8, 3, 4]])
    loss = torch.tensor([[1, 1, 0, 0, 1, 1], [1, 1, 0, 0, 1, 1]])
    batch = RolloutBatch(prompt_ids=torch.ones(2, 1, dtype=torch.long), prompt_mask=torch.ones(2, 1, dtype=torch.long),
                         response_ids=ids, response_mask=torch.ones(2, 6, dtype=torch.long), sampling_logprobs=torch.zeros(2, 6),
                         group_index=torch.zeros(2, dtype=torch.long), rewards=torch.tensor([1.0, 0.0]), loss_mask=loss)
    adv = tempo(batch, AlgoConfig(), {})
    full = tempo_advantages(ids, batch.response_mask, batch.rewards, batch.group_index)
    assert torch.equal(adv, full * loss)
    assert (adv[:, 2:4] == 0).all()
    # normalised rewards +-r (r = 1/sqrt 2); the branch node (after the observation) has value 0, its children +-r:
    # the first token after the branch gets r + (V(child) - V(branch)) = +-2r, every other token +-r
    r = 1 / 2 ** 0.5
    assert torch.allclose(adv[0], torch.tensor([r, r, 0, 0, 2 * r, r]), atol=1e-4)
    assert torch.allclose(adv[1], torch.tensor([-r, -r, 0, 0, -2 * r, -r]), atol=1e-4)
