"""python_ref whole model on the embedded tiny checkpoint: backends, incremental decoding, dialects."""
import shutil

import numpy as np
import pytest

from kimi_gguf.checkpoint import HFCheckpoint
from kimi_gguf.errors import KimiError
from kimi_gguf.python_ref.dialect import DIALECTS, get_dialect
from kimi_gguf.python_ref.model import KimiLinearRef, Trace
from kimi_gguf.python_ref.moe import route
from kimi_gguf.python_ref.ops import softplus
from kimi_gguf.python_ref.xp import numpy_xp
from kimi_gguf.spec import DENSE, KDA, MLA, MOE


def rel(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


@pytest.fixture(scope="module")
def src(tiny_dir):
    return HFCheckpoint(tiny_dir)


@pytest.fixture(scope="module")
def ids(src):
    return np.random.default_rng(5).integers(0, src.spec.vocab_size, 75)


@pytest.fixture(scope="module")
def ref64(src, ids):
    model = KimiLinearRef(None, src)
    return model, model.logits(ids)


def test_tiny_logits_look_like_a_model(ref64, src):
    _, logits = ref64
    assert logits.shape == (75, src.spec.vocab_size) and logits.dtype == np.float64
    assert np.isfinite(logits).all() and logits.std() > 0.1
    # distinct positions give distinct distributions
    assert not np.allclose(logits[10], logits[11])


def test_torch_backend_matches_numpy(ref64, src, ids):
    _, logits = ref64
    t64 = KimiLinearRef(None, src, backend="torch", dtype="float64").logits(ids)
    assert rel(t64, logits) < 1e-11
    t32 = KimiLinearRef(None, src, backend="torch", dtype="float32").logits(ids)
    assert t32.dtype == np.float32 and rel(t32, logits) < 1e-4
    n32 = KimiLinearRef(None, src, backend="numpy", dtype="float32").logits(ids)
    assert n32.dtype == np.float32 and rel(n32, logits) < 1e-4


def test_chunk_size_and_naive_mode_do_not_change_logits(ref64, src, ids):
    _, logits = ref64
    for kw in ({"chunk_size": 7}, {"chunk_size": 16}, {"kda_mode": "naive"}):
        assert rel(KimiLinearRef(None, src, **kw).logits(ids), logits) < 1e-11, kw


def test_incremental_equals_full_forward(ref64, ids):
    model, logits = ref64
    # prefill 30, then a multi-token call of 20, then token by token; state carried across calls
    first, state = model.prefill(ids[:30])
    assert state.n_tokens == 30
    parts = [first, model.forward(ids[30:50], state)]
    parts += [model.step(int(t), state)[None] for t in ids[50:]]
    assert state.n_tokens == len(ids)
    assert rel(np.concatenate(parts), logits) < 1e-11
    # every layer kind carries something: KDA recurrent state and conv inputs, MLA latent cache
    for spec_l, st in zip(model.spec.layers, state.layers):
        if spec_l.attn == KDA:
            assert np.abs(st.S).max() > 0 and all(np.abs(c).max() > 0 for c in st.conv)
        else:
            assert st.c.shape[0] == len(ids)


def test_greedy_continuation_is_argmax_of_full_forward(ref64, ids):
    model, _ = ref64
    prompt = ids[:12]
    new = model.greedy(prompt, 5)
    full = model.logits(np.concatenate([prompt, new]))
    assert [int(np.argmax(full[len(prompt) - 1 + j])) for j in range(5)] == new


# ---------------------------------------------------------------- dialects
def _block_diffs(src, ids, base: str, other):
    """Run `base` once, then feed each block's recorded input to the same block under `other`.
    Returns {(layer, 'attn'|'ffn'): max abs difference}."""
    model = KimiLinearRef(None, src, dialect=base)
    trace = Trace()
    model.forward(ids, trace=trace)
    alt = KimiLinearRef(None, src, dialect=other)
    alt._cache = model._cache  # same converted weights
    diffs = {}
    for i in range(src.spec.num_layers):
        st = alt.new_state().layers[i]
        a, _ = alt.attn(i, trace.attn_in[i], st)
        diffs[(i, "attn")] = float(np.abs(a - trace.attn_out[i]).max())
        diffs[(i, "ffn")] = float(np.abs(alt.ffn(i, trace.ffn_in[i]) - trace.ffn_out[i]).max())
    return diffs


def _changed(diffs):
    return {k for k, d in diffs.items() if d > 1e-9}


def _layers(spec, pred):
    return {i for i, l in enumerate(spec.layers) if pred(l)}


def test_block_replay_is_exact(src, ids):
    assert _changed(_block_diffs(src, ids, "default", "default")) == set()
    assert max(_block_diffs(src, ids, "default", "default").values()) == 0.0


def test_l2norm_eps_changes_only_kda_blocks(src, ids):
    spec = src.spec
    diffs = _block_diffs(src, ids, "default", get_dialect("default").with_(l2norm_eps=1e-5))
    assert _changed(diffs) == {(i, "attn") for i in _layers(spec, lambda l: l.attn == KDA)}


def test_kv_a_norm_eps_changes_only_mla_blocks(src, ids):
    spec = src.spec
    diffs = _block_diffs(src, ids, "default", "transformers")  # the one difference: kv_a eps 1e-6
    assert _changed(diffs) == {(i, "attn") for i in _layers(spec, lambda l: l.attn == MLA)}


def test_moe_bias_changes_only_moe_blocks(src, ids):
    spec = src.spec
    diffs = _block_diffs(src, ids, "transformers", "hf-remote")  # the one difference: biased weights
    moe = _layers(spec, lambda l: l.ffn == MOE)
    assert _changed(diffs) == {(i, "ffn") for i in moe}
    assert _layers(spec, lambda l: l.ffn == DENSE)  # the tiny model has a dense layer that stays equal


def test_llamacpp_dialect_changes_kda_blocks(src, ids):
    # llama.cpp: l2norm eps = rms_norm_eps; its MoE clamp (6.1e-5) never binds on real sums, and
    # its kv_a eps equals default's, so only the KDA blocks move.
    spec = src.spec
    diffs = _block_diffs(src, ids, "default", "llamacpp")
    assert _changed(diffs) == {(i, "attn") for i in _layers(spec, lambda l: l.attn == KDA)}


def test_moe_norm_clamp_binds_only_for_tiny_score_sums():
    xp = numpy_xp()
    rng = np.random.default_rng(3)
    from kimi_gguf.spec import MoESpec

    class S:  # the two fields route() reads
        moe = MoESpec(num_experts=6, top_k=2, intermediate_size=4, num_shared_experts=0,
                      routed_scaling_factor=2.0, renormalize=True, router_activation="sigmoid",
                      num_expert_group=1, topk_group=1)
    x = np.abs(rng.standard_normal((5, 8))) + 0.5
    w_ok = rng.standard_normal((6, 8)) * 0.3
    w_tiny = -12.0 / x.sum(1).mean() + 0.01 * rng.standard_normal((6, 8))  # logits near -12: sums ~1e-5
    bias = rng.standard_normal(6) * 0.01
    weights = {"gate.e_score_correction_bias": bias}
    for w, expect_equal in ((w_ok, True), (w_tiny, False)):
        weights["gate.weight"] = w
        _, a = route(xp, weights.get, x, S, DIALECTS["default"])
        _, b = route(xp, weights.get, x, S, DIALECTS["llamacpp"])
        assert np.allclose(a, b, rtol=1e-15, atol=0) == expect_equal
    # with tiny sums, default still renormalises to routed_scaling_factor; llamacpp does not
    assert np.allclose(a.sum(-1), 2.0) and (b.sum(-1) < 1.0).any()


def test_softplus_threshold_only_above_20():
    xp = numpy_xp()
    x = np.linspace(-30, 40, 701)
    a, b = softplus(xp, x, 20.0), softplus(xp, x, None)
    assert np.array_equal(a[x <= 20], b[x <= 20])
    assert (a[x > 20] != b[x > 20]).any() and np.abs(a - b).max() < 3e-9


# ---------------------------------------------------------------- bad input
def test_bad_arguments(src):
    with pytest.raises(KimiError, match="dialect 'nope'"):
        KimiLinearRef(None, src, dialect="nope")
    with pytest.raises(KimiError, match="backend 'jax'"):
        KimiLinearRef(None, src, backend="jax")
    with pytest.raises(KimiError, match="dtype 'float16'"):
        KimiLinearRef(None, src, dtype="float16")
    model = KimiLinearRef(None, src)
    with pytest.raises(KimiError, match=f"token id {src.spec.vocab_size}"):
        model.forward(np.array([1, src.spec.vocab_size]))
    with pytest.raises(KimiError, match="1-D integer"):
        model.forward(np.array([[1, 2]]))


# ---------------------------------------------------------------- CLI
def test_reference_logits_cli(tiny_dir, tmp_path, ref64, ids, capsys):
    from kimi_gguf.cli import main

    np.save(tmp_path / "ids.npy", ids)
    out = tmp_path / "out.npy"
    assert main(["reference-logits", str(tiny_dir), "--ids", str(tmp_path / "ids.npy"), "--out", str(out)]) == 0
    got = np.load(out)
    assert got.dtype == np.float64 and np.array_equal(got, ref64[1])
    assert main(["reference-logits", str(tiny_dir), "--ids", str(tmp_path / "ids.npy"), "--out", str(out),
                 "--backend", "torch", "--dtype", "float32", "--dialect", "llamacpp"]) == 0
    got32 = np.load(out)
    assert got32.dtype == np.float32 and 0 < rel(got32, ref64[1]) < 1e-2
    np.save(tmp_path / "bad.npy", np.zeros((2, 3)))
    assert main(["reference-logits", str(tiny_dir), "--ids", str(tmp_path / "bad.npy"), "--out",
                 str(tmp_path / "x.npy")]) == 2
    assert "bad.npy: expected a 1-D integer array" in capsys.readouterr().err
    assert not (tmp_path / "x.npy").exists()
