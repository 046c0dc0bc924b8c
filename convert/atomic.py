"""Atomic output: a temp file beside the target, renamed over it only when complete.

On any error, Ctrl-C (KeyboardInterrupt) or SIGTERM the temp file is removed, so a failed or
interrupted conversion leaves nothing behind. An existing target is refused unless `force`.
"""
from __future__ import annotations

import contextlib
import errno
import os
import signal
import tempfile
from pathlib import Path
from typing import Iterator

from ..errors import KimiError


def check_target(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise KimiError(f"{path}: output file exists (use --force to overwrite)")
    if path.is_dir():
        raise KimiError(f"{path}: output path is a directory")
    parent = path.parent
    if not parent.is_dir():
        raise KimiError(f"{parent}: output directory does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise KimiError(f"{parent}: output directory is not writable")


def os_error(exc: OSError, path: Path) -> KimiError:
    if exc.errno == errno.ENOSPC:
        return KimiError(f"{path}: no space left on device while writing")
    if exc.errno == errno.EFBIG:
        return KimiError(f"{path}: no space for the file (file size limit reached) while writing")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return KimiError(f"{path}: cannot write ({os.strerror(exc.errno)})")
    return KimiError(f"{path}: {exc.strerror or exc}")


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Block SIGINT/SIGTERM for the block (POSIX); pending ones are delivered on exit."""
    held = {signal.SIGINT, signal.SIGTERM}
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    prev = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, prev)


@contextlib.contextmanager
def atomic_path(path: Path, force: bool) -> Iterator[Path]:
    """Yields a temp path in path's directory; on clean exit renames it to `path`."""
    check_target(path, force)

    def _on_term(signum, frame):  # SIGTERM behaves as Ctrl-C: unwind and clean up
        raise KeyboardInterrupt

    old = None
    with contextlib.suppress(ValueError):  # not in the main thread: leave signals alone
        old = signal.signal(signal.SIGTERM, _on_term)  # before the temp file exists, not after
    tmp: Path | None = None
    try:
        # Ctrl-C / SIGTERM wait while the temp file is created and remembered: arriving in between,
        # they would leave a .part file nobody removes. Delivered right after, `finally` cleans up.
        with _signals_held():
            try:
                fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
            except OSError as exc:
                raise os_error(exc, path.parent) from None
            tmp = Path(tmp_name)
            os.close(fd)
        yield tmp
        if path.exists() and not force:  # appeared while we were writing
            raise KimiError(f"{path}: output file exists (use --force to overwrite)")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    except OSError as exc:
        raise os_error(exc, path) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        if old is not None:
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGTERM, old)
