"""Converter end to end: tiny checkpoint -> every outtype -> stock llama.cpp (llama-cpp-python) runs it.

The yardstick is the float64 reference (python_ref, llamacpp dialect) on the same checkpoint:
f32 must agree to 1e-5 (max |diff| / max |ref| over the logits of every position). Lower types are
judged against upstream's own converter (convert_hf_to_gguf.py from the pinned sdist, run through
scripts/upstream_convert.py, which swaps only its remote-code tokenizer for ours) on the same
checkpoint: ours must be at least as close to the reference. The K-quant anchor is upstream's bf16
output through the same llama.cpp quantizer with its default rules (what llama-quantize does).
llama.cpp runs with an f32 KV cache so the f32 figure measures the weights, not the cache type.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from kimi_gguf.checkpoint import HFCheckpoint
from kimi_gguf.convert.api import convert_model
from kimi_gguf.convert.kquant import quantize_file
from kimi_gguf.convert.metadata import KEY_LAYER_ATTN, KEY_LAYER_FFN, KEY_SOURCE_DIALECT
from kimi_gguf.names import build_table
from kimi_gguf.python_ref.model import KimiLinearRef
from kimi_gguf.spec import ModelSpec

ROOT = Path(__file__).resolve().parents[1]
TYPES = ["f32", "f16", "bf16", "q8_0", "q4_k_m", "q5_k_m", "q6_k"]
UPSTREAM_DIRECT = ["f16", "bf16", "q8_0"]
N_TOKENS = 40


def upstream_dir() -> Path | None:
    for p in (ROOT / ".cache/llama_cpp_python-0.3.36/vendor/llama.cpp",
              Path("/tmp/lcp/llama_cpp_python-0.3.36/vendor/llama.cpp")):
        if (p / "convert_hf_to_gguf.py").is_file():
            return p
    return None


def llama_logits(path: Path, ids: list[int]) -> np.ndarray:
    from llama_cpp import Llama

    m = Llama(model_path=str(path), logits_all=True, n_ctx=128, n_batch=128, n_threads=2, verbose=False,
              type_k=0, type_v=0)  # GGML_TYPE_F32 cache
    try:
        m.eval(ids)
        return np.array(m.scores[: len(ids)], dtype=np.float64)
    finally:
        m.close()


def rel_max(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(a - ref).max() / np.abs(ref).max())


def rel_fro(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(a - ref) / np.linalg.norm(ref))


@pytest.fixture(scope="module")
def setup(tiny_dir, tmp_path_factory):
    spec = ModelSpec.from_dir(tiny_dir)
    rng = np.random.default_rng(20261127)
    ids = [int(x) for x in rng.integers(0, spec.vocab_size - 256, N_TOKENS)]
    ref = KimiLinearRef(spec, HFCheckpoint(tiny_dir, spec), dialect="llamacpp").logits(ids)
    out = tmp_path_factory.mktemp("convert")
    files = {}
    for t in TYPES:
        files[t] = out / f"tiny-{t}.gguf"
        convert_model(tiny_dir, str(files[t]), t, verify=True)
    return {"spec": spec, "ids": ids, "ref": ref, "files": files, "dir": out, "tiny": tiny_dir}


def test_f32_matches_reference(setup):
    got = llama_logits(setup["files"]["f32"], setup["ids"])
    err = rel_max(got, setup["ref"])
    print(f"\nf32 GGUF in llama.cpp vs python_ref float64 (llamacpp dialect): max rel err {err:.3g} "
          f"over {N_TOKENS} positions x {got.shape[1]} logits")
    assert got.shape == setup["ref"].shape
    assert err <= 1e-5


@pytest.mark.parametrize("t", TYPES[1:])
def test_every_type_loads_and_runs(setup, t):
    got = llama_logits(setup["files"][t], setup["ids"])
    assert got.shape == setup["ref"].shape and np.all(np.isfinite(got))
    # sanity only (small random models amplify quantization error); closeness is judged vs upstream
    assert rel_fro(got, setup["ref"]) < 1.0


def test_precise_tensors_stay_f32_in_every_type(setup):
    table = {e.gguf: e for e in build_table(setup["spec"])}
    keep = {n for n, e in table.items() if e.keep_f32}
    assert any("ssm_f_a" in n for n in keep) and any("ffn_gate_inp" in n for n in keep)
    for t, path in setup["files"].items():
        r = gguf.GGUFReader(path)
        types = {x.name: x.tensor_type for x in r.tensors}
        assert set(types) == set(table), t
        bad = {n: types[n].name for n in keep if types[n] != gguf.GGMLQuantizationType.F32}
        assert not bad, (t, bad)
        if t in ("q4_k_m", "q5_k_m", "q6_k"):
            assert any(v.name.endswith("_K") or v.name == "Q8_0" for v in types.values())


def test_metadata_keys(setup, tiny_dir):
    import json

    cfg = json.loads((tiny_dir / "config.json").read_text())
    r = gguf.GGUFReader(setup["files"]["f32"])

    def v(key):
        f = r.get_field(key)
        assert f is not None, key
        return f.contents()

    a = "kimi-linear."
    lac = cfg["linear_attn_config"]
    n = cfg["num_hidden_layers"]
    assert v("general.architecture") == "kimi-linear"
    assert v(a + "block_count") == n
    assert v(a + "embedding_length") == cfg["hidden_size"]
    assert v(a + "attention.head_count_kv") == [1 if i + 1 in lac["full_attn_layers"] else 0 for i in range(n)]
    assert v(a + "kda.head_dim") == lac["head_dim"]
    assert v(a + "ssm.conv_kernel") == lac["short_conv_kernel_size"]
    assert v(a + "attention.kv_lora_rank") == cfg["kv_lora_rank"]
    assert v(a + "attention.key_length") == cfg["kv_lora_rank"] + cfg["qk_rope_head_dim"]
    assert v(a + "attention.value_length") == cfg["kv_lora_rank"]
    assert v(a + "attention.key_length_mla") == cfg["qk_nope_head_dim"] + cfg["qk_rope_head_dim"]
    assert v(a + "attention.value_length_mla") == cfg["v_head_dim"]
    assert v(a + "rope.dimension_count") == cfg["qk_rope_head_dim"]
    assert v(a + "expert_count") == cfg["num_experts"]
    assert v(a + "expert_used_count") == cfg["num_experts_per_token"]
    assert v(a + "expert_feed_forward_length") == cfg["moe_intermediate_size"]
    assert v(a + "expert_shared_count") == cfg["num_shared_experts"]
    assert v(a + "leading_dense_block_count") == cfg["first_k_dense_replace"]
    assert v(a + "expert_weights_scale") == pytest.approx(cfg["routed_scaling_factor"], rel=1e-6)
    assert v(a + "expert_gating_func") == int(gguf.ExpertGatingFuncType.SIGMOID)
    assert v(a + "attention.layer_norm_rms_epsilon") == pytest.approx(cfg["rms_norm_eps"], rel=1e-6)
    assert v(KEY_LAYER_ATTN) == ["mla" if i + 1 in lac["full_attn_layers"] else "kda" for i in range(n)]
    assert v(KEY_LAYER_FFN) == ["dense" if i < cfg["first_k_dense_replace"] else "moe" for i in range(n)]
    assert v(KEY_SOURCE_DIALECT) == "moonshot"
    assert v("tokenizer.ggml.pre") == "kimi-k2"


@pytest.fixture(scope="module")
def upstream(setup, tiny_dir):
    lcp = upstream_dir()
    if lcp is None:
        pytest.skip("pinned llama.cpp sdist not unpacked (make sdist)")
    files = {}
    env = dict(os.environ, NO_LOCAL_GGUF="")
    for t in UPSTREAM_DIRECT:
        files[t] = setup["dir"] / f"upstream-{t}.gguf"
        subprocess.run([sys.executable, str(ROOT / "scripts/upstream_convert.py"), str(lcp), str(tiny_dir),
                        "--outfile", str(files[t]), "--outtype", t], check=True, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for t in ("q4_k_m", "q5_k_m", "q6_k"):  # llama-quantize's defaults on upstream's bf16
        files[t] = setup["dir"] / f"upstream-{t}.gguf"
        quantize_file(files["bf16"], files[t], t, [])
    return files


@pytest.mark.parametrize("t", TYPES[1:])
def test_no_tensor_less_precise_than_upstream(tiny_dir, setup, upstream, t):
    # Deterministic criterion: every canonical tensor, read back (inverse transforms, gguf-py
    # dequantization), is at least as close to the checkpoint as upstream's file of the same type.
    from kimi_gguf.convert.gguf_source import GGUFSource

    hf = HFCheckpoint(tiny_dir)
    ours, theirs = GGUFSource(setup["files"][t]), GGUFSource(upstream[t])
    worse, better = [], 0
    for n in hf.keys():
        x = hf.get(n).astype(np.float64)
        eo, et = np.abs(ours.get(n) - x).max(), np.abs(theirs.get(n) - x).max()
        worse += [(n, eo, et)] if eo > et else []
        better += eo < et
    print(f"\n{t}: per-tensor max error vs checkpoint: {better} tensors closer than upstream, "
          f"{len(hf.keys()) - better - len(worse)} equal, {len(worse)} worse")
    assert not worse, worse[:5]


@pytest.mark.parametrize("t", TYPES[1:])
def test_logits_side_by_side_with_upstream(setup, upstream, t):
    # Reported, not ranked: on a tiny random MoE model the logits error is bimodal -- ~1e-3 (f16)
    # until a near-tied router decision flips, then 0.05-0.1 -- and which sequences flip is a coin
    # toss for ours and upstream alike (measured: per-sequence ranking alternates). The ranking
    # claim rests on the deterministic per-tensor test above; here both must run and stay sane.
    rng = np.random.default_rng(77)
    spec = setup["spec"]
    seqs = [setup["ids"]] + [[int(x) for x in rng.integers(0, spec.vocab_size - 256, N_TOKENS)] for _ in range(3)]
    ref = KimiLinearRef(spec, HFCheckpoint(setup["tiny"], spec), dialect="llamacpp")
    refs = [setup["ref"]] + [ref.logits(s) for s in seqs[1:]]
    ours = [rel_fro(llama_logits(setup["files"][t], s), r) for s, r in zip(seqs, refs)]
    theirs = [rel_fro(llama_logits(upstream[t], s), r) for s, r in zip(seqs, refs)]
    print(f"\n{t}: logits rel err (Frobenius) per sequence vs float64 reference: ours "
          f"{' '.join(f'{x:.3g}' for x in ours)} | upstream {' '.join(f'{x:.3g}' for x in theirs)}")
    assert max(ours) < 1.0 and max(theirs) < 1.0


@pytest.mark.parametrize("dialect", ["transformers", "moonshot"])
def test_save_pretrained_checkpoint_converts_and_runs(hf_saved_dirs, tmp_path, dialect):
    d = hf_saved_dirs[dialect]
    spec = ModelSpec.from_dir(d)
    assert spec.config_dialect == dialect
    out = tmp_path / "m.gguf"
    convert_model(d, str(out), "f32", verify=True)
    ids = [int(x) for x in np.random.default_rng(5).integers(0, spec.vocab_size - 256, 24)]
    ref = KimiLinearRef(spec, HFCheckpoint(d, spec), dialect="llamacpp").logits(ids)
    err = rel_max(llama_logits(out, ids), ref)
    print(f"\nsave_pretrained ({dialect} config) f32: max rel err {err:.3g}")
    assert err <= 1e-5


def test_vocab_only_and_dry_run(tiny_dir, tmp_path):
    import llama_cpp

    s = convert_model(tiny_dir, str(tmp_path / "m-{ftype}.gguf"), "q4_k_m", dry_run=True)
    assert s.dry_run and s.n_tensors > 100 and list(tmp_path.iterdir()) == []
    s = convert_model(tiny_dir, str(tmp_path / "v.gguf"), vocab_only=True)
    r = gguf.GGUFReader(tmp_path / "v.gguf")
    assert len(r.tensors) == 0 and r.get_field("tokenizer.ggml.pre").contents() == "kimi-k2"
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(tmp_path / "v.gguf").encode(), params)
    assert model
    try:
        vocab = llama_cpp.llama_model_get_vocab(model)
        assert llama_cpp.llama_vocab_n_tokens(vocab) == ModelSpec.from_dir(tiny_dir).vocab_size
    finally:
        llama_cpp.llama_model_free(model)


def test_outfile_template_and_summary(tiny_dir, tmp_path):
    s = convert_model(tiny_dir, str(tmp_path / "m-{ftype}.gguf"), "q8_0")
    assert s.outfile == tmp_path / "m-Q8_0.gguf" and s.outfile.is_file()
    text = s.format()
    assert "kept at higher precision" in text and "ssm_f_a" in text and "router" in text
    assert s.file_size == s.outfile.stat().st_size


def test_streaming_chunks_stay_small_at_published_size():
    # The published 48B config through the name table: no chunk the converter holds is larger than
    # one expert or one 64 MiB block of rows (never a whole expert stack or the 1.5 GiB f32 embedding).
    import json

    from kimi_gguf.names import STREAM_ROWS_BYTES

    cfg = json.loads((ROOT / "kimi_gguf/data/kimi-linear-48b-a3b-instruct.config.json").read_text())
    spec = ModelSpec.from_config(cfg)
    shapes = {}
    from kimi_gguf.names import canonical_shapes

    shapes = canonical_shapes(spec)

    def read(name, start=None, stop=None):  # zero-cost stand-in arrays of the requested shape
        shape = shapes[name] if start is None else (stop - start,) + shapes[name][1:]
        return np.broadcast_to(np.float32(0), shape)

    biggest = {}
    for ent in build_table(spec):
        n = 0
        for chunk in ent.chunks(read):
            n = max(n, chunk.size * 4)
            assert chunk.shape[1:] == ent.shape[1:] or chunk.shape == ent.shape
        biggest[ent.role] = max(biggest.get(ent.role, 0), n)
    assert biggest["embed"] <= STREAM_ROWS_BYTES and biggest["lm_head"] <= STREAM_ROWS_BYTES
    assert biggest["moe.gate_exps"] == 1024 * 2304 * 4  # one expert
    assert max(biggest.values()) <= STREAM_ROWS_BYTES
