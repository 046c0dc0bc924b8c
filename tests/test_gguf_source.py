"""GGUFSource: a converted GGUF read back as canonical tensors through the inverse transforms.

f32: every tensor equals the checkpoint's bit for bit, except A_log, which the GGUF stores as
-exp(A_log) in float32 (what llama.cpp uses): read back as log(-a) in float64 it is within float32
rounding. The float64 reference run on the GGUF then matches the one run on the checkpoint.
Quantized files read back as gguf-py's own quantize->dequantize of the transformed tensor.
"""
from __future__ import annotations

import gguf
import numpy as np
import pytest

from kimi_gguf.checkpoint import HFCheckpoint, open_source
from kimi_gguf.convert.api import convert_model
from kimi_gguf.convert.gguf_source import GGUFSource
from kimi_gguf.errors import KimiError
from kimi_gguf.names import build_table, canonical_index
from kimi_gguf.python_ref.model import KimiLinearRef


@pytest.fixture(scope="module")
def files(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ggsrc")
    paths = {t: out / f"tiny-{t}.gguf" for t in ("f32", "q8_0")}
    for t, p in paths.items():
        convert_model(tiny_dir, str(p), t)
    return paths


def test_f32_tensors_round_trip(tiny_dir, files):
    hf, gs = HFCheckpoint(tiny_dir), open_source(files["f32"])
    assert isinstance(gs, GGUFSource)
    assert gs.keys() == [k for k in hf.keys()]
    assert gs.spec.layers == hf.spec.layers
    for n in hf.keys():
        a, b = hf.get(n), gs.get(n)
        assert a.shape == b.shape == gs.shape(n), n
        if n.endswith("A_log"):
            # same decay rate as llama.cpp's float32 ssm_a, and within its rounding of A_log
            stored = (-np.exp(a.astype(np.float64))).astype(np.float32)
            assert np.array_equal((-np.exp(b)).astype(np.float32), stored), n
            np.testing.assert_allclose(b, a, rtol=0, atol=2 ** -23)
        else:
            assert np.array_equal(a, b), n


def test_reference_on_gguf_equals_reference_on_checkpoint(tiny_dir, files):
    ids = [int(x) for x in np.random.default_rng(3).integers(0, 1000, 30)]
    hf = KimiLinearRef(None, HFCheckpoint(tiny_dir), dialect="llamacpp").logits(ids)
    gg = KimiLinearRef(None, GGUFSource(files["f32"]), dialect="llamacpp").logits(ids)
    err = float(np.abs(gg - hf).max() / np.abs(hf).max())
    print(f"\nreference logits, GGUF-loaded vs checkpoint-loaded: max rel diff {err:.3g}")
    assert err < 1e-6


def test_q8_0_reads_back_as_gguf_py_dequantization(tiny_dir, files):
    hf, gs = HFCheckpoint(tiny_dir), GGUFSource(files["q8_0"])
    table = build_table(hf.spec)
    idx = canonical_index(table)
    r = gguf.GGUFReader(files["q8_0"])
    types = {t.name: t.tensor_type for t in r.tensors}
    checked = 0
    for n in hf.keys():
        ent, _ = idx[n]
        if types[ent.gguf] != gguf.GGMLQuantizationType.Q8_0 or ent.transform not in ("identity", "stack"):
            continue
        x = hf.get(n)
        want = gguf.quants.dequantize(gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0),
                                      gguf.GGMLQuantizationType.Q8_0)
        assert np.array_equal(gs.get(n), want), n
        checked += 1
    assert checked > 50


def test_damaged_gguf_is_one_line_error(files, tmp_path):
    data = files["f32"].read_bytes()
    for cut in (3, 100, len(data) // 2):
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(data[:cut])
        with pytest.raises(KimiError) as e:
            GGUFSource(bad)
        assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_name_table_transforms_invert(tiny_dir):
    # every entry: canonical arrays -> GGUF array (to_gguf) -> canonical again (from_gguf), on fresh
    # random data in the canonical shapes; kv_b goes through both halves, A_log through -exp/log.
    from kimi_gguf.names import canonical_shapes, kv_b_partner

    spec = HFCheckpoint(tiny_dir).spec
    shapes = canonical_shapes(spec)
    rng = np.random.default_rng(11)
    data = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    table = build_table(spec)
    gg = {e.gguf: e.to_gguf([data[s] for s in e.sources]) for e in table}
    for e in table:
        assert gg[e.gguf].shape == e.shape, e.gguf
    for name, (e, i) in canonical_index(table).items():
        partner = gg[kv_b_partner(table, e).gguf] if e.transform == "kv_b_k" else None
        back = e.from_gguf(gg[e.gguf], i, shapes[name], partner)
        if e.transform == "neg_exp":
            np.testing.assert_allclose(back, data[name], rtol=0, atol=2 ** -22)
        else:
            assert np.array_equal(back, data[name]), name
