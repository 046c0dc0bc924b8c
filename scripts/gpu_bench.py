"""GPU check + benchmark of the CUDA KDA op (run on the device by scripts/gpu_check.sh).

  python scripts/gpu_bench.py --lib build-gpu/libkimi_kda_gpu.so [--check] [--bench] [--ggml FILE]
                              [--json OUT.json]

--check: ours vs python_ref float64 (naive_recurrent_kda, run in float64 on the GPU) on realistic
inputs over T x S_v x n_seqs (+ initial state, permuted views, head/seq broadcast, snapshots), every
algorithm and math mode; vs the CPU op of this project; poisoned outputs fully written.
--bench: H=32, S_v=128, B=1, T in {1, 64, 1024, 8192, 32768}: ours (CUDA-graph replays timed with
events, median) vs FLA chunk_kda / fused_recurrent_kda (triton do_bench median, fp32 and bf16
inputs) vs llama.cpp's GATED_DELTA_NET (numbers from scripts/ggml_gdn_bench, --ggml FILE).
"""
from __future__ import annotations

import argparse
import ctypes as C
import importlib.util
import json
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
_spec = importlib.util.spec_from_file_location("kda_gpu", os.path.join(ROOT, "ggml_ops", "cuda", "kda_gpu.py"))
kg = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kg)

from python_ref.kda import naive_recurrent_kda  # noqa: E402  (float64 reference, torch or numpy)

# S_v of the check grid (32: the tiny model's head size, run by the bridge tests); $KIMI_CHECK_S=32,...
CHECK_S = tuple(int(x) for x in os.environ.get("KIMI_CHECK_S", "16,32,64,128").split(","))
BAR = {"fp32": 1e-5, "tf32x3": 1e-5, "tf32": 3e-3, "bf16": 3e-3, "f16": 3e-3, "default": 1e-5}


RC_LAYOUTS = ("2x8", "2x4", "1x4", "4x2", "4x4", "4x8")  # token-by-token kernel: columns/warp x warps
RC_DEFAULT = "2x8"  # kda_cuda.cu RC_LAYOUT_DEFAULT
# one-token (decode) kernel layouts, kda_cuda.cu launch_recurrent ($KIMI_KDA_CUDA_DEC; "rc" = the
# multi-token kernel instead); PDL=0 launches without programmatic dependent launch
DEC_LAYOUTS = ("2x8", "1x4", "1x8", "2x4", "4x4", "4x8", "2x16")
DEC_DEFAULT = "2x8"  # kda_cuda.cu DEC_LAYOUT_DEFAULT
# PDL=2: PDL without the early trigger; PF=0: no L2 prefetch of the state before the dependency wait
# (default: both on); DEC=rc,PDL=0 is the code before the one-token kernel
DEC_VARIANTS = tuple(f"DEC={x}" for x in DEC_LAYOUTS if x != DEC_DEFAULT) + (
    "PDL=2", "PF=0", "PDL=2,PF=0", "DEC=rc", "PDL=0", "DEC=rc,PDL=0")
# S = 128 state-kernel A/B knobs (kda_cuda.cu launch_two_128; "10" is the default)
SV_VARIANTS = ("11", "40", "41", "21")


def env_of(tag):
    """'SEG=48,BV=32' -> {'KIMI_KDA_CUDA_SEG': '48', 'KIMI_KDA_CUDA_BV': '32'}."""
    if not tag:
        return {}
    return {"KIMI_KDA_CUDA_" + kv.split("=")[0]: kv.split("=")[1] for kv in tag.split(",")}


def bar_of(mm):
    return BAR[mm.split("+")[0]]


