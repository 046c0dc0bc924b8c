"""`kimi-gguf kda-eval IN.npz OUT.npz [--backend cpu|cuda] [--algo auto|recurrent|chunked]`: run the
project's KDA op on arrays in flash-linear-attention's layout and write `o` and `final_state`, so
the op can be checked against any other implementation.

IN.npz keys: q, k [B, T, H, K]; v [B, T, H, V] (V == K); g [B, T, H, K] (log-space, per step);
beta [B, T, H]; optional initial_state [B, H, K, V] and scale (a scalar; default K^-0.5). q and k
are used as given (no normalisation). OUT.npz: o [B, T, H, V], final_state [B, H, K, V] (float32).
"""
from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from ..errors import KimiError

REQUIRED = ("q", "k", "v", "g", "beta")
OPTIONAL = ("initial_state", "scale")


def register(subparsers) -> None:
    p = subparsers.add_parser("kda-eval", help="run the KDA op on FLA-layout arrays (npz in, npz out)",
                              description=__doc__, formatter_class=_raw())
    p.add_argument("input", metavar="IN.npz")
    p.add_argument("output", metavar="OUT.npz")
    p.add_argument("--backend", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--algo", choices=["auto", "recurrent", "chunked"], default="auto")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--verbose", action="store_true", help="tracebacks on errors")
    p.set_defaults(func=run)


def _raw():
    import argparse
    return argparse.RawDescriptionHelpFormatter


def load_inputs(path: Path) -> dict:
    """The arrays of IN.npz, checked (no pickles: allow_pickle=False)."""
    if not path.is_file():
        raise KimiError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as z:
            names = set(z.files)
            missing = [k for k in REQUIRED if k not in names]
            if missing:
                raise KimiError(f"{path}: missing array(s) {', '.join(missing)} "
                                f"(needs {', '.join(REQUIRED)}; optional {', '.join(OPTIONAL)})")
            unknown = sorted(names - set(REQUIRED) - set(OPTIONAL))
            if unknown:
                raise KimiError(f"{path}: unexpected array(s) {', '.join(unknown)}")
            arrs = {k: z[k] for k in names}
    except KimiError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise KimiError(f"{path}: not a readable .npz file ({exc})") from None
    for k, a in arrs.items():
        if a.dtype.kind not in "fiu":
            raise KimiError(f"{path}: array {k} has dtype {a.dtype}, need a real number type")
        if not np.all(np.isfinite(a)):
            raise KimiError(f"{path}: array {k} contains NaN or Inf")
    expect_nd = {"q": 4, "k": 4, "v": 4, "g": 4, "beta": 3, "initial_state": 4, "scale": 0}
    for k, a in arrs.items():
        if a.ndim != expect_nd[k]:
            raise KimiError(f"{path}: array {k} has shape {a.shape}, expected {expect_nd[k]} dimensions")
    return arrs


def write_npz_atomic(path: Path, **arrays) -> None:
    """Write OUT.npz via a temporary file in the same directory and a rename: never half-written."""
    path = Path(path)
    if path.parent and not path.parent.is_dir():
        raise KimiError(f"{path}: directory {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except OSError as exc:
        raise KimiError(f"{path}: cannot write ({exc})") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def run(args) -> int:
    from ..ggml_ops.kda import kda_fla

    src, dst = Path(args.input), Path(args.output)
    a = load_inputs(src)
    scale = float(a["scale"]) if "scale" in a else None
    try:
        o, final_state = kda_fla(a["q"], a["k"], a["v"], a["g"], a["beta"], scale=scale,
                                 initial_state=a.get("initial_state"), algo=args.algo,
                                 backend=args.backend, n_threads=args.threads)
    except KimiError as exc:
        raise KimiError(f"{src}: {exc}") from None
    write_npz_atomic(dst, o=o, final_state=final_state)
    B, T, H, V = o.shape
    print(f"wrote {dst}: o {list(o.shape)}, final_state {list(final_state.shape)} "
          f"(B={B} T={T} H={H} K=V={V}, backend {args.backend}, algo {args.algo})")
    return 0
