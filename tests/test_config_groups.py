"""Config groups: a recipe is exactly its choice of algo/curriculum/moe; the groups compose freely;
each named recipe sets what defines its method; --help and --cfg answer without running."""

import dataclasses

import pytest
from conftest import ROOT

from rlreason.run import GROUPS, compose, group_choices, main

RECIPES = group_choices("recipe")


def _groups_of(recipe: str) -> dict:
    import yaml

    text = (ROOT / "recipes" / "recipe" / f"{recipe}.yaml").read_text()
    return {k.lstrip("/"): v for d in yaml.safe_load(text)["defaults"] for k, v in d.items()}


@pytest.mark.parametrize("recipe", RECIPES)
def test_a_recipe_is_exactly_its_choice_of_the_method_groups(recipe):
    groups = _groups_of(recipe)
    assert set(groups) == {"algo", "curriculum", "moe"}
    by_recipe, _ = compose([f"recipe={recipe}"])
    by_groups, choices = compose([f"{g}={c}" for g, c in groups.items()])
    assert dataclasses.asdict(by_recipe) == dataclasses.asdict(by_groups)
    assert {g: choices[g] for g in groups} == groups


# what defines each named method in the composed config (the papers' settings)
DEFINING = {
    "grpo": {"algo.estimator": "grpo", "algo.loss_agg": "seq-mean-token-mean", "algo.scale_by_std": True},
    "drgrpo": {"algo.estimator": "drgrpo", "algo.loss_agg": "seq-mean-token-sum-norm"},
    "rloo": {"algo.estimator": "rloo"},
    "dapo": {"algo.clip_eps_high": 0.28, "algo.loss_agg": "token-mean", "algo.dynamic_sampling": True,
             "algo.filter_inclusive": False, "algo.overlong_shaping": True},
    "gspo": {"algo.policy_loss": "gspo", "algo.clip_eps_low": 3e-4, "algo.clip_eps_high": 4e-4},
    "tempo": {"algo.estimator": "tempo", "algo.tempo.td_weight": 1.0},
    "thr": {"algo.estimator": "thr", "algo.thr.p": 0.2},
    "d3s": {"algo.estimator": "d3s", "algo.loss_agg": "token-mean", "algo.d3s.n_init": 0.5},
    "tw_grpo": {"algo.estimator": "tw_grpo", "algo.tw.alpha": 1.4, "algo.loss_agg": "token-mean"},
    "balanced": {"algo.dynamic_sampling": True, "algo.filter_low": 0.25, "algo.filter_high": 0.75, "algo.filter_inclusive": True},
    "knapsack": {"algo.estimator": "grpo", "curriculum.strategy": "knapsack", "curriculum.knapsack.n_up": 32},
    "sec": {"algo.estimator": "grpo", "curriculum.strategy": "sec", "task.levels": [2, 3, 4]},
    "tlts": {"algo.estimator": "grpo", "curriculum.strategy": "length_budget", "curriculum.length.final": 12},
    "moe_r2": {"algo.estimator": "grpo", "moe.routing_replay": "r2"},
    "moe_r3": {"algo.estimator": "grpo", "moe.routing_replay": "r3"},
}


def _get(cfg, path):
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def test_every_recipe_sets_what_defines_its_method():
    assert set(DEFINING) == set(RECIPES), "a recipe was added or removed: say here what defines it"
    for recipe, expect in DEFINING.items():
        cfg, _ = compose([f"recipe={recipe}"])
        got = {k: _get(cfg, k) for k in expect}
        assert got == expect, recipe


def test_groups_compose_freely_and_replace_the_recipes_choice():
    cfg, choices = compose(["algo=tempo", "curriculum=knapsack", "moe=r3", "scale=smoke"])
    assert (cfg.algo.estimator, cfg.curriculum.strategy, cfg.moe.routing_replay) == ("tempo", "knapsack", "r3")
    assert cfg.total_steps == 2  # scale still applies
    cfg, _ = compose(["recipe=dapo", "algo=drgrpo"])  # the recipe's algo preset is replaced, not merged
    assert cfg.algo.estimator == "drgrpo" and not cfg.algo.dynamic_sampling and cfg.algo.clip_eps_high == 0.2
    cfg, _ = compose(["recipe=sec", "curriculum=uniform"])
    assert cfg.curriculum.strategy == "uniform" and cfg.task.levels == []
    cfg, _ = compose(["algo=tempo", "algo.tempo.td_weight=0.5"])  # a key under a group is still a key
    assert cfg.algo.tempo.td_weight == 0.5


def test_an_unknown_group_choice_lists_the_choices(capsys):
    assert main(["curriculum=knapsak"]) == 2
    err = capsys.readouterr().err
    assert "curriculum='knapsak' is not a known curriculum" in err and "knapsack, length_budget, sec, uniform" in err


def test_help_lists_every_group_and_choice_and_runs_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for g in GROUPS:
        assert f"{g}=" in out and ", ".join(group_choices(g)) in out
    assert "docs/configuration.md" in out and not (tmp_path / "runs").exists()


def test_cfg_prints_the_composed_config_and_runs_nothing(capsys, tmp_path, monkeypatch):
    import yaml

    monkeypatch.chdir(tmp_path)
    assert main(["--cfg", "algo=tempo", "moe=r3", "learner.lr=1e-3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# choices: recipe=grpo algo=tempo curriculum=uniform moe=r3")
    printed = yaml.safe_load(out)
    assert printed["algo"]["estimator"] == "tempo" and printed["moe"]["routing_replay"] == "r3" and printed["learner"]["lr"] == 1e-3
    assert not (tmp_path / "runs").exists()
    assert main(["--cfg", "algo.kl_coef=-1"]) == 2  # a mistake is still a mistake
    assert "algo.kl_coef=-1" in capsys.readouterr().err


def test_the_saved_config_reads_back_to_the_same_config(tmp_path):
    """run.py writes config.yaml from the composed dataclasses; the schema reads it back unchanged
    (types included: lists stay lists, verifier entries dataclasses with their args)."""
    from omegaconf import OmegaConf

    from rlreason.config import Config

    cfg, _ = compose(["recipe=sec", "reward.verifiers=[{name: math, weight: 1.0}, {name: regex, weight: 0.2, args: {pattern: 'x+'}}]"])
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    back = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(tmp_path / "config.yaml")))
    assert back == cfg and type(back.reward.verifiers[1]).__name__ == "VerifierEntry" and back.task.levels == [2, 3, 4]


def test_keys_inside_a_free_form_dict_are_set_like_any_other_key():
    """learner.deepspeed_config is merged into DeepSpeed's config: its keys are the user's to name."""
    cfg, _ = compose(["learner.deepspeed_config.zero_optimization.offload_optimizer.device=cpu",
                      "learner.deepspeed_config.gradient_accumulation_steps=2"])
    assert cfg.learner.deepspeed_config == {"zero_optimization": {"offload_optimizer": {"device": "cpu"}},
                                            "gradient_accumulation_steps": 2}
