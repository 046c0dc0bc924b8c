// ggml_gdn_bench.cpp - times llama.cpp's own CUDA GATED_DELTA_NET (KDA mode) through ggml's CUDA
// backend, for the "KDA op, CUDA" benchmark (scripts/gpu_check.sh builds it against the ggml of the
// pinned llama-cpp-python sdist, with GGML_CUDA_GRAPHS=ON as llama.cpp's own build has it). For each
// T it builds a graph of N independent copies of the op (same inputs, own outputs) and reports,
// median over repetitions:
//   graph_us  wall time of one graph_compute holding one op (what a caller of the graph sees)
//   op_us     (wall(N ops) - wall(1 op)) / (N - 1): the per-op cost once the graph overhead is
//             shared (host-side dispatch included where it is slower than the kernel)
//   op_ev_us  CUDA events around one graph_compute of N ops (replayed as one CUDA graph), divided
//             by N, with ggml's stream held by a host function until everything is queued: kernel
//             time plus in-graph launch gaps, measured exactly as gpu_bench.py times ours
//             (events around a CUDA graph of N back-to-back calls, GPU held while queueing).
//   op_ev_cold_us  (T = 1) the same over 64 ops that each read their own state (not in L2).
// Output: one line per T, "ggml T=<T> graph_us=<..> op_us=<..> op_ev_us=<..> N=<N>", and a checksum
// of the output so the op is known to have run.
#include "ggml.h"
#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-backend-impl.h"  // struct ggml_backend_event: its CUDA event is swapped for a timing one
#include "ggml-cuda.h"

#include <cuda_runtime.h>
#include <thread>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

static double now_us() {
    return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct Case {
    ggml_context * ctx = nullptr;
    ggml_backend_buffer_t buf = nullptr;
    ggml_cgraph * gf = nullptr;
    ggml_tensor * out0 = nullptr;
};

// own_state: each of the N ops reads its own state tensor (for T = 1: the state is not in L2, as for
// gpu_bench.py's 64 rotated input sets)
static Case build(ggml_backend_t be, int S, int H, int T, int N, std::mt19937 & rng, bool own_state = false) {
    Case c;
    ggml_init_params ip = {ggml_tensor_overhead() * (8 + 3 * N) + ggml_graph_overhead_custom(4 * N + 16, false), nullptr, true};
    c.ctx = ggml_init(ip);
    ggml_tensor * q = ggml_new_tensor_4d(c.ctx, GGML_TYPE_F32, S, H, T, 1);
    ggml_tensor * k = ggml_new_tensor_4d(c.ctx, GGML_TYPE_F32, S, H, T, 1);
    ggml_tensor * v = ggml_new_tensor_4d(c.ctx, GGML_TYPE_F32, S, H, T, 1);
    ggml_tensor * g = ggml_new_tensor_4d(c.ctx, GGML_TYPE_F32, S, H, T, 1);
    ggml_tensor * b = ggml_new_tensor_4d(c.ctx, GGML_TYPE_F32, 1, H, T, 1);
    ggml_tensor * s = ggml_new_tensor_4d(c.ctx, GGML_TYPE_F32, S, S, H, 1);
    std::vector<ggml_tensor *> states(1, s);
    for (int n = 1; own_state && n < N; ++n) states.push_back(ggml_new_tensor_4d(c.ctx, GGML_TYPE_F32, S, S, H, 1));
    c.gf = ggml_new_graph_custom(c.ctx, 4 * N + 16, false);
    for (int n = 0; n < N; ++n) {
        ggml_tensor * o = ggml_gated_delta_net(c.ctx, q, k, v, g, b, states[n % states.size()], 1);
        ggml_set_output(o);
        ggml_build_forward_expand(c.gf, o);
        if (n == 0) c.out0 = o;
    }
    c.buf = ggml_backend_alloc_ctx_tensors(c.ctx, be);
    if (!c.buf) { fprintf(stderr, "alloc failed (T=%d N=%d)\n", T, N); exit(1); }
    // realistic inputs: l2-normalised q, k; log-gates in [-20, -1e-4] (log-uniform); beta in [0, 1]
    std::uniform_real_distribution<float> un(-1.f, 1.f), u01(0.f, 1.f);
    const size_t nqk = (size_t) S * H * T;
    std::vector<float> hq(nqk), hk(nqk), hv(nqk), hg(nqk), hb((size_t) H * T), hs((size_t) S * S * H);
    for (size_t r = 0; r < nqk / S; ++r) {
        float nq = 0, nk = 0;
        for (int i = 0; i < S; ++i) { hq[r * S + i] = un(rng); hk[r * S + i] = un(rng); nq += hq[r * S + i] * hq[r * S + i]; nk += hk[r * S + i] * hk[r * S + i]; }
        for (int i = 0; i < S; ++i) { hq[r * S + i] /= std::sqrt(nq); hk[r * S + i] /= std::sqrt(nk); }
    }
    for (auto & x : hv) x = un(rng);
    for (auto & x : hg) x = -std::exp(std::log(1e-4f) + u01(rng) * (std::log(20.f) - std::log(1e-4f)));
    for (auto & x : hb) x = u01(rng);
    for (auto & x : hs) x = 0.1f * un(rng);
    ggml_backend_tensor_set(q, hq.data(), 0, ggml_nbytes(q));
    ggml_backend_tensor_set(k, hk.data(), 0, ggml_nbytes(k));
    ggml_backend_tensor_set(v, hv.data(), 0, ggml_nbytes(v));
    ggml_backend_tensor_set(g, hg.data(), 0, ggml_nbytes(g));
    ggml_backend_tensor_set(b, hb.data(), 0, ggml_nbytes(b));
    for (ggml_tensor * st : states) ggml_backend_tensor_set(st, hs.data(), 0, ggml_nbytes(st));
    return c;
}

static double median_graph_us(ggml_backend_t be, ggml_cgraph * gf, int reps) {
    for (int i = 0; i < 3; ++i) ggml_backend_graph_compute(be, gf);
    std::vector<double> ts;
    for (int r = 0; r < reps; ++r) {
        const double t0 = now_us();
        ggml_backend_graph_compute(be, gf);
        ggml_backend_synchronize(be);
        ts.push_back(now_us() - t0);
    }
    std::sort(ts.begin(), ts.end());
    return ts[ts.size() / 2];
}

// Events on ggml's own stream: ggml_backend_event_record / _wait with the event's CUDA event swapped
// for ours (ggml creates them without timing).
struct EvTimer {
    ggml_backend_event_t e0 = nullptr, e1 = nullptr, blk = nullptr;
    cudaEvent_t c0 = nullptr, c1 = nullptr, cb = nullptr;
    cudaStream_t side = nullptr;
    bool ok = false;
    explicit EvTimer(ggml_backend_t be) {
        ggml_backend_dev_t dev = ggml_backend_get_device(be);
        e0 = ggml_backend_event_new(dev); e1 = ggml_backend_event_new(dev); blk = ggml_backend_event_new(dev);
        if (!e0 || !e1 || !blk) return;
        if (cudaEventCreate(&c0) != cudaSuccess || cudaEventCreate(&c1) != cudaSuccess ||
            cudaEventCreateWithFlags(&cb, cudaEventDisableTiming) != cudaSuccess ||
            cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking) != cudaSuccess) return;
        cudaEventDestroy((cudaEvent_t) e0->context); e0->context = c0;
        cudaEventDestroy((cudaEvent_t) e1->context); e1->context = c1;
        cudaEventDestroy((cudaEvent_t) blk->context); blk->context = cb;
        ok = true;
    }
    // median us per op over reps: events around one graph_compute_async of n_ops ops
    double per_op_us(ggml_backend_t be, ggml_cgraph * gf, int n_ops, int reps) {
        for (int i = 0; i < 3; ++i) ggml_backend_graph_compute(be, gf);  // ggml's CUDA-graph warm-up
        std::vector<double> ts;
        for (int r = 0; r < reps; ++r) {
            // hold the stream until the graph is queued, so host-side dispatch is not timed
            cudaLaunchHostFunc(side, [](void *) { std::this_thread::sleep_for(std::chrono::microseconds(500)); }, nullptr);
            cudaEventRecord(cb, side);
            ggml_backend_event_wait(be, blk);
            ggml_backend_event_record(e0, be);
            ggml_backend_graph_compute_async(be, gf);
            ggml_backend_event_record(e1, be);
            ggml_backend_synchronize(be);
            float ms = 0.f;
            cudaEventElapsedTime(&ms, c0, c1);
            ts.push_back(1e3 * ms / n_ops);
        }
        std::sort(ts.begin(), ts.end());
        return ts[ts.size() / 2];
    }
};

