"""make-tiny: the embedded checkpoint is deterministic, laid out as the published one, and its
weights look like a trained model's (gates, betas, router) rather than zeros or noise."""
from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest
from safetensors import safe_open

from kimi_gguf.cli import main as cli_main
from kimi_gguf.errors import KimiError
from kimi_gguf.tiny import make_tiny

PUBLISHED = json.loads((__import__("pathlib").Path(__file__).parents[1] /
                        "kimi_gguf/data/kimi-linear-48b-a3b-instruct.config.json").read_text())


def _digests(d):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


def _tensors(d):
    """name -> (torch tensor as stored, file name), read directly with safetensors."""
    index = json.loads((d / "model.safetensors.index.json").read_text())
    out = {}
    for name, fname in index["weight_map"].items():
        with safe_open(str(d / fname), framework="pt") as f:
            out[name] = (f.get_tensor(name), fname)
    return out


@pytest.fixture(scope="module")
def cfg(tiny_dir):
    return json.loads((tiny_dir / "config.json").read_text())


@pytest.fixture(scope="module")
def tensors(tiny_dir):
    return _tensors(tiny_dir)


def test_same_seed_same_bytes_other_seed_other_weights(tiny_dir, tmp_path):
    again = make_tiny(tmp_path / "again", seed=0)
    assert _digests(again) == _digests(tiny_dir)
    other = _digests(make_tiny(tmp_path / "other", seed=1))
    ref = _digests(tiny_dir)
    assert [k for k in ref if ref[k] != other[k]] == [k for k in ref if k.endswith(".safetensors")]


def test_config_keeps_every_published_key(cfg):
    assert set(PUBLISHED) <= set(cfg)
    assert cfg["model_type"] == "kimi_linear" and cfg["architectures"] == ["KimiLinearForCausalLM"]
    lac = cfg["linear_attn_config"]
    n = cfg["num_hidden_layers"]
    # 1-based lists, every 4th layer MLA, the rest KDA
    assert lac["full_attn_layers"] == [i for i in range(1, n + 1) if i % 4 == 0]
    assert sorted(lac["kda_layers"] + lac["full_attn_layers"]) == list(range(1, n + 1))
    assert cfg["first_k_dense_replace"] == 1
    assert lac["head_dim"] % 16 == 0 and lac["num_heads"] == cfg["num_attention_heads"]
    assert cfg["hidden_size"] < 256 and cfg["num_experts"] < 16   # small enough for CI


def test_special_ids_agree_with_tokenizer_files(tiny_dir, cfg):
    tcfg = json.loads((tiny_dir / "tokenizer_config.json").read_text())
    n_ranks = sum(1 for line in (tiny_dir / "tiktoken.model").read_bytes().splitlines() if line)
    assert cfg["vocab_size"] == n_ranks + 256
    names = {int(k): v["content"] for k, v in tcfg["added_tokens_decoder"].items()}
    assert len(names) == 256 and min(names) == n_ranks
    assert names[cfg["bos_token_id"]] == "[BOS]" == tcfg["bos_token"]
    assert names[cfg["eos_token_id"]] == "<|im_end|>" and names[cfg["pad_token_id"]] == "[PAD]"
    # offsets as in the published tokenizer (163584 + offset)
    for off, name in {1: "[EOS]", 3: "<|im_user|>", 4: "<|im_assistant|>", 10: "<|im_system|>",
                      17: "<|im_middle|>", 254: "[UNK]", 5: f"<|reserved_token_{n_ranks + 5}|>"}.items():
        assert names[n_ranks + off] == name
    assert (tiny_dir / "chat_template.jinja").read_text() == tcfg["chat_template"]


