"""Sinkhorn routing, hand-worked (specs/moe_routing_methods.md section 3)."""

import math

import pytest
import torch

from rlreason.moe.sinkhorn import log_column_scaling, megatron_route, selective_step, ssr_route, transport_plan

L = torch.tensor([[2.0, 1, 0, 0], [2.0, 0, 1, 0], [2.0, 0, 0, 1]])  # every token's favourite is expert 0


def test_the_balanced_plan_is_the_known_one():
    assert torch.softmax(L, -1).argmax(-1).tolist() == [0, 0, 0]  # native top-1 sends every token to e0
    assert float(torch.softmax(L, -1)[0, 0]) == pytest.approx(0.6103, abs=1e-4)
    pi = transport_plan(L, xi=1.0, tol=1e-8, max_iter=1000)
    e = math.e
    own = 0.75 * e / (e + 2)  # the rest of the row, 0.75 - own, split evenly between the two others
    torch.testing.assert_close(pi.sum(1), torch.ones(3))
    torch.testing.assert_close(pi.sum(0), torch.full((4,), 0.75))
    torch.testing.assert_close(pi[:, 0], torch.full((3,), 0.25), atol=1e-5, rtol=0)
    assert [float(pi[t, t + 1]) for t in range(3)] == pytest.approx([own] * 3, abs=1e-5) and own == pytest.approx(0.4321, abs=1e-4)
    assert float(pi[0, 2]) == pytest.approx(0.1590, abs=1e-4)
    log_v = log_column_scaling(L, tol=1e-8, max_iter=1000)
    assert float(log_v[0] - log_v[1]) == pytest.approx(math.log((e + 2) / (3 * e ** 2)), abs=1e-5)  # -1.5472
    assert float(log_v[0] - log_v[1]) == pytest.approx(-1.5472, abs=1e-4)


def test_ssr_routes_top1_to_each_own_expert_and_top2_with_the_plans_gates():
    ids, gates = ssr_route(L, 1, tol=1e-8, max_iter=1000)
    assert ids.flatten().tolist() == [1, 2, 3] and torch.allclose(gates, torch.ones(3, 1))
    ids, gates = ssr_route(L, 2, tol=1e-8, max_iter=1000)
    for t in range(3):
        got = dict(zip(ids[t].tolist(), gates[t].tolist()))
        assert got == pytest.approx({t + 1: 0.6335, 0: 0.3665}, abs=1e-4)
    # topk(l + log v) = topk(Pi): row scaling keeps the ranking
    pi = transport_plan(L, tol=1e-8, max_iter=1000)
    assert torch.equal(torch.topk(pi, 2).indices.sort(-1).values, ids.sort(-1).values)


def test_megatron_mode_keeps_the_native_probabilities_and_a_balanced_batch_is_native():
    ids, gates = megatron_route(L, 2, tol=1e-8, max_iter=1000)
    assert dict(zip(ids[0].tolist(), gates[0].tolist())) == pytest.approx({1: 0.2245, 0: 0.6103}, abs=1e-4)
    ids, gates = megatron_route(L, 1, tol=1e-8, max_iter=1000)
    assert ids.flatten().tolist() == [1, 2, 3] and gates.flatten().tolist() == pytest.approx([0.7311] * 3, abs=1e-4)
    C = torch.tensor([[0.73, 0.27], [0.27, 0.73]])
    torch.testing.assert_close(transport_plan(C, xi=0.5), torch.tensor([[0.715, 0.285], [0.285, 0.715]]), atol=1e-3, rtol=0)
    balanced = torch.tensor([[1.0, 0.2], [0.2, 1.0]])  # already balanced: v constant, the native router
    ids, gates = ssr_route(balanced, 2)
    native = torch.softmax(balanced, -1)
    torch.testing.assert_close(gates, native.gather(-1, ids))


def test_the_selective_branch_is_a_seeded_coin_with_rate_p():
    assert not any(selective_step(0, s, 0.0) for s in range(1000))
    assert all(selective_step(0, s, 1.0) for s in range(100))
    hits = sum(selective_step(3, s, 0.1) for s in range(5000))
    assert abs(hits / 5000 - 0.1) < 4 * math.sqrt(0.1 * 0.9 / 5000)
    assert [selective_step(3, s, 0.1) for s in range(50)] == [selective_step(3, s, 0.1) for s in range(50)]
