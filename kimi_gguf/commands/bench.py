"""`kimi-gguf bench TARGET [...]`: benchmarks, each against its anchor in the same run (a table, then
one JSON line). Targets live in kimi_gguf/bench/ (one module each), e.g. `bench kda --backend cpu`."""
from __future__ import annotations


def register(subparsers) -> None:
    from .. import bench

    p = subparsers.add_parser("bench", help="benchmarks against their anchors (table + JSON line)",
                              description=__doc__)
    sub = p.add_subparsers(dest="bench_target", metavar="TARGET")
    for name, mod in bench.targets().items():
        sp = sub.add_parser(name, help=getattr(mod, "HELP", None), description=mod.__doc__)
        mod.add_arguments(sp)
        sp.add_argument("--verbose", action="store_true", help="tracebacks on errors")
        sp.set_defaults(func=mod.run)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
