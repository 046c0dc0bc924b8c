"""`kimi-gguf inspect FILE.gguf`: metadata, hybrid layer map, tensor table, bytes by type."""
from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("inspect", help="show what a GGUF file holds", description=__doc__)
    p.add_argument("file", metavar="FILE.gguf")
    p.add_argument("--no-tensors", action="store_true", help="omit the per-tensor table")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..convert.inspect import describe

    print(describe(args.file, tensors=not args.no_tensors))
    return 0
