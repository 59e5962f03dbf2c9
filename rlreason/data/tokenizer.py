"""A character-level tokenizer for tiny policies, built with the `tokenizers` library.

One token per character of a fixed alphabet plus ``<pad>``, ``<bos>``, ``<eos>`` and ``<unk>``. It is
a real `PreTrainedTokenizerFast`, so TRL, vLLM and `save_pretrained` treat it like any other.
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
DEFAULT_ALPHABET = "0123456789+-*/=#() .,:abcdefghijklmnopqrstuvwxyz"


def build_char_tokenizer(alphabet: str = DEFAULT_ALPHABET) -> PreTrainedTokenizerFast:
    chars = list(dict.fromkeys(alphabet))
    vocab = {tok: i for i, tok in enumerate(SPECIALS + chars)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
    )
    fast.padding_side = "left"
    return fast
