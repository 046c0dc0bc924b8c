"""`kimi-gguf quality MODEL_DIR --types q8_0,q6_k,q5_k_m,q4_k_m [--ids IDS.npy | --text FILE]`:
convert to each type, run it in llama.cpp, report KL divergence to the float64 reference, top-1
agreement, perplexity and file size (table, JSON, PNG)."""
from __future__ import annotations

from pathlib import Path

from ..parity.sources import DIALECTS


def register(subparsers) -> None:
    p = subparsers.add_parser("quality", help="quantization quality report against the reference",
                              description=__doc__)
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("--types", default="q8_0,q6_k,q5_k_m,q4_k_m", help="comma-separated output types")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--ids", metavar="IDS.npy", help="1-D integer array of token ids")
    src.add_argument("--text", metavar="FILE", help="UTF-8 text file (default: the built-in corpus)")
    p.add_argument("--max-tokens", type=int, default=256, help="use at most this many tokens (default 256)")
    p.add_argument("--dialect", choices=DIALECTS, default="llamacpp")
    p.add_argument("--kda", choices=["builtin", "ours"], default="builtin")
    p.add_argument("--flash-attn", choices=["off", "on", "auto"], default="off",
                   help="llama.cpp flash attention (default off: the exact path)")
    p.add_argument("--kv-type", choices=["f32", "f16"], default="f32", help="llama.cpp K/V cache type")
    p.add_argument("--keep", metavar="DIR", help="keep the converted GGUFs here")
    p.add_argument("--report", metavar="DIR", default="quality-report", help="where quality.json/.png go")
    p.add_argument("--threads", type=int)
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from importlib import resources

    from ..errors import KimiError
    from ..parity import quality
    from ..parity.sources import load_ids
    from ..spec import ModelSpec

    ModelSpec.from_dir(args.model_dir)  # a bad checkpoint directory is named before anything runs

    text = None
    if args.ids is None:
        if args.text:
            try:
                text = Path(args.text).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise KimiError(f"{args.text}: cannot read text ({exc})") from None
        else:
            text = resources.files("kimi_gguf").joinpath("data/corpus.txt").read_text(encoding="utf-8")
    ids = load_ids(args.ids, text, args.model_dir)[: max(1, args.max_tokens)]
    types = [t.strip() for t in args.types.split(",") if t.strip()]
    rows, meta = quality.run_quality(args.model_dir, types, ids, dialect=args.dialect, kda=args.kda,
                                     keep=args.keep, threads=args.threads, kv_type=args.kv_type,
                                     flash_attn={"off": False, "on": True, "auto": None}[args.flash_attn])
    print(quality.table(rows))
    js, png = quality.write_outputs(rows, meta, args.report)
    print(f"wrote {js} and {png}")
    return 0
