#!/usr/bin/env python3
"""Every bad input the CLI must refuse, run through the real `kimi-gguf` and written to docs/ERRORS.md.

    .venv/bin/python scripts/error_table.py            # run every case, rewrite docs/ERRORS.md
    .venv/bin/python scripts/error_table.py --check    # run them, write nothing, exit 1 on any failure
    .venv/bin/python scripts/error_table.py --only disk_full_tmpfs sigint

Each case damages a copy of the tiny checkpoint (or of its f32 GGUF) in its own directory, then runs
`python -m kimi_gguf.cli ...` there as a subprocess (so paths in messages are the relative ones a
user typed, and a crash -- a signal, a traceback -- shows as such). A case passes when: the exit
status is the expected one; stderr is exactly one line `error: ...` holding every needle (the
file / tensor / key it must name); no traceback; nothing new is left in the output directory (no
output, no temp file); and its own post-check holds (e.g. a marker file some checkpoint code would
write does not exist). tests/test_reliability.py imports CASES and runs the ones the in-process
tests (tests/test_convert_errors.py) do not already cover.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
SHARD1 = "model-00001-of-00003.safetensors"
INDEX = "model.safetensors.index.json"
CONVERT = ("--outfile", "o/out.gguf", "--outtype", "f32", "--no-progress")


@dataclass
class Ctx:
    """One case's world: `work` is its own directory (the CLI's cwd); tiny / gguf are pristine inputs."""
    work: Path
    tiny: Path
    gguf: Path
    marker: Path = field(init=False)   # must never exist: code from a checkpoint would create it

    def __post_init__(self):
        self.marker = self.work / "EXECUTED"

    def ckpt(self, name: str = "ckpt") -> Path:
        d = self.work / name
        shutil.copytree(self.tiny, d)
        return d

    def out_dir(self) -> Path:
        o = self.work / "o"
        o.mkdir(exist_ok=True)
        return o

    def bad_gguf(self, damage: Callable[[bytes], bytes], name: str = "bad.gguf") -> str:
        (self.work / name).write_bytes(damage(self.gguf.read_bytes()))
        return name

    def ids(self, values=(1, 2, 3, 4, 5), name: str = "ids.npy") -> str:
        import numpy as np

        np.save(self.work / name, np.asarray(values, dtype=np.int64))
        return name


@dataclass
class Case:
    id: str
    group: str
    label: str
    setup: Callable[[Ctx], list[str]]       # builds the inputs, returns the CLI arguments
    needles: tuple[str, ...] = ()
    rc: int = 2
    watch: str = "o"                          # directory that must hold nothing new afterwards
    keep_output: bool = False                 # the run is meant to succeed and write its output
    runner: Callable | None = None            # special way to run (e.g. SIGINT part-way)
    preexec: Callable | None = None           # run in the child before exec (resource limits)
    available: Callable[[], str | None] = lambda: None   # reason it cannot run here, or None
    teardown: Callable[[Ctx], None] | None = None
    post: Callable[[Ctx], list[str]] | None = None       # extra checks -> problems
    in_tests: bool = True                     # False: tests/test_convert_errors.py already covers it


@dataclass
class Outcome:
    case: Case
    rc: int | None
    out: str
    err: str
    line: str
    leftovers: list[str]
    problems: list[str]
    seconds: float
    argv: list[str] = field(default_factory=list)
    skipped: str | None = None


# ---------------------------------------------------------------------------------- edits
def _rewrite_shard(path: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _shard_of(ckpt: Path, name: str) -> str:
    return json.loads((ckpt / INDEX).read_text())["weight_map"][name]


def _set_header(path: Path, edit) -> None:
    """Rewrite a safetensors header in place (data untouched)."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    edit(header)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + n:])


# ---------------------------------------------------------------------------------- GGUF damage
def _tensor_info_offsets(data: bytes, index: int) -> dict[str, int]:
    """Byte offsets of tensor `index`'s n_dims, ne[0], type and offset fields in a GGUF header."""
    import gguf

    path = _tmp_reader_path(data)
    try:
        f = gguf.GGUFReader(path).tensors[index].field
    finally:
        os.unlink(path)
    name_len = int(f.parts[0][0])
    nd = f.offset + 8 + name_len
    n_dims = int(f.parts[2][0])
    return {"n_dims": nd, "ne0": nd + 4, "type": nd + 4 + 8 * n_dims, "offset": nd + 8 + 8 * n_dims}


def _tmp_reader_path(data: bytes) -> str:
    fd, p = tempfile.mkstemp(suffix=".gguf")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return p


def _patch(data: bytes, fmt: str, where: int, value) -> bytes:
    b = bytearray(data)
    struct.pack_into(fmt, b, where, value)
    return bytes(b)


