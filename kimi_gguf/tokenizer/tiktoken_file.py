"""tiktoken's BPE file format: one ``base64(token_bytes) rank`` line per token.

Reading does not go through ``tiktoken.load.load_tiktoken_bpe``: that function caches files by a
hash of their *path* in a temp directory (data-gym-cache), so a second checkpoint written to the
same path would be read back stale, and its errors name neither the line number nor the problem.
The parser here accepts the same format (tests compare it with load_tiktoken_bpe on a cache-free
read) and checks what a byte-level BPE needs: strict base64, integer ranks 0..n-1 each used once,
no duplicate tokens, all 256 single bytes present.
"""
from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Mapping

from ..errors import KimiError
from ..fileio import atomic_write_bytes

FILE_NAME = "tiktoken.model"


def parse_tiktoken_bpe(data: bytes, source: str) -> dict[bytes, int]:
    """Ranks from the file contents; every error names `source` and the 1-based line."""
    ranks: dict[bytes, int] = {}
    seen_rank: dict[int, int] = {}  # rank -> line it first appeared on
    for lineno, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        parts = raw.split()
        if len(parts) != 2:
            raise KimiError(f"{source}: line {lineno}: expected 'base64 rank', got {len(parts)} "
                            f"field(s): {raw[:60]!r}")
        b64, rank_txt = parts
        try:
            token = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise KimiError(f"{source}: line {lineno}: invalid base64 token {b64[:40]!r}") from None
        if not token:
            raise KimiError(f"{source}: line {lineno}: empty token")
        try:
            rank = int(rank_txt.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise KimiError(f"{source}: line {lineno}: rank {rank_txt[:20]!r} is not an integer") from None
        if rank < 0:
            raise KimiError(f"{source}: line {lineno}: negative rank {rank}")
        if token in ranks:
            raise KimiError(f"{source}: line {lineno}: token {token!r} appears twice")
        if rank in seen_rank:
            raise KimiError(f"{source}: line {lineno}: rank {rank} already used on line {seen_rank[rank]}")
        ranks[token] = rank
        seen_rank[rank] = lineno
    if not ranks:
        raise KimiError(f"{source}: no tokens")
    n = len(ranks)
    if max(seen_rank) != n - 1:
        missing = next(r for r in range(n) if r not in seen_rank)
        raise KimiError(f"{source}: ranks are not contiguous: rank {missing} is missing "
                        f"(max rank {max(seen_rank)}, {n} tokens)")
    missing_bytes = [b for b in range(256) if bytes([b]) not in ranks]
    if missing_bytes:
        raise KimiError(f"{source}: not a byte-level BPE: single byte 0x{missing_bytes[0]:02x} has no "
                        f"rank ({len(missing_bytes)} of 256 bytes missing)")
    return ranks


def read_tiktoken_bpe(path: str | Path) -> dict[bytes, int]:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise KimiError(f"{path}: missing tokenizer file") from None
    except OSError as exc:
        raise KimiError(f"{path}: cannot read ({exc.strerror})") from None
    return parse_tiktoken_bpe(data, str(path))


def format_tiktoken_bpe(ranks: Mapping[bytes, int]) -> bytes:
    lines = [base64.b64encode(tok) + b" " + str(rank).encode("ascii")
             for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1])]
    return b"\n".join(lines) + b"\n"


def write_tiktoken_bpe(ranks: Mapping[bytes, int], path: str | Path) -> None:
    """Write atomically (temp file beside the target, then rename)."""
    atomic_write_bytes(Path(path), format_tiktoken_bpe(ranks))


