"""The Kimi tokenizer into GGUF, without transformers and without running checkpoint code.

Reads ``tiktoken.model`` + ``tokenizer_config.json`` (+ ``chat_template.jinja``) and writes what
llama.cpp's BPE tokenizer needs (``tokenizer.ggml.model`` = gpt2, ``pre`` = kimi-k2):

* token strings in GPT-2's byte-to-unicode form (every byte one printable character);
* merges recovered from the ranks. tiktoken has no merge list: it repeatedly joins the adjacent pair
  (a, b) whose concatenation has the lowest rank, whatever the ranks of a and b. llama.cpp ranks
  *pairs* by their place in the merge list. So for each token t, in rank order, the list gets every
  split t = a + b into two tokens, the split tiktoken's own merge loop reaches on t's bytes leading
  (upstream's converter keeps only that one). Every join tiktoken can make is then a merge llama.cpp
  knows, at the same priority relative to every other token; the two can differ only when two
  different splits of one token are adjacent at once (tiktoken takes the leftmost, llama.cpp the
  first listed) -- and in the whole-piece shortcut tiktoken takes when a pre-tokenizer piece is
  itself a token;
* specials from ``added_tokens_decoder`` as CONTROL tokens, the unnamed ``<|reserved_token_i|>``
  fillers as UNUSED (never produced, never parsed from text), bos/eos/pad/unk/eot ids, add_bos off
  (Kimi prompts start with the chat template, not [BOS]), and the chat template.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import gguf

from ..errors import KimiError
from ..tokenizer import specials as sp
from ..tokenizer.kimi_regex import LLAMA_CPP_PRE, build_encoding
from ..tokenizer.tiktoken_file import FILE_NAME as TIKTOKEN_FILE, read_tiktoken_bpe
from ..tokenizer.files import CONFIG_FILE, TEMPLATE_FILE


@dataclass
class KimiTokenizer:
    ranks: dict[bytes, int]
    specials: dict[str, int]          # all tiktoken special slots (named + reserved), name -> id
    named: dict[int, str]             # ids given a real name in added_tokens_decoder (no fillers)
    bos_id: int
    eos_id: int
    pad_id: int | None
    unk_id: int | None
    eot_id: int | None
    chat_template: str | None
    source: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def n_ranks(self) -> int:
        return len(self.ranks)

    def encoding(self):
        """tiktoken Encoding with the Kimi pattern: the reference the GGUF tokenizer must match."""
        return build_encoding(self.ranks, self.specials, name=Path(self.source).name or "kimi")


# ---------------------------------------------------------------------------------------- loading
def _load_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KimiError(f"{path}: missing tokenizer file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KimiError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise KimiError(f"{path}: top level is not a JSON object")
    return data


def _token_name(value: Any, path: Path, key: str) -> str | None:
    """bos_token etc. are a string or an AddedToken dict {"content": ...}."""
    if value is None:
        return None
    if isinstance(value, dict):
        value = value.get("content")
    if not isinstance(value, str) or not value:
        raise KimiError(f"{path}: field '{key}' is not a token string")
    return value


def _chat_template(cfg: dict, model_dir: Path, cfg_path: Path) -> str | None:
    tmpl = cfg.get("chat_template")
    if isinstance(tmpl, list):  # [{"name": ..., "template": ...}, ...]: take the default one
        named = {t.get("name"): t.get("template") for t in tmpl if isinstance(t, dict)}
        tmpl = named.get("default", next(iter(named.values()), None))
    if tmpl is not None and not isinstance(tmpl, str):
        raise KimiError(f"{cfg_path}: field 'chat_template' is not a string")
    if tmpl:
        return tmpl
    jinja = model_dir / TEMPLATE_FILE
    if jinja.is_file():
        try:
            return jinja.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise KimiError(f"{jinja}: not UTF-8 text") from None
    return None


def load_kimi_tokenizer(model_dir: str | Path) -> KimiTokenizer:
    model_dir = Path(model_dir)
    ranks = read_tiktoken_bpe(model_dir / TIKTOKEN_FILE)
    n = len(ranks)
    cfg_path = model_dir / CONFIG_FILE
    cfg = _load_json(cfg_path)

    decoder = cfg.get("added_tokens_decoder")
    if not isinstance(decoder, dict) or not decoder:
        raise KimiError(f"{cfg_path}: no special tokens ('added_tokens_decoder' missing or empty)")
    named: dict[int, str] = {}
    for key, entry in decoder.items():
        try:
            tid = int(key)
        except (TypeError, ValueError):
            raise KimiError(f"{cfg_path}: added_tokens_decoder key {key!r} is not a token id") from None
        content = entry.get("content") if isinstance(entry, dict) else None
        if not isinstance(content, str) or not content:
            raise KimiError(f"{cfg_path}: added_tokens_decoder[{key}] has no 'content' string")
        if not n <= tid < n + sp.NUM_TIKTOKEN_SPECIAL:
            raise KimiError(f"{cfg_path}: added_tokens_decoder[{key}] ({content}) lies outside the "
                            f"special range {n}..{n + sp.NUM_TIKTOKEN_SPECIAL - 1} after {n} BPE ranks "
                            f"of {model_dir / TIKTOKEN_FILE}")
        if not sp.is_reserved_name(content):   # fillers are typed UNUSED, not CONTROL
            named[tid] = content
    specials = sp.tiktoken_specials(n, named)
    if len(specials) != sp.NUM_TIKTOKEN_SPECIAL:
        raise KimiError(f"{cfg_path}: added_tokens_decoder names one token twice")

    def resolve(key: str, default: str | None, required: bool) -> int | None:
        name = _token_name(cfg.get(key), cfg_path, key) or default
        if name is None:
            return None
        if name not in specials or specials[name] not in named and not sp.is_reserved_name(name):
            if required:
                raise KimiError(f"{cfg_path}: {key} {name!r} is not among the special tokens "
                                f"of added_tokens_decoder")
            return None
        return specials[name]

    bos = resolve("bos_token", sp.BOS, True)
    eos = resolve("eos_token", sp.EOS, True)
    pad = resolve("pad_token", sp.PAD, False)
    unk = resolve("unk_token", sp.UNK, False)
    eot = specials.get(sp.EOT) if specials.get(sp.EOT) in named else None
    return KimiTokenizer(ranks=ranks, specials=specials, named=named, bos_id=bos, eos_id=eos,
                         pad_id=pad, unk_id=unk, eot_id=eot,
                         chat_template=_chat_template(cfg, model_dir, cfg_path),
                         source=str(model_dir / TIKTOKEN_FILE))


# ------------------------------------------------------------------------------ GGUF conversion
@lru_cache(maxsize=1)
def byte_to_unicode() -> tuple[str, ...]:
    """GPT-2's reversible byte -> printable character map: printable Latin-1 bytes stand for
    themselves, the rest (controls, space, ...) for 256, 257, ... in byte order."""
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAC + 1)) | set(range(0xAE, 0xFF + 1))
    out, extra = [], 0
    for b in range(256):
        if b in keep:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return tuple(out)


def token_to_gpt2(token: bytes) -> str:
    table = byte_to_unicode()
    return "".join(table[b] for b in token)


def tiktoken_split(ranks: Mapping[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """tiktoken's merge loop on `token`'s bytes using only ranks below `max_rank`: join the adjacent
    pair of lowest rank (leftmost on ties) until none is left."""
    parts = [token[i:i + 1] for i in range(len(token))]
    while len(parts) > 1:
        best_i, best_r = -1, max_rank
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < best_r:
                best_i, best_r = i, r
        if best_i < 0:
            break
        parts[best_i:best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return parts


def recover_merges(ranks: Mapping[bytes, int]) -> tuple[list[tuple[bytes, bytes]], int]:
    """Merge pairs in rank order (see module doc) and the number of multi-byte tokens that no split
    into two tokens can make (unreachable by merging; tiktoken still emits them when a whole
    pre-tokenizer piece equals one)."""
    merges: list[tuple[bytes, bytes]] = []
    unreachable = 0
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) < 2:
            continue
        splits = [(token[:k], token[k:]) for k in range(1, len(token))
                  if token[:k] in ranks and token[k:] in ranks]
        if not splits:
            unreachable += 1
            continue
        if len(splits) > 1:
            parts = tiktoken_split(ranks, token, rank)
            if len(parts) == 2:
                first = (parts[0], parts[1])
                splits.remove(first)
                splits.insert(0, first)
        merges.extend(splits)
    return merges, unreachable


def shortcut_only_tokens(ranks: Mapping[bytes, int]) -> list[bytes]:
    """Tokens that tiktoken's merge loop does not rebuild from their own bytes. tiktoken still emits
    one when a whole pre-tokenizer piece equals it (a dictionary shortcut); llama.cpp's kimi-k2 path
    has no such shortcut, so these are the only places the two can disagree on a piece. Slow-ish
    (a merge loop per token): a check, not part of conversion."""
    return [t for t in ranks if len(t) > 1 and tiktoken_split(ranks, t, len(ranks) + 1) != [t]]


def gguf_vocab(tok: KimiTokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """Token strings and types for ids 0..vocab_size-1."""
    n = tok.n_ranks
    if vocab_size < n:
        raise KimiError(f"{tok.source}: {n} BPE ranks do not fit the model's vocab_size {vocab_size}")
    tokens = [""] * vocab_size
    types = [int(gguf.TokenType.NORMAL)] * vocab_size
    for token, rank in tok.ranks.items():
        tokens[rank] = token_to_gpt2(token)
    by_id = {i: name for name, i in tok.specials.items()}
    for i in range(n, vocab_size):
        name = by_id.get(i, sp.reserved_name(i))
        tokens[i] = name
        types[i] = int(gguf.TokenType.CONTROL if i in tok.named else gguf.TokenType.UNUSED)
    return tokens, types


def add_tokenizer_to_gguf(writer: gguf.GGUFWriter, tok: KimiTokenizer, vocab_size: int) -> dict:
    """Write the tokenizer keys; returns counts for the converter's summary ({"tokens", "merges",
    "unreachable"}: multi-byte tokens no merge makes)."""
    tokens, types = gguf_vocab(tok, vocab_size)
    merges, unreachable = recover_merges(tok.ranks)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(LLAMA_CPP_PRE)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([f"{token_to_gpt2(a)} {token_to_gpt2(b)}" for a, b in merges])
    for tid, add in ((tok.bos_id, writer.add_bos_token_id), (tok.eos_id, writer.add_eos_token_id),
                     (tok.pad_id, writer.add_pad_token_id), (tok.unk_id, writer.add_unk_token_id),
                     (tok.eot_id, writer.add_eot_token_id)):
        if tid is not None and tid < vocab_size:
            add(tid)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    if tok.chat_template:
        writer.add_chat_template(tok.chat_template)
    return {"tokens": len(tokens), "merges": len(merges), "unreachable": unreachable}


def write_vocab_only_gguf(model_dir: str | Path, out_path: str | Path, force: bool = True) -> Path:
    """A GGUF with the model's hyper-parameters and tokenizer but no tensors (llama.cpp's
    vocab_only loading, `kimi-gguf convert --vocab-only`). Written atomically (convert.atomic)."""
    from ..spec import ModelSpec
    from ..names import ARCH_NAME
    from .atomic import atomic_path
    from .metadata import add_model_keys

    model_dir, out_path = Path(model_dir), Path(out_path)
    spec = ModelSpec.from_dir(model_dir)
    tok = load_kimi_tokenizer(model_dir)
    with atomic_path(out_path, force) as tmp:
        w = gguf.GGUFWriter(str(tmp), ARCH_NAME)
        add_model_keys(w, spec, name=model_dir.name, file_type=int(gguf.LlamaFileType.ALL_F32),
                       tensor_dialect="none", keep_f32=[])
        add_tokenizer_to_gguf(w, tok, spec.vocab_size)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return out_path
