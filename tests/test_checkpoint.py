"""HFCheckpoint: canonical names/shapes/dtypes from the tiny checkpoint, raw access, and bad input."""
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from kimi_gguf.checkpoint import HFCheckpoint, open_source
from kimi_gguf.errors import KimiError
from kimi_gguf.names import canonical_shapes

INDEX = "model.safetensors.index.json"


@pytest.fixture
def tiny_copy(tiny_dir, tmp_path):
    dst = tmp_path / "tiny"
    shutil.copytree(tiny_dir, dst)
    return dst


def _index(d):
    return json.loads((d / INDEX).read_text())


def _edit_config(d, fn):
    cfg = json.loads((d / "config.json").read_text())
    fn(cfg)
    (d / "config.json").write_text(json.dumps(cfg))


def test_reads_tiny_checkpoint(tiny_dir):
    src = HFCheckpoint(tiny_dir)
    want = canonical_shapes(src.spec)
    assert src.keys() == list(want)
    assert all(src.shape(n) == want[n] for n in want)
    name = "model.layers.1.block_sparse_moe.experts.3.w1.weight"
    assert src.dtype(name) == src.raw_dtype(name) == "BF16"
    raw = src.get_torch(name)
    assert raw.dtype == torch.bfloat16 and tuple(raw.shape) == want[name]
    arr = src.get(name)
    assert arr.dtype == np.float32 and np.array_equal(arr, raw.float().numpy())
    # independent read straight from the shard named by the index
    shard = _index(tiny_dir)["weight_map"][name]
    with safe_open(str(tiny_dir / shard), framework="pt") as f:
        assert torch.equal(f.get_tensor(name), raw)
    assert src.dtype("model.layers.0.self_attn.A_log") == "F32"
    emb = src.get("model.embed_tokens.weight")
    assert np.array_equal(src.get_rows("model.embed_tokens.weight", 5, 9), emb[5:9])
    assert "model.layers.0.self_attn.q_proj.weight" in src and "nope" not in src


def test_open_source_dispatch(tiny_dir, tmp_path):
    assert isinstance(open_source(tiny_dir), HFCheckpoint)
    with pytest.raises(KimiError, match="no such GGUF file"):
        open_source(tmp_path / "missing.gguf")
    with pytest.raises(KimiError, match="no such checkpoint directory"):
        open_source(tmp_path / "missing")


def test_missing_config_key(tiny_copy):
    _edit_config(tiny_copy, lambda c: c.pop("hidden_size"))
    with pytest.raises(KimiError, match="config.json: missing config key 'hidden_size'"):
        HFCheckpoint(tiny_copy)


def test_unknown_layer_kind(tiny_copy):
    def fn(c):
        lac = c.pop("linear_attn_config")
        c.update(linear_num_heads=lac["num_heads"], linear_head_dim=lac["head_dim"],
                 layer_types=["linear_attention"] * 7 + ["mamba"])
    _edit_config(tiny_copy, fn)
    with pytest.raises(KimiError, match=r"layer_types\[7\]' is unknown layer kind 'mamba'"):
        HFCheckpoint(tiny_copy)


def test_missing_tensor(tiny_copy):
    idx = _index(tiny_copy)
    del idx["weight_map"]["model.layers.2.self_attn.dt_bias"]
    (tiny_copy / INDEX).write_text(json.dumps(idx))
    with pytest.raises(KimiError, match="missing tensor 'model.layers.2.self_attn.dt_bias'"):
        HFCheckpoint(tiny_copy)


def test_wrong_shape_names_file_and_tensor(tiny_copy):
    name = "model.layers.3.self_attn.kv_b_proj.weight"
    shard = _index(tiny_copy)["weight_map"][name]
    tensors = load_file(str(tiny_copy / shard))
    tensors[name] = tensors[name][:-1].contiguous()
    save_file(tensors, str(tiny_copy / shard), metadata={"format": "pt"})
    with pytest.raises(KimiError, match=f"{shard}: tensor '{name}' has shape"):
        HFCheckpoint(tiny_copy)