def gguf_damages() -> dict[str, Callable[[bytes], bytes]]:
    def tensor_field(which, fmt, value):
        def damage(d):
            offs = _tensor_info_offsets(d, 5)
            return _patch(d, fmt, offs[which], value)
        return damage

    return {
        "cut_in_magic": lambda d: d[:3],
        "cut_in_header": lambda d: d[:1000],
        "cut_in_data": lambda d: d[: len(d) // 2],
        "version_99": lambda d: _patch(d, "<I", 4, 99),
        "tensor_count_2^60": lambda d: _patch(d, "<Q", 8, 2 ** 60),
        "key_length_2^62": lambda d: _patch(d, "<Q", 24, 2 ** 62),
        "tensor_type_200": tensor_field("type", "<I", 200),
        "tensor_offset_past_end": tensor_field("offset", "<Q", 10 ** 12),
        "tensor_ne_2^40": tensor_field("ne0", "<Q", 2 ** 40),
        "architecture_renamed": lambda d: d.replace(b"kimi-linear", b"kimi-lineaX", 1),
    }


# ---------------------------------------------------------------------------------- environment
def _can_mount() -> str | None:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return "needs root and mount(8) for a tmpfs"
    d = tempfile.mkdtemp()
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", d], capture_output=True)
        if r.returncode != 0:
            return "mount -t tmpfs not permitted here"
        subprocess.run(["umount", d], check=True)
        return None
    finally:
        os.rmdir(d)


def _mount_tmpfs(ctx: Ctx, opts: str) -> None:
    o = ctx.out_dir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(o)], check=True)


def _umount(ctx: Ctx) -> None:
    subprocess.run(["umount", str(ctx.work / "o")], check=False)


def _fsize_limit():
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # EFBIG instead of being killed
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))


# ---------------------------------------------------------------------------------- converter setups
def s_missing_config(c: Ctx):
    (c.ckpt() / "config.json").unlink()
    c.out_dir()
    return ["convert", "ckpt", *CONVERT]


def s_config_not_json(c: Ctx):
    (c.ckpt() / "config.json").write_text('{"model_type": "kimi_linear",')
    c.out_dir()
    return ["convert", "ckpt", *CONVERT]


def s_config_missing_key(c: Ctx):
    _edit_json(c.ckpt() / "config.json", lambda d: d.pop("hidden_size"))
    c.out_dir()
    return ["convert", "ckpt", *CONVERT]


def s_config_bad_value(c: Ctx):
    _edit_json(c.ckpt() / "config.json", lambda d: d.__setitem__("num_hidden_layers", "eight"))
    c.out_dir()
    return ["convert", "ckpt", *CONVERT]


def s_unknown_model_type(c: Ctx):
    _edit_json(c.ckpt() / "config.json", lambda d: d.__setitem__("model_type", "llama"))
    c.out_dir()
    return ["convert", "ckpt", *CONVERT]


def s_model_dir_missing(c: Ctx):
    c.out_dir()
    return ["convert", "nope", *CONVERT]


def s_missing_tensor(c: Ctx):
    d = c.ckpt()
    name = "model.layers.0.self_attn.f_a_proj.weight"
    _rewrite_shard(d / _shard_of(d, name), lambda t: t.pop(name))
    _edit_json(d / INDEX, lambda i: i["weight_map"].pop(name))
    c.out_dir()
    return ["convert", "ckpt", *CONVERT]


def s_unexpected_tensor(c: Ctx):
    import torch

    d = c.ckpt()
    name = "model.layers.0.self_attn.extra_proj.weight"
    _rewrite_shard(d / SHARD1, lambda t: t.__setitem__(name, torch.ones(4, 4, dtype=torch.bfloat16)))
    _edit_json(d / INDEX, lambda i: i["weight_map"].__setitem__(name, SHARD1))
    c.out_dir()
    return ["convert", "ckpt", *CONVERT]


def s_wrong_shape(c: Ctx):
    import torch

    name = "model.embed_tokens.weight"
    _rewrite_shard(c.ckpt() / SHARD1, lambda t: t.__setitem__(name, torch.ones(10, 64, dtype=torch.bfloat16)))
    c.out_dir()
    return ["convert", "ckpt", *CONVERT]


def s_unsupported_dtype(c: Ctx):
    import torch

    name = "model.layers.0.input_layernorm.weight"
    _rewrite_shard(c.ckpt() / SHARD1, lambda t: t.__setitem__(name, torch.ones(64, dtype=torch.int32)))
    c.out_dir()
    return ["convert", "ckpt", *CONVERT]


def s_truncated_safetensors(c: Ctx):
    p = c.ckpt() / SHARD1
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    c.out_dir()
    return ["convert", "ckpt", *CONVERT]


def s_header_bad_json(c: Ctx):
    p = c.ckpt() / SHARD1
    data = bytearray(p.read_bytes())
    n = int.from_bytes(data[:8], "little")
    data[8:8 + n] = b"{" + b"x" * (n - 1)
    p.write_bytes(bytes(data))
    c.out_dir()
    return ["convert", "ckpt", *CONVERT]


def s_header_offsets_past_end(c: Ctx):
    def edit(h):
        key = next(k for k in h if k != "__metadata__")
        h[key]["data_offsets"] = [0, 10 ** 9]
    _set_header(c.ckpt() / SHARD1, edit)
    c.out_dir()
    return ["convert", "ckpt", *CONVERT]


