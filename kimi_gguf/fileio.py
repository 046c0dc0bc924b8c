"""Small file helpers every writer of the project shares: whole-file atomic writes, file modes,
output directories. (Streaming GGUF output has its own signal-safe mechanism: convert/atomic.py.)"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import KimiError


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Temp file beside `path`, then rename: readers never see a half-written file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())   # mkstemp makes 0600; give the usual file mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def make_output_dir(path: str | os.PathLike, what: str = "output directory") -> Path:
    """Create `path` (and parents) or say in one line why not."""
    d = Path(path)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KimiError(f"{d}: cannot create {what} ({exc.strerror})") from None
    return d
