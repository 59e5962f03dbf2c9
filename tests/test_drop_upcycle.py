"""Drop-Upcycling (specs/moe_routing_methods.md section 4) on a small random Llama."""

import pytest
import torch

from rlreason.moe.upcycle import drop_neurons, slice_stats, upcycle


@pytest.fixture(scope="module")
def dense():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=32, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def test_slice_statistics_by_hand():
    mu, sigma = slice_stats(torch.tensor([0.2, -0.4, 0.6, 0.0]))
    assert float(mu) == pytest.approx(0.1) and float(sigma) == pytest.approx(0.4163, abs=1e-4)


def test_ratio_zero_is_the_dense_function(dense):
    moe = upcycle(dense, num_experts=4, top_k=2, drop_ratio=0.0).eval()
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(moe(ids).logits, dense(ids).logits, atol=1e-5, rtol=0)


def test_each_expert_changes_exactly_the_chosen_fraction_from_its_own_draw(dense):
    inter = 32
    moe = upcycle(dense, num_experts=4, top_k=2, drop_ratio=0.5).eval()
    again = upcycle(dense, num_experts=4, top_k=2, drop_ratio=0.5).eval()
    sparse = upcycle(dense, num_experts=4, top_k=2).eval()
    for layer in range(2):
        mlp = dense.model.layers[layer].mlp
        experts = moe.model.layers[layer].mlp.experts
        changed_sets = []
        for e in range(4):
            gate, up = experts.gate_up_proj[e][:inter], experts.gate_up_proj[e][inter:]
            rows_gate = (gate != mlp.gate_proj.weight).any(1)
            rows_up = (up != mlp.up_proj.weight).any(1)
            cols_down = (experts.down_proj[e] != mlp.down_proj.weight).any(0)
            assert int(rows_gate.sum()) == int(rows_up.sum()) == int(cols_down.sum()) == 16  # floor(0.5 * 32)
            assert torch.equal(gate[~rows_gate], mlp.gate_proj.weight[~rows_gate])  # the rest bit-identical
            assert torch.equal(experts.down_proj[e][:, ~cols_down], mlp.down_proj.weight[:, ~cols_down])
            changed_sets.append(frozenset(torch.nonzero(rows_gate).flatten().tolist()))
        assert len(set(changed_sets)) == 4  # a fresh draw per expert
        assert torch.equal(experts.gate_up_proj, again.model.layers[layer].mlp.experts.gate_up_proj)  # seeded
        # the router is the sparse upcycling's: only the experts differ
        assert torch.equal(moe.model.layers[layer].mlp.gate.weight, sparse.model.layers[layer].mlp.gate.weight)


def test_index_modes_and_full_ratio():
    g = torch.Generator().manual_seed(0)
    gate_up, down = torch.randn(2 * 8, 4, generator=g), torch.randn(4, 8, generator=g)
    chosen = drop_neurons(gate_up.clone(), down.clone(), 0.5, torch.Generator().manual_seed(1), "shared")
    assert chosen["gate"] == chosen["up"] == chosen["down"] and len(chosen["gate"]) == 4
    chosen = drop_neurons(gate_up.clone(), down.clone(), 0.5, torch.Generator().manual_seed(1), "per_matrix")
    assert len({tuple(v) for v in chosen.values()}) > 1
    new_gu, new_down = gate_up.clone(), down.clone()
    drop_neurons(new_gu, new_down, 1.0, torch.Generator().manual_seed(2))
    assert (new_gu != gate_up).all(1).all() and (new_down != down).all(0).all()  # r = 1 keeps no neuron
    with pytest.raises(ValueError, match="index_mode"):
        drop_neurons(gate_up.clone(), down.clone(), 0.5, g, "both")
