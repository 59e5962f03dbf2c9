"""Router taps for transformers MoE policies: capture router logits, record and replay expert choices.

transformers 5 MoE blocks (Qwen3-MoE, Qwen2-MoE, Mixtral, OLMoE; DeepSeek-V3) call a ``*TopKRouter``
(DeepSeek: ``*TopkRouter``) module that returns ``(logits [N, E], weights [N, k], indices [N, k])`` and
pass weights and indices on to the block's ``experts``. The first four score experts by a softmax;
DeepSeek-style routers (those with an ``e_score_correction_bias``) by a sigmoid, select by the scores
plus that bias, and scale the gates by ``routed_scaling_factor`` (`router_scoring`).

`RouterTap` hooks every router once and, inside a `tap.session(...)`:

- records the live top-k ids and keeps the router logits (with their graph) for the regularisers;
- replays forced ids: rows of ``forced`` ([N, L, k], -1 rows = route live) replace the router's
  choice, and the gate weights are recomputed from the *live* logits at the forced ids (the router's
  scores, gathered, renormalised when the router renormalises its top-k), so the router keeps its gradient;
- records the ids the experts actually received (a pre-hook on ``experts``), so "replay happened"
  is measured, not assumed;
- routes by a batch-level rule instead of the router's own choice when a session asks (`balanced`:
  the Sinkhorn plan of `moe/sinkhorn.py`), over the session's real tokens only (`token_mask`); a
  replayed row keeps its forced ids.

A router may run more than once per session (activation checkpointing recomputes a layer during
backward): the replay is applied on every call, the capture only on the first call of each layer,
so recomputation sees the same experts and nothing is recorded twice. Keep the session open across
``loss.backward()`` when checkpointing is on.

One session may also hold several forwards over parts of one batch (the learner's length buckets):
each runs inside `tap.segment(rows, n_total)`, which names the rows of the session's full flat
layout ([N = n_total]) its tokens occupy. Forced ids are taken at those rows, and what it records
is scattered back to them, so `stacked(...)` reads as for one forward over the whole batch; rows no
segment covered (padding that was trimmed away) hold -1 ids and zero logits.

Router logits are checked to be logits, not probabilities (transformers releases before PR #45131
returned softmax outputs there, so a softmax applied on top would be a double softmax).
"""

from __future__ import annotations

import contextlib

import torch


def unwrap(module):
    """The module under peft's LoRA wrappers (`base_layer`, possibly nested): with LoRA on an MoE, peft
    wraps each router, whose forward then runs the router itself with the adapted weight, so hooks
    on the router see the adapted logits."""
    while hasattr(module, "base_layer"):
        module = module.base_layer
    return module


def is_router(module) -> bool:
    return type(module).__name__.endswith(("TopKRouter", "TopkRouter"))


def moe_blocks(model) -> list[torch.nn.Module]:
    """The MoE blocks of `model` in layer order: modules with a ``gate`` router and ``experts``."""
    return [m for m in model.modules() if is_router(unwrap(getattr(m, "gate", None))) and hasattr(m, "experts")]


def moe_shape(config: dict) -> tuple[int, int] | None:
    """(num_experts, top_k) from an HF config dict, or None for a dense model."""
    experts = config.get("num_experts") or config.get("num_local_experts") or config.get("n_routed_experts")
    return (int(experts), int(config["num_experts_per_tok"])) if experts else None


def find_routers(model) -> list[torch.nn.Module]:
    return [m for m in model.modules() if is_router(m)]


def router_scoring(router) -> tuple[str, float]:
    """("softmax", 1.0) for the softmax routers; ("sigmoid", routed_scaling_factor) for DeepSeek-style ones."""
    if hasattr(router, "e_score_correction_bias"):
        return "sigmoid", float(getattr(router, "routed_scaling_factor", 1.0))
    return "softmax", 1.0


def renormalises(router) -> bool:
    """Whether the router rescales its top-k probabilities to sum to 1 (Mixtral always does; Qwen and
    OLMoE per `norm_topk_prob`)."""
    return bool(getattr(router, "norm_topk_prob", True))


def route_weights(logits: torch.Tensor, indices: torch.Tensor, renormalise: bool, scoring: str = "softmax",
                  scale: float = 1.0) -> torch.Tensor:
    """Gate weights [N, k] of experts `indices` [N, k] under router `logits` [N, E]: the router's scores in
    fp32 (a softmax over all experts, or DeepSeek's per-expert sigmoid), gathered at the ids, renormalised
    over the k when the router does so, times the router's scale."""
    scores = torch.softmax(logits.float(), dim=-1) if scoring == "softmax" else torch.sigmoid(logits.float())
    probs = scores.gather(-1, indices.long())
    if renormalise:
        probs = probs / (probs.sum(-1, keepdim=True) + (1e-20 if scoring == "sigmoid" else 0.0))
    return probs * scale


