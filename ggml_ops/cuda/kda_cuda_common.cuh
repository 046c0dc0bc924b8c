// kda_cuda_common.cuh - shared pieces of the CUDA KDA kernels: the launch arguments (ggml-style
// element strides), warp reductions and the tile matmul that runs either on the tensor cores
// (tf32 / error-compensated 3xtf32 mma.sync) or as plain fp32 FMAs with the same fragment layout,
// so every kernel has an fp32 twin for the 1e-5 check.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

namespace kimi_kda_cuda {

// Math used for the dense products inside a chunk. The recurrent kernel is always fp32.
enum Math : int {
    MATH_FP32   = 0,  // CUDA-core FMAs, fp32 throughout
    MATH_TF32X3 = 1,  // tensor cores, a*b ~ hi*hi + hi*lo + lo*hi: fp32-level accuracy
    MATH_TF32   = 2,  // tensor cores, one tf32 product: ~1e-3 relative
};

// Everything a kernel needs; strides are in floats (ggml nb / 4), row element stride is 1.
struct Args {
    const float * q; const float * k; const float * v; const float * g; const float * beta;
    const float * s_in;                 // initial state (element (i, j) at i + j*s1 + h*s2 + seq*s3)
    int64_t q1, q2, q3, k1, k2, k3, v1, v2, v3, g1, g2, g3, b1, b2, b3, s1, s2, s3;
    float * o;                          // dst: [S, H, T_total, n_seqs], contiguous
    float * s_out;                      // dst state slot 0: [S, S, H, n_seqs] per slot, contiguous
    int64_t slot_stride;                // floats between snapshot slots
    int S, H, Hk, n_seqs, rq3;          // rq3 = n_seqs / n_seqs_qk
    int t_begin, t_end, T_total;        // tokens this launch processes (absolute indices)
    int K;                              // snapshot slots
    float scale;
};

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
    for (int m = 16; m > 0; m >>= 1) x += __shfl_xor_sync(0xffffffffu, x, m);
    return x;
}

__device__ __forceinline__ uint32_t to_tf32(float x) {
    uint32_t r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
}

__device__ __forceinline__ void mma_tf32(float c[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#endif
}

// C[16 x 8] (+)= A[16 x KD] * B[KD x 8] for one warp, C in the m16n8 accumulator layout:
//   c[0] = C[gr][2*tg], c[1] = C[gr][2*tg+1], c[2] = C[gr+8][2*tg], c[3] = C[gr+8][2*tg+1]
// with gr = lane/4, tg = lane%4. A(m, k) = A[m*am + k*ak], B(k, n) = B[k*bk + n*bn] (shared memory).
// The k loop is split over independent accumulators (even/odd k steps; for 3xtf32 the correction
// products on their own) so the dependent chain of FMAs / mma.sync is short: these tiles sit on the
// sequential critical path of the state kernel, where latency, not throughput, is what costs.
// NA (tensor-core path): 1 = two chains for the main product, one per 3xtf32 correction product
// (the v3 layout); NA >= 2: NA chains for each of the three products.
template <int MATH, int KD, int NA_ = 1>
__device__ __forceinline__ void tile_mm(float c[4], const float * A, int am, int ak,
                                        const float * B, int bk, int bn) {
    const int lane = threadIdx.x & 31, gr = lane >> 2, tg = lane & 3;
    if constexpr (MATH == MATH_FP32) {
        static_assert(KD % 2 == 0, "KD must be even");
        float e[4] = {0.f, 0.f, 0.f, 0.f}, o[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll 8
        for (int kk = 0; kk < KD; kk += 2) {
            const float a0 = A[gr * am + kk * ak], a1 = A[(gr + 8) * am + kk * ak];
            const float b0 = B[kk * bk + (2 * tg) * bn], b1 = B[kk * bk + (2 * tg + 1) * bn];
            const float a2 = A[gr * am + (kk + 1) * ak], a3 = A[(gr + 8) * am + (kk + 1) * ak];
            const float b2 = B[(kk + 1) * bk + (2 * tg) * bn], b3 = B[(kk + 1) * bk + (2 * tg + 1) * bn];
            e[0] = fmaf(a0, b0, e[0]); e[1] = fmaf(a0, b1, e[1]); e[2] = fmaf(a1, b0, e[2]); e[3] = fmaf(a1, b1, e[3]);
            o[0] = fmaf(a2, b2, o[0]); o[1] = fmaf(a2, b3, o[1]); o[2] = fmaf(a3, b2, o[2]); o[3] = fmaf(a3, b3, o[3]);
        }
#pragma unroll
        for (int r = 0; r < 4; ++r) c[r] += e[r] + o[r];
    } else {
        constexpr int NB = NA_ <= 1 ? 2 : (KD / 8 < NA_ ? KD / 8 : NA_);  // main-product chains
        constexpr int NC = NA_ <= 1 ? 1 : NB;                              // per correction product
        float cb[NB][4], cs[NC][4], cu[NC][4];
#pragma unroll
        for (int x = 0; x < NB; ++x)
#pragma unroll
            for (int r = 0; r < 4; ++r) cb[x][r] = 0.f;
#pragma unroll
        for (int x = 0; x < NC; ++x)
#pragma unroll
            for (int r = 0; r < 4; ++r) { cs[x][r] = 0.f; cu[x][r] = 0.f; }
#pragma unroll
        for (int k0 = 0; k0 < KD; k0 += 8) {
            const int x = (k0 >> 3) % NB, xc = (k0 >> 3) % NC;
            const float fa0 = A[gr * am + (k0 + tg) * ak],     fa1 = A[(gr + 8) * am + (k0 + tg) * ak];
            const float fa2 = A[gr * am + (k0 + tg + 4) * ak], fa3 = A[(gr + 8) * am + (k0 + tg + 4) * ak];
            const float fb0 = B[(k0 + tg) * bk + gr * bn],     fb1 = B[(k0 + tg + 4) * bk + gr * bn];
            const uint32_t a0 = to_tf32(fa0), a1 = to_tf32(fa1), a2 = to_tf32(fa2), a3 = to_tf32(fa3);
            const uint32_t b0 = to_tf32(fb0), b1 = to_tf32(fb1);
            if constexpr (MATH == MATH_TF32X3) {
                // residuals of the tf32 rounding, themselves rounded to tf32
                const uint32_t la0 = to_tf32(fa0 - __uint_as_float(a0)), la1 = to_tf32(fa1 - __uint_as_float(a1));
                const uint32_t la2 = to_tf32(fa2 - __uint_as_float(a2)), la3 = to_tf32(fa3 - __uint_as_float(a3));
                const uint32_t lb0 = to_tf32(fb0 - __uint_as_float(b0)), lb1 = to_tf32(fb1 - __uint_as_float(b1));
                mma_tf32(cs[xc], la0, la1, la2, la3, b0, b1);
                mma_tf32(cu[xc], a0, a1, a2, a3, lb0, lb1);
            }
            mma_tf32(cb[x], a0, a1, a2, a3, b0, b1);
        }
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            float big = 0.f, small = 0.f;
#pragma unroll
            for (int x = 0; x < NB; ++x) big += cb[x][r];
#pragma unroll
            for (int x = 0; x < NC; ++x) small += cs[x][r] + cu[x][r];
            c[r] += big + small;
        }
    }
}

} // namespace kimi_kda_cuda
