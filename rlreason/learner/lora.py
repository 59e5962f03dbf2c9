"""LoRA adapters on the policy through peft (`model.lora.r > 0`).

The base weights stay frozen and only the adapters train. The rollout engines serve merged weights,
W + (alpha / r) * B A per adapted layer, computed from the adapters without touching the base (a merge
and unmerge in place would drift the frozen weights by rounding every step): either merged here
(`merged_state_dict`, for engines that load whole weights) or, with `model.lora.sync=adapter`, merged by
the engine from the adapters alone (`adapter_update`; `rlreason/transfer.py`). Checkpoints hold the
adapters only; the base is the run's initial policy, which `adapter_config.json` names.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch


def lora_config(cfg):
    """`model.lora` as peft's LoraConfig (also what benchmarks/vs_trl.py hands TRL)."""
    from peft import LoraConfig

    targets = cfg.target_modules
    if targets != "all-linear":
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    return LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets, bias="none")


def add_lora(model, cfg):
    from peft import get_peft_model

    with warnings.catch_warnings():  # peft's own MoE patterns that match nothing on this architecture
        warnings.filterwarnings("ignore", message=".*pattern keys did not match", category=RuntimeWarning)
        model = get_peft_model(model, lora_config(cfg))
    if cfg.expert_forward == "activations":
        from rlreason.learner.expert_lora import route_expert_lora_through_activations

        route_expert_lora_through_activations(model)
    return model


@torch.no_grad()
def merged_state_dict(model) -> dict[str, torch.Tensor]:
    """The base model's state dict, on CPU, with every LoRA layer's delta added to the weight it adapts.

    peft wraps nn.Linear layers (delta on `.weight`) and, for transformers-5 fused MoE experts and
    routers, raw parameters (`ParamWrapper`, delta on its `parameter_name`), possibly nested; each
    wrapper's keys gain a `.base_layer`, which the merged names drop."""
    from peft.tuners.lora import LoraLayer

    from rlreason.transfer import stacked_merge

    base = model.get_base_model()
    deltas: dict[str, torch.Tensor] = {}
    stacked: dict[str, tuple] = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            key = _weight_key(name, module)
            adapters = [a for a in module.active_adapters if a in module.lora_A]
            if _is_expert_stack(module, adapters):
                stacked[key] = module.get_delta_factors(adapters[0])
                continue
            for adapter in adapters:
                d = module.get_delta_weight(adapter)
                deltas[key] = d if key not in deltas else deltas[key] + d
    out = {}
    for key, value in base.state_dict().items():
        if ".lora_" in key:
            continue
        key = key.replace(".base_layer", "")
        if key in deltas:
            value = value + deltas.pop(key).to(value.dtype)
        elif key in stacked:
            value = stacked_merge(value, *stacked.pop(key)).to(value.dtype)
        out[key] = value.detach().to("cpu", copy=True)
    if deltas or stacked:
        raise RuntimeError(f"LoRA deltas with no base weight to merge into: {sorted([*deltas, *stacked])[:3]}")
    return out


def _weight_key(module_name: str, module) -> str:
    """The base state-dict name of the weight a LoRA layer adapts (peft's wrappers add `.base_layer`)."""
    return f"{module_name}.{getattr(module, 'parameter_name', None) or 'weight'}".replace(".base_layer", "")


def _is_expert_stack(module, adapters: list[str]) -> bool:
    """A fused 3-D expert parameter [E, a, b] with one adapter: its delta is a batch of E low-rank
    products, merged from the factors (`stacked_merge`) as peft's own forward folds it."""
    return len(adapters) == 1 and getattr(module, "num_experts", 1) > 1 and hasattr(module, "get_delta_factors")


@torch.no_grad()
def adapter_update(model):
    """The adapters as an `AdapterUpdate`: factors for plain linear layers and for fused MoE expert
    stacks, whole deltas for the rest (2-D parameters wrapped by peft's `ParamWrapper` such as routers,
    DoRA, fan-in/fan-out layers, several adapters)."""
    from peft.tuners.lora import Linear, LoraLayer

    from rlreason.transfer import AdapterUpdate

    out = AdapterUpdate()
    cpu = lambda t: t.detach().to("cpu", copy=True)  # noqa: E731
    for name, module in model.get_base_model().named_modules():
        if not isinstance(module, LoraLayer):
            continue
        key = _weight_key(name, module)
        adapters = [a for a in module.active_adapters if a in module.lora_A]
        if not adapters:
            continue
        a = adapters[0]
        if _is_expert_stack(module, adapters):
            lhs, rhs, scale = module.get_delta_factors(a)
            out.stacked[key] = (cpu(lhs), cpu(rhs), float(scale))
        elif type(module) is Linear and len(adapters) == 1 and not module.fan_in_fan_out and not module.use_dora.get(a, False):
            out.factors[key] = (cpu(module.lora_A[a].weight), cpu(module.lora_B[a].weight), float(module.scaling[a]))
        else:
            out.deltas[key] = cpu(sum(module.get_delta_weight(a) for a in adapters))
    return out


def load_adapter(model, folder: Path) -> None:
    """Load adapter weights written by `PeftModel.save_pretrained` into `model` (same adapter config)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    result = set_peft_model_state_dict(model, load_file(str(Path(folder) / "adapter_model.safetensors")))
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing:
        raise RuntimeError(f"adapter checkpoint {folder} lacks {len(missing)} LoRA weights, e.g. {missing[0]}")
