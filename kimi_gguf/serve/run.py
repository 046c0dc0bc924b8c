"""Run the app under uvicorn: print the URL and a ready line once the socket listens, stop cleanly
on Ctrl-C (uvicorn finishes in-flight requests, then we free the model)."""
from __future__ import annotations

import sys

import uvicorn

from ..errors import KimiError
from .app import ServeConfig, build_app, load_proxy

READY = "ready"


def enable_kda(kind: str) -> None:
    """`--kda ours` routes llama.cpp's KDA op through the project's bridge. Imported lazily: the
    builtin path must not need the compiled ops."""
    if kind == "builtin":
        return
    if kind != "ours":
        raise KimiError(f"--kda: unknown choice {kind!r} (ours|builtin)")
    try:
        from ..ggml_ops.bridge import enable_bridge
    except ImportError as exc:
        raise KimiError(f"--kda ours: the KDA bridge is not available ({exc}); build it with "
                        f"`make ops`, or serve with --kda builtin") from exc
    try:
        enable_bridge()
    except Exception as exc:  # KimiError from the bridge (not built, version guard, self-test) too
        raise KimiError(f"--kda ours: {exc}") from exc


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, cfg: ServeConfig, out):
        super().__init__(config)
        self.cfg, self.out = cfg, out

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets=sockets)
        if not self.started:
            return
        host, port = self.cfg.host, self.cfg.port
        for server in self.servers:  # the real port when asked for port 0
            for sock in server.sockets:
                port = sock.getsockname()[1]
        url = f"http://{host}:{port}/v1"
        print(f"kimi-gguf serve: model `{self.cfg.model_name}` ({self.cfg.model}) at {url} "
              f"(n_ctx {self.cfg.n_ctx}, kda {self.cfg.kda})", file=self.out, flush=True)
        print(f"{READY} {url}", file=self.out, flush=True)


def serve(cfg: ServeConfig, out=sys.stdout) -> int:
    enable_kda(cfg.kda)
    app, proxy = build_app(cfg, load_proxy(cfg))
    config = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="warning",
                            timeout_graceful_shutdown=5)
    server = _Server(config, cfg, out)
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises the captured SIGINT after its clean shutdown
        pass
    except SystemExit:  # uvicorn exits when it cannot bind; it logged why just above
        if server.started:
            raise
    finally:
        proxy.shutdown()
    if not server.started:
        raise KimiError(f"could not listen on {cfg.host}:{cfg.port} (see uvicorn's message above)")
    if cfg.kda == "ours":  # evidence that the KDA layers really ran on the bridge
        from ..ggml_ops.bridge import stats

        st = stats()
        print(f"kimi-gguf serve: KDA bridge computed {st.calls} KDA ops over {st.tokens} tokens "
              f"in {st.seconds:.3f} s", file=out, flush=True)
    print("kimi-gguf serve: stopped", file=out, flush=True)
    return 0
