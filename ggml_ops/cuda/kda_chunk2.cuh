// kda_chunk2.cuh - chunked KDA prefill as two kernels: a chunk-parallel "prep" kernel and a
// sequential "state" kernel.
//
// Why not one fused kernel (kda_chunk.cuh): with B = 1 and 32 heads there are only 32 independent
// chains of chunks, so the sequential critical path is everything done per chunk. Everything that
// does not depend on the state (decays, the intra-chunk matrices, the UT inverse) is moved to a
// kernel that runs all (head, chunk) pairs in parallel at full occupancy; the state kernel is left
// with four small tensor-core products per chunk. Per chunk of C = 16 tokens (see kda_chunk.cuh):
//   prep:  Qg = q*Gam, Kd = k*Gam_C/Gam, Gam_C, P, T = (I + L)^-1,
//          Wk = T (beta * k*Gam), U = T (beta * v)                      -> workspace (fp32)
//   state: W = U - Wk S;  O = scale (Qg S + P W);  S <- Gam_C * S + Kd^T W
#pragma once

#include "kda_chunk.cuh"

namespace kimi_kda_cuda {

// workspace item per (seq, head, chunk), floats: Qg | Wk | Kd | U [C][S] each, P [C][C], Gam_C [S]
template <int S>
struct PrepItem {
    static constexpr int off_qg = 0, off_wk = CK_C * S, off_kd = 2 * CK_C * S, off_u = 3 * CK_C * S;
    static constexpr int off_p = 4 * CK_C * S, off_ge = off_p + CK_C * CK_C;
    static constexpr int size = off_ge + S;
};

template <int S>
struct PrepSmem {
    static constexpr int SP = S + 4, TP = CK_C + 4;
    static constexpr int off_q = 0, off_k = CK_C * SP, off_g = 2 * CK_C * SP, off_v = 3 * CK_C * SP;
    static constexpr int off_b = 4 * CK_C * SP;
    // Qg and Kd go straight to the workspace (only Kg is reused here): 46 KiB at S = 128, so four
    // CTAs fit on an SM and one CTA's loads overlap the others' serial phases
    static constexpr int off_kg = off_b + CK_C;
    static constexpr int off_ge = off_kg + CK_C * SP;
    static constexpr int off_L = off_ge + S, off_P = off_L + CK_C * TP, off_T = off_P + CK_C * TP;
    static constexpr int total = off_T + CK_C * TP;
    static constexpr size_t bytes = (size_t) total * sizeof(float);
};

template <int S, int MATH>
__global__ void __launch_bounds__(CK_THREADS, 4)
kda_prep_kernel(const Args a, float * __restrict__ ws, int n_chunks) {
    using L = PrepSmem<S>;
    using I = PrepItem<S>;
    extern __shared__ __align__(16) float sm[];
    constexpr int SP = L::SP, TP = L::TP, F = S / 4;
    const int c = blockIdx.x, h = blockIdx.y, seq = blockIdx.z;
    const int hk = h % a.Hk, sqk = seq / a.rq3;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, gr = lane >> 2, tg = lane & 3;
    const int t0 = a.t_begin + c * CK_C;
    float * rq = sm + L::off_q, * rk = sm + L::off_k, * rg = sm + L::off_g, * rv = sm + L::off_v, * rb = sm + L::off_b;
    float * sKg = sm + L::off_kg, * sGe = sm + L::off_ge;
    float * sL = sm + L::off_L, * sP = sm + L::off_P, * sT = sm + L::off_T;
    float * item = ws + (((int64_t) seq * a.H + h) * n_chunks + c) * I::size;

    // load the chunk (tokens past the end: zeros, i.e. g = 0, beta = 0: no effect on anything)
    for (int e = tid; e < 4 * CK_C * F; e += CK_THREADS) {
        const int which = e / (CK_C * F), rem = e % (CK_C * F), t = rem / F, f = rem % F, tt = t0 + t;
        float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
        float * dst;
        if (which == 0) dst = rq; else if (which == 1) dst = rk; else if (which == 2) dst = rg; else dst = rv;
        if (tt < a.t_end) {
            const float * src;
            if (which == 0)      src = a.q + (int64_t) sqk * a.q3 + (int64_t) tt * a.q2 + (int64_t) hk * a.q1;
            else if (which == 1) src = a.k + (int64_t) sqk * a.k3 + (int64_t) tt * a.k2 + (int64_t) hk * a.k1;
            else if (which == 2) src = a.g + (int64_t) seq * a.g3 + (int64_t) tt * a.g2 + (int64_t) h * a.g1;
            else                 src = a.v + (int64_t) seq * a.v3 + (int64_t) tt * a.v2 + (int64_t) h * a.v1;
            x = *reinterpret_cast<const float4 *>(src + 4 * f);
        }
        *reinterpret_cast<float4 *>(dst + t * SP + 4 * f) = x;
    }
    if (tid < CK_C) {
        const int tt = t0 + tid;
        rb[tid] = tt < a.t_end ? a.beta[(int64_t) seq * a.b3 + (int64_t) tt * a.b2 + (int64_t) h * a.b1] : 0.f;
    }
    __syncthreads();

    // (1) per channel: exp(g) once (kept in rg), running-product decays
    for (int i = tid; i < S; i += CK_THREADS) {
        float gam = 1.f;
#pragma unroll
        for (int t = 0; t < CK_C; ++t) {
            const float e = expf(rg[t * SP + i]);
            rg[t * SP + i] = e;
            gam *= e;
            item[I::off_qg + t * S + i] = rq[t * SP + i] * gam;
            sKg[t * SP + i] = rk[t * SP + i] * gam * rb[t];  // beta folded in: only T (beta K Gam) is used
        }
        sGe[i] = gam;
        float suf = 1.f;
#pragma unroll
        for (int t = CK_C - 1; t >= 0; --t) {
            item[I::off_kd + t * S + i] = rk[t * SP + i] * suf;
            suf *= rg[t * SP + i];
        }
    }
    __syncthreads();

    // (2) L and P (as in kda_chunk.cuh)
    {
        const int s = tid >> 4, cg = tid & 15;
        float accL[CK_C], accP[CK_C];
#pragma unroll
        for (int t = 0; t < CK_C; ++t) { accL[t] = 0.f; accP[t] = 0.f; }
        for (int f = cg; f < F; f += 16) {
            const float4 ks = *reinterpret_cast<const float4 *>(rk + s * SP + 4 * f);
            float4 p = ks;
#pragma unroll
            for (int t = 0; t < CK_C; ++t) {
                if (t >= s) {
                    const float4 qt = *reinterpret_cast<const float4 *>(rq + t * SP + 4 * f);
                    if (t > s) {
                        const float4 at = *reinterpret_cast<const float4 *>(rg + t * SP + 4 * f);
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
#pragma unroll
        for (int jv = 0; jv < 2; ++jv) {
            const int idx = 2 * cg + jv;
            if (idx < CK_C) { const int t = idx;        sL[t * TP + s] = t > s ? rb[t] * vals[jv] : 0.f; }
            else            { const int t = idx - CK_C; sP[t * TP + s] = t >= s ? vals[jv] : 0.f; }
        }
    }
    __syncthreads();

    // (3) warp 0: T = (I + L)^-1 by forward substitution; the others: beta * v in place, and
    //     write P, Gam_C out
    if (warp == 0) {
        if (lane < CK_C) {
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
    } else {
        for (int e = tid - 32; e < CK_C * F; e += CK_THREADS - 32) {
            const int t = e / F, f = e % F;
            float4 x = *reinterpret_cast<float4 *>(rv + t * SP + 4 * f);
            const float b = rb[t];
            x.x *= b; x.y *= b; x.z *= b; x.w *= b;
            *reinterpret_cast<float4 *>(rv + t * SP + 4 * f) = x;
        }
        for (int e = tid - 32; e < CK_C * CK_C + S; e += CK_THREADS - 32) {
            if (e < CK_C * CK_C) item[I::off_p + e] = sP[(e / CK_C) * TP + e % CK_C];
            else                 item[I::off_ge + e - CK_C * CK_C] = sGe[e - CK_C * CK_C];
        }
    }
    __syncthreads();

    // (4) Wk = T (beta Kg), U = T (beta V): S/8 column tiles each, straight to the workspace
    for (int tile = warp; tile < 2 * (S / 8); tile += CK_WARPS) {
        const bool isU = tile >= S / 8;
        const int n0 = (isU ? tile - S / 8 : tile) * 8;
        float w[4] = {0.f, 0.f, 0.f, 0.f};
        tile_mm<MATH, CK_C>(w, sT, TP, 1, (isU ? rv : sKg) + n0, SP, 1);
        float * o = item + (isU ? I::off_u : I::off_wk) + n0 + 2 * tg;
        *reinterpret_cast<float2 *>(o + gr * S)       = make_float2(w[0], w[1]);
        *reinterpret_cast<float2 *>(o + (gr + 8) * S) = make_float2(w[2], w[3]);
    }
}

template <int S, int BV>
struct StateSmem {
    static constexpr int SP = S + 4, BP = BV + 8, TP = CK_C + 4;
    // one stage: Qg, Wk, Kd [C][SP], U [C][BV], P [C][TP], Gam_C [S]
    static constexpr int st_qg = 0, st_wk = CK_C * SP, st_kd = 2 * CK_C * SP, st_u = 3 * CK_C * SP;
    static constexpr int st_p = st_u + CK_C * BV, st_ge = st_p + CK_C * TP;
    static constexpr int STAGE = st_ge + S;
    static constexpr int off_W = 2 * STAGE;              // W [C][BP]
    static constexpr int off_S = off_W + CK_C * BP;      // state slice [S][BP]
    static constexpr int total = off_S + S * BP;
    static constexpr size_t bytes = (size_t) total * sizeof(float);
};

// Warps of the state kernel: one per 16 x 8 output tile of W (BV/8 of them) and one per tile of Y.
// BV = 32: 8 warps, H * n_seqs * S/32 CTAs (128 for 32 heads, one per SM); BV = 16: 4 warps and
// twice the CTAs, two per SM (an A/B knob: measured slower on an H100, the kernel is issue-bound).
template <int BV> __host__ __device__ constexpr int state_warps() { return 2 * (BV / 8); }

template <int S, int BV>
__device__ __forceinline__ void state_prefetch(const float * item, float * st, int j0) {
    using L = StateSmem<S, BV>;
    using I = PrepItem<S>;
    constexpr int F = S / 4, FV = BV / 4, NTH = state_warps<BV>() * 32;
    for (int e = threadIdx.x; e < 3 * CK_C * F; e += NTH) {
        const int which = e / (CK_C * F), rem = e % (CK_C * F), t = rem / F, f = rem % F;
        cp_async16(st + which * CK_C * L::SP + t * L::SP + 4 * f, item + which * CK_C * S + t * S + 4 * f, true);
    }
    for (int e = threadIdx.x; e < CK_C * FV + CK_C * CK_C / 4 + F; e += NTH) {
        if (e < CK_C * FV) {
            const int t = e / FV, f = e % FV;
            cp_async16(st + L::st_u + t * BV + 4 * f, item + I::off_u + t * S + j0 + 4 * f, true);
        } else if (e < CK_C * FV + CK_C * CK_C / 4) {
            const int r = e - CK_C * FV, t = r / (CK_C / 4), f = r % (CK_C / 4);
            cp_async16(st + L::st_p + t * L::TP + 4 * f, item + I::off_p + t * CK_C + 4 * f, true);
        } else {
            const int f = e - CK_C * FV - CK_C * CK_C / 4;
            cp_async16(st + L::st_ge + 4 * f, item + I::off_ge + 4 * f, true);
        }
    }
    cp_async_commit();
}

// NA: accumulator chains of the 128-deep products (tile_mm); UNR: unroll the state-update row tiles.
// Both are A/B knobs for the H100 timing (kda_cuda.cu picks the measured default).
template <int S, int BV, int MATH, int NA = 1, int UNR = 0>
__global__ void __launch_bounds__(state_warps<BV>() * 32, BV >= 32 ? 1 : 2)
kda_state_kernel(const Args a, const float * __restrict__ ws, int n_chunks) {
    using L = StateSmem<S, BV>;
    using I = PrepItem<S>;
    extern __shared__ __align__(16) float sm[];
    constexpr int SP = L::SP, BP = L::BP, TP = L::TP;
    constexpr int NT = BV / 8, NTH = state_warps<BV>() * 32;  // NT: 8-column tiles of the slice
    const int h = blockIdx.x, seq = blockIdx.y, j0 = blockIdx.z * BV;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, gr = lane >> 2, tg = lane & 3;
    float * sW = sm + L::off_W, * sS = sm + L::off_S;
    const float * items = ws + ((int64_t) seq * a.H + h) * n_chunks * I::size;

    {
        const float * s_in = a.s_in + (int64_t) seq * a.s3 + (int64_t) h * a.s2;
        for (int e = tid; e < S * BV; e += NTH) {
            const int jj = e / S, i = e % S;
            sS[i * BP + jj] = s_in[(int64_t) (j0 + jj) * a.s1 + i];
        }
    }
    state_prefetch<S, BV>(items, sm, j0);

    // warps [0, NT): the W tiles (and the first half of the state rows); [NT, 2 NT): Y and O tiles
    // (and the second half of the rows)
    const bool wside = warp < NT;
    const int n0 = (wside ? warp : warp - NT) * 8;
    for (int c = 0; c < n_chunks; ++c) {
        const int t0 = a.t_begin + c * CK_C;
        float * st = sm + (c & 1) * L::STAGE;
        cp_async_wait_all();
        __syncthreads();  // stage c landed, state from chunk c-1 complete, stage c-1 free
        if (c + 1 < n_chunks) state_prefetch<S, BV>(items + (int64_t) (c + 1) * I::size, sm + ((c + 1) & 1) * L::STAGE, j0);

        // (A) W_n = U_n - Wk S_n -> sW; Y_n = Qg S_n (registers)
        float y[4] = {0.f, 0.f, 0.f, 0.f};
        if (wside) {
            float x[4] = {0.f, 0.f, 0.f, 0.f};
            tile_mm<MATH, S, NA>(x, st + L::st_wk, SP, 1, sS + n0, BP, 1);
            const int c0 = n0 + 2 * tg;
            const float * u = st + L::st_u;
            sW[gr * BP + c0]           = u[gr * BV + c0] - x[0];
            sW[gr * BP + c0 + 1]       = u[gr * BV + c0 + 1] - x[1];
            sW[(gr + 8) * BP + c0]     = u[(gr + 8) * BV + c0] - x[2];
            sW[(gr + 8) * BP + c0 + 1] = u[(gr + 8) * BV + c0 + 1] - x[3];
        } else {
            tile_mm<MATH, S, NA>(y, st + L::st_qg, SP, 1, sS + n0, BP, 1);
        }
        __syncthreads();

        // (B) O_n = scale (Y_n + P W_n)
        if (!wside) {
            tile_mm<MATH, CK_C>(y, st + L::st_p, TP, 1, sW + n0, BP, 1);
            const int64_t H = a.H;
            const int cc = j0 + n0 + 2 * tg, ta = t0 + gr, tb = t0 + gr + 8;
            float * ob = a.o + ((int64_t) seq * a.T_total) * H * S + (int64_t) h * S + cc;
            if (ta < a.t_end) *reinterpret_cast<float2 *>(ob + (int64_t) ta * H * S) = make_float2(y[0] * a.scale, y[1] * a.scale);
            if (tb < a.t_end) *reinterpret_cast<float2 *>(ob + (int64_t) tb * H * S) = make_float2(y[2] * a.scale, y[3] * a.scale);
        }
        // state: S <- Gam_C * S + Kd^T W for row tiles split between the two warp halves
        // (UNR: compile-time trip count, unrolled, so the independent row tiles' smem loads and mma
        // chains may interleave)
        constexpr int MT = S / 16, MH = (MT + 1) / 2;
        const int m_begin = wside ? 0 : MH, m_end = wside ? MH : MT;
        const float * ge = st + L::st_ge;
        auto row_tile = [&](int mt) {
            const int i0 = mt * 16;
            const int ca = (i0 + gr) * BP + n0 + 2 * tg, cb = (i0 + gr + 8) * BP + n0 + 2 * tg;
            const float ga = ge[i0 + gr], gb = ge[i0 + gr + 8];
            float cacc[4] = {sS[ca] * ga, sS[ca + 1] * ga, sS[cb] * gb, sS[cb + 1] * gb};
            tile_mm<MATH, CK_C>(cacc, st + L::st_kd + i0, 1, SP, sW + n0, BP, 1);
            sS[ca] = cacc[0]; sS[ca + 1] = cacc[1];
            sS[cb] = cacc[2]; sS[cb + 1] = cacc[3];
        };
        if constexpr (UNR) {
#pragma unroll
            for (int q = 0; q < MH; ++q)
                if (m_begin + q < MT) row_tile(m_begin + q);
        } else {
            for (int mt = m_begin; mt < m_end; ++mt) row_tile(mt);
        }
    }
    __syncthreads();
    {
        float * so = a.s_out + ((int64_t) seq * a.H + h) * S * S;
        for (int e = tid; e < S * BV; e += NTH) {
            const int jj = e / S, i = e % S;
            so[(int64_t) (j0 + jj) * S + i] = sS[i * BP + jj];
        }
    }
}

} // namespace kimi_kda_cuda
