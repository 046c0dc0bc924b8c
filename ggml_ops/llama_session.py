"""A thin session over llama-cpp-python's low-level API: decode token runs on given sequences and
return the logits of every position; save/restore state. Used by `kimi-gguf run`, the bridge tests
and the bridge benchmark (same code path for the builtin op and the bridge).
"""
from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from kimi_gguf.errors import KimiError

_log_cb = None  # keep the ctypes callback alive for the process


def quiet_llama_logs() -> None:
    """Silence llama.cpp's own logging (errors still surface as return codes)."""
    global _log_cb
    import llama_cpp

    if _log_cb is None:
        _log_cb = llama_cpp.llama_log_callback(lambda level, text, user: None)
        llama_cpp.llama_log_set(_log_cb, ctypes.c_void_p(0))


class LlamaSession:
    """One model + one context. `decode` takes [(seq_id, tokens, pos0), ...] in one batch."""

    def __init__(self, gguf: str | os.PathLike, *, n_ctx: int = 512, n_batch: int = 512,
                 n_ubatch: Optional[int] = None, n_seq_max: int = 1, n_threads: Optional[int] = None,
                 n_rs_seq: int = 0, exact: bool = True, n_gpu_layers: int = 0):
        """exact: f32 K/V cache and no flash attention. llama.cpp's defaults (f16 cache, CPU
        flash attention on "auto") round MLA's latent keys and values to f16, which moves the
        tiny model's logits by ~1e-4; the exact path matches the float64 reference to ~1e-6.
        n_gpu_layers: layers offloaded when llama-cpp-python was built with CUDA (-1: all); with the
        bridge enabled, its GPU device then runs the KDA op (bridge.py's model loading hook)."""
        import llama_cpp

        self._ll = llama_cpp
        path = Path(gguf)
        if not path.is_file():
            raise KimiError(f"{path}: GGUF file not found")
        llama_cpp.llama_backend_init()
        mp = llama_cpp.llama_model_default_params()
        mp.n_gpu_layers = n_gpu_layers
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), mp)
        if not self.model:
            from kimi_gguf.convert.verify import open_reader

            open_reader(path)  # only on failure: a damaged file gets named with what is wrong in it
            raise KimiError(f"{path}: llama.cpp could not load the model")
        cp = llama_cpp.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = n_batch
        cp.n_ubatch = n_ubatch or n_batch
        cp.n_seq_max = n_seq_max
        cp.n_rs_seq = n_rs_seq
        cp.no_perf = True
        if exact:
            cp.type_k = cp.type_v = llama_cpp.GGML_TYPE_F32
            cp.flash_attn_type = 0  # LLAMA_FLASH_ATTN_TYPE_DISABLED
        threads = n_threads or os.cpu_count() or 1
        cp.n_threads = threads
        cp.n_threads_batch = threads
        self.ctx = llama_cpp.llama_init_from_model(self.model, cp)
        if not self.ctx:
            llama_cpp.llama_model_free(self.model)
            raise KimiError(f"{path}: llama.cpp could not create a context")
        vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        self.n_batch = n_batch

    # -- decoding -----------------------------------------------------------------------------
    def decode(self, runs: Sequence[tuple[int, Sequence[int], int]], logits: bool = True) -> list[np.ndarray]:
        """Decode all runs in one llama_decode call; logits [len(tokens), n_vocab] per run."""
        ll = self._ll
        n = sum(len(t) for _, t, _ in runs)
        if n == 0 or n > self.n_batch:
            raise KimiError(f"batch of {n} tokens (n_batch {self.n_batch})")
        batch = ll.llama_batch_init(n, 0, 1)
        try:
            i = 0
            for seq, toks, pos0 in runs:
                for j, tok in enumerate(toks):
                    batch.token[i] = int(tok)
                    batch.pos[i] = pos0 + j
                    batch.n_seq_id[i] = 1
                    batch.seq_id[i][0] = seq
                    batch.logits[i] = 1 if logits else 0
                    i += 1
            batch.n_tokens = n
            rc = ll.llama_decode(self.ctx, batch)
            if rc != 0:
                raise KimiError(f"llama_decode failed with code {rc}")
            out = []
            if logits:
                i = 0
                for _, toks, _ in runs:
                    rows = np.empty((len(toks), self.n_vocab), dtype=np.float32)
                    for j in range(len(toks)):
                        p = ll.llama_get_logits_ith(self.ctx, i)
                        rows[j] = np.ctypeslib.as_array(p, shape=(self.n_vocab,))
                        i += 1
                    out.append(rows)
            return out
        finally:
            ll.llama_batch_free(batch)

    def prefill(self, ids: Sequence[int], seq: int = 0, pos0: int = 0, logits: bool = True) -> np.ndarray:
        """Decode ids on one sequence in n_batch chunks; logits of every position."""
        parts = []
        for s in range(0, len(ids), self.n_batch):
            chunk = list(ids[s:s + self.n_batch])
            r = self.decode([(seq, chunk, pos0 + s)], logits=logits)
            if logits:
                parts.append(r[0])
        return np.concatenate(parts) if logits else np.empty((0, self.n_vocab), np.float32)

    def synchronize(self) -> None:
        """Wait for the context's GPU work. llama_decode returns once the last graph is queued (only
        reading logits waits for it), so a timing of a prompt with logits=False must end here."""
        self._ll.llama_synchronize(self.ctx)

    # -- state --------------------------------------------------------------------------------
    def state_get(self) -> bytes:
        ll = self._ll
        size = ll.llama_state_get_size(self.ctx)
        buf = (ctypes.c_uint8 * size)()
        n = ll.llama_state_get_data(self.ctx, buf, size)
        return bytes(buf[:n])

    def state_set(self, data: bytes) -> None:
        ll = self._ll
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        if ll.llama_state_set_data(self.ctx, buf, len(data)) != len(data):
            raise KimiError("llama_state_set_data did not read the whole state")

    def clear(self) -> None:
        ll = self._ll
        ll.llama_memory_clear(ll.llama_get_memory(self.ctx), True)

    def close(self) -> None:
        if getattr(self, "ctx", None):
            self._ll.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            self._ll.llama_model_free(self.model)
            self.model = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def load_ids(path: str | os.PathLike) -> np.ndarray:
    """Token ids from a .npy file: 1-D integers (never pickles)."""
    p = Path(path)
    try:
        ids = np.load(p, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise KimiError(f"{p}: cannot read token ids ({exc})") from None
    if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
        raise KimiError(f"{p}: token ids must be a non-empty 1-D integer array, got {ids.dtype} {ids.shape}")
    return ids.astype(np.int64)


def run_logits(gguf: str | os.PathLike, ids: np.ndarray, *, kda: str = "ours", n_threads: Optional[int] = None,
               n_batch: int = 512, n_gpu_layers: int = 0) -> tuple[np.ndarray, dict]:
    """Logits [len(ids), n_vocab] of every position with llama.cpp; kda "ours" runs the KDA op in
    the bridge (which must then compute at least one node), "builtin" in llama.cpp's own op."""
    import time

    from . import bridge

    if kda not in ("ours", "builtin"):
        raise KimiError(f"--kda must be ours or builtin, got {kda!r}")
    if kda == "ours":
        bridge.enable_bridge(gpu=n_gpu_layers != 0)  # ours on offloaded layers: the GPU device
        bridge.reset_stats()
    else:
        bridge.disable_bridge()  # a no-op unless this process enabled it before
    quiet_llama_logs()
    t0 = time.perf_counter()
    n_ctx = max(256, int(len(ids)))
    with LlamaSession(gguf, n_ctx=n_ctx, n_batch=min(n_batch, n_ctx), n_threads=n_threads,
                      n_gpu_layers=n_gpu_layers) as s:
        bad = (ids < 0) | (ids >= s.n_vocab)
        if bad.any():
            raise KimiError(f"token id {int(ids[bad][0])} out of range for {gguf} (vocab {s.n_vocab})")
        logits = s.prefill([int(i) for i in ids])
    seconds = time.perf_counter() - t0
    st = bridge.stats() if kda == "ours" else bridge.BridgeStats(0, 0.0, 0)
    if kda == "ours" and st.calls == 0:  # every bridge failure otherwise falls back silently
        raise KimiError(f"{gguf}: the bridge is registered but computed no KDA node")
    info = {"kda": kda, "tokens": int(len(ids)), "seconds": round(seconds, 6), "bridge_calls": st.calls,
            "bridge_seconds": round(st.seconds, 6), "bridge_tokens": st.tokens}
    return logits, info
