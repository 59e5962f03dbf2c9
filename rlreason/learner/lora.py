"""LoRA adapters on the policy through peft (`model.lora.r > 0`).

The base weights stay frozen and only the adapters train. The rollout engines get merged weights,
W + (alpha / r) * B A per adapted layer, computed from the adapters without touching the base (a merge
and unmerge in place would drift the frozen weights by rounding every step). Checkpoints hold the
adapters only; the base is the run's initial policy, which `adapter_config.json` names.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch


def add_lora(model, cfg):
    from peft import LoraConfig, get_peft_model

    targets = cfg.target_modules
    if targets != "all-linear":
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    config = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets, bias="none")
    with warnings.catch_warnings():  # peft's own MoE patterns that match nothing on this architecture
        warnings.filterwarnings("ignore", message=".*pattern keys did not match", category=RuntimeWarning)
        return get_peft_model(model, config)


@torch.no_grad()
def merged_state_dict(model) -> dict[str, torch.Tensor]:
    """The base model's state dict, on CPU, with every LoRA layer's delta added to the weight it adapts.

    peft wraps nn.Linear layers (delta on `.weight`) and, for transformers-5 fused MoE experts and
    routers, raw parameters (`ParamWrapper`, delta on its `parameter_name`), possibly nested; each
    wrapper's keys gain a `.base_layer`, which the merged names drop."""
    from peft.tuners.lora import LoraLayer

    clean = lambda key: key.replace(".base_layer", "")  # noqa: E731
    base = model.get_base_model()
    deltas: dict[str, torch.Tensor] = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            key = clean(f"{name}.{getattr(module, 'parameter_name', None) or 'weight'}")
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    d = module.get_delta_weight(adapter)
                    deltas[key] = d if key not in deltas else deltas[key] + d
    out = {}
    for key, value in base.state_dict().items():
        if ".lora_" in key:
            continue
        key = clean(key)
        if key in deltas:
            value = value + deltas.pop(key).to(value.dtype)
        out[key] = value.detach().to("cpu", copy=True)
    if deltas:
        raise RuntimeError(f"LoRA deltas with no base weight to merge into: {sorted(deltas)[:3]}")
    return out


def load_adapter(model, folder: Path) -> None:
    """Load adapter weights written by `PeftModel.save_pretrained` into `model` (same adapter config)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    result = set_peft_model_state_dict(model, load_file(str(Path(folder) / "adapter_model.safetensors")))
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing:
        raise RuntimeError(f"adapter checkpoint {folder} lacks {len(missing)} LoRA weights, e.g. {missing[0]}")
