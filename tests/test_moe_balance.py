"""Aux-loss-free balancing, hand-worked (specs/moe_routing_methods.md section 1)."""

import pytest
import torch

from rlreason.moe.balance import ExpertBias, bias_step, biased_topk, scheduled_rate
from rlreason.moe.router import route_weights

S = torch.tensor([[0.9, 0.8, 0.3, 0.1], [0.7, 0.6, 0.5, 0.2], [0.8, 0.2, 0.7, 0.4]])


def as_sets(idx):
    return [set(r) for r in idx.tolist()]


def test_the_bias_changes_the_choice_not_the_weights_at_a_fixed_choice():
    b0 = torch.zeros(4)
    idx = biased_topk(S, b0, 2)
    assert as_sets(idx) == [{0, 1}, {0, 1}, {0, 2}]
    counts = torch.bincount(idx.flatten(), minlength=4)
    assert counts.tolist() == [3, 2, 1, 0]
    b = b0 + bias_step(counts, 0.15)
    torch.testing.assert_close(b, torch.tensor([-0.15, -0.15, 0.15, 0.15]))
    idx = biased_topk(S, b, 2)
    assert as_sets(idx) == [{0, 1}, {0, 2}, {0, 2}]
    # the gates come from the unbiased scores: softmax(log S) renormalised over the chosen ids is S_i / sum S_chosen
    w = route_weights(torch.log(S), idx, renormalise=True)
    by_id = [dict(zip(i.tolist(), x.tolist())) for i, x in zip(idx, w)]
    assert by_id[0] == pytest.approx({0: 0.9 / 1.7, 1: 0.8 / 1.7}) and by_id[0][0] == pytest.approx(0.5294, abs=1e-4)
    assert by_id[1] == pytest.approx({2: 0.4167, 0: 0.5833}, abs=1e-4)
    assert by_id[2] == pytest.approx({2: 0.4667, 0: 0.5333}, abs=1e-4)


def test_a_balanced_load_leaves_the_bias_alone_and_the_sign_needs_the_global_counts():
    assert bias_step(torch.tensor([2.0, 2, 2, 2]), 1e-3).abs().sum() == 0
    rank0, rank1 = torch.tensor([3.0, 0, 1, 0]), torch.tensor([0.0, 2, 0, 2])
    assert torch.sign(bias_step(rank0 + rank1, 1.0)).tolist() == [-1, 0, 1, 0]
    assert torch.sign(bias_step(rank0, 1.0)).tolist() == [-1, 1, 0, 1]  # what one rank alone would do, wrongly
    prop = bias_step(torch.tensor([3.0, 1.0]), 0.5, rule="proportional")  # mean 2: 0.5 * (2 - c) / 2
    torch.testing.assert_close(prop, torch.tensor([-0.25, 0.25]))


def test_expert_bias_state_counts_all_reduce_and_schedule():
    eb = ExpertBias(num_layers=2, num_experts=4, rate=0.1, schedule="inv_time", t0=1.0)
    eb.count(torch.tensor([[3.0, 0, 1, 0], [1.0, 1, 1, 1]]))
    info = eb.update(all_reduce=lambda c: c + torch.tensor([[0.0, 2, 0, 2], [0.0, 0, 0, 0]], dtype=c.dtype))
    assert eb.bias.dtype == torch.float32
    torch.testing.assert_close(eb.bias, torch.tensor([[-0.1, 0, 0.1, 0], [0, 0, 0, 0]]))
    assert info["max_over_mean"] == pytest.approx([1.5, 1.0]) and info["rate"] == 0.1
    assert eb.counts.abs().sum() == 0  # cleared after the step
    eb.count(torch.tensor([[0.0, 0, 0, 4], [4.0, 0, 0, 0]]))
    eb.update()
    assert scheduled_rate(0.1, 1, "inv_time", 1.0) == pytest.approx(0.05)
    torch.testing.assert_close(eb.bias[0], torch.tensor([-0.05, 0.05, 0.15, -0.05]))
    state = eb.state_dict()
    again = ExpertBias(2, 4, 0.1)
    again.load_state_dict(state)
    assert torch.equal(again.bias, eb.bias) and again.steps == 2
    eb.update()  # nothing counted: no move
    torch.testing.assert_close(eb.bias[0], torch.tensor([-0.05, 0.05, 0.15, -0.05]))
