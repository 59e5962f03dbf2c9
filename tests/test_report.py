"""The sweep report's arithmetic, worked by hand (the report on real runs is tested in test_recipes)."""

import pytest

from rlreason.report import difference


def _runs(values, sd):
    return [{"after": {"accuracy/eval_sampled": v, "eval/binomial_std_sampled": sd}} for v in values]


def test_difference_of_two_labels_with_seed_and_binomial_noise():
    # A: 0.6, 0.7, 0.8 (var 0.01); B: 0.5, 0.5, 0.6 (var 1/300). diff = 0.7 - 0.5333 = 0.1667
    # seed SE = sqrt(0.01 / 3 + (1/300) / 3) = sqrt(0.004444) = 0.06667; 0.1667 > 2 x 0.06667: separated
    # binomial: A sqrt(3 x 0.04^2) / 3 = 0.023094, B sqrt(3 x 0.05^2) / 3 = 0.028868 -> sqrt(sum of squares) = 0.036968
    d = difference(_runs([0.6, 0.7, 0.8], 0.04), _runs([0.5, 0.5, 0.6], 0.05), "accuracy/eval_sampled")
    assert d["diff"] == pytest.approx(0.166667, abs=1e-6)
    assert d["seed_se"] == pytest.approx(0.066667, abs=1e-6)
    assert d["eval_std"] == pytest.approx(0.036968, abs=1e-6)
    assert d["separated"]
    # the same means, wider spread: A var 0.04, B (0.4333, 0.4333, 0.7333) var 0.03
    # SE = sqrt(0.04 / 3 + 0.03 / 3) = 0.152753 > 0.1667 / 2: not separated
    d = difference(_runs([0.5, 0.7, 0.9], 0.04), _runs([0.4333333, 0.4333333, 0.7333333], 0.05), "accuracy/eval_sampled")
    assert d["diff"] == pytest.approx(0.166667, abs=1e-6)
    assert d["seed_se"] == pytest.approx(0.152753, abs=1e-6) and not d["separated"]


def test_seeds_that_agree_by_chance_do_not_beat_the_evaluations_noise():
    # A: 0.70, 0.71; B: 0.65, 0.66 (each var 0.00005): diff 0.05, seed SE sqrt(2 x 0.00005 / 2) = 0.007071
    # binomial: A sqrt(2 x 0.04^2) / 2 = 0.028284, B sqrt(2 x 0.05^2) / 2 = 0.035355 -> 0.045277
    # 0.05 > 2 x 0.0071 but < 2 x 0.0453: the larger noise decides, not separated
    d = difference(_runs([0.70, 0.71], 0.04), _runs([0.65, 0.66], 0.05), "accuracy/eval_sampled")
    assert d["seed_se"] == pytest.approx(0.007071, abs=1e-6) and d["eval_std"] == pytest.approx(0.045277, abs=1e-6)
    assert not d["separated"]
    assert difference(_runs([0.75, 0.76], 0.04), _runs([0.65, 0.66], 0.05), "accuracy/eval_sampled")["separated"]  # 0.10 > 0.0906


def test_difference_with_one_seed_falls_back_to_the_binomial_std():
    # 0.7 - 0.6 = 0.1 against 2 x sqrt(0.04^2 + 0.05^2) = 2 x 0.064031 = 0.128: not separated
    d = difference(_runs([0.7], 0.04), _runs([0.6], 0.05), "accuracy/eval_sampled")
    assert d["seed_se"] is None and d["eval_std"] == pytest.approx(0.064031, abs=1e-6) and not d["separated"]
    assert difference(_runs([0.75], 0.04), _runs([0.6], 0.05), "accuracy/eval_sampled")["separated"]  # 0.15 > 0.128


def _run(label, points, cats=None):
    """A loaded run whose greedy eval is `points` [(step, tokens, value)], with optional categories."""
    curves = {"accuracy/eval": points}
    for cat, value in (cats or {}).items():
        curves[f"accuracy/eval/{cat}"] = [(s, t, value) for s, t, _ in points]
    return {"label": label, "curves": curves, "after": None}


def test_mean_curve_interpolates_each_seed_at_every_seeds_evaluations_up_to_the_shortest():
    from rlreason.report import _mean_curve

    a = _run("grpo", [(0, 0, 0.2), (10, 100, 0.6), (20, 200, 0.8)])
    b = _run("grpo", [(0, 0, 0.4), (10, 50, 0.5), (14, 150, 0.7)])  # ended sooner (a token budget)
    x, mean, std = _mean_curve([a, b], "accuracy/eval")
    assert list(x) == [0, 50, 100, 150]  # both runs' eval points, none past b's end
    # a at 50: 0.4 (halfway 0.2 -> 0.6); b at 100: 0.6 (halfway 0.5 -> 0.7); at 150 a is 0.7
    assert mean == pytest.approx([0.3, 0.45, 0.6, 0.7])
    assert std == pytest.approx([0.1414214, 0.0707107, 0.0, 0.0], abs=1e-6)


def test_plot_draws_one_panel_per_metric_and_a_category_figure(tmp_path):
    from rlreason.report import plot

    runs = [_run("grpo", [(0, 0, 0.2), (10, 100, 0.6)], {"add": 0.5, "sub": 0.1}),
            _run("tempo", [(0, 0, 0.2), (10, 120, 0.7)], {"add": 0.6, "sub": 0.2})]
    written = plot(runs, tmp_path / "eval_vs_tokens.png", target=0.65)
    assert [p.name for p in written] == ["eval_vs_tokens.png", "eval_by_category.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)
    assert plot([_run("grpo", [(0, 0, 0.2), (5, 10, 0.3)])], tmp_path / "g.png") == [tmp_path / "g.png"]  # no categories
