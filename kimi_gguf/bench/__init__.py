"""Benchmark targets for `kimi-gguf bench TARGET ...`.

Each module here that defines `TARGET` (the sub-command name), `HELP`, `add_arguments(parser)` and
`run(args) -> int` is a target; `kimi_gguf.commands.bench` discovers them, so adding
`bench convert` or `bench serve` is one new module in this package and nothing else.

Conventions for every target: measure ours and the anchor in the same process and run, print a
human table, then one JSON line last (machine-readable: what ran, where, and the ratios).
"""
from __future__ import annotations

import importlib
import pkgutil


def targets() -> dict:
    """{target name: module} for every benchmark module in this package."""
    found = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(mod, "TARGET") and hasattr(mod, "run"):
            found[mod.TARGET] = mod
    return found
