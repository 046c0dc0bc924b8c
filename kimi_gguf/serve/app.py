"""Assemble llama-cpp-python's OpenAI-compatible server around one Kimi Linear GGUF.

We reuse llama_cpp.server's routes unchanged (its `router`, request types, streaming and per-model
lock) and change only what it gets wrong for us:
- the model is loaded by KimiProxy, which installs the GGUF's chat template (chat.py) and refuses
  unknown model names (upstream silently answers with the default model);
- `interrupt_requests` is off: upstream's default cuts a running stream short as soon as a second
  request waits for the model, so two concurrent clients would get truncated replies;
- RequestGuard (guard.py) answers malformed JSON, missing fields, unknown models and prompts longer
  than the context with an OpenAI-style 4xx before the route runs (upstream turns several of
  these into 500s, or into a broken event stream when `stream` is set).

Prefix reuse between turns is left to llama-cpp-python, because for this hybrid model it is
already right: Llama.generate keeps the cached state only if `llama_memory_seq_rm(0, p0, -1)`
succeeds. llama.cpp's hybrid memory asks the recurrent part first, which succeeds only when
nothing after p0 was evaluated -- the new prompt extends the cached tokens exactly, so the KDA
state is the state at the end of them -- and refuses any partial rollback (n_rs_seq is 0: llama.cpp
clamps it to 0 for kimi-linear, see llm_arch_supports_rs_rollback). On refusal llama-cpp-python
clears all memory and re-evaluates the whole prompt.
tests/test_serve.py checks both paths, by the seq_rm results and against fresh evaluations.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from fastapi import FastAPI, HTTPException
from fastapi.middleware import Middleware
from fastapi.middleware.cors import CORSMiddleware
from starlette_context.middleware import RawContextMiddleware
from starlette_context.plugins import RequestIdPlugin

import llama_cpp
from llama_cpp.server import app as lcp_app
from llama_cpp.server.model import LlamaProxy
from llama_cpp.server.settings import ModelSettings, ServerSettings

from ..errors import KimiError
from .chat import ChatFormat, chat_format_from_gguf
from .gate import ModelGate
from .guard import RequestGuard


@dataclass
class ServeConfig:
    model: str
    host: str = "127.0.0.1"
    port: int = 8080
    n_ctx: int = 4096
    kda: str = "builtin"            # "builtin": llama.cpp's own KDA op; "ours": the ggml_ops bridge
    alias: str | None = None        # the model name clients send; default: the file's stem
    n_threads: int | None = None
    n_batch: int = 512
    verbose: bool = False

    @property
    def model_name(self) -> str:
        return self.alias or os.path.splitext(os.path.basename(self.model))[0]


class KimiProxy(LlamaProxy):
    """One model, its GGUF chat template installed, unknown names refused."""

    def __init__(self, settings: ModelSettings) -> None:
        self.chat: ChatFormat | None = None
        self.gate: ModelGate | None = None
        super().__init__(models=[settings])

    def load_llama_from_model_settings(self, settings: ModelSettings) -> llama_cpp.Llama:
        llama = LlamaProxy.load_llama_from_model_settings(settings)
        self.chat = chat_format_from_gguf(llama, settings.model)
        llama.chat_handler = self.chat.handler()
        self.gate = ModelGate(llama)
        return llama

    def shutdown(self, timeout: float = 60.0) -> None:
        """Free the model once no worker thread is inside it; if one stays stuck past `timeout`,
        leave the memory to the OS rather than free it under the thread."""
        if self.gate is None or self.gate.close(timeout):
            self.free()

    @property
    def names(self) -> list[str]:
        return list(self._model_settings_dict)

    @property
    def llama(self) -> llama_cpp.Llama:
        assert self._current_model is not None
        return self._current_model

    def __call__(self, model: str | None = None) -> llama_cpp.Llama:
        if model is not None and model not in self._model_settings_dict:
            raise HTTPException(status_code=404, detail=f"The model `{model}` does not exist")
        return super().__call__(model)


def model_settings(cfg: ServeConfig) -> ModelSettings:
    kwargs = dict(model=cfg.model, model_alias=cfg.model_name, n_ctx=cfg.n_ctx,
                  n_batch=cfg.n_batch, verbose=cfg.verbose)
    if cfg.n_threads:
        kwargs.update(n_threads=cfg.n_threads, n_threads_batch=cfg.n_threads)
    # ModelSettings is a pydantic BaseSettings: it would also read env vars; explicit args win.
    return ModelSettings(**kwargs)


def load_proxy(cfg: ServeConfig) -> KimiProxy:
    if not os.path.isfile(cfg.model):
        raise KimiError(f"{cfg.model}: no such GGUF file")
    try:
        return KimiProxy(model_settings(cfg))
    except KimiError:
        raise
    except Exception as exc:  # llama.cpp's own loader says little more than "failed to load"
        raise KimiError(f"{cfg.model}: llama.cpp could not load it: {exc}") from exc


def build_app(cfg: ServeConfig, proxy: KimiProxy | None = None) -> tuple[FastAPI, KimiProxy]:
    """The FastAPI app serving `cfg.model`. llama_cpp.server keeps its model and settings in
    module globals, so there is one served model per process."""
    proxy = proxy or load_proxy(cfg)
    server = ServerSettings(host=cfg.host, port=cfg.port, interrupt_requests=False)
    lcp_app.set_server_settings(server)
    lcp_app._llama_proxy = proxy
    app = FastAPI(
        middleware=[Middleware(RawContextMiddleware, plugins=(RequestIdPlugin(),))],
        title="kimi-gguf serve", version=llama_cpp.__version__)
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_credentials=True,
                       allow_methods=["*"], allow_headers=["*"])
    app.add_middleware(RequestGuard, proxy=proxy)
    app.include_router(lcp_app.router)
    return app, proxy
