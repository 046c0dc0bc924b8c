"""`kimi-gguf parity MODEL_DIR MODEL.gguf [--ids IDS.npy | --prompt TEXT] [--dialect D] [--report DIR]`:
run llama.cpp and the float64 reference on the same tokens and compare every intermediate, layer
by layer; exit 1 naming the first tensor over budget."""
from __future__ import annotations

from ..parity.sources import DIALECTS

# Mixed scripts, code and digits: exercises many token kinds in a few dozen tokens.
DEFAULT_PROMPT = ("The parity suite compares llama.cpp with the reference, layer by layer. "
                  "你好，世界！ def f(x): return 2 * x + 12345  # done")


def register(subparsers) -> None:
    p = subparsers.add_parser("parity", help="layer-by-layer comparison of llama.cpp against the reference",
                              description=__doc__)
    p.add_argument("model_dir", metavar="MODEL_DIR", help="the Hugging Face checkpoint directory")
    p.add_argument("gguf", metavar="MODEL.gguf", help="the GGUF converted from it")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--ids", metavar="IDS.npy", help="1-D integer array of token ids")
    src.add_argument("--prompt", metavar="TEXT", help="text, encoded with the checkpoint's tokenizer")
    p.add_argument("--dialect", choices=DIALECTS, default="llamacpp",
                   help="reference dialect (default llamacpp: the choices llama.cpp makes)")
    p.add_argument("--kda", choices=["builtin", "ours"], default="builtin",
                   help="llama.cpp's own KDA op or the project's kernels through the bridge")
    p.add_argument("--flash-attn", choices=["off", "on", "auto"], default="off",
                   help="llama.cpp flash attention (default off: exact; on/auto round MLA K/V to f16)")
    p.add_argument("--kv-type", choices=["f32", "f16"], default="f32",
                   help="llama.cpp K/V cache type (default f32: exact; f16 is llama.cpp's default)")
    p.add_argument("--budget", metavar="TYPE", help="budget row to use (default: the GGUF's file type)")
    p.add_argument("--report", metavar="DIR", help="write parity.json and parity.png here")
    p.add_argument("--threads", type=int, help="llama.cpp threads")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..parity import report
    from ..parity.run import run_parity, write_report
    from ..parity.sources import load_ids
    from ..spec import ModelSpec

    ModelSpec.from_dir(args.model_dir)  # a bad checkpoint directory is named before anything runs

    prompt = args.prompt if args.prompt is not None else (None if args.ids else DEFAULT_PROMPT)
    ids = load_ids(args.ids, prompt, args.model_dir)
    res = run_parity(args.model_dir, args.gguf, ids, dialect=args.dialect, kda=args.kda,
                     budget_type=args.budget, threads=args.threads,
                     flash_attn={"off": False, "on": True, "auto": None}[args.flash_attn], kv_type=args.kv_type)
    print(report.table(res.rows))
    if res.verdict.missing and args.verbose:
        print("labels on one side only: " + ", ".join(res.verdict.missing))
    if args.report:
        js, png = write_report(res, args.report)
        print(f"wrote {js} and {png}")
    if res.note is not None:
        print(res.note.text())
    if res.verdict.flips:
        from ..parity.compare import flips_text
        print(flips_text(res.verdict.flips, len(ids)))
    print(report.summary(res.verdict, res.budget_row, args.dialect))
    return 0 if res.verdict.ok else 1
