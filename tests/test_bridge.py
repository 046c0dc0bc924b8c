"""The llama.cpp bridge: stock llama.cpp (llama-cpp-python) runs its KDA op on our kernels.

Every comparison runs the same llama.cpp graph twice, once with the op in the bridge ("ours") and
once in llama.cpp's own op ("builtin"), and the bridge's call counter proves which one ran.

Device: every comparison runs on the CPU, and again with all layers on the GPU ("cuda") where
llama-cpp-python was built with CUDA and the bridge with nvcc (the device machine; CI skips it):
builtin is then llama.cpp's CUDA op, ours the bridge's GPU device, and the GPU call counter proves
the node ran there.

Tolerance on the CPU: the issue's 1e-5 relative, bridge vs builtin. The sessions use llama.cpp's
exact attention path (f32 K/V cache, no flash attention; LlamaSession(exact=True)): with llama.cpp's
defaults the f16 cache rounds MLA's latent and llama.cpp's own forward then moves by 1e-5..3e-5
under a mere change of batching, which would swamp the comparison. On the exact path bridge and
builtin agree to ~5e-7 and both sit ~5e-7 from python_ref's float64 logits. Each comparison also
requires the bridge to be as close to the float64 reference as the builtin op (<= 1.25x its error).

On the GPU the 1e-5 bar moves from the logits to each KDA node. llama.cpp's CUDA backend computes
f32 products in TF32 (ggml-cuda sets CUBLAS_TF32_TENSOR_OP_MATH on its cuBLAS handles, and its mmf
kernels use mma .tf32): its own logits sit ~1e-3 from float64, and a 1e-7 change in any input of a
product moves its TF32 rounding and so its output by ~1e-4. Measured on an H100
(scripts/gpu_bridge_diag.py, 2026-11-27): the first KDA node agrees with llama.cpp's op to 4e-7,
the o_proj product after it already differs by 8e-5, and a router near-tie (float64 margin 7e-5)
flips one expert in layer 6, so ours vs builtin reaches 0.23 -- while builtin itself moves by 0.46
when the same prompt is fed in 16-token ubatches, and ours stays 3e-3 from float64 where builtin
is 0.23 away. So the GPU sessions run in verify mode: every node the bridge computes is computed
again by llama.cpp's CUDA op on the same inputs and must agree to 1e-5; end to end the bridge must be
within TF32 noise of float64 (GPU_E2E) or no further than builtin (1.25x).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from kimi_gguf.errors import KimiError
from kimi_gguf.ggml_ops import bridge
from kimi_gguf.ggml_ops.llama_session import LlamaSession, quiet_llama_logs

THREADS = 2
BAR = 1e-5
GPU_E2E = 1e-2  # end-to-end logits vs float64 on the GPU: TF32 products (see the top)


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(np.asarray(b, np.float64)))


def agree(ours: np.ndarray, builtin: np.ndarray, ref64: np.ndarray, what: str, layers: int, st) -> None:
    """ours/builtin/ref64: logits of the same tokens; st: the bridge's stats of the `ours` run."""
    r = rel(ours, builtin)
    e_ours, e_builtin = rel(ours, ref64), rel(builtin, ref64)
    nodes_ok(st, what)
    if not layers:
        assert r <= BAR, f"{what}: bridge vs builtin {r:.3g} > {BAR}"
        assert e_ours <= 1.25 * e_builtin, f"{what}: bridge {e_ours:.3g} vs builtin {e_builtin:.3g} from float64"
    else:
        assert e_ours <= max(GPU_E2E, 1.25 * e_builtin), \
            f"{what}: bridge {e_ours:.3g} vs builtin {e_builtin:.3g} from float64 (bridge vs builtin {r:.3g})"


def nodes_ok(st, what: str) -> None:
    """Verify mode: every node the bridge computed agreed with llama.cpp's own op on its inputs."""
    assert st.calls > 0 and st.verify_nodes == st.calls, f"{what}: {st}"
    assert st.verify_max_rel <= BAR, f"{what}: a KDA node differs from llama.cpp's op by {st.verify_max_rel:.3g}"


