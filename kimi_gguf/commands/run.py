"""`kimi-gguf run MODEL.gguf --ids IDS.npy --out LOGITS.npy`: logits of every position with llama.cpp.

--kda ours runs the KDA layers on the project's kernels through the bridge backend; --kda builtin
uses llama.cpp's own op. --stats prints one JSON line (bridge call count and time).
"""
from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("run", help="logits of every position with llama.cpp (KDA: bridge or builtin)",
                              description=__doc__)
    p.add_argument("model", metavar="MODEL.gguf")
    p.add_argument("--ids", required=True, metavar="IDS.npy", help="1-D integer token ids")
    p.add_argument("--out", required=True, metavar="LOGITS.npy", help="float32 [n_tokens, n_vocab]")
    p.add_argument("--kda", choices=("ours", "builtin"), default="ours",
                   help="KDA op: the project's kernels through the bridge (ours) or llama.cpp's (builtin)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--batch", type=int, default=512, help="tokens per llama_decode call")
    p.add_argument("--gpu-layers", type=int, default=0, metavar="N",
                   help="layers to offload when llama-cpp-python was built with CUDA (-1: all); "
                        "the bridge then runs the KDA op on its CUDA kernels")
    p.add_argument("--stats", action="store_true", help="print one JSON line with the bridge's calls and time")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    from pathlib import Path

    import numpy as np

    from ..convert.atomic import atomic_path
    from ..ggml_ops.llama_session import load_ids, run_logits

    ids = load_ids(args.ids)
    logits, info = run_logits(args.model, ids, kda=args.kda, n_threads=args.threads, n_batch=args.batch,
                              n_gpu_layers=args.gpu_layers)
    out = Path(args.out)
    with atomic_path(out, True) as tmp:  # no half-written output
        with open(tmp, "wb") as f:
            np.save(f, logits)
    if args.stats:
        print(json.dumps(info))
    return 0
