"""Issue 9: every bad input through the real CLI (a subprocess, so a crash shows as one) -> the
expected exit status, one `error:` line naming the file / tensor / key, no traceback, nothing left
in the output directory; checkpoint code never runs; index paths never leave the checkpoint.

The cases live in scripts/error_table.py (which also writes docs/ERRORS.md from real runs); here
run the ones tests/test_convert_errors.py does not already cover in-process (`in_tests`).
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _load_table():
    spec = importlib.util.spec_from_file_location("error_table", REPO / "scripts" / "error_table.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["error_table"] = mod  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


ET = _load_table()


@pytest.mark.parametrize("case", [c for c in ET.CASES if c.in_tests], ids=lambda c: c.id)
def test_cli_case(case, tiny_dir, tiny_gguf, tmp_path):
    o = ET.run_case(case, tiny_dir, tiny_gguf, tmp_path)
    if o.skipped:
        pytest.skip(o.skipped)
    print(f"\n{case.id}: rc={o.rc} {o.line}")
    assert not o.problems, (o.problems, o.out[-2000:], o.err[-2000:])


def test_verbose_shows_the_traceback(tiny_dir, tmp_path):
    # The one-line rule has one exception: --verbose asks for the traceback.
    bad = tmp_path / "ckpt"
    bad.mkdir()
    p = subprocess.run([sys.executable, "-m", "kimi_gguf.cli", "convert", str(bad), "--outfile",
                        str(tmp_path / "x.gguf"), "--verbose"], capture_output=True, text=True,
                       env=ET.child_env())
    assert p.returncode != 0
    assert "Traceback" in p.stderr and "KimiError" in p.stderr and "config.json" in p.stderr
    assert not (tmp_path / "x.gguf").exists()


@pytest.mark.parametrize("extra", [[], ["--no-tensors"]], ids=["long", "short-buffered"])
def test_reader_that_quits_is_no_traceback(tiny_gguf, extra):
    # `kimi-gguf inspect x.gguf | head`: the pipe closes before the output is written (the short
    # output is still in Python's buffer when the command returns; the long one is written at once)
    p = subprocess.Popen([sys.executable, "-m", "kimi_gguf.cli", "inspect", str(tiny_gguf), *extra],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ET.child_env())
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 141 and err == "", err


def test_every_case_is_in_the_docs():
    """docs/ERRORS.md comes from scripts/error_table.py; a case added without re-running it shows here."""
    doc = (REPO / "docs" / "ERRORS.md").read_text()
    missing = [c.label for c in ET.CASES if f"| {c.label} |" not in doc]
    assert not missing, f"re-run scripts/error_table.py; not in docs/ERRORS.md: {missing}"
    failures = re.findall(r"^\|[^|]*\|[^|]*\| (\d+) \|", doc, flags=re.M)
    assert failures, "no rows found"


# ---------------------------------------------------------------------------------- security
SOURCE_DIRS = ["convert", "kimi_gguf", "python_ref", "ggml_ops"]
# Calls that could run code or unpickle data taken from a file.
_DANGEROUS = re.compile(r"\bpickle\.loads?\(|\btorch\.load\(|(?<![.\w])eval\(|(?<![.\w])exec\(|"
                        r"trust_remote_code\s*=\s*True|allow_pickle\s*=\s*True|\bmarshal\.loads?\(|"
                        r"\byaml\.load\(|shell\s*=\s*True|\bos\.system\(|\bspec_from_file_location\(|"
                        r"\b__import__\(")
# (file, what) pairs reviewed: the project's own files loaded by path, never a checkpoint's.
_REVIEWED = {("kimi_gguf/bench/kda_cuda.py", "spec_from_file_location")}  # ggml_ops/cuda glue (no package)


def test_no_code_or_pickle_loading_in_the_code_base():
    hits = []
    for d in SOURCE_DIRS:
        for p in sorted((REPO / d).rglob("*.py")):
            rel = p.relative_to(REPO).as_posix()
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
                m = _DANGEROUS.search(line.split("#", 1)[0])
                if m and not any(rel == f and w in m.group(0) for f, w in _REVIEWED):
                    hits.append(f"{rel}:{i}: {line.strip()}")
    assert not hits, "\n".join(hits)


def test_planted_chat_template_is_stored_as_text_and_rendered_sandboxed(tiny_dir, tiny_gguf, tmp_path):
    """The converted GGUF carries the checkpoint's template verbatim; the renderer `serve` uses
    (llama-cpp-python's Jinja2ChatFormatter, a sandboxed environment) refuses its reach for `os`."""
    import gguf
    from jinja2.exceptions import SecurityError
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    o = ET.run_case(ET.BY_ID["remote_code_convert"], tiny_dir, tiny_gguf, tmp_path)
    assert not o.problems, o.problems
    marker = tmp_path / "remote_code_convert" / "EXECUTED"
    template = gguf.GGUFReader(tmp_path / "remote_code_convert" / "o" / "out.gguf") \
        .get_field("tokenizer.chat_template").contents()
    assert "__globals__" in template and str(marker) in template
    fmt = Jinja2ChatFormatter(template, eos_token="[EOS]", bos_token="[BOS]")
    with pytest.raises(SecurityError):
        fmt(messages=[{"role": "user", "content": "hi"}])
    assert not marker.exists()


def test_np_load_never_allows_pickles():
    for d in SOURCE_DIRS:
        for p in sorted((REPO / d).rglob("*.py")):
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
                if re.search(r"\bnp\.load\(", line):
                    assert "allow_pickle=False" in line, f"{p.relative_to(REPO)}:{i}: {line.strip()}"


def test_transformers_never_loads_the_users_checkpoint():
    # from_pretrained appears only where make-tiny reads back its own freshly written checkpoint.
    users = []
    for d in SOURCE_DIRS:
        for p in sorted((REPO / d).rglob("*.py")):
            if "from_pretrained(" in p.read_text(encoding="utf-8"):
                users.append(str(p.relative_to(REPO)))
    assert users == [os.path.join("kimi_gguf", "tiny_transformers.py")], users


# ---------------------------------------------------------------------------------- C ops (cffi)
def _kda_inputs(seed: int, B: int = 1, T: int = 5, H: int = 2, S: int = 32):
    """ggml-layout float32 inputs that look like the model's: unit-norm q, k; log-gates in
    [-20, -1e-4]; beta in [0, 1]; a small initial state."""
    import numpy as np

    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, T, H, S))
    k = rng.standard_normal((B, T, H, S))
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    v = rng.standard_normal((B, T, H, S))
    g = -1e-4 - (20 - 1e-4) * rng.uniform(0, 1, (B, T, H, S)) ** 3
    beta = rng.uniform(0, 1, (B, T, H, 1))
    state = 0.3 * rng.standard_normal((B, H, S, S))
    return [np.ascontiguousarray(x, dtype=np.float32) for x in (q, k, v, g, beta, state)]