def reference(tiny_dir, tokens) -> np.ndarray:
    from kimi_gguf.parity.sources import reference_run

    return reference_run(tiny_dir, np.asarray(tokens, dtype=np.int64), "llamacpp")[0]


def use(kda: str, gpu: bool) -> None:
    """Graphs built from now on put the KDA op in the bridge (ours: in verify mode, see nodes_ok;
    its GPU device when the layers are offloaded) or in llama.cpp (builtin); counters reset."""
    if kda == "ours":
        bridge.enable_bridge(gpu=gpu)
        bridge.set_verify(True)
    else:
        bridge.disable_bridge()
    bridge.reset_stats()


def session(gguf, kda: str, **kw) -> LlamaSession:
    """A fresh context whose graphs put the KDA op in the bridge (ours) or in llama.cpp (builtin);
    the bridge runs in verify mode (each node checked against llama.cpp's op: see nodes_ok)."""
    use(kda, bool(kw.get("n_gpu_layers")))
    quiet_llama_logs()
    return LlamaSession(gguf, n_threads=THREADS, **kw)


@pytest.fixture(autouse=True)
def _verify_off_afterwards():
    """Verify mode is process-wide and slow: no test leaves it on for the next module."""
    yield
    bridge.set_verify(False)


def _cuda_unavailable() -> str:
    """Why the GPU variant can't run here ("" when it can)."""
    import llama_cpp

    if not llama_cpp.llama_supports_gpu_offload():
        return "llama-cpp-python built without GPU offload"
    bridge.enable_bridge()
    if not bridge.gpu_devices():
        return "the bridge has no GPU device (built without nvcc, or no CUDA device)"
    return ""


def _cuda_build() -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


# With the layers on the CPU of a CUDA build, llama.cpp stages CPU tensors in CUDA's pinned buffer
# type and offloads big batches' products to the GPU, and the KDA node follows them; the CPU device
# claims it only in a CPU build (CI's). So the CPU variants run where llama-cpp-python is CPU-only.
CPU_ONLY = "CPU layers are the CPU build's case (a CUDA build offloads; see _cuda_build)"


@pytest.fixture(scope="module", params=["cpu", "cuda"])
def layers(request) -> int:
    """n_gpu_layers of the sessions: 0 on the CPU, -1 (all) on the GPU."""
    if request.param == "cuda":
        why = _cuda_unavailable()
        if why:
            pytest.skip(why)
        return -1
    if _cuda_build():
        pytest.skip(CPU_ONLY)
    return 0


def ran_on(st, layers: int) -> None:
    """Every bridge call ran on the device the layers are on."""
    assert st.gpu_calls == (st.calls if layers else 0), st


@pytest.fixture(scope="module")
def n_kda(tiny_gguf) -> int:
    """KDA layers in the tiny GGUF (each llama_decode ubatch runs one bridge call per KDA layer)."""
    import gguf

    field = gguf.GGUFReader(tiny_gguf).fields["kimi_gguf.layer_attn"]
    kinds = [bytes(field.parts[i]).decode() for i in field.data]
    assert "mla" in kinds and "kda" in kinds
    return kinds.count("kda")


@pytest.fixture(scope="module")
def vocab(tiny_gguf) -> int:
    with session(tiny_gguf, "builtin") as s:
        return s.n_vocab


@pytest.fixture(scope="module")
def prompt(vocab) -> np.ndarray:
    return np.random.default_rng(20261127).integers(0, vocab, size=48)


@pytest.fixture(scope="module")
def builtin_prefill(tiny_gguf, prompt, layers) -> np.ndarray:
    with session(tiny_gguf, "builtin", n_gpu_layers=layers) as s:
        return s.prefill(prompt)


@pytest.fixture(scope="module")
def builtin_prefill_cpu(tiny_gguf, prompt) -> np.ndarray:
    """llama.cpp's CPU op (tests of the process-level guards and the CLI, which run on the CPU)."""
    with session(tiny_gguf, "builtin") as s:
        return s.prefill(prompt)


