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
def tiny_f32(tiny_dir, tmp_path_factory):
    from kimi_gguf.convert.api import convert_model

    out = tmp_path_factory.mktemp("parity") / "tiny-f32.gguf"
    convert_model(tiny_dir, str(out), outtype="f32", force=True)
    return out


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
