// kda_chunk.cuh - chunked (WY/UT) KDA prefill, one fused kernel.
//
// One CTA per (head, sequence, block of BV value columns): given k, the value columns of the
// recurrence are independent, so splitting V gives H*n_seqs*(S/BV) CTAs while each keeps its
// state slice S[:, j0:j0+BV] in shared memory across all chunks (read once, written once).
// Per chunk of C = 16 tokens (G_t = cumulative log gate inside the chunk, Gam_t = exp(G_t)):
//   L[t,s] = beta_t sum_i k_t,i k_s,i exp(G_t,i - G_s,i)   (s < t)
//   P[t,s] =        sum_i q_t,i k_s,i exp(G_t,i - G_s,i)   (s <= t)
//   W      = (I + L)^-1 (beta * (V - (K*Gam) S))           the WY/UT form of the delta rule
//   O      = scale * ((Q*Gam) S + P W)
//   S     <- diag(Gam_C) S + (K * exp(G_C - G))^T W
// Pairwise decays are running products of exp(g) (never exp(+G): gates can sum to -300 inside a
// chunk), so L and P stay on CUDA cores in fp32; the state products (the bulk of the FLOPs) run
// on the tensor cores (tf32 or 3xtf32) or, for MATH_FP32, on CUDA cores with the same layout.
// q, k, g, v, beta of chunk c+1 are fetched with cp.async while chunk c computes.
#pragma once

#include "kda_cuda_common.cuh"

