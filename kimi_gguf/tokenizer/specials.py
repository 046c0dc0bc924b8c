"""The Kimi special-token layout, relative to the number of BPE ranks.

The published tokenizer (Kimi K2 / Kimi Linear, tokenization_kimi.py + tokenizer_config.json) puts
its specials right after the 163,584 BPE ranks. tokenization_kimi.py creates 256 + 2 slots
(``num_reserved_special_tokens + 2``); the model's embedding covers only the first 256 (vocab
163,840), so the last two exist in tiktoken but never reach the model. Slots named in
``added_tokens_decoder`` carry their name; the others are ``<|reserved_token_{id}|>`` with the
absolute id.
"""
from __future__ import annotations

NUM_RESERVED_SPECIAL = 256          # slots the model's vocabulary covers
NUM_TIKTOKEN_SPECIAL = NUM_RESERVED_SPECIAL + 2  # slots tokenization_kimi.py creates

# offset from n_ranks -> name, as in the published tokenizer_config.json (163584 + offset).
NAMED_SPECIALS: dict[int, str] = {
    0: "[BOS]",
    1: "[EOS]",
    2: "<|im_end|>",
    3: "<|im_user|>",
    4: "<|im_assistant|>",
    6: "<|start_header_id|>",
    7: "<|end_header_id|>",
    9: "[EOT]",
    10: "<|im_system|>",
    11: "<|tool_calls_section_begin|>",
    12: "<|tool_calls_section_end|>",
    13: "<|tool_call_begin|>",
    14: "<|tool_call_argument_begin|>",
    15: "<|tool_call_end|>",
    17: "<|im_middle|>",
    254: "[UNK]",
    255: "[PAD]",
}

BOS, EOS, PAD, UNK, EOT = "[BOS]", "[EOS]", "[PAD]", "[UNK]", "<|im_end|>"

# tokenization_kimi.py's default additional_special_tokens (tokenizer_config.json lists the same).
ADDITIONAL_SPECIAL_TOKENS = ["<|im_end|>", "<|im_user|>", "<|im_assistant|>", "<|start_header_id|>",
                             "<|end_header_id|>", "[EOT]", "<|im_system|>", "<|im_middle|>"]


def reserved_name(token_id: int) -> str:
    return f"<|reserved_token_{token_id}|>"


def is_reserved_name(name: str) -> bool:
    return name.startswith("<|reserved_token_") and name.endswith("|>")


def default_special_names(n_ranks: int) -> dict[int, str]:
    """id -> name for all 256 model-visible special slots (named ones plus reserved fillers)."""
    return {n_ranks + off: NAMED_SPECIALS.get(off, reserved_name(n_ranks + off))
            for off in range(NUM_RESERVED_SPECIAL)}


def tiktoken_specials(n_ranks: int, named: dict[int, str]) -> dict[str, int]:
    """name -> id for all 258 tiktoken slots, as tokenization_kimi.py fills them."""
    return {named.get(i, reserved_name(i)): i for i in range(n_ranks, n_ranks + NUM_TIKTOKEN_SPECIAL)}
