"""The chat format of a served model, taken from the GGUF's own chat template.

llama-cpp-python can guess a chat format from metadata, but a guess may pick a built-in format
whose stop tokens differ. We build the handler explicitly: the template stored under
`tokenizer.chat_template`, rendered by llama-cpp-python's Jinja2ChatFormatter (sandboxed Jinja,
the same renderer its server uses for any GGUF template), and generation stops on the model's EOS
and on `<|im_end|>`, the end-of-turn token of the Kimi format, whatever id it has in this vocab.
"""
from __future__ import annotations

from dataclasses import dataclass

from llama_cpp import Llama
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from ..errors import KimiError

TEMPLATE_KEY = "tokenizer.chat_template"
END_OF_TURN = "<|im_end|>"


@dataclass(frozen=True)
class ChatFormat:
    formatter: Jinja2ChatFormatter
    stop_ids: frozenset[int]

    def handler(self):
        return self.formatter.to_chat_handler()

    def prompt_tokens(self, llama: Llama, messages: list, **kwargs) -> list[int]:
        """The token ids the chat handler will feed the model for these messages (same calls)."""
        rendered = self.formatter(messages=messages, **kwargs)
        return llama.tokenize(rendered.prompt.encode("utf-8"),
                              add_bos=not rendered.added_special, special=True)


def special_id(llama: Llama, text: str) -> int | None:
    """The id of a special token given by its text, or None when the vocab lacks it."""
    ids = llama.tokenize(text.encode("utf-8"), add_bos=False, special=True)
    return ids[0] if len(ids) == 1 else None


def chat_format_from_gguf(llama: Llama, model_path: str) -> ChatFormat:
    template = llama.metadata.get(TEMPLATE_KEY)
    if not template:
        raise KimiError(f"{model_path}: GGUF has no {TEMPLATE_KEY}; convert the checkpoint with "
                        f"its tokenizer_config.json / chat_template.jinja beside it")
    eos_id = llama.token_eos()
    stop_ids = {i for i in (eos_id, special_id(llama, END_OF_TURN)) if i is not None and i >= 0}
    if not stop_ids:
        raise KimiError(f"{model_path}: vocab has neither an EOS id nor {END_OF_TURN}; "
                        f"generation could never stop at the end of a turn")

    def text(i: int) -> str:
        return llama._model.token_get_text(i) if i >= 0 else ""

    try:
        formatter = Jinja2ChatFormatter(template=template, eos_token=text(eos_id),
                                        bos_token=text(llama.token_bos()),
                                        stop_token_ids=sorted(stop_ids))
    except Exception as exc:  # a template that does not even parse is a bad file, say which
        raise KimiError(f"{model_path}: {TEMPLATE_KEY} is not a valid Jinja template: {exc}") from exc
    return ChatFormat(formatter=formatter, stop_ids=frozenset(stop_ids))