def expected_shapes(cfg):
    """Published shapes (KIMI_LINEAR_FACTS.md table), written out from the config."""
    H, V = cfg["hidden_size"], cfg["vocab_size"]
    lac = cfg["linear_attn_config"]
    nh, D, K = lac["num_heads"], lac["head_dim"], lac["short_conv_kernel_size"]
    mh, nope, rope, vd, r = (cfg["num_attention_heads"], cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"],
                             cfg["v_head_dim"], cfg["kv_lora_rank"])
    E, I, Ie = cfg["num_experts"], cfg["intermediate_size"], cfg["moe_intermediate_size"]
    s = {"model.embed_tokens.weight": (V, H), "model.norm.weight": (H,), "lm_head.weight": (V, H)}
    for il in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{il}."
        s[p + "input_layernorm.weight"] = s[p + "post_attention_layernorm.weight"] = (H,)
        a = p + "self_attn."
        if il + 1 in lac["full_attn_layers"]:
            s.update({a + "q_proj.weight": (mh * (nope + rope), H), a + "kv_a_proj_with_mqa.weight": (r + rope, H),
                      a + "kv_a_layernorm.weight": (r,), a + "kv_b_proj.weight": (mh * (nope + vd), r),
                      a + "o_proj.weight": (H, mh * vd)})
        else:
            for w in "qkv":
                s[a + f"{w}_proj.weight"] = (nh * D, H)
                s[a + f"{w}_conv1d.weight"] = (nh * D, 1, K)
            s.update({a + "A_log": (1, 1, nh, 1), a + "dt_bias": (nh * D,), a + "f_a_proj.weight": (D, H),
                      a + "f_b_proj.weight": (nh * D, D), a + "b_proj.weight": (nh, H),
                      a + "g_a_proj.weight": (D, H), a + "g_b_proj.weight": (nh * D, D),
                      a + "o_norm.weight": (D,), a + "o_proj.weight": (H, nh * D)})
        if il < cfg["first_k_dense_replace"]:
            s.update({p + "mlp.gate_proj.weight": (I, H), p + "mlp.up_proj.weight": (I, H),
                      p + "mlp.down_proj.weight": (H, I)})
        else:
            m = p + "block_sparse_moe."
            s.update({m + "gate.weight": (E, H), m + "gate.e_score_correction_bias": (E,)})
            for e in range(E):
                s.update({m + f"experts.{e}.w1.weight": (Ie, H), m + f"experts.{e}.w3.weight": (Ie, H),
                          m + f"experts.{e}.w2.weight": (H, Ie)})
            Is = Ie * cfg["num_shared_experts"]
            s.update({m + "shared_experts.gate_proj.weight": (Is, H), m + "shared_experts.up_proj.weight": (Is, H),
                      m + "shared_experts.down_proj.weight": (H, Is)})
    return s


