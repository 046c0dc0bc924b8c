// kda_recurrent.cuh - token-by-token KDA (decode, short prompts, snapshot tails).
//
// One CTA per (head, sequence, block of RC_COLS value columns); 4 warps, each owning RC_CPW value
// columns. The state is stored transposed (column j of S contiguous over the key channel i), so a
// warp reads its columns as coalesced float4 rows, keeps them in registers for all tokens, and
// writes them once: every state byte crosses HBM exactly twice per launch. Per token the CTA
// stages q, k, exp(g) (one exp per channel, shared by all of the CTA's columns) and beta in
// shared memory; each column needs two warp reductions (S^T k and S^T q).
#pragma once

#include "kda_cuda_common.cuh"

namespace kimi_kda_cuda {

constexpr int RC_MAX_S   = 256;

// Programmatic dependent launch (sm_90+): the launcher sets programmaticStreamSerialization, so this
// grid may be scheduled while the previous kernel of the stream is still running; pdl_wait() blocks
// until that kernel has completed and its memory is visible, so it comes before every global access.
// pdl_trigger() lets the next kernel of the stream be scheduled now (it waits in its own pdl_wait).
// Both are no-ops below sm_90 and when the launch had no PDL attribute.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// NR = float4 chunks per lane per column: S <= 128 * NR. RC_CPW value columns per warp, RC_WARPS
// warps per CTA (the launcher picks among a few layouts: see launch_recurrent).
template <int NR, int RC_CPW, int RC_WARPS>
__global__ void __launch_bounds__(RC_WARPS * 32)
kda_recurrent_kernel(const Args a) {
    constexpr int RC_COLS = RC_WARPS * RC_CPW;  // value columns per CTA
    __shared__ __align__(16) float sk[RC_MAX_S];
    __shared__ __align__(16) float sq[RC_MAX_S];
    __shared__ __align__(16) float se[RC_MAX_S];
    __shared__ float sv[RC_COLS];
    __shared__ float sbeta;

    const int S = a.S, h = blockIdx.x, seq = blockIdx.y;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int colblk = blockIdx.z * RC_COLS;
    const int hk = h % a.Hk, sqk = seq / a.rq3;

    pdl_wait();
    pdl_trigger();
    // this lane's key channels: i = 4*lane + 128*r (+0..3)
    float4 st[RC_CPW][NR];
    const float * s_in = a.s_in + (int64_t) seq * a.s3 + (int64_t) h * a.s2;
#pragma unroll
    for (int c = 0; c < RC_CPW; ++c) {
        const int j = colblk + warp * RC_CPW + c;
#pragma unroll
        for (int r = 0; r < NR; ++r) {
            const int i = 4 * lane + 128 * r;
            st[c][r] = (j < S && i < S) ? *reinterpret_cast<const float4 *>(s_in + (int64_t) j * a.s1 + i)
                                        : make_float4(0.f, 0.f, 0.f, 0.f);
        }
    }

    const int64_t H = a.H;
    for (int t = a.t_begin; t < a.t_end; ++t) {
        __syncthreads();  // previous token's readers are done with the staging buffers
        const float * qt = a.q + (int64_t) sqk * a.q3 + (int64_t) t * a.q2 + (int64_t) hk * a.q1;
        const float * kt = a.k + (int64_t) sqk * a.k3 + (int64_t) t * a.k2 + (int64_t) hk * a.k1;
        const float * gt = a.g + (int64_t) seq * a.g3 + (int64_t) t * a.g2 + (int64_t) h * a.g1;
        for (int i = threadIdx.x; i < S; i += blockDim.x) {
            sq[i] = qt[i];
            sk[i] = kt[i];
            se[i] = expf(gt[i]);
        }
        if (threadIdx.x < RC_COLS) {
            const int j = colblk + threadIdx.x;
            sv[threadIdx.x] = j < S ? a.v[(int64_t) seq * a.v3 + (int64_t) t * a.v2 + (int64_t) h * a.v1 + j] : 0.f;
        }
        if (threadIdx.x == 0) sbeta = a.beta[(int64_t) seq * a.b3 + (int64_t) t * a.b2 + (int64_t) h * a.b1];
        __syncthreads();

        float4 kk[NR], qq[NR];
        float  kv[RC_CPW];
#pragma unroll
        for (int r = 0; r < NR; ++r) {
            const int i = 4 * lane + 128 * r;
            const bool in = i < S;
            const float4 e = in ? *reinterpret_cast<const float4 *>(se + i) : make_float4(0.f, 0.f, 0.f, 0.f);
            kk[r] = in ? *reinterpret_cast<const float4 *>(sk + i) : make_float4(0.f, 0.f, 0.f, 0.f);
            qq[r] = in ? *reinterpret_cast<const float4 *>(sq + i) : make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
            for (int c = 0; c < RC_CPW; ++c) {
                st[c][r].x *= e.x; st[c][r].y *= e.y; st[c][r].z *= e.z; st[c][r].w *= e.w;
            }
        }
#pragma unroll
        for (int c = 0; c < RC_CPW; ++c) {
            float s = 0.f;
#pragma unroll
            for (int r = 0; r < NR; ++r)
                s += st[c][r].x * kk[r].x + st[c][r].y * kk[r].y + st[c][r].z * kk[r].z + st[c][r].w * kk[r].w;
            kv[c] = s;
        }
#pragma unroll
        for (int c = 0; c < RC_CPW; ++c) kv[c] = warp_sum(kv[c]);

        const float beta = sbeta;
        float ov[RC_CPW];
#pragma unroll
        for (int c = 0; c < RC_CPW; ++c) {
            const float d = (sv[warp * RC_CPW + c] - kv[c]) * beta;
            float s = 0.f;
#pragma unroll
            for (int r = 0; r < NR; ++r) {
                st[c][r].x = fmaf(kk[r].x, d, st[c][r].x); st[c][r].y = fmaf(kk[r].y, d, st[c][r].y);
                st[c][r].z = fmaf(kk[r].z, d, st[c][r].z); st[c][r].w = fmaf(kk[r].w, d, st[c][r].w);
                s += st[c][r].x * qq[r].x + st[c][r].y * qq[r].y + st[c][r].z * qq[r].z + st[c][r].w * qq[r].w;
            }
            ov[c] = s;
        }
#pragma unroll
        for (int c = 0; c < RC_CPW; ++c) ov[c] = warp_sum(ov[c]);

        float * ot = a.o + ((int64_t) seq * a.T_total + t) * H * S + (int64_t) h * S;
        if (lane < RC_CPW) {
#pragma unroll
            for (int c = 0; c < RC_CPW; ++c) {
                const int j = colblk + warp * RC_CPW + c;
                if (c == lane && j < S) ot[j] = ov[c] * a.scale;
            }
        }

        // snapshot slot s holds the state s tokens before the end (slot 0 = final)
        const int slot = a.T_total - 1 - t;
        if (a.K > 1 && slot < a.K) {
            float * so = a.s_out + (int64_t) slot * a.slot_stride + ((int64_t) seq * H + h) * S * S;
#pragma unroll
            for (int c = 0; c < RC_CPW; ++c) {
                const int j = colblk + warp * RC_CPW + c;
#pragma unroll
                for (int r = 0; r < NR; ++r) {
                    const int i = 4 * lane + 128 * r;
                    if (j < S && i < S) *reinterpret_cast<float4 *>(so + (int64_t) j * S + i) = st[c][r];
                }
            }
        }
    }

    if (a.K == 1) {
        float * so = a.s_out + ((int64_t) seq * H + h) * S * S;
#pragma unroll
        for (int c = 0; c < RC_CPW; ++c) {
            const int j = colblk + warp * RC_CPW + c;
#pragma unroll
            for (int r = 0; r < NR; ++r) {
                const int i = 4 * lane + 128 * r;
                if (j < S && i < S) *reinterpret_cast<float4 *>(so + (int64_t) j * S + i) = st[c][r];
            }
        }
    }
}

// kda_decode_kernel flags (run-time, uniform): DEC_TRIGGER = let the next kernel of the stream be
// scheduled as soon as this one starts (PDL; it still waits for this grid to complete);
// DEC_PREFETCH = before pdl_wait(), prefetch this warp's state rows into L2 (a prefetch returns no
// data and L2 is the point of coherence, so a predecessor still writing them is harmless; it hides
// the HBM fetch of a cold state behind the predecessor's tail when the launch overlaps). Both are
// on by default (kda_cuda.cu launch_dec).
constexpr int DEC_TRIGGER = 1, DEC_PREFETCH = 2;

// One token (decode): t_begin == T_total - 1, the state goes to snapshot slot 0. No shared memory
// and no barrier: each warp owns CPW value columns, lane l holds key channels 4l..4l+3 (+128 r) of
// each, and reads its own float4 of q, k and g from global memory (L2) together with the state, so
// every load of the step is in flight at once and one memory round trip covers them. exp(g) is
// computed once per channel per warp and shared by the warp's columns. The output uses
//   q.S_new = q.(decayed S) + d (q.k),   d = beta (v - k.(decayed S)),
// so the three reductions (k.S, q.S per column, q.k) run interleaved instead of back to back.
// Plain (coherent) loads throughout, no __ldg / ld.global.nc: under PDL a non-coherent load of data
// the predecessor wrote is not ordered by griddepcontrol.wait.
template <int NR, int CPW, int NW>
__global__ void __launch_bounds__(NW * 32)
kda_decode_kernel(const Args a, const int flags) {
    const int S = a.S, h = blockIdx.x, seq = blockIdx.y, t = a.t_begin;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int j0 = (blockIdx.z * NW + warp) * CPW;  // first value column of this warp
    const int hk = h % a.Hk, sqk = seq / a.rq3;
    const int64_t H = a.H;
    const float * s_in = a.s_in + (int64_t) seq * a.s3 + (int64_t) h * a.s2;

    if ((flags & DEC_PREFETCH) && j0 < S) {
        // lane -> (column c, 128-byte line r4 of its row); S <= 256: at most 8 lines per column
        const int c = lane / (8 * NR), r4 = lane % (8 * NR);
        if (c < CPW && j0 + c < S && 32 * r4 < S)
            asm volatile("prefetch.global.L2 [%0];" :: "l"(s_in + (int64_t) (j0 + c) * a.s1 + 32 * r4));
    }
    pdl_wait();
    if (flags & DEC_TRIGGER) pdl_trigger();
    if (j0 >= S) return;  // whole warp idle (S not a multiple of the CTA's columns); no barriers below

    const float * qt = a.q + (int64_t) sqk * a.q3 + (int64_t) t * a.q2 + (int64_t) hk * a.q1;
    const float * kt = a.k + (int64_t) sqk * a.k3 + (int64_t) t * a.k2 + (int64_t) hk * a.k1;
    const float * gt = a.g + (int64_t) seq * a.g3 + (int64_t) t * a.g2 + (int64_t) h * a.g1;
    const float * vt = a.v + (int64_t) seq * a.v3 + (int64_t) t * a.v2 + (int64_t) h * a.v1;
    const float beta = a.beta[(int64_t) seq * a.b3 + (int64_t) t * a.b2 + (int64_t) h * a.b1];

    const float4 z = make_float4(0.f, 0.f, 0.f, 0.f);
    float4 st[CPW][NR], kk[NR], qq[NR], gg[NR];
    float vv[CPW];
#pragma unroll
    for (int c = 0; c < CPW; ++c) {
        const int j = j0 + c;
#pragma unroll
        for (int r = 0; r < NR; ++r) {
            const int i = 4 * lane + 128 * r;
            st[c][r] = (j < S && i < S) ? *reinterpret_cast<const float4 *>(s_in + (int64_t) j * a.s1 + i) : z;
        }
        vv[c] = j < S ? vt[j] : 0.f;
    }
#pragma unroll
    for (int r = 0; r < NR; ++r) {
        const int i = 4 * lane + 128 * r;
        const bool in = i < S;
        kk[r] = in ? *reinterpret_cast<const float4 *>(kt + i) : z;
        qq[r] = in ? *reinterpret_cast<const float4 *>(qt + i) : z;
        gg[r] = in ? *reinterpret_cast<const float4 *>(gt + i) : z;
    }

    // decay, then the per-lane partial sums of k.S, q.S (per column) and q.k
    float red[2 * CPW + 1];
    float qk = 0.f;
#pragma unroll
    for (int r = 0; r < NR; ++r) {
        const float4 e = make_float4(expf(gg[r].x), expf(gg[r].y), expf(gg[r].z), expf(gg[r].w));
        qk += qq[r].x * kk[r].x + qq[r].y * kk[r].y + qq[r].z * kk[r].z + qq[r].w * kk[r].w;
#pragma unroll
        for (int c = 0; c < CPW; ++c) {
            st[c][r].x *= e.x; st[c][r].y *= e.y; st[c][r].z *= e.z; st[c][r].w *= e.w;
        }
    }
#pragma unroll
    for (int c = 0; c < CPW; ++c) {
        float sk = 0.f, sq = 0.f;
#pragma unroll
        for (int r = 0; r < NR; ++r) {
            sk += st[c][r].x * kk[r].x + st[c][r].y * kk[r].y + st[c][r].z * kk[r].z + st[c][r].w * kk[r].w;
            sq += st[c][r].x * qq[r].x + st[c][r].y * qq[r].y + st[c][r].z * qq[r].z + st[c][r].w * qq[r].w;
        }
        red[2 * c] = sk;
        red[2 * c + 1] = sq;
    }
    red[2 * CPW] = qk;
#pragma unroll
    for (int m = 16; m > 0; m >>= 1)
#pragma unroll
        for (int x = 0; x < 2 * CPW + 1; ++x) red[x] += __shfl_xor_sync(0xffffffffu, red[x], m);

    float * ot = a.o + ((int64_t) seq * a.T_total + t) * H * S + (int64_t) h * S;
    float * so = a.s_out + ((int64_t) seq * H + h) * S * S;
#pragma unroll
    for (int c = 0; c < CPW; ++c) {
        const int j = j0 + c;
        const float d = (vv[c] - red[2 * c]) * beta;
        if (lane == c && j < S) ot[j] = (red[2 * c + 1] + d * red[2 * CPW]) * a.scale;
#pragma unroll
        for (int r = 0; r < NR; ++r) {
            const int i = 4 * lane + 128 * r;
            float4 u = st[c][r];
            u.x = fmaf(kk[r].x, d, u.x); u.y = fmaf(kk[r].y, d, u.y);
            u.z = fmaf(kk[r].z, d, u.z); u.w = fmaf(kk[r].w, d, u.w);
            if (j < S && i < S) *reinterpret_cast<float4 *>(so + (int64_t) j * S + i) = u;
        }
    }
}

} // namespace kimi_kda_cuda
