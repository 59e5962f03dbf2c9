"""The real-model path at tiny scale: SmolLM2-135M-Instruct on elementary_math (LoRA on, both engines),
and `model.kind=pretrained` on random HF folders of the architectures not run elsewhere. One or two steps each;
never a learning assertion (learning lives in benchmarks/ and BENCHMARKS.md)."""

import pytest
from conftest import read_metrics, run_cli

pytestmark = pytest.mark.integration

CATEGORIES = ("add1", "add2", "sub2", "compare", "mul1")


def _check_eval(record: dict, k: int) -> None:
    for key in ("accuracy/eval", "accuracy/eval_sampled", "accuracy/eval_pass_at_k"):
        assert 0.0 <= record[key] <= 1.0, key
        for c in CATEGORIES:
            assert 0.0 <= record[f"{key}/{c}"] <= 1.0, (key, c)
    assert record["eval/k"] == k
    assert record["accuracy/eval_sampled"] <= record["accuracy/eval_pass_at_k"]  # pass@1 <= pass@k, per problem


@pytest.mark.parametrize("engine", ["hf", "vllm"])
def test_smollm2_elementary_math(engine, tmp_path):
    """`model=smollm2 task=elementary_math recipe=grpo` as a user runs it (LoRA and its defaults come from
    the model config), at smoke scale. HF: two steps with adapter-only syncs and the full evaluation.
    vLLM: two rollout workers, one step and a greedy evaluation (each vLLM sync writes and reloads a 0.5 GB
    folder, and vLLM-CPU decodes SmolLM2 no faster than HF here). Two held-out problems per skill keep it short."""
    run_dir = tmp_path / engine
    # vLLM: two workers, both given every sync (the tiny MoE's reload through vLLM: tests/test_vllm.py)
    short = [] if engine == "hf" else ["total_steps=1", "eval_sampled=false", "rollout.num_workers=2", "rollout.cpus=0.5",
                                       "learner.cpus=0.5"]
    proc = run_cli(["model=smollm2", "task=elementary_math", "recipe=grpo", "scale=smoke", f"run_dir={run_dir}",
                    f"rollout.engine={engine}", "telemetry.tensorboard=false", "task.eval_per_category=2",
                    "rollout.max_new_tokens=16", *short], timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = read_metrics(run_dir)
    steps = [m for m in metrics if "loss/policy" in m]
    last = 2 if engine == "hf" else 1
    assert [m["step"] for m in steps] == list(range(1, last + 1))
    if engine == "hf":
        _check_eval(metrics[0], k=4)
        _check_eval(steps[-1], k=4)
        assert "sampled pass@1" in proc.stdout and "pass@4" in proc.stdout
    else:
        assert all(0.0 <= m["accuracy/eval"] <= 1.0 for m in (metrics[0], steps[-1])) and "accuracy/eval_sampled" not in steps[-1]
    for m in steps:
        assert m["loss/policy"] == m["loss/policy"] and m["timing/sync_s"] > 0 and m["sync/fingerprint_ok"] == 1.0
        assert m["kl/rollout_vs_train"] < 1e-3  # fp32 both sides: the served weights are the trained ones
    assert (run_dir / "checkpoints" / f"step_{last:06d}" / "adapter" / "adapter_model.safetensors").exists()


# Llama runs as SmolLM2 above and Qwen3-MoE as the default tiny policy everywhere else: the other two here
ARCHS = {
    "qwen2": ("Qwen2Config", {}),
    "mixtral": ("MixtralConfig", {"num_local_experts": 4, "num_experts_per_tok": 2}),
}


@pytest.fixture(scope="module")
def pretrained_folders(tmp_path_factory):
    """A small random model of each architecture, saved with SmolLM2's tokenizer (and chat template)."""
    import torch
    import transformers

    from rlreason.assets import smollm2_folder
    from rlreason.policy import load_tokenizer

    tok = load_tokenizer(smollm2_folder())
    out = {}
    for name, (config_cls, extra) in ARCHS.items():
        torch.manual_seed(0)
        cfg = getattr(transformers, config_cls)(
            vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=256, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
            bos_token_id=tok.bos_token_id, tie_word_embeddings=True, **extra)
        path = tmp_path_factory.mktemp(name)
        transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
        tok.save_pretrained(path)
        out[name] = path
    return out


def test_pretrained_folder_of_each_architecture_trains(pretrained_folders, tmp_path):
    """`model.kind=pretrained model.path=<folder>` with the folder's own tokenizer and chat template, LoRA on
    (on the MoE architectures peft also adapts the fused experts: their adapters act on the activations in
    the learner and travel as per-expert factors), one sweep."""
    paths = ",".join(str(p) for p in pretrained_folders.values())
    proc = run_cli(["-m", f"model.path={paths}", "model.kind=pretrained", "model.chat_template=true", "model.lora.r=4",
                    "task=elementary_math", "scale=smoke", "total_steps=1", "rollout.max_new_tokens=8", "eval_samples=2",
                    "task.eval_per_category=2", f"sweep_dir={tmp_path}", "telemetry.tensorboard=false"], timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = sorted(p for p in tmp_path.iterdir() if (p / "metrics.jsonl").exists())
    assert len(runs) == len(ARCHS)
    for run in runs:
        metrics = read_metrics(run)
        steps = [m for m in metrics if "loss/policy" in m]
        assert [m["step"] for m in steps] == [1], run.name
        assert steps[-1]["kl/rollout_vs_train"] < 1e-3, run.name  # adapter-only sync served the trained weights
        _check_eval(metrics[0], k=2)
    moe = [run for run in runs if any(m.get("moe/load/max_over_mean") for m in read_metrics(run))]
    assert len(moe) == 1  # the MoE architecture reports router health


def test_pretrained_folder_errors(tmp_path):
    proc = run_cli(["model.kind=pretrained", f"model.path={tmp_path / 'nowhere'}", "task=elementary_math"], timeout=120)
    assert proc.returncode == 2 and "model.path" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli(["task=elementary_math"], timeout=120)  # the tiny char policy cannot read English questions
    assert proc.returncode == 2 and "model=smollm2" in proc.stderr and "Traceback" not in proc.stderr
