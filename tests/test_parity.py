"""Parity suite: llama.cpp capture, comparison against python_ref float64, quality report.

Everything runs on the tiny checkpoint, converted once per session. The capture side is checked
against NumPy recomputations from the GGUF's own weights (independent of python_ref); the parity
verdicts against python_ref's float64 forward.
"""
from __future__ import annotations

import json
import shutil

import gguf
import numpy as np
import pytest

from kimi_gguf.errors import KimiError
from kimi_gguf.parity import budgets, compare, quality
from kimi_gguf.parity.llama_capture import default_labels, loaded_ggml_base_files, run_llama
from kimi_gguf.spec import ModelSpec

TEXT = "Hello, world! 你好，世界。 def f(x): return x * 12345 -- parity of every layer."


@pytest.fixture(scope="module")
def tiny_f32(tiny_gguf):
    return tiny_gguf  # the shared session conversion (read-only)


@pytest.fixture(scope="module")
def ids(tiny_dir):
    from kimi_gguf.parity.sources import encode

    ids = encode(tiny_dir, TEXT)
    assert 20 <= len(ids) <= 80
    return ids


@pytest.fixture(scope="module")
def capture(tiny_dir, tiny_f32, ids):
    spec = ModelSpec.from_dir(tiny_dir)
    return run_llama(tiny_f32, ids, default_labels(spec.num_layers))


def _gguf_tensors(path):
    r = gguf.GGUFReader(str(path))
    return {t.name: np.asarray(t.data, dtype=np.float64) for t in r.tensors}