def reference(q, k, v, g, beta, s0, K):
    """(o, [state 0.. back]) in float64: snapshots slot s = state after token T-1-s."""
    B, T, H, S = v.shape
    qd, kd = (kg.broadcast_qk(a, H, B).double() for a in (q, k))
    args = (vv.double() for vv in (v, g, beta))
    vd, gd, bd = args
    sd = s0.double() if s0 is not None else None
    o, sT = naive_recurrent_kda(qd, kd, vd, gd, bd, initial_state=sd)
    states = [sT]
    for s in range(1, min(K, T)):
        _, st = naive_recurrent_kda(qd[:, :T - s], kd[:, :T - s], vd[:, :T - s], gd[:, :T - s], bd[:, :T - s],
                                    initial_state=sd)
        states.append(st)
    return o, states


def run_ours(lib, q, k, v, g, beta, s0, K, algo, math_mode, permuted):
    B, T, H, S = v.shape
    dst = torch.full((kg.dst_numel(B, T, H, S, K),), float("nan"), device="cuda")
    p, keep = kg.make_params(q, k, v, g, beta, s0, dst, K=K, algo=algo, permuted=permuted)
    kg.forward(lib, p, math_mode)
    torch.cuda.synchronize()
    return dst


def run_cpu(lib, q, k, v, g, beta, s0, K, permuted):
    B, T, H, S = v.shape
    dst = torch.full((kg.dst_numel(B, T, H, S, K),), float("nan"))
    cpu = [None if a is None else a.cpu() for a in (q, k, v, g, beta, s0)]
    p, keep = kg.make_params(*cpu, dst, K=K, algo="auto", permuted=permuted)
    err = C.create_string_buffer(256)
    rc = lib.kimi_kda_forward_cpu_threads(C.byref(p), os.cpu_count() or 1, err, 256)
    if rc != 0:
        raise RuntimeError(f"cpu op rc={rc}: {err.value.decode()}")
    return dst


