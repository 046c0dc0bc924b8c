"""Fuzz the readers that take files from the internet: every input either parses or raises KimiError
-- never another exception (a crash or a traceback for the user).

hypothesis with derandomize=True: the examples come from a fixed seed, the same in every run and in
CI, and each run is bounded (max_examples). Targets:
  * the safetensors side: kimi_gguf.checkpoint.HFCheckpoint (+ the converter's plan, + reading every
    tensor) on the tiny checkpoint with shard 1's header edited field by field, or its raw bytes;
  * the GGUF side: convert.verify.open_reader + `inspect`'s describe + GGUFSource (+ dequantizing
    tensors) on byte-level edits of a converted GGUF's header;
  * config.json -> ModelSpec (+ the name table), tiktoken.model lines.
"""
from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from kimi_gguf.errors import KimiError

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])
SHARD1 = "model-00001-of-00003.safetensors"

# Values that stress length / count / offset fields: zero, one, sign bits, all-ones, just past a size.
_INTS = st.sampled_from([0, 1, 2, 3, 7, 8, 255, 256, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 53,
                         2 ** 63 - 1, 2 ** 63, 2 ** 64 - 1]) | st.integers(0, 2 ** 64 - 1)


class _World(tuple):
    """Fixture data with a short repr (hypothesis prints the arguments of a failing example)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {len(self)}>"


def _parse_or_kimi(fn) -> None:
    try:
        fn()
    except KimiError as exc:
        msg = str(exc)
        assert msg and "\n" not in msg, repr(msg)


# ---------------------------------------------------------------------------------- safetensors
@pytest.fixture(scope="module")
def st_world(tiny_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz_st") / "ckpt"
    shutil.copytree(tiny_dir, d)
    raw = (d / SHARD1).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return _World((d, raw, json.loads(raw[8:8 + n]), raw[8 + n:]))


def _read_all(d: Path) -> None:
    from kimi_gguf.checkpoint import HFCheckpoint
    from kimi_gguf.convert.plan import make_plan

    src = HFCheckpoint(d)
    make_plan(src.spec, src, "f32")
    for name in src.keys():
        src.get(name)


_JSONISH = st.recursive(st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats() |
                        st.text(max_size=12), lambda c: st.lists(c, max_size=4) |
                        st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=6)
_DTYPES = st.sampled_from(["F32", "F16", "BF16", "F64", "I8", "I32", "I64", "U8", "BOOL", "F8_E4M3",
                           "F8_E5M2", "Q4", "", "f32"])


@st.composite
def header_edits(draw):
    edits = []
    for _ in range(draw(st.integers(1, 3))):
        # edits that keep byte sizes consistent get past safetensors' own checks: weight them up
        kind = draw(st.sampled_from(["dtype", "shape", "offsets", "drop", "add", "value", "metadata", "rename"] +
                                    ["reshape", "retype", "retype", "swap"] * 3))
        edits.append((kind, draw(st.integers(0, 10 ** 6)), draw(_JSONISH), draw(_DTYPES),
                      draw(st.lists(st.integers(-3, 2 ** 40), max_size=5)),
                      draw(st.tuples(_INTS, _INTS))))
    return edits


_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "BF16": 2, "F16": 2, "I16": 2, "U16": 2,
             "F32": 4, "I32": 4, "U32": 4, "F64": 8, "I64": 8, "U64": 8}


def _consistent_edit(h: dict, key: str, other: str, kind: str, pick: int) -> None:
    """Edits safetensors itself accepts (byte sizes still add up), so the project's checks are reached."""
    t = h.get(key)
    if not isinstance(t, dict) or t.get("dtype") not in _ITEMSIZE or not isinstance(t.get("shape"), list) \
            or not all(isinstance(x, int) and x >= 0 for x in t["shape"]):
        return  # an earlier edit already broke it
    shape = list(t["shape"])
    if kind == "reshape" and shape:
        n = 1
        for x in shape:
            n *= x
        t["shape"] = [[n], [1] + shape, shape[::-1], shape + [1]][pick % 4]
    elif kind == "retype":
        size = _ITEMSIZE[t["dtype"]]
        options = [d for d, s in _ITEMSIZE.items() if s == size] + \
                  [d for d, s in _ITEMSIZE.items() if shape and (shape[-1] * size) % s == 0 and s != size]
        new = options[pick % len(options)]
        if shape:
            shape[-1] = shape[-1] * size // _ITEMSIZE[new]
        t["dtype"], t["shape"] = new, shape
    elif kind == "swap" and isinstance(h.get(other), dict) and other != key:
        o = h[other]
        a, b = t.get("data_offsets"), o.get("data_offsets")
        if isinstance(a, list) and isinstance(b, list) and len(a) == len(b) == 2 and a[1] - a[0] == b[1] - b[0]:
            t["data_offsets"], o["data_offsets"] = b, a