def s_header_length_huge(c: Ctx):
    p = c.ckpt() / SHARD1
    data = p.read_bytes()
    p.write_bytes((2 ** 62).to_bytes(8, "little") + data[8:])
    c.out_dir()
    return ["convert", "ckpt", *CONVERT]


def s_header_dtype_unknown(c: Ctx):
    def edit(h):
        key = next(k for k in h if k != "__metadata__")
        h[key]["dtype"] = "Q4_BOGUS"
    _set_header(c.ckpt() / SHARD1, edit)
    c.out_dir()
    return ["convert", "ckpt", *CONVERT]


def s_index_missing_shard(c: Ctx):
    _edit_json(c.ckpt() / INDEX,
               lambda i: i["weight_map"].__setitem__("model.norm.weight", "model-00009-of-00009.safetensors"))
    c.out_dir()
    return ["convert", "ckpt", *CONVERT]


def s_index_not_json(c: Ctx):
    (c.ckpt() / INDEX).write_text('{"weight_map": {')
    c.out_dir()
    return ["convert", "ckpt", *CONVERT]


def s_no_weights(c: Ctx):
    d = c.ckpt()
    for p in d.glob("*.safetensors*"):
        p.unlink()
    c.out_dir()
    return ["convert", "ckpt", *CONVERT]


def s_missing_tiktoken(c: Ctx):
    (c.ckpt() / "tiktoken.model").unlink()
    c.out_dir()
    return ["convert", "ckpt", *CONVERT]


def s_malformed_tiktoken(c: Ctx):
    p = c.ckpt() / "tiktoken.model"
    lines = p.read_text().splitlines()
    lines[10] = "!!!not-base64 ten"
    p.write_text("\n".join(lines) + "\n")
    c.out_dir()
    return ["convert", "ckpt", *CONVERT]


def s_tiktoken_rank_not_int(c: Ctx):
    p = c.ckpt() / "tiktoken.model"
    lines = p.read_text().splitlines()
    lines[3] = lines[3].split()[0] + " three"
    p.write_text("\n".join(lines) + "\n")
    c.out_dir()
    return ["convert", "ckpt", *CONVERT]


def s_tokenizer_config_no_specials(c: Ctx):
    def edit(cfg):
        cfg.pop("added_tokens_decoder")
        cfg.pop("bos_token", None)
        cfg.pop("eos_token", None)
    _edit_json(c.ckpt() / "tokenizer_config.json", edit)
    c.out_dir()
    return ["convert", "ckpt", *CONVERT]


NONFINITE = "model.layers.2.block_sparse_moe.experts.3.w2.weight"


def _poison(c: Ctx) -> None:
    d = c.ckpt()

    def edit(t):
        x = t[NONFINITE].clone()
        x.view(-1)[3] = float("nan")
        x.view(-1)[5] = float("inf")
        t[NONFINITE] = x
    _rewrite_shard(d / _shard_of(d, NONFINITE), edit)
    c.out_dir()


def s_nonfinite(c: Ctx):
    _poison(c)
    return ["convert", "ckpt", *CONVERT]


def s_nonfinite_strict(c: Ctx):
    _poison(c)
    return ["convert", "ckpt", *CONVERT, "--strict"]


def s_output_exists(c: Ctx):
    (c.out_dir() / "out.gguf").write_bytes(b"keep me")
    return ["convert", str(c.tiny), *CONVERT]


def _kept(c: Ctx) -> list[str]:
    return [] if (c.work / "o" / "out.gguf").read_bytes() == b"keep me" else ["existing output was modified"]


def s_output_dir_missing(c: Ctx):
    return ["convert", str(c.tiny), "--outfile", "nodir/out.gguf", "--outtype", "f32", "--no-progress"]


def s_output_not_writable(c: Ctx):
    if os.geteuid() == 0:   # root ignores permission bits: a read-only file system says no to anyone
        _mount_tmpfs(c, "ro,size=1m")
    else:
        c.out_dir().chmod(0o555)
    return ["convert", str(c.tiny), *CONVERT]


def t_output_not_writable(c: Ctx):
    if os.geteuid() == 0:
        _umount(c)
    else:
        (c.work / "o").chmod(0o755)


def s_disk_full_tmpfs(c: Ctx):
    _mount_tmpfs(c, "size=1m")    # the f32 tiny GGUF is about 3 MiB: ENOSPC part-way
    return ["convert", str(c.tiny), *CONVERT]


def s_file_size_limit(c: Ctx):
    c.out_dir()
    return ["convert", str(c.tiny), *CONVERT]


def s_interrupt(c: Ctx):
    c.out_dir()
    return ["convert", str(c.tiny), *CONVERT]