def test_bridge_built_for_running_ggml():
    bridge.enable_bridge()
    commit, version = bridge.built_for()
    import llama_cpp  # noqa: F401  (libggml of libllama)
    import ctypes
    from pathlib import Path

    base = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so.0"))
    base.ggml_commit.restype = base.ggml_version.restype = ctypes.c_char_p
    assert base.ggml_commit().decode().split("-")[0] == commit
    assert base.ggml_version().decode() == version
    assert "KIMI_KDA" in llama_cpp.llama_print_system_info().decode()


def test_prefill_matches_builtin_and_reference(tiny_gguf, tiny_dir, prompt, builtin_prefill, n_kda, layers):
    with session(tiny_gguf, "ours", n_gpu_layers=layers) as s:
        ours = s.prefill(prompt)
    st = bridge.stats()
    assert st.calls == n_kda and st.tokens == n_kda * len(prompt) and st.seconds > 0
    ran_on(st, layers)
    if not layers:
        assert bridge.last_n_threads() == THREADS  # llama.cpp's n_threads_batch reached the bridge
    agree(ours, builtin_prefill, reference(tiny_dir, prompt), "prefill", layers, st)


def test_delegate_mode_is_bit_identical_to_builtin(tiny_gguf, prompt, builtin_prefill, n_kda, layers):
    """The op moved into the bridge but computed by ggml's own op (CPU, or CUDA on the GPU device):
    the plumbing (scheduling, buffers, views of the packed output) changes nothing, bit for bit."""
    bridge.set_delegate(True)
    try:
        with session(tiny_gguf, "ours", n_gpu_layers=layers) as s:
            delegated = s.prefill(prompt)
    finally:
        bridge.set_delegate(False)
    assert bridge.stats().calls == n_kda
    ran_on(bridge.stats(), layers)
    np.testing.assert_array_equal(delegated, builtin_prefill)


def test_gpu_device_only_when_asked(tiny_gguf, prompt, builtin_prefill, layers):
    """On the GPU the bridge runs the op only after enable_bridge(gpu=True) (or KIMI_BRIDGE_GPU=1):
    enabled without it, offloaded layers keep llama.cpp's CUDA op, bit for bit."""
    if not layers:
        pytest.skip("the GPU device's switch; the CPU device needs none")
    bridge.enable_bridge(gpu=False)
    try:
        assert bridge.model_devices() is None
        bridge.reset_stats()
        quiet_llama_logs()
        with LlamaSession(tiny_gguf, n_threads=THREADS, n_gpu_layers=layers) as s:
            out = s.prefill(prompt)
        assert bridge.stats().calls == 0
        np.testing.assert_array_equal(out, builtin_prefill)
    finally:
        bridge.enable_bridge(gpu=True)


def _high_level_scores(gguf, kda, prompt, layers=0):
    import llama_cpp

    use(kda, bool(layers))
    llm = llama_cpp.Llama(str(gguf), n_ctx=128, n_batch=64, n_threads=THREADS, logits_all=True, verbose=False,
                          n_gpu_layers=layers)
    try:
        llm.eval([int(t) for t in prompt])
        return np.array(llm.scores[:len(prompt)], dtype=np.float32), bridge.stats()
    finally:
        llm.close()


def test_high_level_llama_uses_bridge(tiny_gguf, tiny_dir, prompt, layers):
    builtin, _ = _high_level_scores(tiny_gguf, "builtin", prompt, layers)
    ours, st = _high_level_scores(tiny_gguf, "ours", prompt, layers)
    ran_on(st, layers)
    agree(ours, builtin, reference(tiny_dir, prompt), "llama_cpp.Llama", layers, st)


def _prefill_then_decode(gguf, kda, tokens, n_prefill, layers):
    with session(gguf, kda, n_gpu_layers=layers) as s:
        first = s.prefill(tokens[:n_prefill])
        rows = [s.decode([(0, [int(t)], n_prefill + i)])[0][0] for i, t in enumerate(tokens[n_prefill:])]
        return np.concatenate([first, np.stack(rows)]), bridge.stats()