def test_c_entry_points_refuse_null_pointers():
    from kimi_gguf.ggml_ops._binding import ERR_LEN, ffi, lib

    L = lib()
    err = ffi.new("char[]", ERR_LEN)
    NULL = ffi.NULL
    calls = {
        "check": lambda e, n: L.kimi_kda_check(NULL, e, n),
        "forward_cpu": lambda e, n: L.kimi_kda_forward_cpu(NULL, 0, 1, e, n),
        "forward_cpu_threads": lambda e, n: L.kimi_kda_forward_cpu_threads(NULL, 2, e, n),
        "eval_ggml": lambda e, n: L.kimi_kda_eval_ggml(NULL, 0, 1, e, n),
        "graph_new": lambda e, n: L.kimi_kda_graph_new(NULL, 0, 1, ffi.new("kimi_kda_graph **"), e, n),
        "graph_compute": lambda e, n: L.kimi_kda_graph_compute(NULL, 1, e, n),
    }
    for name, call in calls.items():
        assert call(err, ERR_LEN) == 1, name            # KIMI_KDA_ERR_NULL
        assert "NULL" in ffi.string(err).decode(), name
        assert call(NULL, 0) == 1, name                 # no message buffer: still just a code
    assert L.kimi_kda_dst_size(NULL) < 0
    L.kimi_kda_graph_free(NULL)                          # freeing nothing is a no-op
    # a valid problem whose output pointer is missing: every implementation says so
    from kimi_gguf.ggml_ops import kda

    for impl in ("c", "ggml", "builtin"):
        prob = kda.Problem(*_kda_inputs(1))
        prob.p.dst = NULL
        with pytest.raises(kda.KimiError, match="NULL") as e:
            prob.run(impl, n_threads=2)
        assert e.value.code == 1, impl
    for field in ("q", "k", "v", "g", "beta", "state"):
        prob = kda.Problem(*_kda_inputs(2))
        getattr(prob.p, field).data = NULL
        with pytest.raises(kda.KimiError, match=f"{field}: data pointer is NULL") as e:
            prob.run("c", n_threads=2)
        assert e.value.code == 1


