"""Free the model only when no worker thread is inside it.

llama_cpp.server runs generation in a thread pool. On Ctrl-C uvicorn cancels the request's
coroutine after its grace period, but the worker thread goes on with the llama.cpp call it is in
(a decode of a big model takes seconds, a non-streamed reply many of them); freeing the model under
it would crash the process instead of stopping it.

The gate has two parts:
- a lock held while a completion touches the model: the whole call when it is not streamed, each
  step (`next`) of the chunk iterator when it is -- the chat handler and Llama.__call__ both go
  through the instance's `create_completion`, so wrapping that one method covers every route;
- a closing flag checked before every `eval` and `sample`: once set, the generation in flight
  raises at its next token and lets go of the lock.
`close()` sets the flag, then waits for the lock.
"""
from __future__ import annotations

import functools
import threading
from collections.abc import Iterator

from llama_cpp import Llama


class ModelGate:
    def __init__(self, llama: Llama) -> None:
        self._lock = threading.RLock()
        self._closing = threading.Event()
        # instance attributes shadow the class's methods; Llama's own code calls them via self
        llama.eval = self._refuse_when_closing(llama.eval)
        llama.sample = self._refuse_when_closing(llama.sample)
        llama.create_completion = self._hold(llama.create_completion)

    def _check(self) -> None:
        if self._closing.is_set():
            raise RuntimeError("the server is shutting down")

    def _refuse_when_closing(self, fn):
        @functools.wraps(fn)
        def refusing(*args, **kwargs):
            self._check()
            return fn(*args, **kwargs)
        return refusing

    def _hold(self, fn):
        @functools.wraps(fn)
        def holding(*args, **kwargs):
            with self._lock:
                self._check()
                out = fn(*args, **kwargs)
            return self._steps(out) if isinstance(out, Iterator) else out
        return holding

    def _steps(self, chunks: Iterator) -> Iterator:
        while True:
            with self._lock:
                if self._closing.is_set():
                    return
                try:
                    chunk = next(chunks)
                except StopIteration:
                    return
            yield chunk

    def close(self, timeout: float) -> bool:
        """True when no call is in flight any more and none will start: the model may be freed."""
        self._closing.set()
        if not self._lock.acquire(timeout=timeout):
            return False
        self._lock.release()
        return True