def check(lib, only_recurrent=False, modes=None) -> list[dict]:
    """only_recurrent: the token-by-token variants alone (and auto), for a quick check of that kernel;
    modes: optional set of base math names (e.g. {"bf16", "f16"}): check only those variants."""
    rows, fails = [], 0
    idx = 0
    for T in (1, 2, 15, 16, 17, 63, 64, 65, 1000):
        for S in CHECK_S:
            for NS in (1, 3):
                idx += 1
                init = idx % 3 != 0
                permuted = idx % 2 == 0
                K = 3 if idx % 4 == 1 else 1
                H, Hk = (4, 2) if idx % 5 == 0 else (2, 2)
                Bqk = 1 if (NS == 3 and idx % 3 == 1) else NS
                q, k, v, g, beta, s0 = kg.inputs(NS, T, H, S, Hk=Hk, Bqk=Bqk, seed=1000 + idx, init_state=init)
                o_ref, st_ref = reference(q, k, v, g, beta, s0, K)
                n_slots = min(K, T)
                cpu_dst = run_cpu(lib, q, k, v, g, beta, s0, K, permuted) if T <= 1000 else None
                # third field: environment for that run (segment length, state-kernel slice width,
                # token-by-token layout), so every selectable kernel variant is checked
                variants = [("recurrent", "fp32", None), ("chunked", "fp32", None), ("chunked", "tf32x3", None),
                            ("chunked", "tf32", None), ("auto", "default", None), ("chunked", "fp32+fused", None),
                            ("chunked", "tf32x3+fused", None),
                            ("chunked", "fp32", "BV=16"), ("chunked", "tf32x3", "BV=16"), ("chunked", "tf32", "BV=16"),
                            ("chunked", "fp32", "SV=41"), ("chunked", "tf32", "SV=41"),
                            # 64-token 16-bit path (S = 128; other S run tf32), and its fused fallback
                            ("chunked", "bf16", None), ("chunked", "f16", None), ("auto", "bf16", None),
                            ("chunked", "bf16+fused", None),
                            # v7 prep, phase (2): 0 CUDA-core running products; 1-3 tensor cores (fp16
                            # operands / L split / both split)
                            ("chunked", "f16", "PREP7_DIAG=0"), ("chunked", "bf16", "PREP7_DIAG=0"),
                            ("chunked", "f16", "PREP7_DIAG=1"), ("chunked", "bf16", "PREP7_DIAG=1"),
                            ("chunked", "f16", "PREP7_DIAG=2"), ("chunked", "bf16", "PREP7_DIAG=2"),
                            ("chunked", "f16", "PREP7_DIAG=3"), ("chunked", "bf16", "PREP7_DIAG=3")]
                if S == 128:
                    variants += [("chunked", "tf32x3", "SV=" + sv) for sv in SV_VARIANTS]
                variants += [("recurrent", "fp32", f"RC={lay}") for lay in RC_LAYOUTS if lay != RC_DEFAULT]
                if T == 1:  # the one-token kernel's layouts, the multi-token kernel, without PDL
                    variants += [("recurrent", "fp32", tag) for tag in DEC_VARIANTS]
                if T >= 64:  # several prep+state segments, each resuming from the parked state
                    variants += [("chunked", "fp32", "SEG=32"), ("chunked", "tf32x3", "SEG=48"),
                                 ("chunked", "tf32x3", "SEG=48,BV=16"), ("chunked", "tf32x3", "SEG=48,SV=41"),
                                 ("chunked", "bf16", "SEG=48"), ("chunked", "f16", "SEG=128"),
                                 ("chunked", "f16", "PREP7_PERSIST=1"), ("chunked", "bf16", "SEG=128,PREP7_PERSIST=1"),
                                 ("chunked", "f16", "STATE_NS=2"), ("chunked", "bf16", "SEG=128,STATE_NS=2"),
                                 # overlapped segments (OVL=0: the sequential order)
                                 ("chunked", "f16", "OVL=4"), ("chunked", "bf16", "OVL=3,SEG=128"),
                                 ("chunked", "f16", "OVL=0"), ("chunked", "bf16", "OVL=2,OVL_NBUF=4")]
                if only_recurrent:
                    variants = [x for x in variants if x[0] != "chunked"]
                if modes:
                    variants = [x for x in variants if x[1].split("+")[0] in modes]
                for algo, mm, seg in variants:
                    env = env_of(seg)
                    os.environ.update(env)
                    dst = run_ours(lib, q, k, v, g, beta, s0, K, algo, mm, permuted)
                    for key in env:
                        os.environ.pop(key, None)
                    o, st = kg.split_dst(dst, NS, T, H, S, K)
                    written = bool(torch.isfinite(o).all()) and bool(torch.isfinite(st[:n_slots]).all())
                    untouched = bool(torch.isnan(st[n_slots:]).all()) if n_slots < K else True
                    e_o = kg.rel(o, o_ref)
                    e_s = max(kg.rel(st[s], st_ref[s]) for s in range(n_slots))
                    if cpu_dst is not None:
                        oc, stc = kg.split_dst(cpu_dst, NS, T, H, S, K)
                        e_cpu = max(kg.rel(o.cpu(), oc), kg.rel(st[:n_slots].cpu(), stc[:n_slots]))
                    else:
                        e_cpu = float("nan")
                    bar = bar_of(mm)
                    ok = written and untouched and e_o <= bar and e_s <= bar and (
                        cpu_dst is None or bar > 1e-5 or e_cpu <= 1e-5)
                    fails += not ok
                    rows.append(dict(T=T, S=S, n_seqs=NS, H=H, Hk=Hk, Bqk=Bqk, init=init, permuted=permuted, K=K,
                                     algo=algo, math=mm + (f" {seg}" if seg else ""), err_o=e_o, err_state=e_s, err_vs_cpu=e_cpu,
                                     written=written, untouched=untouched, ok=ok))
                    if not ok:
                        print("FAIL", rows[-1], flush=True)
    # bad input: error codes, never a crash
    q, k, v, g, beta, s0 = kg.inputs(1, 4, 2, 16, seed=7)
    dst = torch.zeros(kg.dst_numel(1, 4, 2, 16, 1), device="cuda")
    p, keep = kg.make_params(q, k, v, g, beta, s0, dst)
    p.q.data = None
    err = C.create_string_buffer(256)
    rc_null = lib.kimi_kda_forward_cuda(C.byref(p), None, err, 256)
    msg_null = err.value.decode()
    p, keep = kg.make_params(q, k, v, g, beta, s0, dst)
    p.v.data = p.v.data + 4  # misaligned rows: refused before any kernel runs
    rc_mis = lib.kimi_kda_forward_cuda(C.byref(p), None, err, 256)
    msg_mis = err.value.decode()
    errs_ok = rc_null == 1 and rc_mis != 0
    print(f"error codes: null q -> {rc_null} ({msg_null}); misaligned v -> {rc_mis} ({msg_mis})")
    fails += not errs_ok
    worst = {}
    for r in rows:
        key = (r["algo"], r["math"])
        w = worst.setdefault(key, [0.0, 0.0, 0.0])
        w[0] = max(w[0], r["err_o"]); w[1] = max(w[1], r["err_state"])
        if r["err_vs_cpu"] == r["err_vs_cpu"]:
            w[2] = max(w[2], r["err_vs_cpu"])
    print(f"\ncheck: {len(rows)} runs, {fails} failures")
    print(f"{'algo':>10} {'math':>20} {'max err o':>11} {'max err state':>14} {'max vs CPU op':>14}  bar")
    for (algo, mm), w in worst.items():
        print(f"{algo:>10} {mm:>20} {w[0]:11.2e} {w[1]:14.2e} {w[2]:14.2e}  {bar_of(mm.split()[0]):.0e}")
    return rows, fails