@pytest.mark.parametrize("what, code, needle", [
    ("T=0", 2, "ne[2] = 0"), ("S=0", 2, "ne[0] = 0"), ("H=0", 2, "ne[1] = 0"),
    ("g has 3 tokens", 2, "g: shape"), ("state for 16 channels", 2, "state"),
    ("beta per channel", 2, "beta"),
    ("v heads alias (stride 0)", 3, "overlap"), ("state rows overlap", 3, "overlap"),
    ("dst overlaps q", 3, "dst overlaps"), ("n_snapshots 0", 5, "n_snapshots"),
    ("n_snapshots 2^40", 5, "n_snapshots = 1099511627776 out of range"), ("algo 9", 5, "algo"),
])
def test_c_op_bad_inputs_are_error_codes(what, code, needle):
    import numpy as np

    from kimi_gguf.ggml_ops import kda
    from kimi_gguf.ggml_ops._binding import KdaOpError

    q, k, v, g, beta, s0 = _kda_inputs(3)
    extra = {}
    if what == "T=0":
        q, k, v, g, beta = (x[:, :0] for x in (q, k, v, g, beta))
    elif what == "S=0":
        q, k, v, g, s0 = q[..., :0], k[..., :0], v[..., :0], g[..., :0], s0[..., :0, :0]
    elif what == "H=0":
        q, k, v, g, beta, s0 = q[:, :, :0], k[:, :, :0], v[:, :, :0], g[:, :, :0], beta[:, :, :0], s0[:, :0]
    elif what == "g has 3 tokens":
        g = g[:, :3]
    elif what == "state for 16 channels":
        s0 = np.ascontiguousarray(s0[..., :16, :16])
    elif what == "beta per channel":
        beta = np.ascontiguousarray(np.broadcast_to(beta, g.shape))
    elif what == "v heads alias (stride 0)":
        v = np.broadcast_to(v[:, :, :1], v.shape)
    elif what == "state rows overlap":
        s0 = np.lib.stride_tricks.as_strided(s0, shape=s0.shape, strides=(s0.strides[0], s0.strides[1], 4, 4))
    elif what == "n_snapshots 0":
        extra["n_snapshots"] = 0
    elif what == "n_snapshots 2^40":
        extra["n_snapshots"] = 2 ** 40
    for impl in ("c", "ggml", "builtin"):
        with pytest.raises(KdaOpError) as e:
            if what == "dst overlaps q":
                n = kda.Problem(q, k, v, g, beta, s0).dst.size
                buf = np.zeros(n + q.size, np.float32)
                qa = buf[n - 8:n - 8 + q.size].reshape(q.shape)
                qa[...] = q
                kda.Problem(qa, k, v, g, beta, s0, dst=buf[:n]).run(impl, n_threads=2)
            elif what == "algo 9":
                prob = kda.Problem(q, k, v, g, beta, s0)
                prob.p.algo = 9
                prob.run(impl, n_threads=2)
            else:
                kda.kda_ggml(q, k, v, g, beta, s0, impl=impl, n_threads=2, **extra)
        assert e.value.code == code and needle in str(e.value), (impl, str(e.value))
        assert "\n" not in str(e.value)


def test_c_op_wrong_python_types_are_kimi_errors():
    import numpy as np

    from kimi_gguf.errors import KimiError
    from kimi_gguf.ggml_ops import kda

    q, k, v, g, beta, s0 = _kda_inputs(4)
    for bad in (q.astype(np.complex64), q.astype(object), np.full(q.shape, "x"), q > 0, q[0]):
        with pytest.raises(KimiError, match="kda op: q"):
            kda.kda_ggml(bad, k, v, g, beta, s0, n_threads=2)
    # after all that, a valid call still works and agrees with the float64 reference
    from kimi_gguf.python_ref.kda import naive_recurrent_kda

    attn, states = kda.kda_ggml(q, k, v, g, beta, s0, n_threads=2)
    tr = lambda x: np.asarray(x, np.float64)  # noqa: E731
    # ggml layout -> FLA layout: state is stored transposed; the op scales q by 1/sqrt(S)
    o_ref, s_ref = naive_recurrent_kda(tr(q), tr(k), tr(v), tr(g), tr(beta[..., 0]), scale=q.shape[-1] ** -0.5,
                                       initial_state=tr(s0).transpose(0, 1, 3, 2))
    assert np.max(np.abs(attn - o_ref)) <= 1e-5 * np.max(np.abs(o_ref))
    assert np.max(np.abs(states[0].transpose(0, 1, 3, 2) - s_ref)) <= 1e-5 * np.max(np.abs(s_ref))
