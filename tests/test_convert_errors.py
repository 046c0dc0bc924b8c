"""Every bad input to `kimi-gguf convert`: exit status 2, one line naming the file / tensor / key, and
no output (nor temp file) left behind. Each case damages a copy of the tiny checkpoint."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kimi_gguf.cli import main

SHARD1 = "model-00001-of-00003.safetensors"


@pytest.fixture
def ckpt(tiny_dir, tmp_path):
    d = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, d)
    return d


def convert(capsys, model_dir: Path, out_dir: Path, *extra: str) -> tuple[int, str, str]:
    out_dir.mkdir(exist_ok=True)
    rc = main(["convert", str(model_dir), "--outfile", str(out_dir / "out.gguf"), "--outtype", "f32",
               "--no-progress", *extra])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def expect_error(capsys, model_dir, out_dir, *needles, extra=()):
    rc, out, err = convert(capsys, model_dir, out_dir, *extra)
    assert rc == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    print(f"\nMSG {lines[0]}")
    assert list(out_dir.iterdir()) == [] or all(p.name == "out.gguf" and "exists" in err for p in out_dir.iterdir())
    return lines[0]


def rewrite_shard(path: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def set_index(d: Path, edit) -> None:
    p = d / "model.safetensors.index.json"
    idx = json.loads(p.read_text())
    edit(idx["weight_map"])
    p.write_text(json.dumps(idx))


def test_missing_config(capsys, ckpt, tmp_path):
    (ckpt / "config.json").unlink()
    expect_error(capsys, ckpt, tmp_path / "o", "config.json", "missing")


def test_config_missing_key(capsys, ckpt, tmp_path):
    cfg = json.loads((ckpt / "config.json").read_text())
    del cfg["hidden_size"]
    (ckpt / "config.json").write_text(json.dumps(cfg))
    expect_error(capsys, ckpt, tmp_path / "o", "config.json", "hidden_size")


def test_unknown_architecture(capsys, ckpt, tmp_path):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["model_type"] = "llama"
    (ckpt / "config.json").write_text(json.dumps(cfg))
    expect_error(capsys, ckpt, tmp_path / "o", "config.json", "llama")


def test_missing_tensor(capsys, ckpt, tmp_path):
    name = "model.layers.0.self_attn.f_a_proj.weight"
    shard = json.loads((ckpt / "model.safetensors.index.json").read_text())["weight_map"][name]
    rewrite_shard(ckpt / shard, lambda t: t.pop(name))
    set_index(ckpt, lambda m: m.pop(name))
    expect_error(capsys, ckpt, tmp_path / "o", name, "missing")


def test_unexpected_tensor(capsys, ckpt, tmp_path):
    import torch

    name = "model.layers.0.self_attn.extra_proj.weight"
    rewrite_shard(ckpt / SHARD1, lambda t: t.__setitem__(name, torch.zeros(4, 4, dtype=torch.bfloat16)))
    set_index(ckpt, lambda m: m.__setitem__(name, SHARD1))
    expect_error(capsys, ckpt, tmp_path / "o", name, "unexpected")


def test_wrong_shape(capsys, ckpt, tmp_path):
    import torch

    name = "model.embed_tokens.weight"
    rewrite_shard(ckpt / SHARD1, lambda t: t.__setitem__(name, torch.ones(10, 64, dtype=torch.bfloat16)))
    expect_error(capsys, ckpt, tmp_path / "o", name, "shape")


def test_unsupported_dtype(capsys, ckpt, tmp_path):
    import torch

    name = "model.layers.0.input_layernorm.weight"
    rewrite_shard(ckpt / SHARD1, lambda t: t.__setitem__(name, torch.ones(64, dtype=torch.int32)))
    expect_error(capsys, ckpt, tmp_path / "o", name, "dtype")


def test_truncated_safetensors(capsys, ckpt, tmp_path):
    p = ckpt / SHARD1
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    expect_error(capsys, ckpt, tmp_path / "o", SHARD1)


@pytest.mark.parametrize("damage", ["bad_json", "offsets_past_end"])
def test_corrupt_safetensors_header(capsys, ckpt, tmp_path, damage):
    p = ckpt / SHARD1
    data = bytearray(p.read_bytes())
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    if damage == "bad_json":
        data[8:8 + n] = b"{" + b"x" * (n - 1)
    else:
        key = next(k for k in header if k != "__metadata__")
        header[key]["data_offsets"] = [0, 10 ** 9]
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        data = bytearray(len(raw).to_bytes(8, "little")) + raw + data[8 + n:]
    p.write_bytes(bytes(data))
    expect_error(capsys, ckpt, tmp_path / "o", SHARD1)


def test_index_names_missing_shard(capsys, ckpt, tmp_path):
    set_index(ckpt, lambda m: m.__setitem__("model.norm.weight", "model-00009-of-00009.safetensors"))
    expect_error(capsys, ckpt, tmp_path / "o", "model-00009-of-00009.safetensors")


def test_malformed_tiktoken_line(capsys, ckpt, tmp_path):
    p = ckpt / "tiktoken.model"
    lines = p.read_text().splitlines()
    lines[10] = "!!!not-base64 ten"
    p.write_text("\n".join(lines) + "\n")
    expect_error(capsys, ckpt, tmp_path / "o", "tiktoken.model", "11")


def test_tokenizer_config_without_specials(capsys, ckpt, tmp_path):
    p = ckpt / "tokenizer_config.json"
    cfg = json.loads(p.read_text())
    cfg.pop("added_tokens_decoder")
    for k in ("bos_token", "eos_token"):
        cfg.pop(k, None)
    p.write_text(json.dumps(cfg))
    expect_error(capsys, ckpt, tmp_path / "o", "tokenizer_config.json")


def _poison(ckpt: Path, name: str) -> None:
    import torch

    shard = json.loads((ckpt / "model.safetensors.index.json").read_text())["weight_map"][name]

    def edit(t):
        x = t[name].clone()
        x.view(-1)[3] = float("nan")
        x.view(-1)[5] = float("inf")
        t[name] = x

    rewrite_shard(ckpt / shard, edit)


def test_nonfinite_warns_by_default(capsys, ckpt, tmp_path):
    name = "model.layers.2.block_sparse_moe.experts.3.w2.weight"
    _poison(ckpt, name)
    rc, out, err = convert(capsys, ckpt, tmp_path / "o")
    assert rc == 0
    assert f"warning: {ckpt}: tensor '{name}' holds 2 NaN/Inf values" in out
    assert (tmp_path / "o" / "out.gguf").is_file()


def test_nonfinite_strict_refuses(capsys, ckpt, tmp_path):
    name = "model.layers.2.block_sparse_moe.experts.3.w2.weight"
    _poison(ckpt, name)
    expect_error(capsys, ckpt, tmp_path / "o", name, "NaN/Inf", "--strict", extra=("--strict",))


def test_output_exists_needs_force(capsys, tiny_dir, tmp_path):
    o = tmp_path / "o"
    o.mkdir()
    (o / "out.gguf").write_bytes(b"keep me")
    expect_error(capsys, tiny_dir, o, "out.gguf", "--force")
    assert (o / "out.gguf").read_bytes() == b"keep me"
    rc, _, _ = convert(capsys, tiny_dir, o, "--force")
    assert rc == 0 and (o / "out.gguf").read_bytes()[:4] == b"GGUF"
    assert [p.name for p in o.iterdir()] == ["out.gguf"]


def test_output_dir_missing(capsys, tiny_dir, tmp_path):
    rc = main(["convert", str(tiny_dir), "--outfile", str(tmp_path / "nope" / "out.gguf"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "nope" in err and "does not exist" in err
    assert not (tmp_path / "nope").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_output_dir_not_writable(capsys, tiny_dir, tmp_path):
    o = tmp_path / "ro"
    o.mkdir()
    o.chmod(0o555)
    try:
        expect_error(capsys, tiny_dir, o, str(o), "not writable")
    finally:
        o.chmod(0o755)


def _cli(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "kimi_gguf.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_disk_full(tiny_dir, tmp_path):
    # A file-size limit stands in for a full disk: the write fails part-way (EFBIG, SIGXFSZ ignored).
    import resource

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    o = tmp_path / "o"
    o.mkdir()
    p = _cli(["convert", str(tiny_dir), "--outfile", str(o / "out.gguf"), "--outtype", "f32", "--no-progress"],
             preexec_fn=limit)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 2, err
    assert len(err.strip().splitlines()) == 1 and "out.gguf" in err and "space" in err, err
    assert list(o.iterdir()) == []


def test_sigint_midway_leaves_nothing(tiny_dir, tmp_path):
    o = tmp_path / "o"
    o.mkdir()
    # A parent started in the background (`cmd &` in a script) hands SIGINT down ignored, and Python
    # then installs no KeyboardInterrupt handler: give the child the default disposition.
    p = _cli(["convert", str(tiny_dir), "--outfile", str(o / "out.gguf"), "--outtype", "f32", "--no-progress"],
             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    t0 = time.monotonic()
    while not any(x.name.endswith(".part") for x in o.iterdir()):
        assert p.poll() is None and time.monotonic() - t0 < 60, "temp file never appeared"
        time.sleep(0.002)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, (out, err)
    assert "interrupted" in err
    assert list(o.iterdir()) == []
