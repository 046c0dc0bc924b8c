"""`kimi-gguf reference-logits MODEL --ids IDS.npy --out OUT.npy`: the float64 reference's logits.

MODEL is a Hugging Face checkpoint directory or a .gguf file (read back through the converter's
GGUF source); IDS a 1-D integer array; OUT gets [T, vocab] logits (float64, or float32 with
--dtype float32), written atomically.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from ..errors import KimiError


def register(subparsers) -> None:
    from ..python_ref.dialect import DIALECTS

    p = subparsers.add_parser("reference-logits", help="logits of the python_ref reference model",
                              description=__doc__)
    p.add_argument("model", metavar="MODEL", help="HF checkpoint directory or .gguf file")
    p.add_argument("--ids", required=True, metavar="IDS.npy", help="1-D integer array of token ids")
    p.add_argument("--out", required=True, metavar="OUT.npy", help="where to write [T, vocab] logits")
    p.add_argument("--backend", choices=["numpy", "torch"], default="numpy")
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    p.add_argument("--device", default="cpu", help="torch device (e.g. cuda); numpy runs on the CPU")
    p.add_argument("--dialect", choices=sorted(DIALECTS), default="default",
                   help="which implementation's choices to follow (see python_ref/dialect.py)")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=run)


def load_ids(path: str) -> np.ndarray:
    try:
        ids = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise KimiError(f"{path}: no such file") from None
    except (ValueError, OSError) as exc:
        raise KimiError(f"{path}: not a .npy array ({exc})") from None
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise KimiError(f"{path}: expected a 1-D integer array, got {ids.dtype} shape {list(ids.shape)}")
    if ids.size == 0:
        raise KimiError(f"{path}: no token ids (empty array)")
    return ids.astype(np.int64)


def save_atomic(path: str, arr: np.ndarray) -> None:
    out = Path(path)
    if out.is_dir():
        raise KimiError(f"{out}: is a directory (--out names the .npy file to write)")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent if str(out.parent) else ".")
    except OSError as exc:
        raise KimiError(f"{out}: cannot write here ({exc.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, arr)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the result gets normal permissions
        os.replace(tmp, out)
    except OSError as exc:  # disk full, a directory appeared in the way, ...
        os.unlink(tmp)
        raise KimiError(f"{out}: cannot write ({exc.strerror or exc})") from None
    except BaseException:
        os.unlink(tmp)
        raise


def run(args) -> int:
    from ..checkpoint import open_source
    from ..python_ref.model import KimiLinearRef

    ids = load_ids(args.ids)
    if not Path(args.out).parent.is_dir() and str(Path(args.out).parent):
        raise KimiError(f"{args.out}: directory does not exist")
    if Path(args.out).is_dir():  # say so before the (possibly long) reference run
        raise KimiError(f"{args.out}: is a directory (--out names the .npy file to write)")
    source = open_source(args.model)
    vocab = source.spec.vocab_size
    bad = ids[(ids < 0) | (ids >= vocab)]
    if bad.size:  # name the ids file before the (possibly long) reference run
        raise KimiError(f"{args.ids}: token id {int(bad[0])} outside the vocabulary of {args.model} (0..{vocab - 1})")
    model = KimiLinearRef(None, source, backend=args.backend, dtype=args.dtype, device=args.device,
                          dialect=args.dialect)
    logits = model.logits(ids)
    save_atomic(args.out, logits.astype(np.float64 if args.dtype == "float64" else np.float32))
    print(f"wrote logits {list(logits.shape)} ({args.dtype}, {args.backend}, dialect {args.dialect}) to {args.out}")
    return 0
