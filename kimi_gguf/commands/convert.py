"""`kimi-gguf convert MODEL_DIR --outfile OUT.gguf --outtype TYPE`: Kimi Linear checkpoint -> GGUF.

Flags follow llama.cpp's convert_hf_to_gguf.py where they overlap (--outfile with {ftype},
--outtype, --vocab-only, --dry-run, --verbose).
"""
from __future__ import annotations

import sys


def register(subparsers) -> None:
    from ..convert.quantize import OUTTYPES

    p = subparsers.add_parser("convert", help="convert a Kimi Linear checkpoint to GGUF", description=__doc__)
    p.add_argument("model_dir", metavar="MODEL_DIR", help="checkpoint directory (config.json, *.safetensors, tiktoken.model)")
    p.add_argument("--outfile", help="output path; '{ftype}' is replaced by the type (default MODEL_DIR/NAME-{ftype}.gguf)")
    p.add_argument("--outtype", choices=OUTTYPES, default="auto",
                   help="f32, f16, bf16, q8_0 (written directly), q4_k_m, q5_k_m, q6_k (llama.cpp's quantizer), "
                        "auto (f16 for an f16 checkpoint, else bf16)")
    p.add_argument("--vocab-only", action="store_true", help="write the tokenizer and hyper-parameters only")
    p.add_argument("--dry-run", action="store_true", help="check everything and print the plan; write nothing")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.add_argument("--verify", action="store_true", help="read the file back: names, shapes, types, checksum samples")
    p.add_argument("--strict", action="store_true", help="refuse weights holding NaN/Inf (default: warn)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--verbose", action="store_true", help="every kept tensor by name; tracebacks; llama.cpp's log")
    p.set_defaults(func=run)


def _progress_factory(enabled: bool):
    if not enabled:
        return None

    def make(total_bytes: int, n_tensors: int):
        from tqdm import tqdm

        bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc="writing",
                   file=sys.stderr, dynamic_ncols=True, leave=False)

        class _cb:
            def __call__(self, n: int) -> None:
                bar.update(n)

            def close(self) -> None:
                bar.close()

        return _cb()

    return make


def run(args) -> int:
    from ..convert.api import convert_model

    summary = convert_model(args.model_dir, args.outfile, args.outtype, force=args.force,
                            vocab_only=args.vocab_only, dry_run=args.dry_run, verify=args.verify,
                            strict=args.strict, verbose=args.verbose,
                            progress=_progress_factory(not args.no_progress and sys.stderr.isatty()))
    print(summary.format(verbose=args.verbose))
    return 0
