#!/usr/bin/env python
"""Bounded load test of `kimi-gguf serve` on loopback: requests/s and p50/p95 latency of short chats.

For each path asked for (builtin = `kimi-gguf serve --kda builtin`, llama.cpp's KDA op; ours =
`--kda ours`, the project's bridge; upstream = stock `python -m llama_cpp.server` on the same model,
without our request checks, to show what the wrapper costs) it starts a fresh server process (the bridge registers process-wide), warms it up, then lets C client threads
send short greedy chats until N requests are done or D seconds have passed, whichever comes first,
and stops the server with SIGINT. Prompts differ per request (no prefix reuse between them), so
every request evaluates its prompt from scratch, like independent users.

    .venv/bin/python scripts/bench_serve.py MODEL.gguf --kda builtin ours --requests 64 \
        --duration 120 --concurrency 4 --max-tokens 16

Prints one JSON line per path and a Markdown table row for BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import platform
import queue
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import openai

TOPICS = ["the sea", "a cat", "prime numbers", "Paris", "a rainy day", "trains", "tea", "music",
          "the moon", "bread", "rivers", "chess", "winter", "bicycles", "clouds", "gardens"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_upstream(model: str, n_ctx: int, threads: int | None) -> tuple[subprocess.Popen, str, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", model, "--host", "127.0.0.1",
           "--port", str(port), "--n_ctx", str(n_ctx), "--interrupt_requests", "false"]
    if threads:
        cmd += ["--n_threads", str(threads), "--n_threads_batch", str(threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(url + "/models", timeout=5).read()
            return proc, url, Path(model).stem
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("stock llama_cpp.server did not start")


def start(model: str, kda: str, n_ctx: int, threads: int | None) -> tuple[subprocess.Popen, str, str]:
    if kda == "upstream":
        return start_upstream(model, n_ctx, threads)
    cmd = [sys.executable, "-m", "kimi_gguf.cli", "serve", model, "--port", "0", "--n-ctx", str(n_ctx),
           "--kda", kda]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: "queue.Queue[str]" = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout] + [lines.put("")], daemon=True).start()
    seen = []
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        line = lines.get(timeout=600)
        seen.append(line)
        if line == "":
            break
        if line.startswith("ready "):
            return proc, line.split()[1], Path(model).stem
    proc.kill()
    raise SystemExit(f"server ({kda}) did not start: {''.join(seen)}")


def one_chat(client, model: str, i: int, max_tokens: int) -> tuple[float, int]:
    msgs = [{"role": "user", "content": f"Request {i}: write one sentence about {TOPICS[i % len(TOPICS)]}."}]
    t0 = time.perf_counter()
    # repeat_penalty 1.0 explicitly: the stock server's default (1.1) would change the work done
    r = client.chat.completions.create(model=model, messages=msgs, max_tokens=max_tokens, temperature=0,
                                       extra_body={"repeat_penalty": 1.0})
    return time.perf_counter() - t0, r.usage.completion_tokens


def load(url: str, model: str, n_requests: int, duration: float, concurrency: int, max_tokens: int) -> dict:
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)
    for i in range(2):  # warm-up: first-call allocations, page-ins
        one_chat(client, model, 10_000 + i, max_tokens)
    lat: list[float] = []
    toks: list[int] = []
    errors: list[str] = []
    counter = iter(range(n_requests))
    lock = threading.Lock()
    t_end = time.perf_counter() + duration

    def worker():
        while time.perf_counter() < t_end:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            try:
                s, n = one_chat(client, model, i, max_tokens)
            except Exception as exc:  # counted, reported; the load test goes on
                with lock:
                    errors.append(repr(exc))
                continue
            with lock:
                lat.append(s)
                toks.append(n)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat.sort()

    def pct(p):
        return lat[min(len(lat) - 1, int(round(p / 100 * (len(lat) - 1))))] if lat else float("nan")

    return {"requests": len(lat), "errors": len(errors), "first_error": errors[0] if errors else None,
            "wall_s": round(wall, 3), "req_per_s": round(len(lat) / wall, 3),
            "p50_ms": round(pct(50) * 1e3, 1), "p95_ms": round(pct(95) * 1e3, 1),
            "mean_ms": round(statistics.fmean(lat) * 1e3, 1) if lat else None,
            "completion_tokens_per_s": round(sum(toks) / wall, 1)}


def check_overhead(model: str, n_ctx: int, n: int = 500) -> float:
    """Milliseconds our request check (parse, validate, render + tokenize the prompt) adds per chat,
    measured in-process on the same model: the part of `kimi-gguf serve` the stock server lacks."""
    from kimi_gguf.serve import ServeConfig, load_proxy
    from kimi_gguf.serve.guard import CHAT, check

    proxy = load_proxy(ServeConfig(model=model, n_ctx=n_ctx))
    body = json.dumps({"model": proxy.names[0], "max_tokens": 16, "temperature": 0, "messages": [
        {"role": "user", "content": "Request 5: write one sentence about tea."}]}).encode()
    for _ in range(20):
        check(CHAT, body, proxy)
    t0 = time.perf_counter()
    for _ in range(n):
        check(CHAT, body, proxy)
    ms = (time.perf_counter() - t0) / n * 1e3
    proxy.free()
    return ms


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--kda", nargs="+", choices=("builtin", "ours", "upstream"),
                    default=["builtin", "ours", "upstream"])
    ap.add_argument("--requests", type=int, default=64, help="stop after this many requests")
    ap.add_argument("--duration", type=float, default=120.0, help="... or after this many seconds")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=None, help="llama.cpp threads in the server")
    ap.add_argument("--repeat", type=int, default=1,
                    help="alternate the paths this many times; the table shows medians")
    ap.add_argument("--check-overhead", action="store_true",
                    help="also time our per-request check in-process (ms per chat request)")
    args = ap.parse_args()

    if args.check_overhead:
        print(json.dumps({"check_ms_per_request": round(check_overhead(args.model, args.n_ctx), 3)}),
              flush=True)

    runs = []
    for kda in [k for _ in range(args.repeat) for k in args.kda]:
        proc, url, model = start(args.model, kda, args.n_ctx, args.threads)
        try:
            res = load(url, model, args.requests, args.duration, args.concurrency, args.max_tokens)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        res.update(kda=kda, model=Path(args.model).name, concurrency=args.concurrency,
                   max_tokens=args.max_tokens, machine=f"{platform.node()} {platform.machine()}")
        print(json.dumps(res), flush=True)
        runs.append(res)

    rows = []
    for kda in args.kda:
        mine = [r for r in runs if r["kda"] == kda]
        med = {k: statistics.median(r[k] for r in mine)
               for k in ("req_per_s", "p50_ms", "p95_ms", "completion_tokens_per_s")}
        rows.append({"kda": kda, "requests": sum(r["requests"] for r in mine),
                     "errors": sum(r["errors"] for r in mine), **med,
                     "req_per_s_range": (min(r["req_per_s"] for r in mine), max(r["req_per_s"] for r in mine))})

    base = next((r for r in rows if r["kda"] == "builtin"), None)
    print(f"\nmedians of {args.repeat} run(s) per path, {args.concurrency} clients, "
          f"max_tokens {args.max_tokens}")
    print("| kda | requests | req/s (min-max) | p50 ms | p95 ms | completion tok/s | req/s vs builtin |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['req_per_s'] / base['req_per_s']:.2f}" if base and base["req_per_s"] else "-"
        lo, hi = r["req_per_s_range"]
        print(f"| {r['kda']} | {r['requests']} ({r['errors']} errors) | {r['req_per_s']:.2f} ({lo:.2f}-{hi:.2f}) | "
              f"{r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['completion_tokens_per_s']:.1f} | {ratio} |")
    return 0 if all(r["errors"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