def test_missing_shard_names_index_and_shard(tiny_copy):
    shard = sorted(set(_index(tiny_copy)["weight_map"].values()))[1]
    (tiny_copy / shard).unlink()
    with pytest.raises(KimiError, match=f"{INDEX}: shard '{shard}'.*is missing"):
        HFCheckpoint(tiny_copy)


def test_shard_outside_directory_is_refused(tiny_copy):
    idx = _index(tiny_copy)
    first = next(iter(idx["weight_map"]))
    shard = idx["weight_map"][first]
    shutil.copy(tiny_copy / shard, tiny_copy.parent / "outside.safetensors")
    idx["weight_map"][first] = "../outside.safetensors"
    (tiny_copy / INDEX).write_text(json.dumps(idx))
    with pytest.raises(KimiError, match="outside"):
        HFCheckpoint(tiny_copy)


def test_corrupt_shard(tiny_copy):
    shard = sorted(set(_index(tiny_copy)["weight_map"].values()))[0]
    (tiny_copy / shard).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{bad}")
    with pytest.raises(KimiError, match=f"{shard}: not a readable safetensors file"):
        HFCheckpoint(tiny_copy)


def test_no_weights_at_all(tiny_copy):
    for p in tiny_copy.glob("*.safetensors"):
        p.unlink()
    (tiny_copy / INDEX).unlink()
    with pytest.raises(KimiError, match="no model.safetensors"):
        HFCheckpoint(tiny_copy)


def _native_copy(tiny_dir, dst):
    """The tiny checkpoint re-saved as one file in transformers' in-memory naming."""
    src = HFCheckpoint(tiny_dir)
    spec = src.spec
    out = {}
    for n in src.keys():
        out[n] = src.get_torch(n)
    native = {}
    for n, t in out.items():
        if "_conv1d" in n or ".experts." in n:
            continue
        n2 = n.replace("block_sparse_moe.", "mlp.")
        for x in ("f_a_proj.weight", "f_b_proj.weight", "dt_bias", "A_log"):
            n2 = n2.replace(f"self_attn.{x}", f"self_attn.forget_gate.{x}")
        native[n2] = t
    for i, layer in enumerate(spec.layers):
        p = f"model.layers.{i}."
        if layer.attn == "kda":
            native[p + "self_attn.conv1d.weight"] = torch.cat(
                [out[p + f"self_attn.{x}_conv1d.weight"] for x in "qkv"]).contiguous()
        if layer.ffn == "moe":
            E = spec.moe.num_experts
            b = p + "block_sparse_moe.experts."
            native[p + "mlp.experts.gate_up_proj"] = torch.stack(
                [torch.cat([out[b + f"{e}.w1.weight"], out[b + f"{e}.w3.weight"]]) for e in range(E)]).contiguous()
            native[p + "mlp.experts.down_proj"] = torch.stack([out[b + f"{e}.w2.weight"] for e in range(E)]).contiguous()
    dst.mkdir()
    save_file(native, str(dst / "model.safetensors"), metadata={"format": "pt"})
    shutil.copy(tiny_dir / "config.json", dst / "config.json")
    return native


def test_native_naming_gives_identical_tensors(tiny_dir, tmp_path):
    native = _native_copy(tiny_dir, tmp_path / "native")
    assert "model.layers.1.mlp.experts.gate_up_proj" in native
    a, b = HFCheckpoint(tiny_dir), HFCheckpoint(tmp_path / "native")
    assert a.keys() == b.keys()
    for n in a.keys():
        assert b.dtype(n) == a.dtype(n)
        assert torch.equal(b.get_torch(n), a.get_torch(n)), n


def test_fused_conv_with_wrong_width(tiny_dir, tmp_path):
    native = _native_copy(tiny_dir, tmp_path / "native")
    name = "model.layers.0.self_attn.conv1d.weight"
    native[name] = native[name][:-2].contiguous()
    save_file(native, str(tmp_path / "native" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(KimiError, match=f"model.safetensors: tensor '{name}' has shape"):
        HFCheckpoint(tmp_path / "native")