def test_decode_matches_builtin(tiny_gguf, tiny_dir, prompt, n_kda, layers):
    steps, n_prefill = 8, 16
    tokens = prompt[:n_prefill + steps]
    builtin, _ = _prefill_then_decode(tiny_gguf, "builtin", tokens, n_prefill, layers)
    ours, st = _prefill_then_decode(tiny_gguf, "ours", tokens, n_prefill, layers)
    assert st.calls == n_kda * (1 + steps)  # every decode step ran every KDA layer in the bridge
    ran_on(st, layers)
    agree(ours, builtin, reference(tiny_dir, tokens), "prefill + decode", layers, st)


def _several_sequences(gguf, kda, vocab, layers):
    rng = np.random.default_rng(77)
    seqs = [rng.integers(0, vocab, size=12) for _ in range(3)]
    more = [rng.integers(0, vocab, size=n) for n in (5, 3, 1)]
    step = [int(x) for x in rng.integers(0, vocab, size=3)]
    # n_batch a multiple of n_seq_max: llama.cpp 0c1e570's kimi-linear graph aborts reserving an
    # equal-split ubatch otherwise (builtin path too).
    with session(gguf, kda, n_seq_max=3, n_ctx=384, n_batch=96, n_gpu_layers=layers) as s:
        a = s.decode([(i, [int(x) for x in t], 0) for i, t in enumerate(seqs)])  # equal lengths: n_seqs=3 in one op
        b = s.decode([(i, [int(x) for x in t], 12) for i, t in enumerate(more)])  # unequal lengths
        c = s.decode([(i, [step[i]], 12 + len(more[i])) for i in range(3)])  # one decode step each
        logits = [np.concatenate(x) for x in zip(a, b, c)]
    tokens = [np.concatenate([seqs[i], more[i], [step[i]]]) for i in range(3)]
    return logits, tokens, bridge.stats()


def test_several_sequences_match_builtin(tiny_gguf, tiny_dir, vocab, layers):
    builtin, tokens, _ = _several_sequences(tiny_gguf, "builtin", vocab, layers)
    ours, _, st = _several_sequences(tiny_gguf, "ours", vocab, layers)
    assert st.calls > 0
    ran_on(st, layers)
    for i, (o, b, t) in enumerate(zip(ours, builtin, tokens)):
        agree(o, b, reference(tiny_dir, t), f"sequence {i}", layers, st)


def _continuation(vocab) -> list[int]:
    return [int(t) for t in np.random.default_rng(5).integers(0, vocab, size=6)]


def _state_round_trip(gguf, kda, prompt, vocab, layers):
    cont = _continuation(vocab)
    other = [int(t) for t in np.random.default_rng(6).integers(0, vocab, size=20)]
    with session(gguf, kda, n_gpu_layers=layers) as s:
        s.prefill(prompt[:20], logits=False)
        saved = s.state_get()
        before = np.stack([s.decode([(0, [t], 20 + i)])[0][0] for i, t in enumerate(cont)])
        s.clear()
        s.prefill(other)  # overwrite the recurrent state with something else
        s.clear()
        s.state_set(saved)
        after = np.stack([s.decode([(0, [t], 20 + i)])[0][0] for i, t in enumerate(cont)])
        return before, after, bridge.stats()


def test_state_save_clear_restore(tiny_gguf, tiny_dir, prompt, vocab, layers):
    o_before, o_after, st = _state_round_trip(tiny_gguf, "ours", prompt, vocab, layers)
    ran_on(st, layers)
    np.testing.assert_array_equal(o_after, o_before)  # same kernel, same inputs: bit-identical
    b_before, b_after, _ = _state_round_trip(tiny_gguf, "builtin", prompt, vocab, layers)
    np.testing.assert_array_equal(b_after, b_before)
    tokens = [int(t) for t in prompt[:20]] + _continuation(vocab)
    agree(o_after, b_after, reference(tiny_dir, tokens)[20:], "state round trip", layers, st)