time_graph = kg.time_graph


def bench(lib, ggml_file, use_fla=True, Ts=(1, 64, 1024, 8192, 32768)):
    H, S, B = 32, 128, 1
    llama = {}
    if ggml_file and os.path.exists(ggml_file):
        for line in open(ggml_file):
            if line.startswith("ggml T="):
                f = dict(x.split("=") for x in line.split()[1:])
                llama[int(f["T"])] = (float(f["graph_us"]), float(f["op_us"]), float(f.get("op_ev_us", "nan")))
    try:
        if not use_fla:
            raise ImportError("--no-fla")
        from fla.ops.kda import chunk_kda, fused_recurrent_kda
        import triton.testing as tt
    except Exception as e:  # noqa: BLE001
        print("FLA unavailable:", e)
        chunk_kda = fused_recurrent_kda = None
    results = []
    for T in Ts:
        q, k, v, g, beta, s0 = kg.inputs(B, T, H, S, seed=T)
        K = 1
        row = {"T": T}
        n_inner = 100 if T <= 64 else (10 if T <= 1024 else 2)
        # tags: environment of the run (see env_of); PROFILE=prep|state times one kernel alone
        # (output not valid); BV=16 / SV=.. are the state-kernel A/B knobs (kda_cuda.cu)
        # (the BV / SV / SEG A/B knobs of the tf32 state kernel were timed in the runs of 05:35-06:13,
        # BENCHMARKS.md; they stay in --check)
        variants = [("fp32", None), ("tf32x3", None), ("tf32", None), ("tf32x3+fused", None),
                    ("bf16", None), ("f16", None), ("bf16", "SEG=16384"),
                    ("bf16", "PROFILE=prep"), ("bf16", "PROFILE=state"),
                    ("tf32x3", "PROFILE=prep"), ("tf32x3", "PROFILE=state")] \
            if T > 1 else [("fp32", None)] + [("fp32", tag) for tag in DEC_VARIANTS]
        for mm, seg in variants:
            env = env_of(seg)
            if "KIMI_KDA_CUDA_PROFILE" in env and T < 1024:
                continue
            if "KIMI_KDA_CUDA_SEG" in env and T <= int(env["KIMI_KDA_CUDA_SEG"]):
                continue
            if mm.endswith("fused") and T > 8192:
                continue
            os.environ.update(env)
            dst = torch.empty(kg.dst_numel(B, T, H, S, K), device="cuda")
            p, keep = kg.make_params(q, k, v, g, beta, s0, dst, K=K, algo="auto")
            ws = kg.workspace(lib, p)
            fn = lambda: kg.forward(lib, p, mm, ws=ws)  # noqa: E731
            try:
                row[f"ours_{mm}{'_' + seg if seg else ''}_us"] = time_graph(fn, n_inner)
            except Exception as e:  # noqa: BLE001
                print(f"ours {mm} seg={seg} T={T} failed: {e}")
            for key in env:
                os.environ.pop(key, None)
            del ws, dst
        if T == 1:
            # rotate over 64 independent (state, dst) sets so the 2 MiB state is not served from L2
            sets = []
            for r in range(64):
                qq, kk, vv, gg, bb, ss = kg.inputs(B, T, H, S, seed=100 + r)
                dd = torch.empty(kg.dst_numel(B, T, H, S, K), device="cuda")
                p_, keep_ = kg.make_params(qq, kk, vv, gg, bb, ss, dd, K=K)
                sets.append((p_, keep_ + [dd]))  # dst too must outlive the graph that writes it
            for tag in (None,) + DEC_VARIANTS:  # every one-token layout, L2-cold
                env = env_of(tag)
                os.environ.update(env)
                it = iter(range(10**9))
                fn = lambda: kg.forward(lib, sets[next(it) % 64][0], "fp32")  # noqa: E731
                row["ours_decode_rotated_us" + ("_" + tag if tag else "")] = time_graph(fn, 64)
                for key in env:
                    os.environ.pop(key, None)
        if T in llama:
            row["llama_graph_us"], row["llama_op_us"], row["llama_op_ev_us"] = llama[T]
        if chunk_kda is not None:
            # FLA: chunk_kda for prefill, fused_recurrent_kda for decode (Triton JIT + autotune is slow:
            # only the pairs the issue quotes)
            for dt, tag in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
                a = [x.to(dt) for x in (q, k, v, g, beta)]
                s0f = s0.clone()
                with torch.no_grad():
                    if T >= 1024:
                        try:
                            row[f"fla_chunk_{tag}_us"] = 1e3 * tt.do_bench(
                                lambda: chunk_kda(*a, initial_state=s0f, output_final_state=True),
                                warmup=25, rep=100, return_mode="median")
                        except Exception as e:  # noqa: BLE001
                            print(f"fla chunk_kda T={T} {tag} failed: {str(e)[:200]}")
                    if T == 1:
                        try:
                            row[f"fla_recurrent_{tag}_us"] = 1e3 * tt.do_bench(
                                lambda: fused_recurrent_kda(*a, initial_state=s0f, output_final_state=True),
                                warmup=25, rep=100, return_mode="median")
                        except Exception as e:  # noqa: BLE001
                            print(f"fla fused_recurrent_kda T={T} {tag} failed: {str(e)[:200]}")
        # floors: bytes (q, k, v, g, beta read, o written, state read + written) at 3.0 TB/s measured copy rate
        nbytes = 4 * (4 * T * H * S + T * H) + 2 * 4 * H * S * S
        row["floor_hbm_us"] = nbytes / 3.0e12 * 1e6
        results.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{'T':>6} {'ours fp32':>10} {'ours 3xtf32':>11} {'ours tf32':>10} {'ours bf16':>10} {'ours f16':>9} {'fused 3xtf32':>12} {'llama op':>9} {'llama ev':>8} {'llama graph':>11}"
          f" {'FLA chunk f32':>13} {'FLA chunk bf16':>14} {'FLA rec f32':>11} {'HBM floor':>9}   (us)")
    for r in results:
        f = lambda k: f"{r[k]:.1f}" if k in r else "-"  # noqa: E731
        print(f"{r['T']:>6} {f('ours_fp32_us'):>10} {f('ours_tf32x3_us'):>11} {f('ours_tf32_us'):>10} {f('ours_bf16_us'):>10}"
              f" {f('ours_f16_us'):>9} {f('ours_tf32x3+fused_us'):>12}"
              f" {f('llama_op_us'):>9} {f('llama_op_ev_us'):>8} {f('llama_graph_us'):>11} {f('fla_chunk_fp32_us'):>13}"
              f" {f('fla_chunk_bf16_us'):>14} {f('fla_recurrent_fp32_us'):>11} {f('floor_hbm_us'):>9}")
    if "ours_decode_rotated_us" in results[0]:
        print(f"decode, 64 rotated state sets (L2 cold): {results[0]['ours_decode_rotated_us']:.2f} us")
    return results