def test_tensor_names_shapes_dtypes_shards(tiny_dir, cfg, tensors):
    import torch
    exp = expected_shapes(cfg)
    assert set(tensors) == set(exp)
    for name, (t, _) in tensors.items():
        assert tuple(t.shape) == exp[name], name
        f32 = re.search(r"(A_log|dt_bias|e_score_correction_bias)$", name)
        assert t.dtype == (torch.float32 if f32 else torch.bfloat16), name
        assert torch.isfinite(t).all() and t.abs().max() > 0, name
    files = {f for _, f in tensors.values()}
    assert len(files) >= 2 and all(re.fullmatch(r"model-0000\d-of-0000\d\.safetensors", f) for f in files)
    index = json.loads((tiny_dir / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t, _ in tensors.values())


def test_project_reader_agrees(tiny_dir, cfg, tensors):
    """The project's ModelSpec and HFCheckpoint read the tiny checkpoint as written."""
    from kimi_gguf.checkpoint import HFCheckpoint
    from kimi_gguf.spec import KDA, MLA, ModelSpec
    spec = ModelSpec.from_dir(tiny_dir)
    assert [l.attn for l in spec.layers] == [KDA, KDA, KDA, MLA] * 2
    assert spec.leading_dense_blocks == 1 and spec.vocab_size == cfg["vocab_size"]
    src = HFCheckpoint(tiny_dir, spec)
    assert set(src.keys()) == set(tensors)


def _f64(t):
    return t.double().numpy()


def _normed_inputs(n, H, seed):
    x = np.random.default_rng(seed).standard_normal((n, H))
    return x / np.sqrt((x * x).mean(1, keepdims=True))       # what RMSNorm hands a layer


def test_kda_gates_and_betas_look_trained(cfg, tensors):
    seed = np.random.SeedSequence().entropy % 2**32
    x = _normed_inputs(2048, cfg["hidden_size"], seed)
    lac = cfg["linear_attn_config"]
    nh, D = lac["num_heads"], lac["head_dim"]
    for il in [i - 1 for i in lac["kda_layers"]]:
        a = f"model.layers.{il}.self_attn."
        f = x @ _f64(tensors[a + "f_a_proj.weight"][0]).T @ _f64(tensors[a + "f_b_proj.weight"][0]).T
        z = (f + _f64(tensors[a + "dt_bias"][0])).reshape(-1, nh, D)
        softplus = np.logaddexp(0.0, z)
        g = -np.exp(_f64(tensors[a + "A_log"][0]).reshape(1, nh, 1)) * softplus
        lo, med, hi = np.quantile(g, [0.01, 0.5, 0.99])
        assert g.max() < 0 and g.min() > -20, (seed, il)
        assert -6 < lo < -0.3 and -1 < med < -0.01 and -0.05 < hi < -1e-4, (seed, il, lo, med, hi)
        beta = 1 / (1 + np.exp(-(x @ _f64(tensors[a + "b_proj.weight"][0]).T)))
        assert 0.1 < beta.std() < 0.35 and np.quantile(beta, 0.05) < 0.3 and np.quantile(beta, 0.95) > 0.7


def test_router_bias_matters_and_weights_are_scaled(cfg, tensors):
    seed = np.random.SeedSequence().entropy % 2**32
    x = _normed_inputs(2048, cfg["hidden_size"], seed)
    k = cfg["num_experts_per_token"]
    for il in range(cfg["first_k_dense_replace"], cfg["num_hidden_layers"]):
        m = f"model.layers.{il}.block_sparse_moe."
        s = 1 / (1 + np.exp(-(x @ _f64(tensors[m + "gate.weight"][0]).T)))
        b = _f64(tensors[m + "gate.e_score_correction_bias"][0])
        plain = np.sort(np.argsort(-s, 1)[:, :k], 1)
        biased = np.sort(np.argsort(-(s + b), 1)[:, :k], 1)
        changed = (plain != biased).any(1).mean()
        assert 0.02 < changed < 0.9, (seed, il, changed)
        assert len(np.unique(biased)) == cfg["num_experts"]         # every expert gets used
    for name, (t, _) in tensors.items():
        w = _f64(t)
        if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
            assert 0.9 < w.mean() < 1.1 and 0.03 < w.std() < 0.2, name
        elif w.ndim == 2 and "embed" not in name and "lm_head" not in name:
            # std ~ gain / sqrt(fan_in), gain in [0.5, 1]
            assert 0.4 < w.std() * np.sqrt(w.shape[1]) < 1.2, name


def test_cli_refuses_non_empty_dir_and_writes_nothing_half(tiny_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "t"
    assert cli_main(["make-tiny", str(out), "--seed", "3"]) == 0
    assert cli_main(["make-tiny", str(out)]) == 2
    assert "directory is not empty (use --force" in capsys.readouterr().err
    assert cli_main(["make-tiny", str(out), "--force"]) == 0
    assert _digests(out) == _digests(tiny_dir)

    import kimi_gguf.tiny as tiny

    def boom(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(tiny, "_write_shards", boom)
    with pytest.raises(KimiError, match=r"never: cannot write checkpoint \(No space left on device\)"):
        make_tiny(tmp_path / "never", seed=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]   # no target, no temp dir left


def test_transformers_dialect_holds_the_same_numbers(tiny_dir, tmp_path):
    """--dialect transformers: written by transformers' save_pretrained; same tensors (values and
    stored dtypes) under the canonical names, the dense layer renamed as transformers does."""
    pytest.importorskip("transformers")
    from kimi_gguf.checkpoint import HFCheckpoint
    from kimi_gguf.spec import ModelSpec
    out = make_tiny(tmp_path / "tf", seed=0, dialect="transformers")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["layer_types"][:4] == ["linear_attention"] * 3 + ["full_attention"]
    assert cfg["mlp_layer_types"][:2] == ["dense", "sparse"]
    stored = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    assert "model.layers.0.block_sparse_moe.gate_proj.weight" in stored
    assert not any(".mlp." in n for n in stored)
    a = HFCheckpoint(tiny_dir)
    b = HFCheckpoint(out, ModelSpec.from_dir(out))
    assert set(a.keys()) == set(b.keys())
    for n in a.keys():
        assert a.dtype(n) == b.dtype(n) and np.array_equal(a.get(n), b.get(n)), n
    for name in ("tiktoken.model", "tokenizer_config.json", "chat_template.jinja"):
        assert (out / name).read_bytes() == (tiny_dir / name).read_bytes()


def test_forward_activations_look_trained(tiny_dir):
    """Through the float64 reference: every block contributes without dominating the residual,
    the residual grows gently, and the next-token distribution is neither flat nor one-hot."""
    from kimi_gguf.checkpoint import HFCheckpoint
    from kimi_gguf.convert.tokenizer import load_kimi_tokenizer
    from kimi_gguf.python_ref.model import KimiLinearRef, Trace
    from kimi_gguf.spec import ModelSpec
    spec = ModelSpec.from_dir(tiny_dir)
    ref = KimiLinearRef(spec, HFCheckpoint(tiny_dir, spec))
    text = "The quick brown fox jumps over the lazy dog. 语言模型把文本看作一串词元。 def f(x): return x**2\n"
    ids = np.array(load_kimi_tokenizer(tiny_dir).encoding().encode(text * 2), dtype=np.int64)
    trace = Trace()
    logits = np.asarray(ref.forward(ids, trace=trace))
    rms = lambda a: float(np.sqrt(np.mean(a * a)))
    for i in range(spec.num_layers):
        assert 0.05 < rms(trace.attn_out[i]) < 1.5 and 0.05 < rms(trace.ffn_out[i]) < 1.5, i
    assert 1.0 < rms(trace.layer_out[spec.num_layers - 1]) < 5.0
    assert np.isfinite(logits).all()
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    entropy = -(p * np.log(p)).sum(1).mean()
    assert 0.4 * np.log(spec.vocab_size) < entropy < 0.9 * np.log(spec.vocab_size)
