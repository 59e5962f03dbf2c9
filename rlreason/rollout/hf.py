"""The transformers rollout engine: batched sampling with HF `generate`.

Returns per-token sampling logprobs computed from the raw logits at the sampling temperature (the
same quantity the learner computes), so `kl/rollout_vs_train` measures only numerical drift.
`top_k` is disabled explicitly (HF's default of 50 would silently truncate the distribution).
With `share_prefix` (the default), each distinct prompt is prefilled once and its KV cache copied to
its n samples, instead of prefilling every copy (dense policies; an MoE policy whose routes are
recorded prefills every copy, since the recorder follows generate's own forwards). With
`compact_finished` (the default) policies whose routes are not recorded sample through
`rollout/decode.py`, which stops computing a response once it has ended; else HF `generate`.
For MoE policies it also records the routed expert ids of every generated token
(`rlreason/rollout/routing.py`), carried in `RolloutBatch.routed_experts`.
"""

from __future__ import annotations

import contextlib
import logging

import torch

from rlreason.batch import RolloutBatch, per_prompt_counts
from rlreason.forward import response_logprobs
from rlreason.moe.balance import SELECTION_BIAS_KEY, SelectionBias
from rlreason.policy import DTYPES, load_policy, load_tokenizer
from rlreason.rollout.decode import sample
from rlreason.rollout.routing import RoutingRecorder, find_routers
from rlreason.rollout.stop_strings import StopStrings
from rlreason.transfer import TENSORS, AdapterUpdate, merge_adapter_update
from rlreason.weights_check import fingerprint

log = logging.getLogger(__name__)


