// kda_sanitize_case.cu - a small, complete run of every CUDA KDA path (recurrent, chunked in each
// math mode, snapshot tail, head/seq broadcast, permuted q) for compute-sanitizer memcheck and
// racecheck (scripts/gpu_check.sh). Exit status 0 only if every call returned KIMI_KDA_OK and the
// outputs are finite. Correctness is checked elsewhere (scripts/gpu_bench.py vs python_ref).
#include "kimi_kda_cuda.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(e_)); return 2; } } while (0)

static kimi_kda_tensor desc(const float * d, int64_t n0, int64_t n1, int64_t n2, int64_t n3,
                            size_t s1, size_t s2, size_t s3) {
    kimi_kda_tensor t;
    t.data = d;
    t.ne[0] = n0; t.ne[1] = n1; t.ne[2] = n2; t.ne[3] = n3;
    t.nb[0] = 4; t.nb[1] = 4 * s1; t.nb[2] = 4 * s2; t.nb[3] = 4 * s3;
    return t;
}

// passes: 0: recurrent; 1-3: prep+state kernels per math mode; 4: + snapshot tail; 5-6: fused
// kernel; 7: prep+state in 16-token segments; 8: state kernel with 16-column slices (default 32);
// 9-10: other token-by-token layouts (4 x 8 and 1 x 4 columns x warps); 11-15: one token (decode
// kernel, K = 1 and 3; layout 1 x 4; the multi-token kernel without PDL; no L2 prefetch, no trigger);
// 16-17: 64-token 16-bit path (bf16, fp16; S = 128 only); 18: bf16 in 64-token segments with a
// 3-snapshot tail; 19: fp16 in 128-token segments with 4 overlapped segments (KIMI_KDA_CUDA_OVL=4);
// 20: fp16, the state kernel with 2 stages (KIMI_KDA_CUDA_STATE_NS=2); 21: bf16,
// persistent v7 prep kernel; 22: bf16, overlapped segments (OVL=2); 23: fp16, overlapped segments
// (KIMI_KDA_CUDA_OVL=5: one chunk each); 24: bf16, 3 overlapped segments, 4 workspace buffers;
// 25-27: v7 prep phase (2) variants other than the default 2 (KIMI_KDA_CUDA_PREP7_DIAG = 0 fp16,
// 1 bf16, 3 fp16)
static int run_case(const int S, const int T, const int pass_begin, const int pass_end) {
    const int H = 2, Hk = 1, NS = 2, NSqk = 1, K = 3;
    std::mt19937 rng(7);
    std::uniform_real_distribution<float> un(-1.f, 1.f), u01(0.f, 1.f);
    auto fill = [&](std::vector<float> & v, float lo, float hi) { for (auto & x : v) x = lo + (hi - lo) * u01(rng); };
    std::vector<float> q((size_t) S * Hk * T * NSqk), k(q.size()), v((size_t) S * H * T * NS), g(v.size()),
        b((size_t) H * T * NS), s((size_t) S * S * H * NS);
    fill(q, -0.2f, 0.2f); fill(k, -0.2f, 0.2f); fill(v, -1.f, 1.f); fill(b, 0.f, 1.f); fill(s, -0.1f, 0.1f);
    for (auto & x : g) x = -std::exp(std::log(1e-4f) + u01(rng) * (std::log(20.f) - std::log(1e-4f)));
    float * d[6];
    const std::vector<float> * h[6] = {&q, &k, &v, &g, &b, &s};
    for (int i = 0; i < 6; ++i) {
        CK(cudaMalloc(&d[i], h[i]->size() * 4));
        CK(cudaMemcpy(d[i], h[i]->data(), h[i]->size() * 4, cudaMemcpyHostToDevice));
    }
    const size_t n_dst = (size_t) S * H * T * NS + (size_t) K * S * S * H * NS;
    float * dst;
    CK(cudaMalloc(&dst, n_dst * 4));
    int bad = 0;
    for (int pass = pass_begin; pass < pass_end; ++pass) {
        kimi_kda_params p{};
        const int Tp = (pass >= 11 && pass <= 15) ? 1 : T;  // tokens this pass (the first Tp of the buffers)
        // q stored [NSqk][T][Hk][S] but described as a permuted view on odd passes (swapped H/T strides
        // are equivalent here because Hk == 1)
        p.q = desc(d[0], S, Hk, Tp, NSqk, (size_t) S * T, S, (size_t) S * T * Hk);
        p.k = desc(d[1], S, Hk, Tp, NSqk, S, (size_t) S * Hk, (size_t) S * Hk * T);
        p.v = desc(d[2], S, H, Tp, NS, S, (size_t) S * H, (size_t) S * H * T);
        p.g = desc(d[3], S, H, Tp, NS, S, (size_t) S * H, (size_t) S * H * T);
        p.beta = desc(d[4], 1, H, Tp, NS, 1, H, (size_t) H * T);
        p.state = desc(d[5], S, S, H, NS, S, (size_t) S * S, (size_t) S * S * H);
        p.dst = dst;
        p.n_snapshots = (pass == 4 || pass == 5 || pass == 12 || pass == 18) ? K : 1;
        const bool rec = pass == 0 || (pass >= 9 && pass <= 15);
        p.algo = rec ? KIMI_KDA_ALGO_RECURRENT : KIMI_KDA_ALGO_CHUNKED;
        int math = rec ? KIMI_KDA_CUDA_MATH_FP32 : (pass - 1) % 3;
        if (pass == 5) math = KIMI_KDA_CUDA_MATH_TF32X3 | KIMI_KDA_CUDA_FUSED;
        if (pass == 6) math = KIMI_KDA_CUDA_MATH_FP32 | KIMI_KDA_CUDA_FUSED;
        if (pass == 7) setenv("KIMI_KDA_CUDA_SEG", "16", 1);
        if (pass == 8) { setenv("KIMI_KDA_CUDA_BV", "16", 1); math = KIMI_KDA_CUDA_MATH_TF32X3; }
        if (pass == 9) setenv("KIMI_KDA_CUDA_RC", "4x8", 1);
        if (pass == 10) setenv("KIMI_KDA_CUDA_RC", "1x4", 1);
        if (pass == 13) setenv("KIMI_KDA_CUDA_DEC", "1x4", 1);
        if (pass == 14) { setenv("KIMI_KDA_CUDA_DEC", "rc", 1); setenv("KIMI_KDA_CUDA_PDL", "0", 1); }
        if (pass == 15) { setenv("KIMI_KDA_CUDA_PF", "0", 1); setenv("KIMI_KDA_CUDA_PDL", "2", 1); }
        if (pass == 16 || pass == 18) math = KIMI_KDA_CUDA_MATH_BF16;
        if (pass == 17 || pass == 19 || pass == 20) math = KIMI_KDA_CUDA_MATH_F16;
        if (pass == 19) { setenv("KIMI_KDA_CUDA_OVL", "4", 1); setenv("KIMI_KDA_CUDA_SEG", "128", 1); }
        if (pass == 20) setenv("KIMI_KDA_CUDA_STATE_NS", "2", 1);
        if (pass == 22) { setenv("KIMI_KDA_CUDA_OVL", "2", 1); math = KIMI_KDA_CUDA_MATH_BF16; }
        if (pass == 23) { setenv("KIMI_KDA_CUDA_OVL", "5", 1); math = KIMI_KDA_CUDA_MATH_F16; }
        if (pass == 24) { setenv("KIMI_KDA_CUDA_OVL", "3", 1); setenv("KIMI_KDA_CUDA_OVL_NBUF", "4", 1); math = KIMI_KDA_CUDA_MATH_BF16; }
        if (pass == 21) { setenv("KIMI_KDA_CUDA_PREP7_PERSIST", "1", 1); math = KIMI_KDA_CUDA_MATH_BF16; }
        if (pass >= 25 && pass <= 27) {
            setenv("KIMI_KDA_CUDA_PREP7_DIAG", pass == 25 ? "0" : pass == 26 ? "1" : "3", 1);
            math = pass == 26 ? KIMI_KDA_CUDA_MATH_BF16 : KIMI_KDA_CUDA_MATH_F16;
        }
        if (pass == 18) setenv("KIMI_KDA_CUDA_SEG", "64", 1);
        CK(cudaMemset(dst, 0xff, n_dst * 4));  // NaN poison
        char err[256] = "";
        const int rc = kimi_kda_forward_cuda_ex(&p, math, nullptr, err, sizeof err);
        CK(cudaDeviceSynchronize());
        std::vector<float> out(n_dst);
        CK(cudaMemcpy(out.data(), dst, n_dst * 4, cudaMemcpyDeviceToHost));
        const size_t n_check = (size_t) S * H * Tp * NS + (size_t) (Tp < p.n_snapshots ? Tp : p.n_snapshots) * S * S * H * NS;
        size_t nonfinite = 0;
        for (size_t i = 0; i < n_check; ++i) nonfinite += !std::isfinite(out[i]);
        printf("S=%d T=%d pass %d algo=%d math=%d K=%lld: rc=%d %s nonfinite=%zu\n", S, T, pass, (int) p.algo, math,
               (long long) p.n_snapshots, rc, err, nonfinite);
        bad += rc != 0 || nonfinite != 0;
        unsetenv("KIMI_KDA_CUDA_SEG"); unsetenv("KIMI_KDA_CUDA_BV"); unsetenv("KIMI_KDA_CUDA_RC");
        unsetenv("KIMI_KDA_CUDA_DEC"); unsetenv("KIMI_KDA_CUDA_PDL"); unsetenv("KIMI_KDA_CUDA_PF");
        unsetenv("KIMI_KDA_CUDA_STATE_NS"); unsetenv("KIMI_KDA_CUDA_PREP7_PERSIST");
        unsetenv("KIMI_KDA_CUDA_OVL"); unsetenv("KIMI_KDA_CUDA_OVL_NBUF");
        unsetenv("KIMI_KDA_CUDA_PREP7_DIAG");
    }
    for (int i = 0; i < 6; ++i) cudaFree(d[i]);
    cudaFree(dst);
    return bad;
}

int main(int argc, char ** argv) {
    // "c64": only the 64-token path's passes (S = 128), for a quicker racecheck
    const bool only64 = argc > 1 && std::string(argv[1]) == "c64";
    int bad = only64 ? 0 : run_case(64, 40, 0, 16);
    bad += run_case(128, 70, 16, 28);  // two chunks, the second partial
    bad += run_case(128, 300, 23, 28);  // five chunks
    printf(bad ? "sanitize case FAILED\n" : "sanitize case ok\n");
    return bad ? 1 : 0;
}
