"""`kimi-gguf serve MODEL.gguf`: an OpenAI-compatible HTTP server (llama-cpp-python's) on the model."""
from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help=__doc__.splitlines()[0].split(": ", 1)[1],
                              description=__doc__)
    p.add_argument("model", metavar="MODEL.gguf")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080, help="0 picks a free port (printed)")
    p.add_argument("--n-ctx", type=int, default=4096, help="context length in tokens")
    p.add_argument("--kda", choices=("ours", "builtin"), default="builtin",
                   help="KDA op: llama.cpp's own (builtin) or the project's bridge (ours)")
    p.add_argument("--alias", default=None,
                   help="model name clients must send (default: the file name without .gguf)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--verbose", action="store_true", help="llama.cpp logs; tracebacks on errors")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..serve import ServeConfig, serve  # lazy: FastAPI/uvicorn only for this command

    cfg = ServeConfig(model=args.model, host=args.host, port=args.port, n_ctx=args.n_ctx,
                      kda=args.kda, alias=args.alias, n_threads=args.threads, verbose=args.verbose)
    return serve(cfg)
