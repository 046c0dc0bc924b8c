"""The Kimi pre-tokenizer pattern and a tiktoken Encoding built from (ranks, specials).

The pattern is the one Moonshot's tokenization_kimi.py hands to tiktoken (llama.cpp names the same
pre-tokenizer ``kimi-k2`` and implements it by hand in unicode.cpp). It is written here piece by
piece so each alternative can be read on its own:

1. runs of Han characters;
2./3. a word: an optional leading non-letter/non-digit, then cased letter runs (upper* lower+ or
   upper+ lower*), Han excluded, with an optional English contraction;
4. numbers of one to three digits;
5. punctuation runs with an optional leading space, swallowing trailing newlines;
6.-8. whitespace: up to and including newlines, whitespace not followed by non-space, the rest.

tiktoken compiles it with Rust's fancy-regex (which supports ``&&`` class intersection). Python's
``re`` cannot, so the trainer splits with the ``regex`` package in VERSION1 mode (same semantics).
"""
from __future__ import annotations

from typing import Iterator, Mapping

import regex
import tiktoken

_LETTERS_NO_HAN_UPPER = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]"
_LETTERS_NO_HAN_LOWER = r"[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]"
_CONTRACTION = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
_LEAD = r"[^\r\n\p{L}\p{N}]?"

KIMI_PATTERN_PARTS: tuple[str, ...] = (
    r"[\p{Han}]+",
    _LEAD + _LETTERS_NO_HAN_UPPER + "*" + _LETTERS_NO_HAN_LOWER + "+" + _CONTRACTION,
    _LEAD + _LETTERS_NO_HAN_UPPER + "+" + _LETTERS_NO_HAN_LOWER + "*" + _CONTRACTION,
    r"\p{N}{1,3}",
    r" ?[^\s\p{L}\p{N}]+[\r\n]*",
    r"\s*[\r\n]+",
    r"\s+(?!\S)",
    r"\s+",
)
KIMI_PAT_STR: str = "|".join(KIMI_PATTERN_PARTS)

# llama.cpp's name for this pre-tokenizer (tokenizer.ggml.pre).
LLAMA_CPP_PRE = "kimi-k2"

_compiled = regex.compile(KIMI_PAT_STR, flags=regex.VERSION1)


def split_words(text: str) -> Iterator[str]:
    """The pre-tokenizer pieces of `text`, in order; their concatenation is `text`."""
    for match in _compiled.finditer(text):
        yield match.group(0)


def build_encoding(ranks: Mapping[bytes, int], specials: Mapping[str, int],
                   name: str = "kimi") -> tiktoken.Encoding:
    """A tiktoken Encoding with the Kimi pattern: what tokenization_kimi.py builds, without
    transformers."""
    return tiktoken.Encoding(name=name, pat_str=KIMI_PAT_STR, mergeable_ranks=dict(ranks),
                             special_tokens=dict(specials))