def _rms(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


# ---------------------------------------------------------------- capture (no reference needed)
def test_capture_labels_follow_layer_kinds(tiny_dir, capture, ids):
    spec = ModelSpec.from_dir(tiny_dir)
    T = len(ids)
    for i, layer in enumerate(spec.layers):
        has = {b for b in capture.tensors if b.endswith(f"-{i}")}
        assert (f"kda_g1-{i}" in has) == (layer.attn == "kda")
        assert (f"mla_out-{i}" in has) == (layer.attn == "mla")
        assert (f"ffn_moe_out-{i}" in has) == (layer.ffn == "moe")
        assert f"l_out-{i}" in has
        assert capture.tensors[f"l_out-{i}"].shape == (T, spec.hidden_size)
        if layer.attn == "kda":
            assert capture.tensors[f"kda_beta-{i}"].shape == (T, spec.kda.num_heads)
            assert capture.tensors[f"kda_g1-{i}"].shape == (T, spec.kda.proj_dim)
    assert capture.tensors["result_output"].shape == (T, spec.vocab_size)
    # the logits llama.cpp returns are the captured result_output, every position
    np.testing.assert_array_equal(capture.logits, capture.tensors["result_output"])
    # one libggml-base in the process: the capture read through libllama's own copy
    assert len(loaded_ggml_base_files()) == 1


def test_capture_values_match_numpy_from_gguf_weights(tiny_dir, tiny_f32, capture, ids):
    """attn_norm-0 and the KDA gate/beta of layer 0, recomputed in float64 from the GGUF."""
    spec = ModelSpec.from_dir(tiny_dir)
    w = _gguf_tensors(tiny_f32)
    x = w["token_embd.weight"][ids]
    xn = _rms(x, w["blk.0.attn_norm.weight"], spec.rms_norm_eps)
    np.testing.assert_allclose(capture.tensors["attn_norm-0"], xn, rtol=1e-5, atol=1e-5)
    f = xn @ w["blk.0.ssm_f_a.weight"].T @ w["blk.0.ssm_f_b.weight"].T + w["blk.0.ssm_dt.bias"]
    A = w["blk.0.ssm_a"].reshape(-1)  # -exp(A_log) per head
    g = (np.logaddexp(0, f).reshape(len(ids), spec.kda.num_heads, -1) * A[None, :, None]).reshape(len(ids), -1)
    np.testing.assert_allclose(capture.tensors["kda_g1-0"], g, rtol=1e-4, atol=1e-5)
    beta_logit = xn @ w["blk.0.ssm_beta.weight"].T
    np.testing.assert_allclose(capture.tensors["kda_beta-0"], beta_logit, rtol=1e-4, atol=1e-5)


def test_capture_reads_strided_views(tiny_dir, tiny_f32, ids):
    """q_nope_perm of an MLA layer is a permuted (non-contiguous) view of q_proj(x)."""
    spec = ModelSpec.from_dir(tiny_dir)
    il = spec.mla_layers()[0]
    cap = run_llama(tiny_f32, ids, {f"attn_norm-{il}", f"q_nope_perm-{il}"})
    w = _gguf_tensors(tiny_f32)
    q = cap.tensors[f"attn_norm-{il}"].astype(np.float64) @ w[f"blk.{il}.attn_q.weight"].T
    H, dk, nope = spec.mla.num_heads, spec.mla.qk_head_dim, spec.mla.qk_nope_head_dim
    want = q.reshape(len(ids), H, dk)[:, :, :nope]        # [T, H, nope]
    ne = cap.shapes[f"q_nope_perm-{il}"]                    # ggml {nope, T, H}
    assert ne[:3] == (nope, len(ids), H)
    got = cap.tensors[f"q_nope_perm-{il}"].reshape(H, len(ids), nope).transpose(1, 0, 2)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_capture_rejects_bad_input(tiny_f32, tmp_path):
    with pytest.raises(KimiError, match="no such GGUF"):
        run_llama(tmp_path / "missing.gguf", [1, 2])
    with pytest.raises(KimiError, match="token ids"):
        run_llama(tiny_f32, [1, 10**7])
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(KimiError, match="could not load"):
        run_llama(bad, [1, 2])


# ---------------------------------------------------------------- metrics
def test_metrics_against_direct_formulas():
    rng = np.random.default_rng(3)
    r = rng.standard_normal(500)
    a = r + 1e-3 * rng.standard_normal(500)
    rel, mx, cos = compare.metrics(a, r)
    assert rel == pytest.approx(np.sqrt(((a - r) ** 2).sum() / (r ** 2).sum()), rel=1e-12)
    assert mx == pytest.approx(np.max(np.abs(a - r)))
    assert cos == pytest.approx(np.dot(a, r) / np.sqrt(np.dot(a, a) * np.dot(r, r)), rel=1e-12)
    rel, _, _ = compare.metrics(np.array([np.nan, 1.0]), np.array([1.0, 1.0]))
    assert rel == float("inf")


def test_kl_and_perplexity_against_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    p, q = rng.standard_normal((6, 50)) * 3, rng.standard_normal((6, 50)) * 3
    ids = rng.integers(0, 50, 6)
    want = torch.nn.functional.kl_div(torch.log_softmax(torch.tensor(q), -1), torch.log_softmax(torch.tensor(p), -1),
                                      log_target=True, reduction="none").sum(-1).numpy()
    np.testing.assert_allclose(quality.kl_per_position(p, q), want, rtol=1e-10, atol=1e-14)
    nll = torch.nn.functional.cross_entropy(torch.tensor(q[:-1]), torch.tensor(ids[1:]))
    assert quality.perplexity(q, ids) == pytest.approx(float(torch.exp(nll)), rel=1e-10)


def test_budget_rows():
    assert budgets.row_for("Q4_K_M") == "q4_k"
    assert budgets.budget("f32", "ffn_moe_out-3") <= budgets.budget("q8_0", "ffn_moe_out-3")
    for row in budgets.BUDGETS.values():  # every label the capture asks for has a budget
        assert set(row) == set(budgets.KIND_OF.values())
    with pytest.raises(KimiError, match="no parity budget"):
        budgets.row_for("q3_k_xs")


# ---------------------------------------------------------------- parity against python_ref
def _perturbed_copy(src, dst, tensor, rel=1e-3, seed=7):
    """Copy an f32 GGUF and add relative noise to one tensor, in place in the copy (gguf-py gives
    the tensor's absolute file offset; the rest of the file is byte-identical)."""
    shutil.copyfile(src, dst)
    t = next(t for t in gguf.GGUFReader(str(src)).tensors if t.name == tensor)
    assert t.tensor_type == gguf.GGMLQuantizationType.F32
    data = np.asarray(t.data, dtype=np.float32)
    noise = np.random.default_rng(seed).standard_normal(data.shape).astype(np.float32)
    new = (data + rel * np.abs(data).mean() * noise).astype(np.float32)
    with open(dst, "r+b") as f:
        f.seek(t.data_offset)
        f.write(new.tobytes())
    return dst


def _moe_kda_layer(spec):
    return next(i for i, l in enumerate(spec.layers) if l.attn == "kda" and l.ffn == "moe" and i > 1)


def test_f32_llamacpp_dialect_every_layer_within_budget(tiny_dir, tiny_f32, ids, tmp_path):
    from kimi_gguf.parity.run import run_parity, write_report

    res = run_parity(tiny_dir, tiny_f32, ids, dialect="llamacpp")
    assert res.budget_row == "f32"
    labels = {r.label for r in res.rows}
    assert {"result_output", "result_norm", "l_out-0", "kda_g1-0", "mla_out-3", "ffn_moe_out-1"} <= labels
    bad = [(r.label, r.rel) for r in res.rows if not r.ok]
    assert res.verdict.ok, bad
    assert res.verdict.flips == [] and all(r.tokens == len(ids) for r in res.rows)
    worst = max(r.rel for r in res.rows)
    assert worst < budgets.BUDGETS["f32"]["logits"]
    rel_logits = np.linalg.norm(res.logits_llama - res.logits_ref) / np.linalg.norm(res.logits_ref)
    assert rel_logits < 2e-5
    js, png = write_report(res, tmp_path / "rep")
    doc = json.loads(js.read_text())
    assert doc["ok"] is True and doc["first_divergence"] is None and len(doc["rows"]) == len(res.rows)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_default_dialect_attributes_l2norm_eps_to_kda_layers(tiny_dir, tiny_f32, ids):
    from kimi_gguf.parity.run import run_parity

    spec = ModelSpec.from_dir(tiny_dir)
    res = run_parity(tiny_dir, tiny_f32, ids, dialect="default")
    note = res.note
    # the gap between the default and llamacpp references enters only at KDA recurrence outputs
    assert note.first.startswith("attn_output-")
    assert note.origins and set(note.origin_kinds) == {"kda"}
    for label in note.origins:
        base, layer = budgets.base_label(label)
        assert base == "attn_output" and spec.layers[layer].attn == "kda"
    assert "l2norm eps" in note.cause
    # everything before it is the same function in both dialects (float64, bit for bit or nearly)
    k = [r.label for r in res.rows].index(note.first)
    assert all(r.gap <= compare.GAP_FLOOR for r in res.rows[:k])
    # the difference is small: the f32 budget still holds, and llama.cpp sits closer to llamacpp's
    assert res.verdict.ok
    gap_row = res.rows[k]
    assert gap_row.gap > 1e-7


def test_hf_remote_dialect_fails_at_moe_with_biased_weights_cause(tiny_dir, tiny_f32, ids):
    from kimi_gguf.parity.run import run_parity

    spec = ModelSpec.from_dir(tiny_dir)
    res = run_parity(tiny_dir, tiny_f32, ids, dialect="hf-remote")
    first = res.verdict.first
    assert not res.verdict.ok and first.base == "ffn_moe_out" and spec.layers[first.layer].ffn == "moe"
    assert "bias-corrected router scores" in res.verdict.cause


def test_flash_attention_rounding_is_named_for_mla(tiny_dir, tiny_f32, ids):
    """llama.cpp's CPU flash-attention path (its 'auto' choice) rounds MLA K/V to f16."""
    from kimi_gguf.parity.run import run_parity

    res = run_parity(tiny_dir, tiny_f32, ids, dialect="llamacpp", flash_attn=None)
    first = res.verdict.first
    assert not res.verdict.ok and first.base == "mla_out" and first.layer == ModelSpec.from_dir(tiny_dir).mla_layers()[0]
    assert 1e-5 < first.rel < 3e-3 and "flash-attention" in res.verdict.cause


@pytest.mark.parametrize("tensor, label, pick", [
    ("ffn_down_exps", "ffn_moe_out", lambda s: _moe_kda_layer(s)),   # the example
    ("ssm_f_b", "kda_g1", lambda s: s.kda_layers()[1]),               # KDA gate projection
    ("attn_kv_a_mqa", "mla_out", lambda s: s.mla_layers()[-1]),       # MLA latent projection
])
def test_perturbed_tensor_is_named_first(tiny_dir, tiny_f32, ids, tmp_path, tensor, label, pick):
    from kimi_gguf.cli import main

    spec = ModelSpec.from_dir(tiny_dir)
    il = pick(spec)
    bad = _perturbed_copy(tiny_f32, tmp_path / "perturbed.gguf", f"blk.{il}.{tensor}.weight")
    np.save(tmp_path / "ids.npy", ids)
    rc = main(["parity", str(tiny_dir), str(bad), "--ids", str(tmp_path / "ids.npy"),
               "--report", str(tmp_path / "rep")])
    assert rc == 1
    doc = json.loads((tmp_path / "rep" / "parity.json").read_text())
    first = doc["first_divergence"]
    assert first["label"] == f"{label}-{il}" and first["layer"] == il
    assert f"blk.{il}.{tensor}" in doc["cause"]
    # every row before it, in compute order, is within budget
    rows = doc["rows"]
    k = [r["label"] for r in rows].index(first["label"])
    assert k > 0 and all(r["ok"] for r in rows[:k])


def test_save_pretrained_checkpoint_converts_to_parity(hf_saved_dirs, tmp_path):
    """A checkpoint written by transformers' own save_pretrained (native config keys, dense layer
    saved as block_sparse_moe.), converted by the project: every layer within the f32 budget."""
    from kimi_gguf.convert.api import convert_model
    from kimi_gguf.parity.run import run_parity
    from kimi_gguf.parity.sources import encode

    d = hf_saved_dirs["transformers"]
    out = tmp_path / "tf.gguf"
    convert_model(d, str(out), outtype="f32", force=True)
    res = run_parity(d, out, encode(d, TEXT), dialect="llamacpp")
    assert res.verdict.ok, [(r.label, r.rel) for r in res.rows if not r.ok]
    assert {"mla_out-3", "ffn_out-0", "ffn_moe_out-4"} <= {r.label for r in res.rows}


def test_q8_0_within_budget_with_routing_flips_cut(tiny_dir, tmp_path):
    """q8_0 on a longer text: llama.cpp sometimes picks other experts (router near-ties moved by
    rounding); those are reported, and later tensors are compared on the unaffected prefix only."""
    from importlib import resources

    from kimi_gguf.convert.api import convert_model
    from kimi_gguf.parity.run import run_parity
    from kimi_gguf.parity.sources import encode

    text = resources.files("kimi_gguf").joinpath("data/corpus.txt").read_text(encoding="utf-8")
    ids = encode(tiny_dir, text)[:160]
    out = tmp_path / "q8.gguf"
    convert_model(tiny_dir, str(out), outtype="q8_0", force=True)
    res = run_parity(tiny_dir, out, ids, dialect="llamacpp")
    assert res.budget_row == "q8_0"
    assert res.verdict.ok, [(r.label, r.rel, r.tokens) for r in res.rows if not r.ok]
    flips = res.verdict.flips
    assert flips, "expected at least one routing flip on 160 tokens at q8_0"
    labels = [r.label for r in res.rows]
    # rows before the first flipped layer's MoE output see every token; rows after, a prefix only
    k = labels.index(f"ffn_norm-{flips[0].layer}")
    assert all(r.tokens == len(ids) for r in res.rows[: k + 1])
    assert all(r.tokens < len(ids) for r in res.rows[k + 1:])
    earliest = min(f.positions[0] for f in flips)
    assert all(r.tokens >= earliest for r in res.rows)


def test_quality_report_f32_q8_0_and_q4_k_m(tiny_dir, ids, tmp_path):
    from kimi_gguf.cli import main

    np.save(tmp_path / "ids.npy", ids)
    rc = main(["quality", str(tiny_dir), "--types", "f32,q8_0,q4_k_m", "--ids", str(tmp_path / "ids.npy"),
               "--report", str(tmp_path / "q")])
    assert rc == 0
    doc = json.loads((tmp_path / "q" / "quality.json").read_text())
    ref, f32, q8, q4 = (quality.QualityRow(**r) for r in doc["rows"])
    assert [r.type for r in (ref, f32, q8, q4)] == ["reference", "f32", "q8_0", "q4_k_m"]
    # the reference's own perplexity, recomputed here from its logits
    from kimi_gguf.parity.sources import reference_run
    logits, _ = reference_run(tiny_dir, ids, "llamacpp")
    lp = logits[:-1] - np.log(np.exp(logits[:-1] - logits[:-1].max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits[:-1].max(-1, keepdims=True)
    assert ref.ppl == pytest.approx(float(np.exp(-lp[np.arange(len(ids) - 1), ids[1:]].mean())), rel=1e-9)
    # f32 in llama.cpp is the reference up to fp32 rounding: KL ~0, same argmax, same perplexity
    assert f32.kl_max < 1e-8 and f32.top1 == 1.0 and f32.ppl == pytest.approx(ref.ppl, rel=1e-4)
    # quantization costs something, more bits cost less, and smaller files cost more
    assert f32.kl_mean < q8.kl_mean < q4.kl_mean
    assert f32.size > q8.size > q4.size > 0
    assert 0 < q4.top1 <= q8.top1 <= 1
    assert (tmp_path / "q" / "quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_parity_through_the_bridge_or_says_why(tiny_dir, tiny_f32, ids):
    """--kda ours: with the bridge built (`make ops`) every layer stays within the f32 budget and the
    bridge really computed the KDA nodes; without it, one clear error instead of a silent fallback."""
    from kimi_gguf.parity.run import run_parity

    try:
        from kimi_gguf.ggml_ops.bridge import find_library
        find_library()
        built = True
    except KimiError:
        built = False
    if not built:
        with pytest.raises(KimiError, match="bridge library not found"):
            run_parity(tiny_dir, tiny_f32, ids, dialect="llamacpp", kda="ours")
        return
    spec = ModelSpec.from_dir(tiny_dir)
    res = run_parity(tiny_dir, tiny_f32, ids, dialect="llamacpp", kda="ours")
    assert res.verdict.ok, [(r.label, r.rel) for r in res.rows if not r.ok]
    assert res.meta["bridge_calls"] >= len(spec.kda_layers())
    # and the builtin path afterwards in the same process is llama.cpp's own op again
    res2 = run_parity(tiny_dir, tiny_f32, ids, dialect="llamacpp", kda="builtin")
    assert res2.verdict.ok and res2.meta["bridge_calls"] is None


def test_cli_bad_inputs_fail_with_one_line(tiny_dir, tiny_f32, tmp_path, capsys):
    from kimi_gguf.cli import main

    trunc = tmp_path / "trunc.gguf"
    trunc.write_bytes(tiny_f32.read_bytes()[: tiny_f32.stat().st_size // 2])
    bad_ids = tmp_path / "ids.npy"
    bad_ids.write_bytes(b"not numpy")
    cases = [
        ([str(tiny_dir), str(trunc)], f"{trunc}: not a readable GGUF"),
        ([str(tiny_dir), str(tmp_path / "none.gguf")], f"{tmp_path / 'none.gguf'}: no such GGUF file"),
        ([str(tmp_path), str(tiny_f32)], f"{tmp_path / 'config.json'}: missing config.json"),
        ([str(tiny_dir), str(tiny_f32), "--ids", str(bad_ids)], f"{bad_ids}: not a readable .npy array"),
    ]
    for argv, msg in cases:
        rc = main(["parity", *argv, "--report", str(tmp_path / "rep")])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith(f"error: {msg}") and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "rep" / "parity.json").exists()
