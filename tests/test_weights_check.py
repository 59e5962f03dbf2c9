"""The layout-free weights fingerprint (rlreason/weights_check.py), by hand."""

import torch

from rlreason.weights_check import fingerprint, mismatches, tensor_moments


def test_moments_by_hand_and_after_rounding_to_the_engine_dtype():
    assert tensor_moments(torch.tensor([1.0, -2.0, 3.0])) == (2.0, 14.0, 6.0)
    # 1 + 2^-10 is not a bfloat16: it rounds to 1, and the moments are those of the rounded value
    assert tensor_moments(torch.tensor([1.0 + 2**-10]), torch.bfloat16) == (1.0, 1.0, 1.0)


def test_a_fused_padded_layout_has_the_fingerprint_of_its_parts():
    q, k, v = torch.randn(4, 3), torch.randn(2, 3), torch.randn(2, 3)
    learner = fingerprint([("layers.0.q", q), ("layers.0.k", k), ("layers.0.v", v)], group=lambda n: n.rsplit(".", 1)[0])
    fused = torch.cat([q, k, v, torch.zeros(1, 3)])  # concatenated and zero-padded, as an engine may lay it out
    engine = fingerprint([("layers.0.qkv", fused)], group=lambda n: n.rsplit(".", 1)[0])
    assert mismatches(learner, engine) == []


def test_one_changed_element_a_sign_flip_and_a_missing_tensor_are_each_named():
    w = {"a": torch.randn(64, 64), "b": torch.randn(8)}
    sent = fingerprint(w.items())
    one = dict(w, a=w["a"].clone())
    one["a"][3, 5] += 1e-3
    (only,) = mismatches(sent, fingerprint(one.items()))
    assert only.startswith("a: sum") and "served" in only
    flipped = dict(w, b=-w["b"])  # the same squares; the sum moves
    assert [m.split(":")[0] for m in mismatches(sent, fingerprint(flipped.items()))] == ["b"]
    assert mismatches(sent, fingerprint([("a", w["a"])])) == ["b: the engine does not serve it"]
    assert mismatches(sent, fingerprint([*w.items(), ("c", torch.ones(1))])) == [
        "c: the engine serves it, the learner has no such weights"]


def test_payload_bytes_counts_what_a_sync_moves(tmp_path):
    from rlreason.transfer import AdapterUpdate, WeightsFolder, payload_bytes, to_transport

    tied = torch.zeros(3, 4)
    weights = to_transport({"w": tied, "lm_head": tied, "h": torch.zeros(2, dtype=torch.bfloat16)})
    assert payload_bytes(weights) == 3 * 4 * 4 + 2 * 2  # the tied array travels once
    update = AdapterUpdate(factors={"q": (torch.zeros(2, 8), torch.zeros(8, 2), 2.0)}, extras={"bias": torch.zeros(5)})
    assert payload_bytes(update.to_transport()) == (16 + 16 + 5) * 4
    (tmp_path / "model.safetensors").write_bytes(b"x" * 100)
    (tmp_path / "config.json").write_text("{}")
    assert payload_bytes(WeightsFolder(str(tmp_path))) == 102


def test_a_bf16_hf_engine_serves_what_the_fp32_learners_weights_round_to(tiny_policy):
    from rlreason.config import AlgoConfig, LearnerConfig
    from rlreason.learner.learner import Learner
    from rlreason.rollout.worker import RolloutWorker
    from rlreason.transfer import to_transport
    from rlreason.weights_check import mismatches

    learner = Learner(tiny_policy, LearnerConfig(threads=1), AlgoConfig(), 1.0, 12, 0)
    worker = RolloutWorker("hf", tiny_policy, threads=1, dtype="bf16")
    worker.load_weights(to_transport(learner.get_weights()), 1)
    served = worker.served_weights()
    assert served["grouping"] == "name" and served["dtype"] == "bfloat16" and served["version"] == 1
    assert mismatches(learner.weights_fingerprint("name", "bfloat16"), served["groups"]) == []
    unrounded = mismatches(learner.weights_fingerprint("name", "float32"), served["groups"])
    assert len(unrounded) > len(served["groups"]) // 2  # without the rounding, most tensors differ