class HFEngine:
    weights_format = TENSORS

    def __init__(self, model_path: str, threads: int = 0, record_routing: bool = True, dtype: str = "fp32",
                 share_prefix: bool = True, compact_finished: bool = True, max_batch: int = 256):
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = dtype
        self.model_path = model_path
        self.lora_base = None  # fp32 copies of the adapted base weights, kept from the first adapter update
        self.selection_bias = None  # the MoE selection bias (aux-free balancing), once a payload carries one
        self.model = load_policy(model_path, dtype).to(self.device)
        self.model.eval()
        self.record_routing = record_routing and bool(find_routers(self.model))
        if record_routing and not self.record_routing:
            log.info("rollout: the policy has no MoE routers; routed experts are not recorded (None)")
        from rlreason.moe.router import moe_shape

        self.moe_shape = moe_shape(self.model.config.to_dict())
        self.share_prefix = share_prefix
        self.compact_finished = compact_finished
        self.max_batch = max_batch
        self.tokenizer = load_tokenizer(model_path)
        self.pad_id = self.tokenizer.pad_token_id
        self.eos_id = self.tokenizer.eos_token_id

    @classmethod
    def from_config(cls, model_path: str, rollout_cfg, threads: int, seed: int) -> "HFEngine":
        """`seed` is unused: every generate call is seeded."""
        r = rollout_cfg
        return cls(model_path, threads=threads, dtype=r.dtype, share_prefix=r.share_prefix, compact_finished=r.compact_finished,
                   max_batch=r.max_batch)

    @classmethod
    def check_config(cls, cfg) -> None:
        """Every `rollout.*` option applies to this engine."""

    def load_weights(self, weights) -> None:
        """A state dict (all weights) or an `AdapterUpdate` (LoRA adapters, merged into the base here);
        either may carry the learner's MoE selection bias (aux-free balancing), which this engine then
        applies to its routers' top-k choice as the learner does."""
        if isinstance(weights, AdapterUpdate):
            bias = weights.extras.get(SELECTION_BIAS_KEY)
            self.load_adapter_update(weights)
        else:
            weights = dict(weights)
            bias = weights.pop(SELECTION_BIAS_KEY, None)
            self.load_state_dict(weights)
        if bias is not None:
            if self.selection_bias is None:
                self.selection_bias = SelectionBias(self.model, torch.zeros_like(bias, dtype=torch.float32))
            self.selection_bias.load(bias)

    def fingerprint(self) -> dict:
        """The served weights by name, and the selection bias when one was sent (Engine.fingerprint)."""
        named = list(self.model.state_dict().items())
        if self.selection_bias is not None:
            named.append((SELECTION_BIAS_KEY, self.selection_bias.bias))
        return {"groups": fingerprint(named), "grouping": "name", "dtype": str(DTYPES[self.dtype]).removeprefix("torch.")}

    def load_state_dict(self, state_dict: dict) -> None:
        self.model.load_state_dict(state_dict, strict=True)  # copies cast to the engine's dtype

    def load_adapter_update(self, update) -> None:
        """LoRA: W = W0 + (B @ A) * scale for every adapted weight, from fp32 copies of the initial
        (base) weights read once from the policy folder, so a bf16 engine rounds once, as it would
        loading the learner's merged weights."""
        if self.lora_base is None:
            base = load_policy(self.model_path, "fp32").state_dict()
            self.lora_base = {k: base[k].to(self.device) for k in update.keys()}
            del base
        merge_adapter_update(self.model.state_dict(), self.lora_base, update)

    def generate(
        self,
        prompts: list[str],
        n: int | list[int],
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        greedy: bool = False,
        seed: int | None = None,
        stop=None,
    ) -> tuple[RolloutBatch, list[str]]:
        """n samples of each prompt, in chunks of whole prompts of at most `max_batch` sequences (one
        chunk unless the request is larger: the memory of a decode grows with its rows, and on a CPU
        its time per token barely shrinks with more of them). `stop()` is asked after every token: when
        it answers True the rows still running end where they are (partial rollouts; a chunk not yet
        started generates one token)."""
        counts = per_prompt_counts(n, len(prompts)).tolist()
        chunks, start, rows = [], 0, 0
        for i, c in enumerate(counts):
            if rows and rows + c > self.max_batch:
                chunks.append((start, i))
                start, rows = i, 0
            rows += c
        chunks.append((start, len(prompts)))
        if seed is not None:
            torch.manual_seed(seed)
        parts, texts = [], []
        for a, b in chunks:
            part, t = self._generate_chunk(prompts[a:b], counts[a:b], max_new_tokens, temperature, top_p, greedy, stop)
            part.group_index = part.group_index + a
            parts.append(part)
            texts += t
        return RolloutBatch.concat(parts, self.pad_id), texts

    @torch.no_grad()  # the shared-prefix prefill too
    def _generate_chunk(self, prompts: list[str], n: list[int], max_new_tokens: int, temperature: float, top_p: float,
                        greedy: bool, stop=None) -> tuple[RolloutBatch, list[str]]:
        enc = self.tokenizer(
            prompts, return_tensors="pt", padding=True, add_special_tokens=False, return_token_type_ids=False
        )
        counts = per_prompt_counts(n, len(prompts))
        prompt_ids = enc.input_ids.repeat_interleave(counts, dim=0).to(self.device)
        prompt_mask = enc.attention_mask.repeat_interleave(counts, dim=0).to(self.device)
        cache = None
        if self.share_prefix and not self.record_routing and int(counts.max()) > 1 and enc.input_ids.shape[1] > 1:
            cache = self._shared_prefix_cache(enc.input_ids.to(self.device), enc.attention_mask.to(self.device), counts)
        group_index = torch.arange(len(prompts)).repeat_interleave(counts)
        return self._decode(prompt_ids, prompt_mask, group_index, max_new_tokens, temperature, top_p, greedy, cache, stop)

    def generate_ids(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                     top_p: float = 1.0, greedy: bool = False, seed: int | None = None, stop=None,
                     stop_strings: list[str] | None = None) -> tuple[RolloutBatch, list[str]]:
        """Token in: one response to each left-padded row of `prompt_ids` (a prompt and the response so far,
        when a partial rollout continues; the episode so far, in a multi-turn rollout), each row its own group.
        A row ends at EOS or after the token that completes one of `stop_strings` (kept)."""
        if seed is not None:
            torch.manual_seed(seed)
        return self._decode(prompt_ids.to(self.device), prompt_mask.to(self.device), torch.arange(prompt_ids.shape[0]),
                            max_new_tokens, temperature, top_p, greedy, None, stop,
                            StopStrings(self.tokenizer, stop_strings) if stop_strings else None)

    @torch.no_grad()
    def _decode(self, prompt_ids, prompt_mask, group_index, max_new_tokens, temperature, top_p, greedy, cache, stop,
                stop_strings: StopStrings | None = None):
        recorder = RoutingRecorder(self.model, prompt_ids.shape[0]) if self.record_routing else None
        if recorder is None and self.compact_finished:  # ended responses leave the batch (rollout/decode.py)
            response_ids, logprobs = sample(self.model, prompt_ids, prompt_mask, max_new_tokens, self.eos_id, self.pad_id,
                                            temperature, top_p, greedy, cache, stop, stop_strings and stop_strings.hit)
        else:
            with recorder if recorder is not None else contextlib.nullcontext():
                out = self._generate(prompt_ids, prompt_mask, max_new_tokens, temperature, top_p, greedy, cache, stop)
            response_ids = out.sequences[:, prompt_ids.shape[1]:]
            temp = 1.0 if greedy else temperature
            # one step at a time: no [B, T, V] stack of the logits (SmolLM2: 196 KB per token)
            logprobs = torch.stack([
                torch.log_softmax(step.float() / temp, dim=-1).gather(-1, response_ids[:, t, None]).squeeze(-1)
                for t, step in enumerate(out.logits)
            ], dim=1)
        is_eos = response_ids == self.eos_id
        # tokens up to and including the first EOS belong to the response
        after_eos = (is_eos.cumsum(-1) - is_eos.long()) > 0
        truncated = ~is_eos.any(-1)
        if stop_strings is not None:  # a row that met a stop string ends after the token completing it
            for b in range(response_ids.shape[0]):
                cut = stop_strings.cut(response_ids[b][~after_eos[b]].tolist())
                if cut is not None:
                    after_eos[b, cut:] = True
                    truncated[b] = False
        response_mask = (~after_eos).long()
        response_ids = response_ids.masked_fill(after_eos, self.pad_id)
        logprobs = logprobs.masked_fill(after_eos, 0.0)
        texts = self.tokenizer.batch_decode(response_ids, skip_special_tokens=True)
        batch = RolloutBatch(
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            response_ids=response_ids,
            response_mask=response_mask,
            sampling_logprobs=logprobs,
            group_index=group_index.to(self.device),
            truncated=truncated,
        )
        if recorder is not None:
            batch.routed_experts = recorder.result(response_mask)
            batch.prompt_routed_experts = recorder.prompt_result(prompt_mask)
        return batch.to("cpu"), texts

    def _shared_prefix_cache(self, ids, mask, counts):
        """KV cache of every prompt but its last token, computed once per distinct prompt and repeated
        for its samples; generate then feeds only the last prompt token (positions as generate sets them)."""
        prefix, pmask = ids[:, :-1], mask[:, :-1]
        position_ids = (pmask.long().cumsum(-1) - 1).masked_fill(pmask == 0, 1)
        out = self.model(input_ids=prefix, attention_mask=pmask, position_ids=position_ids, use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        cache.batch_select_indices(torch.arange(len(counts), device=ids.device).repeat_interleave(counts.to(ids.device)))
        return cache

    def _generate(self, prompt_ids, prompt_mask, max_new_tokens, temperature, top_p, greedy, cache=None, stop=None):
        from transformers import StoppingCriteria, StoppingCriteriaList

        class Interrupt(StoppingCriteria):  # partial rollouts: every row ends where it is once stop() says so
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), bool(stop()), dtype=torch.bool, device=input_ids.device)

        return self.model.generate(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            past_key_values=cache,
            max_new_tokens=max_new_tokens,
            do_sample=not greedy,
            temperature=None if greedy else temperature,
            top_p=None if greedy else top_p,
            top_k=None if greedy else 0,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_id,
            output_logits=True,
            return_dict_in_generate=True,
            stopping_criteria=StoppingCriteriaList([Interrupt()]) if stop is not None else None,
        )

    @torch.no_grad()
    def score(self, batch: RolloutBatch, temperature: float = 1.0) -> torch.Tensor:
        """Teacher-forced log-probs [B, T] of the batch's responses under this engine's weights."""
        b = batch.to(self.device)
        return response_logprobs(self.model, b.prompt_ids, b.prompt_mask, b.response_ids, b.response_mask, temperature)["logprobs"].cpu()