@FUZZ
@given(edits=header_edits())
def test_safetensors_header_fields(st_world, edits):
    d, raw, header, data = st_world
    h = json.loads(json.dumps(header))
    names = sorted(k for k in h if k != "__metadata__")
    for kind, pick, value, dtype, shape, (a, b) in edits:
        key = names[pick % len(names)]
        if not isinstance(h.get(key), dict):
            continue
        if kind == "dtype":
            h[key]["dtype"] = dtype
        elif kind == "shape":
            h[key]["shape"] = shape
        elif kind == "offsets":
            h[key]["data_offsets"] = [a, b]
        elif kind == "drop":
            del h[key]
        elif kind == "add":
            h["model.layers.0.extra.weight"] = {"dtype": dtype, "shape": shape, "data_offsets": [a % 64, b % 64]}
        elif kind == "value":
            h[key] = value
        elif kind == "metadata":
            h["__metadata__"] = value
        elif kind == "rename":
            h[key.replace("weight", "wieght")] = h.pop(key)
        else:
            _consistent_edit(h, key, names[(pick // 7) % len(names)], kind, pick)
    body = json.dumps(h).encode()
    (d / SHARD1).write_bytes(len(body).to_bytes(8, "little") + body + data)
    _parse_or_kimi(lambda: _read_all(d))


@FUZZ
@given(cut=st.integers(0, 4096), at=st.integers(0, 4096), junk=st.binary(min_size=1, max_size=8),
       length=st.none() | _INTS)
def test_safetensors_raw_bytes(st_world, cut, at, junk, length):
    d, raw, _, _ = st_world
    b = bytearray(raw)
    b[at:at + len(junk)] = junk
    if length is not None:
        b[:8] = struct.pack("<Q", length)
    if cut:
        b = b[:len(b) - cut]
    (d / SHARD1).write_bytes(bytes(b))
    _parse_or_kimi(lambda: _read_all(d))


# ---------------------------------------------------------------------------------- GGUF
@pytest.fixture(scope="module")
def gguf_world(tiny_gguf, tmp_path_factory):
    import gguf

    import numpy as np

    # the tiny GGUF less its tokenizer arrays (parsing those would take most of each example's time)
    src = gguf.GGUFReader(tiny_gguf)
    small = tmp_path_factory.mktemp("fuzz_gguf_base") / "base.gguf"
    w = gguf.GGUFWriter(small, src.get_field("general.architecture").contents())
    for k, f in src.fields.items():
        if k.startswith(("GGUF.", "tokenizer.")) or k == "general.architecture":
            continue
        vt = f.types[0]
        w.add_key_value(k, f.contents(), vt, sub_type=f.types[-1] if vt == gguf.GGUFValueType.ARRAY else None)
    for t in src.tensors:
        w.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    raw = small.read_bytes()
    r = gguf.GGUFReader(small)
    header_end = int(r.data_offset)
    # byte offsets of every header field start: edits land on lengths, types and counts
    starts = sorted({int(f.offset) for f in r.fields.values()} |
                    {int(t.field.offset) for t in r.tensors} | {0, 4, 8, 16, 24})
    return _World((tmp_path_factory.mktemp("fuzz_gguf") / "f.gguf", raw, header_end, starts))


def _read_gguf(path: Path) -> None:
    from kimi_gguf.convert.gguf_source import GGUFSource
    from kimi_gguf.convert.inspect import describe

    describe(path)
    src = GGUFSource(path)
    for name in src.keys()[:40]:
        src.get(name)


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 40),
                                st.sampled_from(["<I", "<Q", "<i", "<q", "raw"]), _INTS,
                                st.binary(min_size=1, max_size=8)), min_size=1, max_size=3),
       cut=st.none() | st.integers(0, 10 ** 7))
