"""`kimi-gguf serve`: a Kimi Linear GGUF behind llama-cpp-python's OpenAI-compatible server."""
from .app import ServeConfig, build_app, load_proxy
from .run import serve

__all__ = ["ServeConfig", "build_app", "load_proxy", "serve"]
