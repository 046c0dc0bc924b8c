// ggml_gdn_bench.cpp - times llama.cpp's own CUDA GATED_DELTA_NET (KDA mode) through ggml's CUDA
// backend, for the "KDA op, CUDA" benchmark (scripts/gpu_check.sh builds it against the ggml of the
// pinned llama-cpp-python sdist). For each T it builds a graph of N independent copies of the op
// (same inputs, own outputs) and reports, median over repetitions:
//   graph_us  wall time of one graph_compute holding one op (what a caller of the graph sees)
//   op_us     (wall(N ops) - wall(1 op)) / (N - 1): the per-op cost once the graph overhead is
//             shared, i.e. kernel time plus launch gap, comparable to events around kernels.
// Output: one line per T, "ggml T=<T> graph_us=<..> op_us=<..> N=<N>", and a checksum of the
// output so the op is known to have run.
#include "ggml.h"
#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cuda.h"

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

static Case build(ggml_backend_t be, int S, int H, int T, int N, std::mt19937 & rng) {
    Case c;
    ggml_init_params ip = {ggml_tensor_overhead() * (8 + 2 * N) + ggml_graph_overhead_custom(4 * N + 16, false), nullptr, true};
    c.ctx = ggml_init(ip);
    ggml_tensor * q = ggml_new_tensor_4d(c.ctx, GGML_TYPE_F32, S, H, T, 1);
    ggml_tensor * k = ggml_new_tensor_4d(c.ctx, GGML_TYPE_F32, S, H, T, 1);
    ggml_tensor * v = ggml_new_tensor_4d(c.ctx, GGML_TYPE_F32, S, H, T, 1);
    ggml_tensor * g = ggml_new_tensor_4d(c.ctx, GGML_TYPE_F32, S, H, T, 1);
    ggml_tensor * b = ggml_new_tensor_4d(c.ctx, GGML_TYPE_F32, 1, H, T, 1);
    ggml_tensor * s = ggml_new_tensor_4d(c.ctx, GGML_TYPE_F32, S, S, H, 1);
    c.gf = ggml_new_graph_custom(c.ctx, 4 * N + 16, false);
    for (int n = 0; n < N; ++n) {
        ggml_tensor * o = ggml_gated_delta_net(c.ctx, q, k, v, g, b, s, 1);
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
    ggml_backend_tensor_set(s, hs.data(), 0, ggml_nbytes(s));
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

int main(int argc, char ** argv) {
    const int S = 128, H = 32;
    std::vector<int> Ts = {1, 64, 1024, 8192, 32768};
    if (argc > 1) { Ts.clear(); for (int i = 1; i < argc; ++i) Ts.push_back(atoi(argv[i])); }
    ggml_backend_t be = ggml_backend_cuda_init(0);
    if (!be) { fprintf(stderr, "no CUDA backend\n"); return 1; }
    std::mt19937 rng(1234);
    for (int T : Ts) {
        const int N = T <= 64 ? 64 : (T <= 1024 ? 16 : 4);
        const int reps = T <= 1024 ? 50 : 10;
        Case one = build(be, S, H, T, 1, rng);
        Case many = build(be, S, H, T, N, rng);
        const double g1 = median_graph_us(be, one.gf, reps);
        const double gN = median_graph_us(be, many.gf, reps);
        std::vector<float> o(16);
        ggml_backend_tensor_get(one.out0, o.data(), 0, o.size() * sizeof(float));
        double cs = 0; for (float x : o) cs += std::fabs(x);
        printf("ggml T=%d graph_us=%.2f op_us=%.2f N=%d checksum=%.6g\n", T, g1, (gN - g1) / (N - 1), N, cs);
        fflush(stdout);
        ggml_backend_buffer_free(one.buf); ggml_free(one.ctx);
        ggml_backend_buffer_free(many.buf); ggml_free(many.ctx);
    }
    ggml_backend_free(be);
    return 0;
}
