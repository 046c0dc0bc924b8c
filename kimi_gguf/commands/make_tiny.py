"""`kimi-gguf make-tiny OUT_DIR [--seed N]`: write the embedded tiny checkpoint (Moonshot layout)."""
from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("make-tiny", help="write the small deterministic Kimi Linear checkpoint",
                              description=__doc__)
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--seed", type=int, default=0, help="weights' random seed (default 0)")
    p.add_argument("--dialect", choices=["moonshot", "transformers"], default="moonshot",
                   help="checkpoint layout: the published one (default) or what transformers' save_pretrained writes")
    p.add_argument("--force", action="store_true", help="replace a checkpoint already in OUT_DIR")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..tiny import make_tiny

    out = make_tiny(args.out_dir, seed=args.seed, dialect=args.dialect, force=args.force)
    print(f"wrote tiny Kimi Linear checkpoint to {out}")
    return 0