namespace kimi_kda_cuda {

constexpr int CK_C       = 16;   // chunk length
constexpr int CK_WARPS   = 8;
constexpr int CK_THREADS = CK_WARPS * 32;

template <int S, int BV>
struct ChunkSmem {
    static constexpr int SP  = S + 4;     // row pitch of [C][S] tiles (float4 aligned, bank skew)
    static constexpr int BP  = BV + 8;    // row pitch of [*][BV] tiles (conflict-free B fragments)
    static constexpr int TP  = CK_C + 4;  // pitch of the 16x16 matrices
    // raw inputs, double-buffered
    static constexpr int RAW = 3 * CK_C * SP + CK_C * BV + CK_C;
    static constexpr int off_raw0 = 0;
    static constexpr int off_raw1 = RAW;
    static constexpr int off_a    = 2 * RAW;                 // exp(g)       [C][SP]
    static constexpr int off_qg   = off_a  + CK_C * SP;      // q * Gam      [C][SP]
    static constexpr int off_kg   = off_qg + CK_C * SP;      // k * Gam      [C][SP]
    static constexpr int off_kd   = off_kg + CK_C * SP;      // k * Gam_C/Gam [C][SP]
    static constexpr int off_ge   = off_kd + CK_C * SP;      // Gam_C        [S]
    static constexpr int off_L    = off_ge + S;              // [C][TP]
    static constexpr int off_P    = off_L + CK_C * TP;
    static constexpr int off_T    = off_P + CK_C * TP;
    static constexpr int off_X    = off_T + CK_C * TP;       // [C][BP]
    static constexpr int off_W    = off_X + CK_C * BP;       // per warp [C][8+4]
    static constexpr int WP       = 12;
    static constexpr int off_S    = off_W + CK_WARPS * CK_C * WP;  // state slice [S][BP]
    static constexpr int total    = off_S + S * BP;
    static constexpr size_t bytes = (size_t) total * sizeof(float);
};

__device__ __forceinline__ void cp_async16(float * dst, const float * src, bool valid) {
    const uint32_t d = (uint32_t) __cvta_generic_to_shared(dst);
    const int n = valid ? 16 : 0;  // 0 source bytes: zero-fill (tokens past the end)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_async4(float * dst, const float * src, bool valid) {
    const uint32_t d = (uint32_t) __cvta_generic_to_shared(dst);
    const int n = valid ? 4 : 0;
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(d), "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::); }

template <int S, int BV>
__device__ __forceinline__ void chunk_prefetch(const Args & a, float * raw, int t0, int seq, int h, int hk,
                                               int sqk, int j0) {
    using L = ChunkSmem<S, BV>;
    float * rq = raw, * rk = raw + CK_C * L::SP, * rg = raw + 2 * CK_C * L::SP;
    float * rv = raw + 3 * CK_C * L::SP, * rb = rv + CK_C * BV;
    constexpr int F = S / 4;  // float4 per row
    for (int e = threadIdx.x; e < 3 * CK_C * F; e += CK_THREADS) {
        const int which = e / (CK_C * F), rem = e % (CK_C * F), t = rem / F, f = rem % F;
        const int tt = t0 + t;
        const bool ok = tt < a.t_end;
        const int tc = ok ? tt : a.t_begin;  // any valid address when zero-filling
        const float * src;
        float * dst;
        if (which == 0)      { src = a.q + (int64_t) sqk * a.q3 + (int64_t) tc * a.q2 + (int64_t) hk * a.q1; dst = rq; }
        else if (which == 1) { src = a.k + (int64_t) sqk * a.k3 + (int64_t) tc * a.k2 + (int64_t) hk * a.k1; dst = rk; }
        else                 { src = a.g + (int64_t) seq * a.g3 + (int64_t) tc * a.g2 + (int64_t) h * a.g1;  dst = rg; }
        cp_async16(dst + t * L::SP + 4 * f, src + 4 * f, ok);
    }
    constexpr int FV = BV / 4;
    for (int e = threadIdx.x; e < CK_C * FV + CK_C; e += CK_THREADS) {
        if (e < CK_C * FV) {
            const int t = e / FV, f = e % FV, tt = t0 + t;
            const bool ok = tt < a.t_end;
            const int tc = ok ? tt : a.t_begin;
            cp_async16(rv + t * BV + 4 * f,
                       a.v + (int64_t) seq * a.v3 + (int64_t) tc * a.v2 + (int64_t) h * a.v1 + j0 + 4 * f, ok);
        } else {
            const int t = e - CK_C * FV, tt = t0 + t;
            const bool ok = tt < a.t_end;
            const int tc = ok ? tt : a.t_begin;
            cp_async4(rb + t, a.beta + (int64_t) seq * a.b3 + (int64_t) tc * a.b2 + (int64_t) h * a.b1, ok);
        }
    }
    cp_async_commit();
}

template <int S, int BV, int MATH>
__global__ void __launch_bounds__(CK_THREADS, 1)
kda_chunk_kernel(const Args a) {
    using L = ChunkSmem<S, BV>;
    extern __shared__ __align__(16) float sm[];
    const int h = blockIdx.x, seq = blockIdx.y, j0 = blockIdx.z * BV;
    const int hk = h % a.Hk, sqk = seq / a.rq3;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, gr = lane >> 2, tg = lane & 3;
    constexpr int SP = L::SP, BP = L::BP, TP = L::TP;

    float * sA = sm + L::off_a, * sQg = sm + L::off_qg, * sKg = sm + L::off_kg, * sKd = sm + L::off_kd;
    float * sGe = sm + L::off_ge, * sL = sm + L::off_L, * sP = sm + L::off_P, * sT = sm + L::off_T;
    float * sX = sm + L::off_X, * sWp = sm + L::off_W + warp * CK_C * L::WP, * sS = sm + L::off_S;

    // initial state slice: S[i][j0 + jj] = s_in[i + (j0+jj)*s1] (column j contiguous over i)
    {
        const float * s_in = a.s_in + (int64_t) seq * a.s3 + (int64_t) h * a.s2;
        for (int e = tid; e < S * BV; e += CK_THREADS) {
            const int jj = e / S, i = e % S;
            sS[i * BP + jj] = s_in[(int64_t) (j0 + jj) * a.s1 + i];
        }
    }

    const int n_chunks = (a.t_end - a.t_begin + CK_C - 1) / CK_C;
    chunk_prefetch<S, BV>(a, sm + L::off_raw0, a.t_begin, seq, h, hk, sqk, j0);

    for (int c = 0; c < n_chunks; ++c) {
        const int t0 = a.t_begin + c * CK_C;
        float * raw = sm + ((c & 1) ? L::off_raw1 : L::off_raw0);
        const float * rq = raw, * rk = raw + CK_C * SP, * rg = raw + 2 * CK_C * SP;
        const float * rv = raw + 3 * CK_C * SP, * rb = rv + CK_C * BV;
        cp_async_wait_all();
        __syncthreads();  // chunk c landed; everyone is done with chunk c-1 (its buffer is free)
        if (c + 1 < n_chunks)
            chunk_prefetch<S, BV>(a, sm + ((c & 1) ? L::off_raw0 : L::off_raw1), t0 + CK_C, seq, h, hk, sqk, j0);

        // (1) per key channel: exp(g) once, cumulative decays by running products
        for (int i = tid; i < S; i += CK_THREADS) {
            float gam = 1.f;
#pragma unroll
            for (int t = 0; t < CK_C; ++t) {
                const float e = expf(rg[t * SP + i]);
                sA[t * SP + i] = e;
                gam *= e;
                sQg[t * SP + i] = rq[t * SP + i] * gam;
                sKg[t * SP + i] = rk[t * SP + i] * gam;
            }
            sGe[i] = gam;
            float suf = 1.f;  // exp(G_C - G_t)
#pragma unroll
            for (int t = CK_C - 1; t >= 0; --t) {
                sKd[t * SP + i] = rk[t * SP + i] * suf;
                suf *= sA[t * SP + i];
            }
        }
        __syncthreads();

        // (2) L and P: thread (s, channel group cg); running product over t > s, then a
        //     transposing butterfly over the 16 channel groups (lanes) leaves 2 sums per lane.
        {
            const int s = tid >> 4, cg = tid & 15;
            float accL[CK_C], accP[CK_C];
#pragma unroll
            for (int t = 0; t < CK_C; ++t) { accL[t] = 0.f; accP[t] = 0.f; }
            for (int f = cg; f < S / 4; f += 16) {
                const float4 ks = *reinterpret_cast<const float4 *>(rk + s * SP + 4 * f);
                float4 p = ks;
#pragma unroll
                for (int t = 0; t < CK_C; ++t) {
                    if (t >= s) {
                        const float4 qt = *reinterpret_cast<const float4 *>(rq + t * SP + 4 * f);
                        if (t > s) {
                            const float4 at = *reinterpret_cast<const float4 *>(sA + t * SP + 4 * f);
                            const float4 kt = *reinterpret_cast<const float4 *>(rk + t * SP + 4 * f);
                            p.x *= at.x; p.y *= at.y; p.z *= at.z; p.w *= at.w;
                            accL[t] += kt.x * p.x + kt.y * p.y + kt.z * p.z + kt.w * p.w;
                        }
                        accP[t] += qt.x * p.x + qt.y * p.y + qt.z * p.z + qt.w * p.w;
                    }
                }
            }
            float vals[2 * CK_C];
#pragma unroll
            for (int t = 0; t < CK_C; ++t) { vals[t] = accL[t]; vals[CK_C + t] = accP[t]; }
#pragma unroll
            for (int lvl = 0; lvl < 4; ++lvl) {
                const int m = 8 >> lvl, n = 32 >> lvl, half = n >> 1;
                const bool up = (lane & m) != 0;
#pragma unroll
                for (int jv = 0; jv < half; ++jv) {
                    const float send = up ? vals[jv] : vals[jv + half];
                    const float keep = up ? vals[jv + half] : vals[jv];
                    vals[jv] = keep + __shfl_xor_sync(0xffffffffu, send, m);
                }
            }
            // lane's cg now holds original indices 2*cg and 2*cg+1
#pragma unroll
            for (int jv = 0; jv < 2; ++jv) {
                const int idx = 2 * cg + jv;
                if (idx < CK_C) {
                    const int t = idx;
                    sL[t * TP + s] = t > s ? rb[t] * vals[jv] : 0.f;
                } else {
                    const int t = idx - CK_C;
                    sP[t * TP + s] = t >= s ? vals[jv] : 0.f;
                }
            }
        }
        __syncthreads();

        // (3) warps 0..3: Y_n = Qg S (kept in registers); warps 4..7: X_n = beta (V - Kg S);
        //     warp 7 first inverts I + L by forward substitution (lane j = column j).
        float y[4] = {0.f, 0.f, 0.f, 0.f};
        const int n0 = (warp & 3) * 8;
        if (warp == CK_WARPS - 1 && lane < CK_C) {
            const int j = lane;
            float col[CK_C];
#pragma unroll
            for (int t = 0; t < CK_C; ++t) {
                float acc = 0.f;
#pragma unroll
                for (int s2 = 0; s2 < t; ++s2) acc = fmaf(sL[t * TP + s2], col[s2], acc);
                col[t] = t == j ? 1.f : (t < j ? 0.f : -acc);
                sT[t * TP + j] = col[t];
            }
        }
        if (BV == 32 || n0 < BV) {
            if (warp < 4) {
                tile_mm<MATH, S>(y, sQg, SP, 1, sS + n0, BP, 1);
            } else {
                float x[4] = {0.f, 0.f, 0.f, 0.f};
                tile_mm<MATH, S>(x, sKg, SP, 1, sS + n0, BP, 1);
                const int c0 = n0 + 2 * tg;
                sX[gr * BP + c0]           = rb[gr]     * (rv[gr * BV + c0]           - x[0]);
                sX[gr * BP + c0 + 1]       = rb[gr]     * (rv[gr * BV + c0 + 1]       - x[1]);
                sX[(gr + 8) * BP + c0]     = rb[gr + 8] * (rv[(gr + 8) * BV + c0]     - x[2]);
                sX[(gr + 8) * BP + c0 + 1] = rb[gr + 8] * (rv[(gr + 8) * BV + c0 + 1] - x[3]);
            }
        }
        __syncthreads();

        // (4) every warp: W_n = T X_n for its column tile n (warp & 3), into a private buffer
        if (BV == 32 || n0 < BV) {
            float w[4] = {0.f, 0.f, 0.f, 0.f};
            tile_mm<MATH, CK_C>(w, sT, TP, 1, sX + n0, BP, 1);
            sWp[gr * L::WP + 2 * tg]           = w[0];
            sWp[gr * L::WP + 2 * tg + 1]       = w[1];
            sWp[(gr + 8) * L::WP + 2 * tg]     = w[2];
            sWp[(gr + 8) * L::WP + 2 * tg + 1] = w[3];
            __syncwarp();

            // (5a) warps 0..3: O_n = scale (Y_n + P W_n) -> dst
            if (warp < 4) {
                tile_mm<MATH, CK_C>(y, sP, TP, 1, sWp, L::WP, 1);
                const int64_t H = a.H;
                const int c0 = j0 + n0 + 2 * tg;
                const int ta = t0 + gr, tb = t0 + gr + 8;
                float * ob = a.o + ((int64_t) seq * a.T_total) * H * S + (int64_t) h * S + c0;
                if (ta < a.t_end) { float2 r = make_float2(y[0] * a.scale, y[1] * a.scale); *reinterpret_cast<float2 *>(ob + (int64_t) ta * H * S) = r; }
                if (tb < a.t_end) { float2 r = make_float2(y[2] * a.scale, y[3] * a.scale); *reinterpret_cast<float2 *>(ob + (int64_t) tb * H * S) = r; }
            }
            // (5b) state rows: warps 0..3 take row tiles [0, S/32), warps 4..7 the rest, of column tile n
            constexpr int MT = S / 16;              // 16-row tiles of the state
            const int m_begin = (warp < 4) ? 0 : (MT + 1) / 2, m_end = (warp < 4) ? (MT + 1) / 2 : MT;
            for (int mt = m_begin; mt < m_end; ++mt) {
                const int i0 = mt * 16;
                float cacc[4];
                const int ca = (i0 + gr) * BP + n0 + 2 * tg, cb = (i0 + gr + 8) * BP + n0 + 2 * tg;
                const float ga = sGe[i0 + gr], gb = sGe[i0 + gr + 8];
                cacc[0] = sS[ca] * ga; cacc[1] = sS[ca + 1] * ga;
                cacc[2] = sS[cb] * gb; cacc[3] = sS[cb + 1] * gb;
                // A(m = i, k = t) = Kd[t][i0 + i]
                tile_mm<MATH, CK_C>(cacc, sKd + i0, 1, SP, sWp, L::WP, 1);
                sS[ca] = cacc[0]; sS[ca + 1] = cacc[1];
                sS[cb] = cacc[2]; sS[cb + 1] = cacc[3];
            }
        }
        // the loop-top barrier orders these state writes before the next chunk's reads
    }
    __syncthreads();

    // final state (K == 1) or the state before the snapshot tail (written to slot 0 and then
    // carried on by the recurrent kernel), transposed back: column j contiguous over i
    {
        float * so = a.s_out + ((int64_t) seq * a.H + h) * S * S;
        for (int e = tid; e < S * BV; e += CK_THREADS) {
            const int jj = e / S, i = e % S;
            so[(int64_t) (j0 + jj) * S + i] = sS[i * BP + jj];
        }
    }
}

} // namespace kimi_kda_cuda
