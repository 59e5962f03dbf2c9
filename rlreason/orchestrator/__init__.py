"""What `Trainer.fit` coordinates, one job per file. Each piece knows its own part of the config.

- `policy_source.py`: the initial policy (a warm start, the built-in SmolLM2, or an HF folder), made
  before Ray starts so that it has the machine to itself;
- `task_data.py`: the task's train and held-out problems, checked by the verifiers as they load;
- `placement.py`: Ray resources, thread shares and the placement group of the actors;
- `learners.py`: the learner actor(s), called together (DeepSpeed ranks), dying loudly;
- `fleet.py`: the rollout workers, engine-agnostic: generation with recovery, and weight sync;
- `scorer.py`: the reward plan and the verifier pool: rewards and their metrics;
- `batches.py`: one step's batch: the curriculum's prompts, rollouts, difficulty filtering and refill;
- `evaluator.py`: held-out greedy and sampled accuracy, the initial one cached;
- `checkpoints.py`: atomic checkpoints of the learner and the driver's data position, and resume.

Nothing here is an algorithm: estimators, losses and curricula arrive through their registries.
"""
