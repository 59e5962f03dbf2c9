"""The one registration mechanism behind estimators, losses, curricula, verifiers and engines."""

import importlib.metadata
import sys

import pytest

from rlreason.registry import Registry, UnknownPlugin


def test_register_get_names_and_attributes():
    reg = Registry("widget", "x.widget")

    @reg.register("double", needs=frozenset({"hidden"}))
    def double(x):
        return 2 * x

    assert reg.get("double") is double and double.needs == {"hidden"}
    assert "double" in reg and reg.names() == ["double"]
    assert reg.import_path("double") == f"{__name__}:test_register_get_names_and_attributes.<locals>.double"
    reg.unregister("double")
    assert "double" not in reg


def test_lazy_builtins_are_imported_on_first_use_only(tmp_path, monkeypatch):
    (tmp_path / "heavy_plugin_mod.py").write_text("IMPORTED = True\ndef plug():\n    return 'ok'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("widget", "x.widget")
    reg.register_path("heavy", "heavy_plugin_mod:plug")
    assert reg.names() == ["heavy"] and "heavy_plugin_mod" not in sys.modules  # listing imports nothing
    assert reg.import_path("heavy") == "heavy_plugin_mod:plug"
    assert reg.get("heavy")() == "ok" and "heavy_plugin_mod" in sys.modules


def test_import_paths_and_unknown_names_say_what_is_known(tmp_path, monkeypatch):
    class Missing(ValueError):
        pass

    (tmp_path / "team_widgets.py").write_text("class Spinner:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("widget", "x.widget", error=Missing)
    reg.register("alpha")(lambda: 1)
    reg.register("beta")(lambda: 2)
    assert reg.get("team_widgets:Spinner").__name__ == "Spinner"
    with pytest.raises(Missing, match=r"unknown widget 'gamma'; registered widgets: alpha, beta, or give an import path"):
        reg.get("gamma")
    with pytest.raises(Missing, match="cannot import module 'no_such_widgets'"):
        reg.get("no_such_widgets:x")
    with pytest.raises(Missing, match="has no attribute 'Nope'"):
        reg.get("team_widgets:Nope")
    assert issubclass(UnknownPlugin, LookupError)


def test_entry_points_are_found_and_cannot_take_a_builtin_name(monkeypatch, caplog):
    eps = [importlib.metadata.EntryPoint("fancy", "json:dumps", "rlreason.widgets"),
           importlib.metadata.EntryPoint("alpha", "json:loads", "rlreason.widgets")]
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [e for e in eps if e.group == group])
    reg = Registry("widget", "x.widget")
    reg.register_path("alpha", "json:JSONDecoder")
    import json

    assert reg.get("fancy") is json.dumps and reg.names() == ["alpha", "fancy"]
    assert reg.get("alpha") is json.JSONDecoder  # the built-in wins
    assert "is ignored: 'alpha' is a built-in widget" in caplog.text


def test_every_plugin_kind_resolves_its_builtins():
    from curricula.strategies import CURRICULA
    from rewards import VERIFIERS
    from rlreason.algos import ESTIMATORS
    from rlreason.algos.losses import LOSS_AGGREGATIONS, POLICY_LOSSES
    from rlreason.envs.base import ENVS
    from rlreason.rollout.engine import ENGINES

    expected = {
        ESTIMATORS: {"grpo", "drgrpo", "rloo", "tempo", "thr", "d3s", "tw_grpo"},
        LOSS_AGGREGATIONS: {"seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"},
        POLICY_LOSSES: {"ppo", "gspo", "gspo-token"},
        CURRICULA: {"uniform", "length_budget", "knapsack", "sec"},
        VERIFIERS: {"math", "format", "gsm8k", "choice", "exact", "regex", "reasoning_gym", "code_tests"},
        ENGINES: {"hf", "vllm"},
        ENVS: {"single_turn", "calculator", "calculator_inline", "python"},
    }
    for reg, names in expected.items():
        assert names <= set(reg.names()), reg.kind
        for name in names:
            assert callable(reg.get(name)), (reg.kind, name)
    assert CURRICULA.entry_point_group == "rlreason.curricula" and ENGINES.entry_point_group == "rlreason.engines"
    assert ENVS.entry_point_group == "rlreason.environments"
