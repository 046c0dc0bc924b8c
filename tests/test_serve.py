"""`kimi-gguf serve`: a real server on loopback, driven by the official `openai` client.

Every reply is checked against an independent greedy decode of the same conversation: the prompt
is rendered here with plain Jinja from the template stored in the GGUF, tokenized and evaluated by
a separate llama_cpp.Llama, and decoded by argmax over its logits until an end-of-generation
token (`<|im_end|>`, EOS, EOT) or max_tokens -- no code from kimi_gguf.serve and no
llama-cpp-python sampler or chat handler.

KIMI_SERVE_GGUF=/path/model.gguf runs the same checks against another GGUF (e.g. a real model).
"""
from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp")
openai = pytest.importorskip("openai")
from jinja2.sandbox import ImmutableSandboxedEnvironment  # noqa: E402

N_CTX = 1024
MAX_TOKENS = 24
START_TIMEOUT = 120


# --- the model and the server ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def gguf_path(request) -> str:
    if os.environ.get("KIMI_SERVE_GGUF"):
        return os.environ["KIMI_SERVE_GGUF"]
    return str(request.getfixturevalue("tiny_gguf"))  # the project's tiny checkpoint, f32 GGUF


@dataclass
class Server:
    proc: subprocess.Popen
    url: str            # .../v1
    model: str
    lines: "queue.Queue[str]"
    banner: str         # everything printed up to the ready line

    def client(self) -> "openai.OpenAI":
        return openai.OpenAI(base_url=self.url, api_key="unused", max_retries=0, timeout=120)

    def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGINT)
        rc = self.proc.wait(timeout=60)
        rest = []
        while not self.lines.empty():
            rest.append(self.lines.get())
        return rc, "".join(rest)


def start_server(gguf: str, *extra: str) -> Server:
    cmd = [sys.executable, "-m", "kimi_gguf.cli", "serve", gguf, "--port", "0",
           "--n-ctx", str(N_CTX), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: "queue.Queue[str]" = queue.Queue()

    def pump():
        for line in proc.stdout:
            lines.put(line)
        lines.put("")  # EOF marker

    threading.Thread(target=pump, daemon=True).start()
    seen = []
    while True:
        try:
            line = lines.get(timeout=START_TIMEOUT)
        except queue.Empty:
            proc.kill()
            raise AssertionError(f"server not ready in {START_TIMEOUT}s: {''.join(seen)}")
        seen.append(line)
        if line == "":
            raise AssertionError(f"server exited ({proc.wait()}): {''.join(seen)}")
        if line.startswith("ready "):
            url = line.split()[1]
            return Server(proc, url, Path(gguf).stem, lines, "".join(seen))


@pytest.fixture(scope="module")
def server(gguf_path):
    srv = start_server(gguf_path)
    yield srv
    if srv.proc.poll() is None:
        srv.stop()


# --- the independent reference ----------------------------------------------------------------

# llama-cpp-python does not cut a UTF-8 character in two: at max_tokens it keeps generating while the
# text ends inside a multi-byte sequence (at most 3 more tokens). The reference decodes that far and
# accepts exactly the replies the greedy tokens allow.
UTF8_SLACK = 3


@dataclass
class Greedy:
    prompt: list[int]
    tokens: list[int]           # greedy tokens, up to max_tokens + UTF8_SLACK, without the stop token
    stopped: bool               # generation reached <|im_end|>/EOS right after `tokens`
    text_of: "callable"

    def accepted(self, max_tokens: int) -> list[tuple[str, str]]:
        """Every (text, finish_reason) llama-cpp-python may return for these greedy tokens: a stop
        before max_tokens is exact; otherwise "length" after max_tokens .. max_tokens+slack tokens,
        or "stop" when the stop token came during the slack (never right at max_tokens: the length
        check runs first)."""
        n_stop = len(self.tokens) if self.stopped else None
        if n_stop is not None and n_stop < max_tokens:
            return [(self.text_of(self.tokens), "stop")]
        out = [(self.text_of(self.tokens[:n]), "length")
               for n in range(max_tokens, min(max_tokens + UTF8_SLACK, len(self.tokens)) + 1)]
        if n_stop is not None and n_stop > max_tokens:
            out.append((self.text_of(self.tokens), "stop"))
        return out

    def reply(self, n: int, max_tokens: int) -> tuple[str, str]:
        """The reply of exactly n tokens (the server's usage.completion_tokens); the tests also
        check it is one of `accepted`."""
        stop_at_n = self.stopped and n == len(self.tokens) and n != max_tokens
        return self.text_of(self.tokens[:n]), "stop" if stop_at_n else "length"


class Reference:
    def __init__(self, gguf: str):
        self.llm = llama_cpp.Llama(gguf, n_ctx=N_CTX, logits_all=True, verbose=False)
        self._memo: dict = {}
        template = self.llm.metadata["tokenizer.chat_template"]
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=["jinja2.ext.loopcontrols"])
        self.template = env.from_string(template)
        im_end = self.llm.tokenize(b"<|im_end|>", add_bos=False, special=True)
        assert len(im_end) == 1, "the Kimi end-of-turn token must be one special token"
        vocab = self.llm._model.vocab
        # every end-of-generation token of the vocab (<|im_end|>, [EOS], [EOT]), as llama.cpp marks them
        self.stop = {t for t in range(self.llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)}
        assert im_end[0] in self.stop

    def render(self, messages: list[dict]) -> list[int]:
        text = self.template.render(messages=messages, add_generation_prompt=True)
        return self.llm.tokenize(text.encode(), add_bos=False, special=True)

    def greedy(self, prompt: list[int], max_tokens: int = MAX_TOKENS) -> Greedy:
        key = (tuple(int(t) for t in prompt), max_tokens)  # deterministic: decode each prompt once
        if key not in self._memo:
            self._memo[key] = self._greedy(list(key[0]), max_tokens)
        return self._memo[key]

    def _greedy(self, prompt: list[int], max_tokens: int) -> Greedy:
        llm = self.llm
        llm.reset()  # clears the KV cache and the recurrent state: a fresh evaluation
        llm.eval(prompt)
        out, stopped = [], False
        while len(out) < max_tokens + UTF8_SLACK:
            tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            if tok in self.stop:
                stopped = True
                break
            out.append(tok)
            llm.eval([tok])

        def text_of(tokens):
            return llm.detokenize(tokens, prev_tokens=prompt).decode("utf-8", errors="ignore")

        return Greedy(prompt, out, stopped, text_of)

    def chat(self, messages: list[dict], max_tokens: int = MAX_TOKENS) -> Greedy:
        return self.greedy(self.render(messages), max_tokens)


