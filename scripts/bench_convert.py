"""Converter benchmark: ours vs upstream's convert_hf_to_gguf.py on a real-width checkpoint.

Makes (streaming, never in RAM) a 4-layer Kimi Linear checkpoint at the published width -- hidden
2304, vocab 163840, KDA 32x128, MLA 32 heads, 256 experts of 1024, one shared expert, layer 0
dense -- about 12 GiB of bf16 in 4 GiB shards, with the tiny checkpoint's tokenizer files (the vocab
is padded with reserved slots). Then converts it to bf16 with ours and with upstream's converter
(pinned sdist, run through scripts/upstream_convert.py, which swaps only its remote-code tokenizer
for ours), each under /usr/bin/time -v, alternating, and prints wall time and peak RSS.

usage: python scripts/bench_convert.py [--dir /tmp/kimi-bench] [--runs 1] [--keep]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARD_BYTES = 4 << 30
F32_NAMES = ("A_log", "dt_bias", "e_score_correction_bias")


def bench_config() -> dict:
    from kimi_gguf.tiny import published_config

    cfg = published_config()
    cfg.update({"num_hidden_layers": 4, "first_k_dense_replace": 1})
    cfg["linear_attn_config"] = dict(cfg["linear_attn_config"], kda_layers=[1, 2, 3], full_attn_layers=[4])
    return cfg


def _bf16_random(n: int, rng: np.random.Generator, scale: float) -> np.ndarray:
    x = rng.standard_normal(n, dtype=np.float32) * np.float32(scale)
    return (x.view(np.uint32) >> 16).astype(np.uint16)


class ShardWriter:
    """safetensors written by hand, tensor by tensor: header first (sizes are known), then data."""

    def __init__(self, path: Path, tensors: list[tuple[str, tuple[int, ...], str]]):
        self.path, self.tensors = path, tensors
        header, off = {"__metadata__": {"format": "pt"}}, 0
        for name, shape, dt in tensors:
            n = int(np.prod(shape)) * (4 if dt == "F32" else 2)
            header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + n]}
            off += n
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self.f = open(path, "wb")
        self.f.write(len(raw).to_bytes(8, "little") + raw)

    def write_all(self, rng: np.random.Generator) -> None:
        for name, shape, dt in self.tensors:
            n = int(np.prod(shape))
            if dt == "F32":
                if name.endswith("A_log"):
                    v = np.log(rng.uniform(1, 16, n)).astype(np.float32)
                elif name.endswith("dt_bias"):
                    v = rng.uniform(-4, -1, n).astype(np.float32)
                else:
                    v = (0.1 * rng.standard_normal(n)).astype(np.float32)
                self.f.write(v.tobytes())
                continue
            scale = 1.0 if "norm" in name else 1.0 / np.sqrt(shape[-1])
            for a in range(0, n, 1 << 26):
                chunk = _bf16_random(min(1 << 26, n - a), rng, scale)
                if "norm" in name:
                    chunk = (np.ones(len(chunk), np.float32).view(np.uint32) >> 16).astype(np.uint16)
                self.f.write(chunk.tobytes())
        self.f.close()


def make_checkpoint(d: Path) -> None:
    from kimi_gguf.names import canonical_shapes
    from kimi_gguf.spec import ModelSpec

    if (d / ".complete").is_file():
        return
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    cfg = bench_config()
    (d / "config.json").write_text(json.dumps(cfg, indent=2))
    tiny = d.parent / "tok-src"
    if not tiny.is_dir():
        from kimi_gguf.tiny import make_tiny

        make_tiny(tiny, seed=0)
    for f in ("tiktoken.model", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(tiny / f, d / f)
    spec = ModelSpec.from_dir(d)
    shapes = canonical_shapes(spec)
    shards, cur, size = [], [], 0
    for name, shape in shapes.items():
        dt = "F32" if name.endswith(F32_NAMES) else "BF16"
        n = int(np.prod(shape)) * (4 if dt == "F32" else 2)
        if cur and size + n > SHARD_BYTES:
            shards.append(cur)
            cur, size = [], 0
        cur.append((name, shape, dt))
        size += n
    shards.append(cur)
    rng = np.random.default_rng(0)
    weight_map = {}
    for i, part in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        ShardWriter(d / fname, part).write_all(rng)
        weight_map.update({n: fname for n, _, _ in part})
        print(f"  wrote {fname}", file=sys.stderr)
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (d / ".complete").write_text("ok")


def timed(cmd: list[str]) -> tuple[float, int, float]:
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       text=True, cwd=ROOT)
    if p.returncode != 0:
        raise SystemExit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-3000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", p.stderr).group(1)
    secs = sum(float(x) * 60 ** i for i, x in enumerate(reversed(wall.split(":"))))
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1))
    cpu = sum(float(re.search(rf"{k} time \(seconds\): (\S+)", p.stderr).group(1)) for k in ("User", "System"))
    return secs, rss_kb * 1024, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="/tmp/kimi-bench")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the checkpoint and outputs")
    ap.add_argument("--outtype", default="bf16")
    args = ap.parse_args()
    work = Path(args.dir)
    ckpt = work / "kimi-linear-4l"
    t0 = time.monotonic()
    make_checkpoint(ckpt)
    size = sum(f.stat().st_size for f in ckpt.glob("*.safetensors"))
    print(f"checkpoint: {ckpt} ({size / 2**30:.2f} GiB, made/checked in {time.monotonic() - t0:.0f} s)")
    lcp = next(p for p in (ROOT / ".cache/llama_cpp_python-0.3.36/vendor/llama.cpp",
                           Path("/tmp/lcp/llama_cpp_python-0.3.36/vendor/llama.cpp")) if p.is_dir())
    py = sys.executable
    ours_cmd = [py, "-m", "kimi_gguf.cli", "convert", str(ckpt), "--outfile", str(work / "ours.gguf"),
                "--outtype", args.outtype, "--force", "--no-progress"]
    up_cmd = [py, str(ROOT / "scripts/upstream_convert.py"), str(lcp), str(ckpt), "--outfile",
              str(work / "upstream.gguf"), "--outtype", args.outtype]
    # one untimed read so both start from the same (warm) page cache
    subprocess.run(["cat", *map(str, sorted(ckpt.glob("*.safetensors")))], stdout=subprocess.DEVNULL, check=True)
    results = {"ours": [], "upstream": []}
    for _ in range(args.runs):
        for name, cmd in (("upstream", up_cmd), ("ours", ours_cmd)):
            (work / f"{name}.gguf").unlink(missing_ok=True)
            results[name].append(timed(cmd))
            w, r, c = results[name][-1]
            print(f"{name}: {w:.1f} s wall, {c:.1f} s CPU (user+sys), peak RSS {r / 2**30:.2f} GiB", flush=True)
    ow = min(r[0] for r in results["ours"])
    uw = min(r[0] for r in results["upstream"])
    orss = max(r[1] for r in results["ours"])
    urss = max(r[1] for r in results["upstream"])
    oc = min(r[2] for r in results["ours"])
    uc = min(r[2] for r in results["upstream"])
    print(f"\nours {ow:.1f} s wall, {oc:.1f} s CPU, {orss / 2**30:.2f} GiB peak RSS; upstream {uw:.1f} s wall, "
          f"{uc:.1f} s CPU, {urss / 2**30:.2f} GiB; ratio ours/upstream: wall {ow / uw:.2f}, CPU {oc / uc:.2f}")
    if not args.keep:
        for name in results:
            (work / f"{name}.gguf").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
