"""Small helpers shared by benchmark targets: machine description, timing, JSON line."""
from __future__ import annotations

import json
import os
import platform
import time


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": cores, "system": platform.system()}


def time_calls(fn, min_time: float = 0.3, max_iters: int = 10000) -> float:
    """Seconds per call of fn(n) (fn runs its work n times), n grown until one batch takes
    min_time. Returns the per-call time of that batch."""
    n = 1
    while True:
        t0 = time.perf_counter()
        fn(n)
        dt = time.perf_counter() - t0
        if dt >= min_time or n >= max_iters:
            return dt / n
        n = min(max_iters, max(n * 2, int(n * min_time / max(dt, 1e-9) * 1.2)))


def json_line(obj: dict) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=False)