def sequence_routes(prompt_routes, response_routes, prompt_len: int) -> torch.Tensor | None:
    """Routes for every position of the learner's input (prompt + response), [B, P + T, L, k].

    `response_routes[:, t]` is the routing at position P - 1 + t (the one whose logits sampled
    response token t); `prompt_routes[:, p]` at prompt position p (-1 on padding). The last
    position (the final sampled token is never forwarded by the sampler) and any position without a
    recorded route are -1, i.e. routed live."""
    if response_routes is None:
        return None
    B, T, L, k = response_routes.shape
    full = torch.full((B, prompt_len + T, L, k), -1, dtype=torch.long, device=response_routes.device)
    if prompt_routes is not None:
        full[:, :prompt_len] = prompt_routes
    full[:, prompt_len - 1 : prompt_len - 1 + T] = response_routes
    return full


class RouterTap:
    """Hooks on every router of `model` (idle outside a session). See the module docstring."""

    def __init__(self, model):
        blocks = moe_blocks(model)
        self.routers = [unwrap(b.gate) for b in blocks]
        self.num_layers = len(self.routers)
        self.top_k = self.routers[0].top_k if blocks else 0
        self.num_experts = self.routers[0].num_experts if blocks else 0
        self._renorm = [renormalises(r) for r in self.routers]
        self._scoring = [router_scoring(r) for r in self.routers]
        self._active = False
        self._forced = None
        self._capture_logits = False
        self._balanced = None  # route(logits [n, E], k) -> (ids, weights) over a forward's real tokens
        self._token_mask = None  # [N] of the session's flat layout: 1 = a real token
        self._reset()
        self._handles = []
        for layer, block in enumerate(blocks):
            self._handles.append(self.routers[layer].register_forward_hook(self._router_hook(layer)))
            self._handles.append(block.experts.register_forward_pre_hook(self._experts_hook(layer), with_kwargs=True))

    def _reset(self):
        L = self.num_layers
        self.logits: list = [None] * L  # [N, E] per layer (with graph when grad is on)
        self.live: list = [None] * L  # [N, k] the router's own choice
        self.used: list = [None] * L  # [N, k] what the experts received
        self._checked = False
        self._seen: set = set()  # layers whose router ran in this forward (or segment)
        self._seen_used: set = set()
        self._segment = None  # (rows [n], forced at those rows or None) of the running segment
        self._n_total = 0
        self._parts: dict = {}  # name -> per layer list of (rows, values) of the segments so far

    @property
    def active(self) -> bool:
        return self._active

    @contextlib.contextmanager
    def segment(self, rows: torch.Tensor, n_total: int):
        """Inside a session: one forward whose flat tokens sit at `rows` of the session's [n_total] layout."""
        if not self._active:
            raise RuntimeError("tap.segment(...) runs inside tap.session(...)")
        if self._forced is not None and self._forced.shape[0] != n_total:
            raise ValueError(f"forced routes cover {self._forced.shape[0]} tokens, the segmented batch has {n_total}")
        if not self._parts:
            self._parts = {name: [[] for _ in range(self.num_layers)] for name in ("logits", "live", "used")}
        self._n_total = n_total
        forced = self._forced[rows.to(self._forced.device)] if self._forced is not None else None
        self._segment, self._seen, self._seen_used = (rows, forced), set(), set()
        try:
            yield
        finally:
            self._segment = None
            self._assemble()

    def _record(self, name: str, layer: int, value: torch.Tensor) -> None:
        if self._segment is None:
            getattr(self, name)[layer] = value
        else:
            self._parts[name][layer].append((self._segment[0], value))

    def _assemble(self) -> None:
        """The segments so far, scattered into full [n_total, ...] per-layer tensors (autograd kept)."""
        for name, layers in self._parts.items():
            out = getattr(self, name)
            for layer, parts in enumerate(layers):
                if not parts:
                    out[layer] = None
                    continue
                rows = torch.cat([r for r, _ in parts]).to(parts[0][1].device)
                vals = torch.cat([v for _, v in parts])
                fill = 0.0 if name == "logits" else -1
                full = torch.full((self._n_total, *vals.shape[1:]), fill, dtype=vals.dtype, device=vals.device)
                out[layer] = full.index_copy(0, rows, vals)

    @contextlib.contextmanager
    def session(self, forced: torch.Tensor | None = None, capture_logits: bool = False, balanced=None,
                token_mask: torch.Tensor | None = None):
        """One forward (and its backward): `forced` [N, L, k] long ids to replay (N = batch x sequence,
        row-major, as the blocks flatten them; a row with any -1 routes live). `balanced`: a batch
        routing rule used instead of the router's own choice on the real tokens (`token_mask` [N])."""
        if forced is not None and (forced.dim() != 3 or forced.shape[1:] != (self.num_layers, self.top_k)):
            raise ValueError(
                f"forced routes must be [tokens, {self.num_layers} MoE layers, top_k={self.top_k}], got {tuple(forced.shape)}"
            )
        if balanced is not None and token_mask is None:
            raise ValueError("a balanced routing session needs the token mask (padding must not count as load)")
        self._reset()
        self._forced, self._capture_logits, self._active = forced, capture_logits, True
        self._balanced, self._token_mask = balanced, token_mask
        try:
            yield self
        finally:
            self._active, self._forced, self._balanced, self._token_mask = False, None, None, None

    @contextlib.contextmanager
    def paused(self):
        """Inside a session: forwards that the tap neither records nor replays (another model's pass
        through the same modules, e.g. the LoRA reference with its adapters disabled)."""
        active, self._active = self._active, False
        try:
            yield
        finally:
            self._active = active

    def stacked(self, name: str) -> torch.Tensor | None:
        """`live` or `used` as [N, L, k], `logits` as [L, N, E]; None if a layer did not run."""
        parts = getattr(self, name)
        if not parts or any(p is None for p in parts):
            return None
        return torch.stack(parts, dim=0) if name == "logits" else torch.stack(parts, dim=1)

    def _router_hook(self, layer: int):
        def hook(module, inputs, output):
            if not self._active:
                return None
            logits, weights, indices = output
            first = layer not in self._seen  # capture once per layer; recomputation only replays
            if first:
                self._seen.add(layer)
                if not self._checked:
                    self._check_logits(logits)
            if self._balanced is not None:
                weights, indices = self._balanced_route(logits, weights, indices)
                output = logits, weights, indices
            if first:
                self._record("live", layer, indices.detach())
                if self._capture_logits:
                    self._record("logits", layer, logits)
            all_forced = self._forced if self._segment is None else self._segment[1]
            if all_forced is None:
                return output if self._balanced is not None else None
            forced = all_forced[:, layer].to(indices.device)
            if forced.shape[0] != indices.shape[0]:
                raise ValueError(f"forced routes cover {forced.shape[0]} tokens, the forward has {indices.shape[0]}")
            replay = (forced >= 0).all(-1, keepdim=True)
            new_indices = torch.where(replay, forced.to(indices.dtype), indices)
            new_weights = route_weights(logits, new_indices, self._renorm[layer], *self._scoring[layer]).to(weights.dtype)
            new_weights = torch.where(replay, new_weights, weights)
            return logits, new_weights, new_indices

        return hook

    def _balanced_route(self, logits, weights, indices):
        """The session's batch rule over this forward's real tokens; padding keeps the router's choice."""
        mask = self._token_mask if self._segment is None else self._token_mask[self._segment[0]]
        real = mask.to(logits.device).bool()
        if real.shape[0] != logits.shape[0]:
            raise ValueError(f"the token mask covers {real.shape[0]} tokens, the forward has {logits.shape[0]}")
        if not bool(real.any()):
            return weights, indices
        ids, gates = self._balanced(logits[real], indices.shape[-1])
        indices, weights = indices.clone(), weights.clone()
        indices[real], weights[real] = ids.to(indices.dtype), gates.to(weights.dtype)
        return weights, indices

    def _experts_hook(self, layer: int):
        def hook(module, args, kwargs):
            if self._active and layer not in self._seen_used:
                self._seen_used.add(layer)
                indices = args[1] if len(args) > 1 else kwargs["top_k_index"]
                self._record("used", layer, indices.detach())
            return None

        return hook

    def _check_logits(self, logits: torch.Tensor) -> None:
        self._checked = True
        rows = logits.detach().float()
        if rows.numel() and bool((rows >= 0).all()) and bool(torch.allclose(rows.sum(-1), torch.ones(1, device=rows.device), atol=1e-4)):
            raise RuntimeError(
                "the MoE router returned probabilities where logits were expected (a transformers release before "
                "PR #45131?): a softmax on top of them would be applied twice. Upgrade transformers."
            )

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