def time_graph_held(fn, n_inner, reps=30):
    """Median us per call: CUDA events around one replay of a CUDA graph of n_inner back-to-back calls,
    divided by n_inner, with the stream held by a spin kernel while the replay is queued (so the
    host-side graph launch is not timed). scripts/ggml_gdn_bench.cpp's op_ev_us times llama.cpp the
    same way (graph of N ops, events, stream held while queueing)."""
    return kg.time_graph(fn, n_inner, reps=reps, hold=True)


def time_graph_wall_diff(fn, n_inner, reps=50):
    """(wall(graph of n_inner calls) - wall(graph of 1)) / (n_inner - 1), medians of replay +
    synchronize: ggml_gdn_bench's op_us method applied to ours."""
    def wall(n):
        gr = kg.capture_graph(fn, n, warm=1)
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            gr.replay()
            torch.cuda.synchronize()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts) * 1e6
    return (wall(n_inner) - wall(1)) / (n_inner - 1)


def decode_bench(lib, ggml_file):
    """One decode step, H = 32, S_v = 128, f32: every one-token variant (layouts, the multi-token
    kernel, PDL on/off), each first checked against python_ref float64, timed L2-hot (one input set)
    and L2-cold (64 rotated sets), vs llama.cpp's op_ev_us from ggml_gdn_bench in the same run."""
    H, S, N = 32, 128, 100
    out = {}
    llama = {}
    if ggml_file and os.path.exists(ggml_file):
        for line in open(ggml_file):
            if line.startswith("ggml T=1 "):
                llama = {k: float(v) for k, v in (x.split("=") for x in line.split()[1:])}
    out["llama"] = llama
    # floors on this card, same timing method: a graph of N one-element kernels (launch + gap), and of
    # N copies of 2 MiB (the state's read + write, L2-hot)
    x = torch.zeros(1, device="cuda")
    src = torch.randn(H * S * S, device="cuda")
    dst2 = torch.empty_like(src)
    out["floor_tiny_kernel_us"] = time_graph_held(lambda: x.add_(1.0), N)
    out["floor_copy_2MiB_us"] = time_graph_held(lambda: dst2.copy_(src), N)
    rows = []
    for B in (1, 4):
        q, k, v, g, beta, s0 = kg.inputs(B, 1, H, S, seed=11 + B)
        o_ref, st_ref = reference(q, k, v, g, beta, s0, 1)
        sets = []
        for r in range(64):
            qq, kk, vv, gg, bb, ss = kg.inputs(B, 1, H, S, seed=200 + r)
            dd = torch.empty(kg.dst_numel(B, 1, H, S, 1), device="cuda")
            p_, keep_ = kg.make_params(qq, kk, vv, gg, bb, ss, dd, K=1)
            sets.append((p_, keep_ + [dd]))  # dst too must outlive the graph that writes it
        for tag in ((None,) + DEC_VARIANTS if B == 1 else (None, "DEC=rc,PDL=0")):
            env = env_of(tag)
            os.environ.update(env)
            dst = torch.full((kg.dst_numel(B, 1, H, S, 1),), float("nan"), device="cuda")
            p, keep = kg.make_params(q, k, v, g, beta, s0, dst, K=1, algo="auto")
            kg.forward(lib, p, "fp32")
            torch.cuda.synchronize()
            o, st = kg.split_dst(dst, B, 1, H, S, 1)
            err = max(kg.rel(o, o_ref), kg.rel(st[0], st_ref[0]))
            fn = lambda: kg.forward(lib, p, "fp32")  # noqa: E731
            row = {"B": B, "variant": tag or "default", "err": err}
            it = iter(range(10**9))
            fc = lambda: kg.forward(lib, sets[next(it) % 64][0], "fp32")  # noqa: E731
            try:
                row["hot_us"] = time_graph_held(fn, N)
                row["hot_plain_us"] = time_graph(fn, N)
                row["cold_us"] = time_graph_held(fc, 64)
                if B == 1 and tag in (None, "DEC=rc,PDL=0"):
                    row["hot_wall_diff_us"] = time_graph_wall_diff(fn, N)
            except Exception as e:  # noqa: BLE001
                print(f"decode {tag} B={B}: timing failed: {e}", flush=True)
            for key in env:
                os.environ.pop(key, None)
            rows.append(row)
            print(json.dumps(row), flush=True)
    out["rows"] = rows
    print(f"\nfloors (same method): graph of tiny kernels {out['floor_tiny_kernel_us']:.2f} us/kernel, "
          f"2 MiB copy {out['floor_copy_2MiB_us']:.2f} us; HBM bytes floor 1.42 us")
    print(f"{'B':>2} {'variant':>14} {'err':>9} {'hot':>6} {'hot plain':>9} {'cold':>6} {'wall diff':>9}  (us)")
    for r in rows:
        f = lambda k: f"{r[k]:.2f}" if k in r else "-"  # noqa: E731
        print(f"{r['B']:>2} {r['variant']:>14} {r['err']:9.1e} {f('hot_us'):>6} {f('hot_plain_us'):>9} {f('cold_us'):>6}"
              f" {f('hot_wall_diff_us'):>9}")
    if llama and "hot_us" in rows[0]:
        d = rows[0]
        ev = llama.get("op_ev_us", float("nan"))
        print(f"llama.cpp GATED_DELTA_NET T=1: op_ev {ev:.2f} us (events, graph of N), op (wall diff) "
              f"{llama.get('op_us', float('nan')):.2f}, graph {llama.get('graph_us', float('nan')):.2f}")
        print(f"ours default: {d['hot_us']:.2f} us hot -> {d['hot_us'] / ev:.2f}x llama.cpp's time "
              f"(wall-diff method: {d.get('hot_wall_diff_us', float('nan')):.2f} vs {llama.get('op_us', float('nan')):.2f})")
        evc = llama.get("op_ev_cold_us", float("nan"))
        if "cold_us" in d and evc == evc:
            print(f"L2-cold (own state per op): ours {d['cold_us']:.2f} us vs llama.cpp {evc:.2f} us -> {d['cold_us'] / evc:.2f}x")
    bad = [r for r in rows if not r["err"] <= 1e-5]
    if bad:
        print("DECODE CHECK FAILED:", bad)
    return out, len(bad)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--bench", action="store_true")
    ap.add_argument("--ggml", default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-fla", action="store_true")
    ap.add_argument("--T", default="1,64,1024,8192,32768", help="--bench: sequence lengths")
    ap.add_argument("--decode", action="store_true", help="one-token step: every variant, checked and timed")
    ap.add_argument("--check-recurrent", action="store_true", help="--check of the token-by-token variants only")
    ap.add_argument("--modes", default=None, help="--check only these base math modes, e.g. bf16,f16")
    a = ap.parse_args()
    lib = kg.load(a.lib)
    out = {"device": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    fails = 0
    if a.check or a.check_recurrent:
        rows, fails = check(lib, only_recurrent=a.check_recurrent and not a.check,
                            modes=set(a.modes.split(",")) if a.modes else None)
        out["check"] = rows
        out["check_failures"] = fails
    if a.bench:
        out["bench"] = bench(lib, a.ggml, not a.no_fla, tuple(int(t) for t in a.T.split(",")))
    if a.decode:
        out["decode"], bad = decode_bench(lib, a.ggml)
        fails += bad
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    sys.exit(1 if fails else 0)


if __name__ == "__main__":
    main()