def test_corrupt_switch_changes_logits(tiny_gguf, tiny_dir, prompt, builtin_prefill, layers):
    bridge.set_corrupt(True)
    try:
        with session(tiny_gguf, "ours", n_gpu_layers=layers) as s:
            bad = s.prefill(prompt)
    finally:
        bridge.set_corrupt(False)
    st = bridge.stats()
    ran_on(st, layers)
    assert rel(bad, builtin_prefill) > 100 * BAR  # the bridge's output really feeds the logits
    assert st.verify_nodes == st.calls > 0 and st.verify_max_rel > 1e-2  # and verify mode sees it
    with session(tiny_gguf, "ours", n_gpu_layers=layers) as s:  # and switching it off restores agreement
        good = s.prefill(prompt)
    agree(good, builtin_prefill, reference(tiny_dir, prompt), "corrupt switch off", layers, bridge.stats())


_MISMATCH = r"""
import json, sys
import numpy as np
import llama_cpp
from kimi_gguf.errors import KimiError
from kimi_gguf.ggml_ops import bridge
from kimi_gguf.ggml_ops.llama_session import LlamaSession, quiet_llama_logs
gguf, ids_path, out = sys.argv[1:4]
try:
    bridge.enable_bridge(_expect_commit="1234abc")
    msg = None
except KimiError as e:
    msg = str(e)
quiet_llama_logs()
with LlamaSession(gguf, n_threads=2) as s:
    np.save(out, s.prefill([int(i) for i in np.load(ids_path)]))
print(json.dumps({"msg": msg, "registered": bridge.is_registered(),
                  "listed": "KIMI_KDA" in llama_cpp.llama_print_system_info().decode(), "stats": bridge.stats().calls}))
"""


@pytest.mark.skipif(_cuda_build(), reason=CPU_ONLY)
def test_version_mismatch_refused_builtin_still_works(tiny_gguf, prompt, builtin_prefill_cpu, tmp_path):
    ids_path, out = tmp_path / "ids.npy", tmp_path / "logits.npy"
    np.save(ids_path, prompt)
    p = subprocess.run([sys.executable, "-c", _MISMATCH, str(tiny_gguf), str(ids_path), str(out)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["msg"] and "refused" in res["msg"] and "1234abc" in res["msg"] and "0c1e570" in res["msg"]
    assert "\n" not in res["msg"]
    assert not res["registered"] and not res["listed"] and res["stats"] == 0
    np.testing.assert_array_equal(np.load(out), builtin_prefill_cpu)  # builtin path untouched


@pytest.mark.skipif(_cuda_build(), reason=CPU_ONLY)
def test_cli_run_stats_and_bad_ids(tiny_gguf, prompt, builtin_prefill_cpu, n_kda, tmp_path):
    ids_path, out = tmp_path / "ids.npy", tmp_path / "logits.npy"
    np.save(ids_path, prompt)
    cmd = [sys.executable, "-m", "kimi_gguf.cli", "run", str(tiny_gguf), "--ids", str(ids_path),
           "--out", str(out), "--threads", str(THREADS), "--stats"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    info = json.loads(p.stdout.strip().splitlines()[-1])
    assert info["kda"] == "ours" and info["bridge_calls"] == n_kda and info["bridge_seconds"] > 0
    logits = np.load(out)
    assert logits.shape == builtin_prefill_cpu.shape
    assert rel(logits, builtin_prefill_cpu) <= BAR

    bad = tmp_path / "bad.npy"
    np.save(bad, prompt.astype(np.float32))
    out2 = tmp_path / "never.npy"
    p = subprocess.run(cmd[:6] + [str(bad), "--out", str(out2)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and p.stderr.strip().startswith("error:") and str(bad) in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and not out2.exists()
    assert not any(f.name.startswith(".never.npy") for f in tmp_path.iterdir())


def test_missing_library_is_one_line_error(tmp_path):
    with pytest.raises(KimiError, match="nope.so.*not found"):
        bridge.find_library(str(tmp_path / "nope.so"))
