"""Reject bad completion requests with an OpenAI-style 4xx before llama_cpp.server's route runs.

Upstream's route wrapper (RouteErrorHandler) turns request-validation failures into 500s (and a
body that is not JSON into an unhandled error), accepts a chat request without `messages`, answers
any model name with the default model, and only notices a too-long prompt once generation started
(inside an event stream when `stream` is set). A plain ASGI middleware (not BaseHTTPMiddleware,
which interferes with streaming responses) reads the body once, checks it, and replays it.

One default changes on the way: upstream's request types default `repeat_penalty` to 1.1, a
penalty the OpenAI API has no name for, so `temperature=0` would not be greedy decoding. Unless the
client sends `repeat_penalty` itself (extra_body), we send 1.0, as llama.cpp's own server does.
"""
from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from llama_cpp.server.types import CreateChatCompletionRequest, CreateCompletionRequest

CHAT = "/v1/chat/completions"
COMPLETION = "/v1/completions"


class BadRequest(Exception):
    def __init__(self, status: int, message: str, code: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    def body(self) -> bytes:
        return json.dumps({"error": {"message": self.message, "type": "invalid_request_error",
                                     "param": self.param, "code": self.code}}).encode()


def _validation_message(exc: ValidationError) -> tuple[str, str | None]:
    """One readable line. A message is a union of TypedDicts (system/user/assistant/...), so
    pydantic reports one error per member, each under the member's class name; drop those names
    and prefer a missing field (usually the real problem) over "role should be 'system'"."""
    errors = exc.errors()
    err = next((e for e in errors if e.get("type") == "missing"), errors[0])
    loc = ".".join(str(p) for p in err.get("loc", ()) if not (isinstance(p, str) and p[:1].isupper()))
    return f"invalid field `{loc}`: {err.get('msg')}", (loc or None)


NEUTRAL_DEFAULTS = {"repeat_penalty": 1.0}
ROLES = ("system", "user", "assistant", "tool", "function")  # llama_cpp's message TypedDicts


def _check_roles(messages: Any) -> None:
    """Name a bad role directly: pydantic would report it as a missing field of some other role."""
    if not isinstance(messages, list):
        return  # pydantic says "should be a valid list"
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise BadRequest(400, f"invalid field `messages.{i}`: a message must be an object",
                             "invalid_value", f"messages.{i}")
        if m.get("role") not in ROLES:
            raise BadRequest(400, f"invalid field `messages.{i}.role`: {m.get('role')!r} is not one "
                                  f"of {', '.join(ROLES)}", "invalid_value", f"messages.{i}.role")


def check(path: str, raw: bytes, proxy) -> bytes:
    """Raise BadRequest for anything the route would mishandle; else return the body to pass on."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(400, f"request body is not valid JSON: {exc}", "invalid_json")
    if not isinstance(body, dict):
        raise BadRequest(400, "request body must be a JSON object", "invalid_json")

    if path == CHAT:
        if not body.get("messages"):
            raise BadRequest(400, "missing required field `messages` (a non-empty list)",
                             "missing_required_parameter", "messages")
        _check_roles(body["messages"])
        model_cls = CreateChatCompletionRequest
    else:
        if "prompt" not in body:
            raise BadRequest(400, "missing required field `prompt`", "missing_required_parameter",
                             "prompt")
        model_cls = CreateCompletionRequest
    try:
        req = model_cls(**body)
    except ValidationError as exc:
        msg, param = _validation_message(exc)
        raise BadRequest(400, msg, "invalid_value", param)
    except TypeError as exc:
        raise BadRequest(400, f"invalid request: {exc}", "invalid_value")

    if req.model is not None and req.model not in proxy.names:
        raise BadRequest(404, f"The model `{req.model}` does not exist; this server serves "
                              f"{', '.join(proxy.names)}", "model_not_found", "model")

    n_prompt = _prompt_length(path, req, proxy)
    n_ctx = proxy.llama.n_ctx()
    if n_prompt >= n_ctx:
        field = "messages" if path == CHAT else "prompt"
        raise BadRequest(400, f"This model's maximum context length is {n_ctx} tokens; the "
                              f"{field} take {n_prompt} tokens. Shorten the {field}.",
                         "context_length_exceeded", field)
    missing = {k: v for k, v in NEUTRAL_DEFAULTS.items() if k not in body}
    return json.dumps({**body, **missing}).encode() if missing else raw


def _prompt_length(path: str, req: Any, proxy) -> int:
    llama = proxy.llama
    if path == CHAT:
        try:
            # llama_cpp's pydantic models hold TypedDicts: these are the dicts the handler renders.
            return len(proxy.chat.prompt_tokens(llama, req.messages, tools=req.tools,
                                                functions=req.functions))
        except Exception as exc:  # the template's raise_exception, or content it cannot render
            raise BadRequest(400, f"messages cannot be rendered with the model's chat template: "
                                  f"{exc}", "invalid_value", "messages")
    prompt = req.prompt
    if isinstance(prompt, list):
        if len(prompt) > 1:  # upstream asserts (-> 500) on batched prompts
            raise BadRequest(400, "only one prompt per request is supported", "invalid_value",
                             "prompt")
        prompt = prompt[0] if prompt else ""
    if isinstance(prompt, str):
        return len(llama.tokenize(prompt.encode("utf-8"), add_bos=True, special=True))
    return len(prompt)


class RequestGuard:
    def __init__(self, app, proxy):
        self.app, self.proxy = app, proxy

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in (CHAT, COMPLETION):
            return await self.app(scope, receive, send)
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        raw = b"".join(chunks)
        try:
            # rendering + tokenizing a long prompt must not stall the event loop (other streams)
            raw = await run_in_threadpool(check, scope["path"], raw, self.proxy)
        except BadRequest as bad:
            payload = bad.body()
            await send({"type": "http.response.start", "status": bad.status,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(payload)).encode())]})
            await send({"type": "http.response.body", "body": payload})
            return

        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return await receive()  # later calls wait for the client's disconnect, as usual

        await self.app(scope, replay, send)
