"""Writing a checkpoint's tokenizer files the way the published Kimi checkpoint ships them:
tiktoken.model, tokenizer_config.json (added_tokens_decoder, bos/eos/pad/unk, chat_template) and
chat_template.jinja."""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Mapping

from . import specials as sp
from ..fileio import atomic_write_bytes
from .tiktoken_file import FILE_NAME as TIKTOKEN_FILE, write_tiktoken_bpe

CONFIG_FILE = "tokenizer_config.json"
TEMPLATE_FILE = "chat_template.jinja"


def builtin_chat_template() -> str:
    return resources.files("kimi_gguf").joinpath("data/chat_template.jinja").read_text(encoding="utf-8")


def tokenizer_config(n_ranks: int, chat_template: str) -> dict:
    names = sp.default_special_names(n_ranks)
    decoder = {str(i): {"content": name, "lstrip": False, "normalized": False, "rstrip": False,
                        "single_word": False, "special": True}
               for i, name in sorted(names.items())}
    return {
        "added_tokens_decoder": decoder,
        "additional_special_tokens": list(sp.ADDITIONAL_SPECIAL_TOKENS),
        "bos_token": sp.BOS,
        "eos_token": sp.EOS,
        "pad_token": sp.PAD,
        "unk_token": sp.UNK,
        "chat_template": chat_template,
        "clean_up_tokenization_spaces": False,
        "extra_special_tokens": {},
        "model_max_length": 1048576,
        "tokenizer_class": "TikTokenTokenizer",
    }


def write_tokenizer_files(out_dir: str | Path, ranks: Mapping[bytes, int],
                          chat_template: str | None = None) -> None:
    out_dir = Path(out_dir)
    template = builtin_chat_template() if chat_template is None else chat_template
    write_tiktoken_bpe(ranks, out_dir / TIKTOKEN_FILE)
    cfg = json.dumps(tokenizer_config(len(ranks), template), indent=2, ensure_ascii=False) + "\n"
    atomic_write_bytes(out_dir / CONFIG_FILE, cfg.encode("utf-8"))
    atomic_write_bytes(out_dir / TEMPLATE_FILE, template.encode("utf-8"))