@pytest.fixture(scope="module")
def ref(gguf_path) -> Reference:
    r = Reference(gguf_path)
    yield r
    r.llm.close()


def chat(srv: Server, messages, max_tokens=MAX_TOKENS):
    r = srv.client().chat.completions.create(model=srv.model, messages=messages,
                                             max_tokens=max_tokens, temperature=0)
    return r.choices[0].message.content or "", r.choices[0].finish_reason, r.usage


def chat_stream(srv: Server, messages, max_tokens=MAX_TOKENS):
    parts, finish = [], None
    for chunk in srv.client().chat.completions.create(model=srv.model, messages=messages,
                                                      max_tokens=max_tokens, temperature=0,
                                                      stream=True):
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    return "".join(parts), finish


USER = [{"role": "user", "content": "Hello! Which city is the capital of France?"}]


# --- replies ----------------------------------------------------------------------------------

def test_chat_completion_equals_greedy_reference(server, ref):
    text, finish, usage = chat(server, USER)
    want = ref.chat(USER)
    assert usage.prompt_tokens == len(want.prompt)
    assert (text, finish) == want.reply(usage.completion_tokens, MAX_TOKENS)
    assert (text, finish) in want.accepted(MAX_TOKENS)


def test_streamed_chat_equals_greedy_reference(server, ref):
    msgs = [{"role": "system", "content": "You answer briefly."},
            {"role": "user", "content": "写一句关于大海的话。"}]
    assert chat_stream(server, msgs) in ref.chat(msgs).accepted(MAX_TOKENS)


def test_text_completion_equals_greedy_reference(server, ref):
    prompt = "def fibonacci(n):\n    "
    r = server.client().completions.create(model=server.model, prompt=prompt,
                                           max_tokens=MAX_TOKENS, temperature=0)
    tokens = ref.llm.tokenize(prompt.encode(), add_bos=True, special=True)
    want = ref.greedy(tokens)
    assert r.usage.prompt_tokens == len(tokens)
    assert (r.choices[0].text, r.choices[0].finish_reason) == want.reply(r.usage.completion_tokens, MAX_TOKENS)
    assert (r.choices[0].text, r.choices[0].finish_reason) in want.accepted(MAX_TOKENS)


def test_models_lists_the_served_name(server):
    assert [m.id for m in server.client().models.list().data] == [server.model]


# --- multi-turn: the cached state must never leak into a different conversation ------------

