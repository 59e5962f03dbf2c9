import dataclasses
import random

import pytest

from rewards.math import math_verifier
from rlreason.config import ModelConfig, TaskConfig, WarmstartConfig
from rlreason.data.arithmetic import make_problem, make_splits
from rlreason.data.sampler import PromptSampler
from rlreason.data.tokenizer import build_char_tokenizer
from rlreason.learner.warmstart import cache_key


def test_problem_solution_is_correct_and_verifiable():
    rng = random.Random(0)
    for _ in range(200):
        p = make_problem(rng, num_terms=3, max_value=9)
        assert eval(p.prompt[:-1]) == int(p.answer)  # noqa: S307 - our own generated arithmetic
        assert math_verifier(p.solution, p.as_sample()).score == 1.0
        assert math_verifier(p.direct_solution, p.as_sample()).score == 1.0
        assert int(p.answer) >= 0


def test_splits_are_disjoint_and_deterministic():
    train, evals = make_splits(1234, 3000, 100, 3, 9)
    assert len(train) == 3000 and len(evals) == 100
    assert not {p.prompt for p in train} & {p.prompt for p in evals}
    assert len({p.prompt for p in evals}) == 100
    again, evals2 = make_splits(1234, 3000, 100, 3, 9)
    assert again == train and evals2 == evals
    with pytest.raises(ValueError, match="num_eval"):
        make_splits(0, 10, 10_000, 2, 2)


def test_sampler_epochs_and_resume():
    s = PromptSampler(10, 4, seed=3)
    batches = [s.next_batch() for _ in range(5)]  # 20 draws = two full epochs
    assert sorted(batches[0] + batches[1] + batches[2][:2]) == list(range(10))
    assert s.epoch == 1 and s.consumed == 20
    # a fresh sampler restored from state continues identically
    t = PromptSampler(10, 4, seed=3)
    for _ in range(3):
        t.next_batch()
    u = PromptSampler(10, 4, seed=3)
    u.load_state_dict(t.state_dict())
    assert [u.next_batch() for _ in range(4)] == [t.next_batch() for _ in range(4)]
    with pytest.raises(ValueError, match="seed"):
        PromptSampler(10, 4, seed=4).load_state_dict(t.state_dict())


def test_char_tokenizer_roundtrip():
    tok = build_char_tokenizer()
    ids = tok("12+3=15 #15", add_special_tokens=False).input_ids
    assert len(ids) == len("12+3=15 #15")
    assert tok.decode(ids) == "12+3=15 #15"
    assert tok.eos_token_id != tok.pad_token_id


def test_warmstart_cache_key_tracks_what_shapes_the_policy():
    tok = build_char_tokenizer()
    base = cache_key(ModelConfig(), TaskConfig(), WarmstartConfig(), 0, tok.get_vocab())
    assert base == cache_key(ModelConfig(), TaskConfig(), WarmstartConfig(cache_dir="/elsewhere"), 0, tok.get_vocab())
    from rlreason.config import LoRAConfig  # LoRA is an RL-time choice: the same warm start serves it

    assert base == cache_key(ModelConfig(lora=LoRAConfig(r=8)), TaskConfig(), WarmstartConfig(), 0, tok.get_vocab())
    from rlreason.config import UpcycleConfig  # smollm2-moe's upcycling never shapes a warm start

    assert base == cache_key(ModelConfig(upcycle=UpcycleConfig(method="drop")), TaskConfig(), WarmstartConfig(), 0, tok.get_vocab())
    for other in (
        cache_key(ModelConfig(num_experts=4), TaskConfig(), WarmstartConfig(), 0, tok.get_vocab()),
        cache_key(ModelConfig(), dataclasses.replace(TaskConfig(), max_value=20), WarmstartConfig(), 0, tok.get_vocab()),
        cache_key(ModelConfig(), TaskConfig(), WarmstartConfig(direct_answer_fraction=0.0), 0, tok.get_vocab()),
        cache_key(ModelConfig(), TaskConfig(), WarmstartConfig(), 1, tok.get_vocab()),
    ):
        assert other != base
