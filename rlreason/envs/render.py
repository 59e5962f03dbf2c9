"""Observations as token ids, appended after a model turn without rendering the conversation again.

With a chat template the ids of an observation are the template's own rendering of it, found by
difference: render(BASE + observation messages, with the next assistant header) minus render(BASE), where
BASE is a fixed two-message conversation ending in an assistant turn, cut right after that turn's
end-of-turn token (the model's own turns end there too, on EOS). So the ids appended are exactly what the
template would put between the model's end-of-turn and its next turn: the separator after the
end-of-turn, the tool message(s) and the next assistant header (for ChatML: ``\\n<|im_start|>tool\\n42
<|im_end|>\\n<|im_start|>assistant\\n``). All of a turn's tool messages are rendered together (a template
may join parallel results). If the template does not reproduce BASE as a prefix (templates that strip
earlier turns, e.g. reasoning traces), `PrefixBreak` is raised at construction, by a self-test, rather than
training on ids the policy never saw.

Without a chat template (the tiny policy's character tokenizer, or `model.chat_template=false`), an observation is its text encoded
without special tokens.
"""

from __future__ import annotations

BASE = [{"role": "user", "content": "?"}, {"role": "assistant", "content": "."}]


class PrefixBreak(ValueError):
    """The chat template renders a conversation so that an earlier rendering is not its prefix."""


class ObservationRenderer:
    def __init__(self, tokenizer, role: str = "tool", use_template: bool = True):
        """`use_template`: render with the tokenizer's chat template (the prompts are in it too: model.chat_template)."""
        self.tokenizer, self.role = tokenizer, role
        self.eot_id = tokenizer.eos_token_id  # a model turn ends on it
        self.base: list[int] | None = None
        if use_template and getattr(tokenizer, "chat_template", None):
            ids = self._render(BASE, False)
            if self.eot_id not in ids:
                raise PrefixBreak(f"the chat template does not end an assistant turn with the EOS token {tokenizer.eos_token!r}")
            self.base = ids[: len(ids) - ids[::-1].index(self.eot_id)]
            self.ids(["self-test"])  # raises PrefixBreak for a template that re-renders earlier turns

    def ids(self, contents: list[str]) -> list[int]:
        """The ids that follow a model turn's end-of-turn for these observation texts (one message each) up
        to the start of the next model turn."""
        if self.base is None:
            return self.tokenizer("".join(contents), add_special_tokens=False).input_ids
        full = self._render(BASE + [{"role": self.role, "content": c} for c in contents], True)
        if full[: len(self.base)] != self.base:
            raise PrefixBreak("the chat template renders the conversation differently once an observation follows "
                              "(it re-renders earlier turns); multi-turn rollouts would train on ids the policy never saw")
        return full[len(self.base):]

    def _render(self, messages: list[dict], generation_prompt: bool) -> list[int]:
        out = self.tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt)
        return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)