def test_multi_turn_equals_fresh_evaluation(server, ref):
    turn1 = USER
    reply1, _, _ = chat(server, turn1)
    turn2 = turn1 + [{"role": "assistant", "content": reply1},
                     {"role": "user", "content": "And of Germany?"}]
    # The server still holds turn 1's state: it may reuse it (prefix) or re-evaluate.
    text2, finish2, _ = chat(server, turn2)
    assert (text2, finish2) in ref.chat(turn2).accepted(MAX_TOKENS)
    # An edited history shares only part of the cached prefix: it must not reuse stale state.
    edited = [{"role": "user", "content": "Hello! Which city is the capital of Spain?"}] + turn2[1:]
    text3, finish3, _ = chat(server, edited)
    assert (text3, finish3) in ref.chat(edited).accepted(MAX_TOKENS)
    # The same conversation again (fully cached, then some) gives the same reply.
    assert chat(server, edited)[:2] == (text3, finish3)


def test_prefix_reuse_paths_of_the_served_llama(gguf_path, ref):
    """The served Llama (built exactly as the server builds it) reuses cached state only when a
    prompt extends the evaluated tokens; a prompt that diverges inside them is re-evaluated.
    Both answers equal a fresh evaluation."""
    from kimi_gguf.serve import ServeConfig, load_proxy

    proxy = load_proxy(ServeConfig(model=gguf_path, n_ctx=N_CTX))
    llm = proxy.llama
    assert llm._is_hybrid, "Kimi Linear must load as hybrid memory (KDA recurrent + MLA KV)"
    calls = []
    seq_rm = llm._ctx.kv_cache_seq_rm

    def recording(seq, p0, p1):
        ok = seq_rm(seq, p0, p1)
        calls.append((p0, ok))
        return ok

    llm._ctx.kv_cache_seq_rm = recording
    try:
        def complete(tokens):
            r = llm.create_completion(tokens, max_tokens=8, temperature=0, repeat_penalty=1.0)
            return r["choices"][0]["text"], r["choices"][0]["finish_reason"]

        first = ref.render(USER)
        complete(first)
        cached = list(llm._input_ids)
        assert len(cached) > len(first)

        extension = cached + ref.llm.tokenize(b" more words here", add_bos=False, special=False)
        calls.clear()
        got = complete(extension)
        assert (len(cached), True) in calls, f"extension should reuse the cache: {calls}"
        assert got in ref.greedy(extension, 8).accepted(8)

        diverging = first[:len(first) // 2] + ref.llm.tokenize(b" something else", add_bos=False)
        calls.clear()
        got = complete(diverging)
        assert calls and calls[0] == (len(first) // 2, False), \
            f"a partial rollback of recurrent state must be refused: {calls}"
        assert got in ref.greedy(diverging, 8).accepted(8)
    finally:
        proxy.free()


# --- concurrency -------------------------------------------------------------------------------

def test_concurrent_streams_equal_each_alone(server):
    convs = [[{"role": "user", "content": "Tell me a story about a cat."}],
             [{"role": "user", "content": "用中文写一首诗"}]]
    alone = [chat_stream(server, c, 40) for c in convs]
    together: list = [None, None]
    barrier = threading.Barrier(2)

    def run(i):
        barrier.wait()
        together[i] = chat_stream(server, convs[i], 40)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert together == alone


# --- bad requests: a 4xx with a clear message, and the server keeps serving --------------------

def post(url: str, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


LONG = "word " * (2 * N_CTX)
BAD = {  # case: (route, body, status, error code, words the message must contain)
    "malformed_json": ("chat/completions", b'{"model": "M", "messages": [', 400, "invalid_json", "not valid JSON"),
    "not_an_object": ("chat/completions", b'[1, 2]', 400, "invalid_json", "JSON object"),
    "missing_messages": ("chat/completions", {"model": "M"}, 400, "missing_required_parameter", "`messages`"),
    "messages_not_a_list": ("chat/completions", {"model": "M", "messages": "hi"}, 400, "invalid_value",
                            "`messages`"),
    "message_without_content": ("chat/completions", {"model": "M", "messages": [{"role": "user"}]},
                                400, "invalid_value", "messages.0.content"),
    "unknown_role": ("chat/completions", {"model": "M", "messages": [{"role": "robot", "content": "hi"}]},
                     400, "invalid_value", "'robot'"),
    "unknown_model": ("chat/completions", {"model": "gpt-9", "messages": USER}, 404, "model_not_found", "`gpt-9`"),
    "prompt_too_long": ("chat/completions", {"model": "M", "messages": [{"role": "user", "content": LONG}]},
                        400, "context_length_exceeded", f"{N_CTX} tokens"),
    "prompt_too_long_streamed": ("chat/completions", {"model": "M", "stream": True,
                                 "messages": [{"role": "user", "content": LONG}]},
                                 400, "context_length_exceeded", f"{N_CTX} tokens"),
    "completion_missing_prompt": ("completions", {"model": "M"}, 400, "missing_required_parameter", "`prompt`"),
    "completion_too_long": ("completions", {"model": "M", "prompt": LONG}, 400, "context_length_exceeded",
                            f"{N_CTX} tokens"),
    "completion_unknown_model": ("completions", {"model": "nope", "prompt": "hi"}, 404, "model_not_found",
                                 "`nope`"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_request_is_4xx_then_server_still_serves(server, ref, case):
    route, body, status, code, words = BAD[case]
    if isinstance(body, dict):
        body = json.dumps({**body, "model": body["model"].replace("M", server.model)}
                          if body.get("model") == "M" else body).encode()
    got_status, payload = post(f"{server.url}/{route}", body)
    assert got_status == status, payload
    assert payload["error"]["code"] == code
    assert words in payload["error"]["message"]
    # still serving, with the right answer
    assert chat(server, USER, 8)[:2] in ref.chat(USER, 8).accepted(8)


# --- life cycle ------------------------------------------------------------------------------

def test_ctrl_c_stops_cleanly(gguf_path):
    srv = start_server(gguf_path)
    assert chat(srv, USER, 4)[2].completion_tokens >= 1
    rc, rest = srv.stop()
    assert rc == 0, rest
    assert "stopped" in rest
    assert "Traceback" not in rest


def test_missing_model_file_is_one_line_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "kimi_gguf.cli", "serve", str(tmp_path / "no.gguf")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: {tmp_path / 'no.gguf'}: no such GGUF file"


def _bridge_library():
    try:
        from kimi_gguf.ggml_ops.bridge import find_library

        return find_library()
    except Exception:
        return None


def test_kda_ours_serves_through_the_bridge_or_says_why(gguf_path, ref):
    """With the bridge built (`make ops`), --kda ours gives the same greedy replies as the
    independent reference; without it, serve refuses with one clear line instead of serving
    something else."""
    if _bridge_library() is None:
        r = subprocess.run([sys.executable, "-m", "kimi_gguf.cli", "serve", gguf_path, "--port", "0",
                            "--kda", "ours"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2
        assert r.stderr.startswith("error: --kda ours:") and "make ops" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
        return
    srv = start_server(gguf_path, "--kda", "ours")
    try:
        assert "kda ours" in srv.banner
        assert chat(srv, USER)[:2] in ref.chat(USER).accepted(MAX_TOKENS)
        assert chat_stream(srv, USER)[:2] in ref.chat(USER).accepted(MAX_TOKENS)
    finally:
        rc, rest = srv.stop()
    assert rc == 0, rest
    m = re.search(r"KDA bridge computed (\d+) KDA ops over (\d+) tokens", rest)
    assert m and int(m.group(1)) > 0 and int(m.group(2)) > 0, rest


def test_client_leaving_mid_stream_leaves_a_consistent_server(server, ref):
    """A stream abandoned after a few chunks stops generation half-way; the next request must not
    see any of that half-finished state."""
    stream = server.client().chat.completions.create(
        model=server.model, messages=[{"role": "user", "content": "Count to one hundred."}],
        max_tokens=200, temperature=0, stream=True)
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    assert chat(server, USER)[:2] in ref.chat(USER).accepted(MAX_TOKENS)


def test_port_in_use_is_one_line_error(server, gguf_path):
    port = server.url.rsplit(":", 1)[1].split("/")[0]
    r = subprocess.run([sys.executable, "-m", "kimi_gguf.cli", "serve", gguf_path, "--port", port],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == f"error: could not listen on 127.0.0.1:{port} (see uvicorn's message above)"
    assert "address already in use" in r.stderr
    assert chat(server, USER, 4)[2].completion_tokens >= 1  # the first server is unharmed


def test_gate_stops_generation_before_the_model_is_freed(gguf_path):
    """Ctrl-C while a reply streams: closing the gate ends the generation before its next token
    (no chunk after it, not even the final one) and refuses new work, so the model can be freed."""
    from kimi_gguf.serve import ServeConfig, load_proxy

    proxy = load_proxy(ServeConfig(model=gguf_path, n_ctx=N_CTX))
    llm = proxy.llama
    chunks = llm.create_completion("Once upon a time", max_tokens=64, temperature=0, stream=True)
    first = next(chunks)
    assert first["choices"][0]["finish_reason"] is None  # mid-stream: more chunks would follow
    assert proxy.gate.close(timeout=60)
    assert list(chunks) == []
    with pytest.raises(RuntimeError, match="shutting down"):
        llm.create_completion("again", max_tokens=4)
    with pytest.raises(RuntimeError, match="shutting down"):
        llm.eval([1])
    proxy.shutdown(timeout=1)