int main(int argc, char ** argv) {
    const int S = 128, H = 32;
    std::vector<int> Ts = {1, 64, 1024, 8192, 32768};
    if (argc > 1) { Ts.clear(); for (int i = 1; i < argc; ++i) Ts.push_back(atoi(argv[i])); }
    ggml_backend_t be = ggml_backend_cuda_init(0);
    if (!be) { fprintf(stderr, "no CUDA backend\n"); return 1; }
    std::mt19937 rng(1234);
    EvTimer ev(be);
    if (!ev.ok) fprintf(stderr, "event timer unavailable: op_ev_us not measured\n");
    for (int T : Ts) {
        const int N = T == 1 ? 100 : (T <= 64 ? 64 : (T <= 1024 ? 16 : 4));  // decode: as many as gpu_bench.py
        const int reps = T <= 1024 ? 50 : 10;
        Case one = build(be, S, H, T, 1, rng);
        Case many = build(be, S, H, T, N, rng);
        const double g1 = median_graph_us(be, one.gf, reps);
        const double gN = median_graph_us(be, many.gf, reps);
        const double evN = ev.ok ? ev.per_op_us(be, many.gf, N, reps) : NAN;
        std::vector<float> o(16);
        ggml_backend_tensor_get(one.out0, o.data(), 0, o.size() * sizeof(float));
        double cs = 0; for (float x : o) cs += std::fabs(x);
        double ev_cold = NAN;
        if (T == 1 && ev.ok) {  // 64 ops, each with its own 2 MiB state and output: L2-cold
            Case cold = build(be, S, H, T, 64, rng, true);
            ev_cold = ev.per_op_us(be, cold.gf, 64, reps);
            ggml_backend_buffer_free(cold.buf); ggml_free(cold.ctx);
        }
        printf("ggml T=%d graph_us=%.2f op_us=%.2f op_ev_us=%.2f op_ev_cold_us=%.2f N=%d checksum=%.6g\n", T, g1,
               (gN - g1) / (N - 1), evN, ev_cold, N, cs);
        fflush(stdout);
        ggml_backend_buffer_free(one.buf); ggml_free(one.ctx);
        ggml_backend_buffer_free(many.buf); ggml_free(many.ctx);
    }
    ggml_backend_free(be);
    return 0;
}
