"""Multi-turn building blocks by hand: the token-exact trajectory, tool-call parsing, the calculator."""

import pytest

from rlreason.envs.calculator import CalculatorError, calculate
from rlreason.envs.tool_calls import code_fence_calls, hermes_calls
from rlreason.envs.trajectory import Segment, Trajectory


def test_a_trajectory_flattens_to_the_sampled_ids_with_gradient_on_generated_tokens_only():
    t = Trajectory([1, 2, 3])
    t.append(Segment("gen", [10, 11], turn=0, logprobs=[-0.5, -0.25], versions=[4, 4]))
    t.append(Segment("obs", [20, 21, 22], turn=0))
    t.append(Segment("bridge", [30], turn=1))
    t.check_fed([1, 2, 3, 10, 11, 20, 21, 22, 30])  # what turn 2 is fed: exactly the trajectory so far
    t.append(Segment("gen", [12], turn=1, logprobs=[-1.0], versions=[5]))
    flat = t.flatten()
    assert flat["response_ids"] == [10, 11, 20, 21, 22, 30, 12]
    assert flat["loss_mask"] == [1, 1, 0, 0, 0, 0, 1]
    assert flat["logprobs"] == [-0.5, -0.25, 0.0, 0.0, 0.0, 0.0, -1.0]
    assert flat["versions"] == [4, 4, -1, -1, -1, -1, 5]
    assert flat["kinds"] == ["gen", "gen", "obs", "obs", "obs", "bridge", "gen"]
    assert t.length == 10 and t.turns == 2


def test_a_re_tokenised_prefix_is_caught_and_malformed_segments_refused():
    t = Trajectory([1, 2])
    t.append(Segment("gen", [7, 8], turn=0, logprobs=[0.0, 0.0], versions=[0, 0]))
    with pytest.raises(AssertionError, match="position 2"):
        t.check_fed([1, 2, 78])  # "7" "8" merged into one token by a second tokenisation
    with pytest.raises(AssertionError):
        t.check_fed([1, 2, 7])
    with pytest.raises(ValueError, match="one log-prob and one version per token"):
        Segment("gen", [1, 2], turn=0, logprobs=[0.0], versions=[0, 0])
    with pytest.raises(ValueError, match="no log-probs"):
        Segment("obs", [1], turn=0, logprobs=[0.0])
    with pytest.raises(ValueError, match="kind"):
        Segment("tool", [1], turn=0)


def test_hermes_calls_are_parsed_in_order_and_malformed_ones_become_errors():
    text = ('I will compute. <tool_call>{"name": "calculator", "arguments": {"expression": "3*7"}}</tool_call> and '
            '<tool_call>{"name": "python", "arguments": "{\\"code\\": \\"print(1)\\"}"}</tool_call>'
            '<tool_call>{"name": "calculator", "arguments": {"expression": </tool_call>'
            '<tool_call>["calculator"]</tool_call><tool_call>{"name": "x", "arguments": 5}</tool_call>'
            '<tool_call>{"name": "calculator", "arguments": {"expression": "1+1"}}')  # unclosed at the end of the turn
    calls = hermes_calls(text)
    assert [(c.name, c.arguments, c.error is None) for c in calls[:2]] == [
        ("calculator", {"expression": "3*7"}, True), ("python", {"code": "print(1)"}, True)]
    assert "not valid JSON" in calls[2].error and '"name"' in calls[3].error and '"arguments"' in calls[4].error
    assert calls[5].name == "calculator" and calls[5].arguments == {"expression": "1+1"} and calls[5].error is None
    assert hermes_calls("no calls here") == []


def test_the_last_python_block_is_the_code_fence_call():
    text = "Try:\n```python\nprint(1)\n```\nBetter:\n```py\nx = 6 * 7\nprint(x)\n```\nand ```python\nunclosed"
    (call,) = code_fence_calls(text)
    assert call.name == "python" and call.arguments == {"code": "x = 6 * 7\nprint(x)\n"}
    assert code_fence_calls("```\nprint(1)\n```") == []  # an unlabelled block is prose, not a call


@pytest.mark.parametrize("expr, value", [
    ("3*7", "21"), ("1/3*3", "1"), ("2^10", "1024"), ("-(4 - 10) / 4", "1.5"), ("7/3", "7/3"), ("0.1 + 0.2", "0.3"),
    ("17 // 5 + 17 % 5", "5"), ("2 ** -2", "0.25"), ("(1/8) - 1", "-0.875"),
])
def test_the_calculator_is_exact(expr, value):
    assert calculate(expr) == value


