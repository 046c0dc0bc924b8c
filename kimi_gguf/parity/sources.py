"""The two other parties of a parity run, behind one small interface each:

* the reference: python_ref's float64 forward with its capture hook, returning the same graph
  labels llama.cpp uses (see llama_capture.LAYER_LABELS) and the logits of every position;
* the converter: the library call that writes a GGUF of a given output type;
* the tokens: ids from a .npy file, or a prompt/text encoded by the checkpoint's own tokenizer.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import KimiError

DIALECTS = ("default", "llamacpp", "hf-remote", "transformers")


def reference_run(model_dir: str | Path, ids: np.ndarray, dialect: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(logits [T, vocab] float64, {label: [T, -1] float64}) from python_ref in float64."""
    from ..checkpoint import open_source
    from ..python_ref.model import KimiLinearRef

    if dialect not in DIALECTS:
        raise KimiError(f"--dialect must be one of {', '.join(DIALECTS)}, got '{dialect}'")
    captured: dict[str, np.ndarray] = {}
    T = int(len(ids))

    def capture(label: str, array) -> None:
        a = np.asarray(array, dtype=np.float64)
        captured[label] = a.reshape(T, -1) if a.size % T == 0 else a

    source = open_source(model_dir)
    model = KimiLinearRef(getattr(source, "spec", None), source, backend="numpy", dtype="float64", dialect=dialect)
    out = model.forward(np.asarray(ids, dtype=np.int64), capture=capture)
    logits = np.asarray(model.xp.to_numpy(out), dtype=np.float64)
    return logits, captured


def convert_to(model_dir: str | Path, out_path: str | Path, out_type: str) -> Path:
    """Write MODEL_DIR as a GGUF of `out_type` through the converter's library API."""
    from ..convert.api import convert_model  # the converter's library entry point

    summary = convert_model(model_dir, str(out_path), outtype=out_type, force=True)
    return Path(summary.outfile or out_path)


def load_ids(ids_path: str | Path | None, text: str | None, model_dir: str | Path) -> np.ndarray:
    if ids_path is not None:
        p = Path(ids_path)
        if not p.is_file():
            raise KimiError(f"{p}: no such file")
        try:
            ids = np.load(p, allow_pickle=False)  # never unpickle user files
        except Exception:  # numpy raises several kinds (and misleading texts) for a broken file
            raise KimiError(f"{p}: not a readable .npy array of token ids") from None
        if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
            raise KimiError(f"{p}: token ids must be a non-empty 1-D integer array, got {ids.dtype} {ids.shape}")
        return ids.astype(np.int64)
    if text is None:
        raise KimiError("give the tokens with --ids IDS.npy or the text with --prompt/--text")
    return encode(model_dir, text)


def encode(model_dir: str | Path, text: str) -> np.ndarray:
    from ..convert.tokenizer import load_kimi_tokenizer

    enc = load_kimi_tokenizer(model_dir).encoding()
    ids = np.asarray(enc.encode(text, allowed_special="all"), dtype=np.int64)
    if ids.size == 0:
        raise KimiError("the text encodes to no tokens")
    return ids