def _signal_once_temp_exists(sig):
    def runner(argv, ctx: Ctx, env):
        o = ctx.work / "o"
        p = subprocess.Popen([sys.executable, "-m", "kimi_gguf.cli", *argv], cwd=ctx.work, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        t0 = time.monotonic()
        while not any(x.name.endswith(".part") for x in o.iterdir()):
            if p.poll() is not None or time.monotonic() - t0 > 120:
                break
            time.sleep(0.002)
        else:
            p.send_signal(sig)
        out, err = p.communicate(timeout=120)
        return p.returncode, out, err
    return runner


# ---------------------------------------------------------------------------------- security setups
_MODULE_CODE = "open({marker!r}, 'w').write('{what}')\n"


class _Pickled:
    """Unpickling this creates the marker file: proof that a pickle was loaded."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant_code(d: Path, marker: Path) -> None:
    """Everything a checkpoint could carry to get code run: remote-code modules named by auto_map,
    a package __init__, pickled weights whose unpickling writes the marker, a template escape."""
    for mod in ("modeling_kimi", "configuration_kimi", "tokenization_kimi", "__init__"):
        (d / f"{mod}.py").write_text(_MODULE_CODE.format(marker=str(marker), what=mod))

    def cfg(c):
        c["auto_map"] = {"AutoConfig": "configuration_kimi.KimiLinearConfig",
                         "AutoModelForCausalLM": "modeling_kimi.KimiLinearForCausalLM"}
    _edit_json(d / "config.json", cfg)
    # a chat template reaching for os through Jinja globals: stored as text, rendered only sandboxed
    template = ("{{ cycler.__init__.__globals__.os.system('touch " + str(marker) + "') }}"
                "{% for m in messages %}{{ m['content'] }}{% endfor %}")
    (d / "chat_template.jinja").write_text(template)

    def tok(t):
        t["auto_map"] = {"AutoTokenizer": ["tokenization_kimi.TikTokenTokenizer", None]}
        t["chat_template"] = template
    _edit_json(d / "tokenizer_config.json", tok)
    (d / "pytorch_model.bin").write_bytes(pickle.dumps(_Pickled(str(marker))))


def _no_marker(c: Ctx) -> list[str]:
    return [f"checkpoint code ran: {c.marker} exists"] if c.marker.exists() else []


def s_remote_code_convert(c: Ctx):
    _plant_code(c.ckpt(), c.marker)
    c.out_dir()
    return ["convert", "ckpt", *CONVERT]


def s_pickle_only(c: Ctx):
    d = c.ckpt()
    for p in d.glob("*.safetensors*"):
        p.unlink()
    _plant_code(d, c.marker)
    c.out_dir()
    return ["convert", "ckpt", *CONVERT]


def s_remote_code_reference(c: Ctx):
    _plant_code(c.ckpt(), c.marker)
    c.out_dir()
    return ["reference-logits", "ckpt", "--ids", c.ids(), "--out", "o/ref.npy"]


def s_index_dotdot(c: Ctx):
    d = c.ckpt()
    shutil.copy(d / SHARD1, c.work / "outside.safetensors")
    _edit_json(d / INDEX, lambda i: i["weight_map"].__setitem__("model.norm.weight", "../outside.safetensors"))
    c.out_dir()
    return ["convert", "ckpt", *CONVERT]


def s_index_absolute(c: Ctx):
    d = c.ckpt()
    shutil.copy(d / SHARD1, c.work / "outside.safetensors")
    _edit_json(d / INDEX, lambda i: i["weight_map"].__setitem__(
        "model.norm.weight", str((c.work / "outside.safetensors").resolve())))
    c.out_dir()
    return ["convert", "ckpt", *CONVERT]


def s_hf_cache_symlinks(c: Ctx):
    """A Hugging Face cache snapshot: every file a symlink to ../../blobs/<hash> -- must convert."""
    blobs, snap = c.work / "hub" / "blobs", c.work / "hub" / "snapshots" / "abc123"
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    for i, f in enumerate(sorted(c.tiny.iterdir())):
        shutil.copy(f, blobs / f"blob{i}")
        (snap / f.name).symlink_to(Path("..") / ".." / "blobs" / f"blob{i}")
    c.out_dir()
    return ["convert", "hub/snapshots/abc123", *CONVERT]


# ---------------------------------------------------------------------------------- reader setups
def _reader(command: str, damage: str):
    def setup(c: Ctx):
        bad = c.bad_gguf(gguf_damages()[damage])
        c.out_dir()
        if command == "inspect":
            return ["inspect", bad]
        if command == "reference-logits":
            return ["reference-logits", bad, "--ids", c.ids(), "--out", "o/ref.npy"]
        if command == "parity":
            return ["parity", str(c.tiny), bad, "--ids", c.ids(), "--report", "o/report"]
        if command == "run":
            return ["run", bad, "--ids", c.ids(), "--out", "o/logits.npy", "--kda", "builtin"]
        raise ValueError(command)
    return setup


def s_inspect_not_gguf(c: Ctx):
    c.out_dir()
    shutil.copy(c.tiny / "config.json", c.work / "config.gguf")
    return ["inspect", "config.gguf"]


def s_reference_empty_ids(c: Ctx):
    c.out_dir()
    return ["reference-logits", str(c.tiny), "--ids", c.ids(()), "--out", "o/ref.npy"]


def s_reference_ids_out_of_range(c: Ctx):
    c.out_dir()
    return ["reference-logits", str(c.tiny), "--ids", c.ids((1, 99999)), "--out", "o/ref.npy"]


def s_reference_ids_pickle(c: Ctx):
    import numpy as np

    c.out_dir()
    np.save(c.work / "ids.npy", np.array([_Pickled(str(c.marker))], dtype=object), allow_pickle=True)
    return ["reference-logits", str(c.tiny), "--ids", "ids.npy", "--out", "o/ref.npy"]


def s_reference_out_is_dir(c: Ctx):
    c.out_dir()
    (c.work / "o" / "ref.npy").mkdir()
    return ["reference-logits", str(c.tiny), "--ids", c.ids(), "--out", "o/ref.npy"]


def s_kda_eval_not_npz(c: Ctx):
    c.out_dir()
    (c.work / "in.npz").write_bytes(b"PK\x03\x04 not really a zip")
    return ["kda-eval", "in.npz", "o/out.npz"]


def s_kda_eval_shape_mismatch(c: Ctx):
    import numpy as np

    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 6, 2, 32))
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    g = -1e-4 - 5 * rng.uniform(0, 1, (1, 6, 2, 32))
    np.savez(c.work / "in.npz", q=q, k=q, v=rng.standard_normal((1, 5, 2, 32)), g=g,
             beta=rng.uniform(0, 1, (1, 6, 2)))
    c.out_dir()
    return ["kda-eval", "in.npz", "o/out.npz", "--backend", "cpu"]


# ---------------------------------------------------------------------------------- the catalogue
def _cases() -> list[Case]:
    mount = _can_mount
    conv = "converter"
    C = Case
    cases = [
        C("missing_config", conv, "missing config.json", s_missing_config, ("ckpt/config.json",), in_tests=False),
        C("config_not_json", conv, "config.json not valid JSON", s_config_not_json, ("ckpt/config.json",)),
        C("config_missing_key", conv, "config without a needed key", s_config_missing_key,
          ("config.json", "hidden_size"), in_tests=False),
        C("config_bad_value", conv, "config key of the wrong type", s_config_bad_value,
          ("config.json", "num_hidden_layers")),
        C("unknown_model_type", conv, "unknown `model_type`", s_unknown_model_type, ("config.json", "llama"),
          in_tests=False),
        C("model_dir_missing", conv, "model directory does not exist", s_model_dir_missing, ("nope",)),
        C("missing_tensor", conv, "a missing tensor", s_missing_tensor,
          ("model.layers.0.self_attn.f_a_proj.weight", "missing"), in_tests=False),
        C("unexpected_tensor", conv, "an unexpected tensor", s_unexpected_tensor,
          ("model.layers.0.self_attn.extra_proj.weight", "unexpected"), in_tests=False),
        C("wrong_shape", conv, "a wrong shape", s_wrong_shape, (SHARD1, "model.embed_tokens.weight", "[10, 64]"),
          in_tests=False),
        C("unsupported_dtype", conv, "an unsupported dtype", s_unsupported_dtype,
          ("model.layers.0.input_layernorm.weight", "I32"), in_tests=False),
        C("truncated_safetensors", conv, "a truncated safetensors file", s_truncated_safetensors, (SHARD1,),
          in_tests=False),
        C("header_bad_json", conv, "corrupt safetensors header: bad JSON", s_header_bad_json, (SHARD1,),
          in_tests=False),
        C("header_offsets_past_end", conv, "corrupt safetensors header: offsets past the end",
          s_header_offsets_past_end, (SHARD1,), in_tests=False),
        C("header_length_huge", conv, "corrupt safetensors header: length prefix 2^62", s_header_length_huge,
          (SHARD1,)),
        C("header_dtype_unknown", conv, "corrupt safetensors header: unknown dtype", s_header_dtype_unknown,
          (SHARD1,)),
        C("index_missing_shard", conv, "index naming a missing shard", s_index_missing_shard,
          (INDEX, "model-00009-of-00009.safetensors"), in_tests=False),
        C("index_not_json", conv, "index not valid JSON", s_index_not_json, (INDEX,)),
        C("no_weights", conv, "no safetensors at all", s_no_weights, ("ckpt", "model.safetensors")),
        C("missing_tiktoken", conv, "missing `tiktoken.model`", s_missing_tiktoken, ("tiktoken.model",)),
        C("malformed_tiktoken", conv, "malformed `tiktoken.model` line (bad base64)", s_malformed_tiktoken,
          ("tiktoken.model", "line 11"), in_tests=False),
        C("tiktoken_rank_not_int", conv, "malformed `tiktoken.model` line (rank not a number)",
          s_tiktoken_rank_not_int, ("tiktoken.model", "line 4")),
        C("tokenizer_config_no_specials", conv, "tokenizer_config without the special tokens",
          s_tokenizer_config_no_specials, ("tokenizer_config.json",), in_tests=False),
        C("nonfinite_warns", conv, "NaN/Inf in a weight (default: converts, warns)", s_nonfinite,
          (NONFINITE, "NaN/Inf"), rc=0, keep_output=True, in_tests=False),
        C("nonfinite_strict", conv, "NaN/Inf in a weight, `--strict`", s_nonfinite_strict,
          (NONFINITE, "NaN/Inf", "--strict"), in_tests=False),
        C("output_exists", conv, "output exists, no `--force`", s_output_exists, ("o/out.gguf", "--force"),
          post=_kept, in_tests=False),
        C("output_dir_missing", conv, "output directory does not exist", s_output_dir_missing, ("nodir",),
          in_tests=False),
        C("output_not_writable", conv,
          "output directory not writable" + (" (read-only tmpfs: root ignores mode bits)" if os.geteuid() == 0
                                             else " (mode 555)"),
          s_output_not_writable, ("o", "not writable"), teardown=t_output_not_writable,
          available=mount if os.geteuid() == 0 else (lambda: None)),
        C("disk_full_tmpfs", conv, "disk full (1 MiB tmpfs, ENOSPC)", s_disk_full_tmpfs,
          ("o/out.gguf", "no space left"), available=mount, teardown=_umount),
        C("file_size_limit", conv, "disk full stand-in (RLIMIT_FSIZE, EFBIG)", s_file_size_limit,
          ("o/out.gguf", "space"), preexec=_fsize_limit, in_tests=False),
        C("sigint", conv, "SIGINT (Ctrl-C) part-way, once the temp file exists", s_interrupt, ("interrupted",),
          rc=130, runner=_signal_once_temp_exists(signal.SIGINT), in_tests=False),
        C("sigterm", conv, "SIGTERM part-way, once the temp file exists", s_interrupt, ("interrupted",),
          rc=130, runner=_signal_once_temp_exists(signal.SIGTERM)),
    ]
    rd = "readers"
    for cmd, damage, needles in [
        ("inspect", "cut_in_magic", ("bad.gguf", "truncated")),
        ("inspect", "cut_in_header", ("bad.gguf", "truncated or corrupt", "180 tensors")),
        ("inspect", "cut_in_data", ("bad.gguf", "truncated or corrupt")),
        ("inspect", "version_99", ("bad.gguf", "version 99")),
        ("inspect", "tensor_count_2^60", ("bad.gguf", str(2 ** 60))),
        ("inspect", "key_length_2^62", ("bad.gguf",)),
        ("inspect", "tensor_type_200", ("bad.gguf", "200")),
        ("inspect", "tensor_offset_past_end", ("bad.gguf",)),
        ("inspect", "tensor_ne_2^40", ("bad.gguf",)),
        ("reference-logits", "cut_in_data", ("bad.gguf", "truncated or corrupt")),
        ("reference-logits", "tensor_type_200", ("bad.gguf",)),
        ("reference-logits", "architecture_renamed", ("bad.gguf", "kimi-lineaX")),
        ("parity", "cut_in_header", ("bad.gguf", "180 tensors")),
        ("parity", "cut_in_data", ("bad.gguf",)),
        ("parity", "tensor_offset_past_end", ("bad.gguf",)),
        ("parity", "architecture_renamed", ("bad.gguf", "llama.cpp")),
        ("run", "cut_in_data", ("bad.gguf",)),
        ("run", "tensor_offset_past_end", ("bad.gguf",)),
    ]:
        cases.append(C(f"{cmd}_{damage}", rd, f"`{cmd}`: GGUF {damage.replace('_', ' ')}", _reader(cmd, damage),
                       needles))
    cases += [
        C("inspect_not_gguf", rd, "`inspect` on a non-GGUF file", s_inspect_not_gguf, ("config.gguf", "magic")),
        C("reference_empty_ids", rd, "`reference-logits`: empty ids array", s_reference_empty_ids, ("ids.npy",)),
        C("reference_ids_out_of_range", rd, "`reference-logits`: token id past the vocabulary",
          s_reference_ids_out_of_range, ("ids.npy", "99999")),
        C("inspect_directory", rd, "`inspect` on a directory", lambda c: (c.out_dir(), ["inspect", "o"])[1],
          ("o", "directory")),
        C("reference_out_is_dir", rd, "`reference-logits`: --out is a directory", s_reference_out_is_dir,
          ("o/ref.npy", "directory")),
        C("kda_eval_not_npz", rd, "`kda-eval`: input not an .npz", s_kda_eval_not_npz, ("in.npz",)),
        C("kda_eval_shape_mismatch", rd, "`kda-eval`: v's T differs from q's", s_kda_eval_shape_mismatch,
          ("v",)),
    ]
    sec = "security"
    cases += [
        C("remote_code_convert", sec, "checkpoint with modeling_*.py / auto_map / pickled .bin / a chat "
          "template reaching for `os`: converts, runs none of it", s_remote_code_convert, (), rc=0,
          keep_output=True, post=_no_marker),
        C("pickle_only", sec, "only a pickled pytorch_model.bin (never unpickled)", s_pickle_only,
          ("ckpt", "model.safetensors"), post=_no_marker),
        C("remote_code_reference", sec, "`reference-logits` on that checkpoint: runs none of it",
          s_remote_code_reference, (), rc=0, keep_output=True, post=_no_marker),
        C("ids_pickle", sec, "`reference-logits --ids` holding a pickle (never unpickled)", s_reference_ids_pickle,
          ("ids.npy", "pickle"), post=_no_marker),
        C("index_dotdot", sec, "index naming `../outside.safetensors`", s_index_dotdot,
          (INDEX, "../outside.safetensors", "outside")),
        C("index_absolute", sec, "index naming an absolute path", s_index_absolute, (INDEX, "outside")),
        C("hf_cache_symlinks", sec, "Hugging Face cache snapshot (files are symlinks into ../../blobs): "
          "converts", s_hf_cache_symlinks, (), rc=0, keep_output=True),
    ]
    return cases


CASES = _cases()
BY_ID = {c.id: c for c in CASES}


# ---------------------------------------------------------------------------------- running
def _snapshot(d: Path) -> dict[str, tuple[int, int]]:
    if not d.is_dir():
        return {}
    return {str(p.relative_to(d)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in d.rglob("*") if not p.is_dir()} | {str(p.relative_to(d)) + "/": (0, 0)
                                                           for p in d.rglob("*") if p.is_dir()}


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONSTARTUP", None)
    lib = REPO / "build" / "ggml_ops" / "libkimi_kda.so"
    if "KIMI_GGUF_OPS_LIB" not in env and lib.is_file():
        env["KIMI_GGUF_OPS_LIB"] = str(lib)
    return env


def run_case(case: Case, tiny: Path, gguf: Path, root: Path, timeout: float = 300) -> Outcome:
    work = root / case.id
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    why = case.available()
    if why:
        return Outcome(case, None, "", "", "", [], [], 0.0, skipped=why)
    ctx = Ctx(work, tiny, gguf)
    argv = case.setup(ctx)
    watch = work / case.watch
    before = _snapshot(watch)
    env = child_env()
    t0 = time.monotonic()
    try:
        if case.runner is not None:
            rc, out, err = case.runner(argv, ctx, env)
        else:
            p = subprocess.run([sys.executable, "-m", "kimi_gguf.cli", *argv], cwd=work, env=env,
                               capture_output=True, text=True, timeout=timeout, preexec_fn=case.preexec)
            rc, out, err = p.returncode, p.stdout, p.stderr
        seconds = time.monotonic() - t0
        after = _snapshot(watch)
        new = sorted(k for k, v in after.items() if before.get(k) != v)
        stray = sorted(str(p.relative_to(work)) for p in work.rglob("*")
                       if p.name.endswith((".part", ".tmp", ".q")) and not p.is_dir())
    finally:
        if case.teardown is not None:
            case.teardown(ctx)
    leftovers = sorted(set(stray) | (set() if case.keep_output else set(new)))
    problems = check(case, rc, out, err, leftovers)
    if case.keep_output and not new:
        problems.append("expected an output file, none was written")
    if case.post is not None:
        problems += case.post(ctx)
    line = _line(case, out, err)
    return Outcome(case, rc, out, err, line, leftovers, problems, seconds, argv)


def _line(case: Case, out: str, err: str) -> str:
    if case.rc != 0:
        lines = err.strip().splitlines()
        return lines[0] if len(lines) == 1 else err.strip()
    warns = [ln.strip() for ln in out.splitlines() if ln.strip().startswith("warning:")]
    if warns:
        return warns[0]
    first = out.strip().splitlines()
    return first[0] if first else ""


def check(case: Case, rc: int, out: str, err: str, leftovers: list[str]) -> list[str]:
    problems = []
    if rc != case.rc:
        problems.append(f"exit status {rc}, expected {case.rc}")
    if "Traceback" in out + err:
        problems.append("traceback printed")
    line = _line(case, out, err)
    if case.rc != 0:
        lines = err.strip().splitlines()
        if len(lines) != 1 or not lines[0].startswith("error: "):
            problems.append(f"stderr is not one 'error: ' line: {err.strip()[-500:]!r}")
    elif err.strip():
        problems.append(f"stderr not empty on success: {err.strip()[-300:]!r}")
    for n in case.needles:
        if n not in line:
            problems.append(f"message does not name {n!r}: {line!r}")
    if leftovers:
        problems.append(f"left behind: {leftovers}")
    return problems


def prepare_inputs(root: Path) -> tuple[Path, Path]:
    """The pristine tiny checkpoint and its f32 GGUF, made by the real CLI."""
    tiny, gguf = root / "_inputs" / "tiny", root / "_inputs" / "tiny-f32.gguf"
    if not gguf.is_file():
        for argv in (["make-tiny", str(tiny)],
                     ["convert", str(tiny), "--outfile", str(gguf), "--outtype", "f32", "--no-progress"]):
            subprocess.run([sys.executable, "-m", "kimi_gguf.cli", *argv], check=True, env=child_env(),
                           capture_output=True)
    return tiny, gguf


# ---------------------------------------------------------------------------------- the document
HEAD = """# What the user sees when the input is bad

Generated by `scripts/error_table.py` (re-run it to refresh: `.venv/bin/python scripts/error_table.py`).
Each row is a real run of `python -m kimi_gguf.cli ARGS` in a scratch directory holding a damaged copy
of the tiny checkpoint (`ckpt/`) or of its f32 GGUF (`bad.gguf`); the message is copied from that
run's stderr (warnings and success lines from stdout). Absolute scratch paths are shortened to `…/`.

Every failing row was checked: the exit status shown, exactly one `error:` line naming the file,
tensor, key or field, no traceback (`--verbose` shows one), and nothing left in the output directory
`o/` -- no output, no temp file. Rows that succeed (exit 0) were checked to write their output and,
for the security rows, that no code from the checkpoint ran (a marker file the planted
`modeling_*.py`, `__init__.py`, `auto_map` targets and pickled `pytorch_model.bin` would create is
absent). tests/test_reliability.py and tests/test_convert_errors.py assert the same properties.
Converter rows add `--outfile o/out.gguf --outtype f32 --no-progress` to the command shown; `tiny` and
`tiny-f32.gguf` are the untouched inputs (`kimi-gguf make-tiny`, then `convert --outtype f32`).
"""

GROUP_TITLES = {"converter": "Converter (`kimi-gguf convert`)",
                "readers": "Readers: `inspect`, `reference-logits`, `parity`, `run`, `kda-eval`",
                "security": "Security: nothing from a checkpoint runs; index paths stay inside it"}

FOOT = """
C ops (libkimi_kda through cffi): null pointers, shape mismatches, zero-sized dimensions,
overlapping strides, dst overlapping an input and out-of-range arguments return their error codes
(1 null, 2 shape, 3 stride, 4 type, 5 argument) and Python raises `KdaOpError` (a KimiError); complex,
object or string arrays are a KimiError before C is called -- tests/test_reliability.py through
the binding, tests/test_kda_c_sanitizers.py (the C tests and a shape fuzz under
AddressSanitizer + UndefinedBehaviorSanitizer). The safetensors-header and GGUF readers are fuzzed
with hypothesis (fixed seeds): every input either parses or raises KimiError.
"""


def _shorten(text: str, root: Path) -> str:
    """Scratch paths as a reader would write them: inputs by name, anything else under `…/`."""
    for r, to in ((root / "_inputs", ""), (root, "…/")):
        for form in {str(r), str(r.resolve())}:
            text = text.replace(form + "/", to)
    return text


def _cmd(argv: list[str], root: Path) -> str:
    args = list(argv)
    n = len(CONVERT)
    for i in range(len(args) - n + 1):
        if tuple(args[i:i + n]) == CONVERT:
            args[i:i + n] = []
            break
    return _shorten(" ".join(args), root)


def render(outcomes: list[Outcome], root: Path) -> str:
    parts = [HEAD]
    for group, title in GROUP_TITLES.items():
        parts.append(f"\n## {title}\n\n| case | command | exit | message |\n|---|---|---|---|")
        for o in outcomes:
            if o.case.group != group:
                continue
            if o.skipped:
                parts.append(f"| {o.case.label} | | | (not run here: {o.skipped}) |")
                continue
            msg = _shorten(o.line, root).replace("|", "\\|")
            parts.append(f"| {o.case.label} | `{_cmd(o.argv, root)}` | {o.rc} | `{msg}` |")
    parts.append(FOOT)
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "docs" / "ERRORS.md"))
    ap.add_argument("--check", action="store_true", help="run the cases, write nothing")
    ap.add_argument("--only", nargs="*", help="case ids")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = ap.parse_args(argv)
    cases = [BY_ID[i] for i in args.only] if args.only else CASES
    root = Path(tempfile.mkdtemp(prefix="kimi-errors-"))
    failed = 0
    outcomes = []
    try:
        tiny, gguf = prepare_inputs(root)
        for case in cases:
            o = run_case(case, tiny, gguf, root)
            outcomes.append(o)
            status = "skip" if o.skipped else ("ok" if not o.problems else "FAIL")
            failed += status == "FAIL"
            print(f"{status:4s} {case.id:36s} rc={o.rc} {o.seconds:5.1f}s  {o.line[:150] if not o.skipped else o.skipped}")
            for p in o.problems:
                print(f"     - {p}")
        if failed:
            print(f"not writing {args.out}: it lists only behaviour that was checked")
        elif not args.check and not args.only:
            Path(args.out).write_text(render(outcomes, root))
            print(f"wrote {args.out}")
    finally:
        if args.keep:
            print(f"scratch kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(f"{len(outcomes) - failed} of {len(outcomes)} cases as expected")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