def test_gguf_header_bytes(gguf_world, edits, cut):
    path, raw, header_end, starts = gguf_world
    b = bytearray(raw)
    for pick, delta, fmt, value, junk in edits:
        pos = min(starts[pick % len(starts)] + delta, header_end - 8)
        if fmt == "raw":
            b[pos:pos + len(junk)] = junk
        else:
            size = struct.calcsize(fmt)
            lim = 1 << (8 * size)
            v = value % lim
            if fmt[-1] in "iq" and v >= lim // 2:
                v -= lim
            struct.pack_into(fmt, b, pos, v)
    if cut is not None:
        b = b[:cut % (len(b) + 1)]
    path.write_bytes(bytes(b))
    _parse_or_kimi(lambda: _read_gguf(path))


# ---------------------------------------------------------------------------------- config, tokenizer
@pytest.fixture(scope="module")
def tiny_config(tiny_dir):
    return json.loads((tiny_dir / "config.json").read_text())


_CFG_VALUES = (st.integers(-3, 70) | st.sampled_from([0, -1, 2 ** 31, 2 ** 63, 10 ** 30]) | st.floats() |
               st.none() | st.booleans() | st.text(max_size=8) |
               st.lists(st.integers(-2, 12), max_size=10) | st.dictionaries(st.text(max_size=8), st.integers(0, 9),
                                                                            max_size=3))


@FUZZ
@given(data=st.data())
def test_config_values(tiny_config, data):
    from kimi_gguf.names import build_table, canonical_shapes
    from kimi_gguf.spec import ModelSpec

    cfg = json.loads(json.dumps(tiny_config))
    keys = sorted(cfg) + sorted(f"linear_attn_config.{k}" for k in cfg["linear_attn_config"])
    for _ in range(data.draw(st.integers(1, 3))):
        key = data.draw(st.sampled_from(keys))
        value = data.draw(_CFG_VALUES)
        if data.draw(st.booleans(), label="delete") and key != "model_type":
            value = KeyError
        target, k = (cfg["linear_attn_config"], key.split(".", 1)[1]) if key.startswith("linear_attn_config.") \
            else (cfg, key)
        if not isinstance(target, dict):
            continue
        if value is KeyError:
            target.pop(k, None)
        else:
            target[k] = value

    def parse():
        spec = ModelSpec.from_config(cfg, "config.json")
        canonical_shapes(spec)
        build_table(spec)

    _parse_or_kimi(parse)


@pytest.fixture(scope="module")
def tiktoken_lines(tiny_dir):
    return _World((tiny_dir / "tiktoken.model").read_bytes().splitlines())


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 10 ** 6), st.binary(max_size=24) |
                                st.sampled_from([b"", b" ", b"AA== -1", b"AA== 0", b"QQ== 1e3", b"=== 4",
                                                 b"AA==\t5", b"AA== 5 6", b"\xff\xfe 7"])),
                      min_size=1, max_size=4))
def test_tiktoken_lines(tiktoken_lines, edits):
    from kimi_gguf.tokenizer.tiktoken_file import parse_tiktoken_bpe

    lines = list(tiktoken_lines)
    for pick, new in edits:
        lines[pick % len(lines)] = new
    _parse_or_kimi(lambda: parse_tiktoken_bpe(b"\n".join(lines), "tiktoken.model"))
