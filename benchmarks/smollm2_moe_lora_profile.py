"""One SmolLM2-MoE learner step under LoRA, profiled: adapters on every linear layer and expert
stack, the expert stacks' adapters applied to the weights (peft's fold) or to the activations
(rlreason/learner/expert_lora.py), vs attention only (8 samples of <= 24 tokens, R3 + z-loss, fp32,
2 threads).

    PYTHONPATH=. .venv/bin/python benchmarks/smollm2_moe_lora_profile.py
"""
import time

import torch

from rlreason.assets import smollm2_folder
from rlreason.config import AlgoConfig, LearnerConfig, LoRAConfig, MoEConfig
from rlreason.learner.learner import Learner
from rlreason.moe.upcycle import upcycled_folder
from rlreason.rollout.worker import RolloutWorker

path = str(upcycled_folder(smollm2_folder(), 4, 2))
w = RolloutWorker("hf", path, threads=2)
batch, _ = w.generate(["What is 7 + 5?", "What is 43 + 28? Answer with just the number."], 0, 4, 24, 1.0, 1.0, seed=0)
batch.rewards = torch.tensor([1.0, 0, 0, 1, 0, 1, 1, 0])
del w
for lora in (LoRAConfig(r=16, alpha=32, expert_forward="weights"), LoRAConfig(r=16, alpha=32, expert_forward="activations"),
             LoRAConfig(r=16, alpha=32, target_modules="q_proj,k_proj,v_proj,o_proj")):
    lr = Learner(path, LearnerConfig(lr=2e-4, threads=2), AlgoConfig(), 1.0, 24,
                 moe_cfg=MoEConfig(routing_replay="r3", z_coef=1e-3), lora_cfg=lora)
    lr.train_step(batch)  # warm-up
    t = time.perf_counter()
    lr.train_step(batch)
    dt = time.perf_counter() - t
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        lr.train_step(batch)
    print(lora.target_modules, lora.expert_forward, f"train_step {dt:.1f} s (8 samples x <=24 tokens)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))
    del lr