@pytest.mark.parametrize("expr, why", [
    ("9**9**9", "exponent"), ("10**64 ** 2", "exponent"), ("((10**60)**60)**60", "too large"), ("1/0", "division by zero"),
    ("__import__('os')", "unsupported"), ("x + 1", "unsupported"), ("2 ** 0.5", "whole-number"), ("3 +", "not an arithmetic"),
    ("", "empty"), ("1+" * 300 + "1", "longer than"), ("True + 1", "unsupported"),
])
def test_the_calculator_refuses_what_it_should(expr, why):
    with pytest.raises(CalculatorError, match=why):
        calculate(expr)


def test_observation_ids_are_what_the_template_puts_between_two_model_turns():
    """SmolLM2's ChatML template: the ids after the model's <|im_end|> are the separator, the tool message and
    the next assistant header; a model turn + these ids + the next turn decode to the template's own rendering."""
    from rlreason.assets import smollm2_folder
    from rlreason.envs.render import ObservationRenderer
    from rlreason.policy import load_tokenizer

    tok = load_tokenizer(smollm2_folder())
    obs = ObservationRenderer(tok).ids(["42", "error: division by zero"])
    assert tok.decode(obs) == ("\n<|im_start|>tool\n42<|im_end|>\n<|im_start|>tool\nerror: division by zero<|im_end|>\n"
                               "<|im_start|>assistant\n")
    messages = [{"role": "user", "content": "What is 6*7?"}]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    turn1 = tok("<tool_call>{}</tool_call><|im_end|>", add_special_tokens=False).input_ids  # as sampled, ending on EOS
    after = [{"role": "assistant", "content": "<tool_call>{}</tool_call>"}, {"role": "tool", "content": "42"},
             {"role": "tool", "content": "error: division by zero"}]
    rendered = tok.apply_chat_template(messages + after, tokenize=False, add_generation_prompt=True)
    assert tok.decode(tok(prompt, add_special_tokens=False).input_ids + turn1 + obs) == rendered


def test_a_template_that_re_renders_earlier_turns_is_refused_and_no_template_means_plain_text():
    from rlreason.assets import smollm2_folder
    from rlreason.data.tokenizer import build_char_tokenizer
    from rlreason.envs.render import ObservationRenderer, PrefixBreak
    from rlreason.policy import load_tokenizer

    tok = load_tokenizer(smollm2_folder())
    # keeps only the last assistant turn's content, as reasoning templates drop earlier thinking
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' and not loop.last %}"
                         "{% else %}{{ m.content }}{% endif %}<|im_end|>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    with pytest.raises(PrefixBreak):
        ObservationRenderer(tok)
    char = build_char_tokenizer()
    assert ObservationRenderer(char).ids(["=42"]) == char("=42", add_special_tokens=False).input_ids


def test_single_turn_is_one_turn_and_the_calculator_env_answers_each_call_or_says_why_not():
    import time

    from rlreason.envs.base import ENVS, ToolEnv, Turn

    single = ENVS.get("single_turn")()
    assert single.max_turns == 1 and single.step(Turn("The answer is 4.", [1], "stop", 0)).done

    env = ENVS.get("calculator")(max_turns=3)
    env.reset({"prompt": "6*7?"})
    turn = Turn('<tool_call>{"name": "calculator", "arguments": {"expression": "6*7"}}</tool_call>'
                '<tool_call>{"name": "calculator", "arguments": {"expression": "1/0"}}</tool_call>'
                '<tool_call>{"name": "search", "arguments": {}}</tool_call><tool_call>{oops}</tool_call>', [1], "stop", 0)
    result = env.step(turn)
    assert result.observations[0] == "42" and result.observations[1] == "error: division by zero"
    assert result.observations[2].startswith("error: no tool named 'search'") and "not valid JSON" in result.observations[3]
    assert not result.done and result.info["tool_calls"] == 4 and result.info["tool_errors"] == 3
    assert env.step(Turn("So 42.", [1], "stop", 1)).done  # no call: the episode ends
    assert env.step(Turn(turn.text, [1], "length", 1)).done  # cut by the token budget: its calls are not run
    assert env.step(Turn(turn.text, [1], "stop", 2)).done  # the last allowed turn

    slow = ToolEnv({"sleep": lambda a: time.sleep(a["s"]) or "woke", "echo": lambda a: "x" * a["n"]}, timeout_s=0.2,
                   max_output_chars=50)
    r = slow.step(Turn('<tool_call>{"name": "sleep", "arguments": {"s": 2}}</tool_call>'
                       '<tool_call>{"name": "echo", "arguments": {"n": 80}}</tool_call>', [1], "stop", 0))
    assert r.observations[0] == "error: sleep did not answer within 0.2 s" and r.info["tool_timeouts"] == 1
    assert r.observations[1] == "x" * 25 + "\n... [30 characters elided] ...\n" + "x" * 25 and r.info["tool_s"] < 1.5
