// kda_chunk64.cuh - chunked KDA prefill with 64-token chunks and 16-bit (bf16 or fp16) tensor-core
// operands: the fast path (KIMI_KDA_CUDA_MATH_BF16 / _F16, S_v = S_k = 128).
//
// Two kernels, as kda_chunk2.cuh, but with a compact 16-bit workspace and 4x fewer sequential steps:
//   prep  (one CTA per (chunk, head, seq), all in parallel): reads q, k, g, v, beta of 64 tokens once
//         and writes, per chunk, in E = bf16 / fp16:
//           Qg  = q * exp(G)            [64][128]   (G: inclusive cumulative log gate in the chunk)
//           W   = T (beta k exp(G))     [64][128]   (T = (I + L)^-1, the UT transform)
//           Kd  = k * exp(G_63 - G)     [64][128]
//           U   = T (beta v)            [64][128]
//           Aqk = (q_t . k_s exp(G_t - G_s))_{s <= t}   [64][64]
//         and exp(G_63) [128] in fp32: 74240 bytes per chunk and head (vs 128 KiB of f32 inputs).
//   state (one CTA per (head, seq, 32 value columns), sequential over chunks): the state slice lives
//         in registers in fp32 (mma accumulators); per chunk, on the tensor cores (m16n8k16, fp32
//         accumulation):  V = U - W S;  O = scale (Qg S + Aqk V);  S <- exp(G_63) S + Kd^T V.
//         The next chunk's operands arrive by cp.async while the current one computes.
// Decays: every exponent used is <= 0. Inside a 16-token sub-block the pairwise decays are running
// products of exp(g) (fp32, CUDA cores); across sub-blocks a < b they are factored through the
// sub-block boundaries: exp(G_t - G_s) = exp(G_t - G_16a) exp(G_16a - G_16(b+1)) exp(G_16(b+1) - G_s),
// three factors <= 1, so the off-diagonal blocks of L and Aqk are tensor-core products (tf32).
// The UT inverse: 16 x 16 diagonal blocks by forward substitution, then block rows by distance.
#pragma once

#include "kda_chunk.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace kimi_kda_cuda {

constexpr int C64 = 64;            // tokens per chunk
constexpr int C64_THREADS = 256;   // both kernels: 8 warps
constexpr int C64_S = 128;         // the only S this path is built for
constexpr int C64_BV = 32;         // value columns per state CTA

// ---- 16-bit element helpers -------------------------------------------------------------------
template <typename E> struct Half16;
template <> struct Half16<__nv_bfloat16> {
    static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
        __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
        return *reinterpret_cast<uint32_t *>(&v);
    }
    static __device__ __forceinline__ __nv_bfloat16 one(float x) { return __float2bfloat16_rn(x); }
    static __device__ __forceinline__ float2 unpack(uint32_t x) {
        __nv_bfloat162 v = *reinterpret_cast<__nv_bfloat162 *>(&x);
        return __bfloat1622float2(v);
    }
    static __device__ __forceinline__ void mma(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
    }
};
template <> struct Half16<__half> {
    static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
        __half2 v = __floats2half2_rn(lo, hi);
        return *reinterpret_cast<uint32_t *>(&v);
    }
    static __device__ __forceinline__ __half one(float x) { return __float2half_rn(x); }
    static __device__ __forceinline__ float2 unpack(uint32_t x) {
        __half2 v = *reinterpret_cast<__half2 *>(&x);
        return __half22float2(v);
    }
    static __device__ __forceinline__ void mma(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
    }
};

__device__ __forceinline__ void ldsm4(uint32_t r[4], const void * p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 750
    const uint32_t a = (uint32_t) __cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
#endif
}
__device__ __forceinline__ void ldsm4t(uint32_t r[4], const void * p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 750
    const uint32_t a = (uint32_t) __cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
#endif
}
__device__ __forceinline__ void cp_async16v(void * dst, const void * src) {
    const uint32_t d = (uint32_t) __cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(src));
}

// One stage of a butterfly reduce-scatter over lanes: vals[0, 2 HALF) summed pairwise with the lane
// MK apart; afterwards vals[0, HALF) hold this lane's half (compile-time indices: stays in registers).
template <int HALF, int MK>
__device__ __forceinline__ void rs_stage(float * vals, bool up) {
#pragma unroll
    for (int jv = 0; jv < HALF; ++jv) {
        const float lo = vals[jv], hi = vals[jv + HALF];
        vals[jv] = (up ? hi : lo) + __shfl_xor_sync(0xffffffffu, up ? lo : hi, MK);
    }
}
// 32 values per lane, 16 lanes (xor 8, 4, 2, 1): lane cg ends with the sums of values 2 cg, 2 cg + 1
__device__ __forceinline__ void reduce_scatter16(float vals[32], int lane) {
    rs_stage<16, 8>(vals, (lane & 8) != 0);
    rs_stage<8, 4>(vals, (lane & 4) != 0);
    rs_stage<4, 2>(vals, (lane & 2) != 0);
    rs_stage<2, 1>(vals, (lane & 1) != 0);
}

// Workspace item per (seq, head, chunk), bytes: Qg | W | Kd (E [64][128] each), U (E, 4 slices of
// [64][32]: the value columns of one state CTA contiguous), Aqk (E [64][64]), exp(G_63) (float [128]).
// The state kernel copies an item's parts into shared memory as they are (three bulk copies per chunk:
// Qg | W | Kd, its U slice, Aqk | exp(G_63)), so the prep writes the 16-bit matrices unpadded with their
// 16-byte chunks XOR-swizzled inside each row (item_swz, item_swz_u): the 8 rows an ldmatrix reads
// then hit 8 distinct bank groups without padding.
struct Item64 {
    static constexpr int qg = 0, w = C64 * C64_S * 2, kd = 2 * C64 * C64_S * 2, u = 3 * C64 * C64_S * 2;
    static constexpr int u_slice = C64 * C64_BV * 2;  // 4096
    static constexpr int aqk = 4 * C64 * C64_S * 2, gc = aqk + C64 * C64 * 2;
    static constexpr int size = gc + C64_S * 4;  // 74240
};
// stored position of 16-byte chunk f of row t of Qg, W, Kd (16 chunks per row) and Aqk (8 per row)
__host__ __device__ constexpr int item_swz(int t, int f) { return f ^ (t & 7); }
// stored position of 16-byte chunk n of row t of a U slice (4 chunks per row)
__host__ __device__ constexpr int item_swz_u(int t, int n) { return n ^ ((t >> 1) & 3); }
// u32 index of the pair (row t, columns 2 p, 2 p + 1) in a swizzled [64][128] matrix
__host__ __device__ constexpr int item_u32(int t, int p) { return t * 64 + item_swz(t, p >> 2) * 4 + (p & 3); }

// ---- prep kernel v7: 2 CTAs per SM ---------------------------------------------------------------
// 256 threads, 96 KiB of shared memory (v6: 218 KiB, one CTA per SM), so one CTA's loads and stores
// overlap the other's compute. What changed:
//  - no cumulative log gate G: every decay is a running product of a = exp(g) (fp32) in registers.
//    In the column passes thread (cp, b) owns channels 2 cp, 2 cp + 1 of the 16 tokens of sub-block
//    b; with x_b = prod of a over sub-block b (exchanged through shared memory) and the in-block
//    forward / backward products F_t = prod_{u = 16 b .. t} a_u, B_t = prod_{u = t + 1 .. 16 b + 15} a_u:
//      Qg = q x_<b F, Kd = k B x_>b, Kb = beta k x_<b F, Qdec / Kdec = q / k F, R = k B,
//      exp(G_63) = x_0 x_1 x_2 x_3, boundary factor of the pair (a, b) = prod_{b < c < a} x_c;
//    only multiplications of factors <= 1 (no exp of differences, no cancellation).
//  - W and U by block forward substitution (no off-diagonal blocks of T; see (6), (7)).
//  - q, k and the decayed operands live in fp16 (q, k are unit vectors; fp16 has tf32's mantissa),
//    exp(g) stays fp32 (running products of up to 15 factors); the matrix products (off-diagonal
//    blocks of L and Aqk, W = T Kb, U = T (beta v)) are fp16 m16n8k16 mma with fp32 accumulation
//    (v6: tf32), for either workspace type E.
//  - the decayed operands are built after the diagonal blocks (second column pass), in the space that
//    exp(g) and the raw q, k used, from those fp16 q, k and fp32 exp(g) (reading q, k, g again from
//    L2 instead: same accuracy, 56 us slower at T = 8192); v is loaded into registers at the end of
//    that pass and stored as fp16 beta v two phases later.
// Range assumptions of the fp16 operands: |v| and the entries of T = (I + L)^-1 below 6.5e4 (FLA
// uses the input dtype for the same products).
struct Prep7Smem {  // bytes
    static constexpr int AP = C64_S + 4;  // fp32 pitch (floats) of exp(g)
    static constexpr int HP = C64_S + 8;  // 16-bit pitch (elements) of the [64][128] operands
    static constexpr int LP = C64 + 4;    // fp32 pitch of L and T
    static constexpr int PP = C64 + 8;    // 16-bit pitch of Aqk
    // exp(g) float [64][AP]; after the diagonal blocks R (f16 [48][HP]) | Kb (f16 [64][HP]);
    // scratch of the block inverse over R; the W stage (E [64][HP]) at the end
    static constexpr int a = 0, r = 0, kb = 48 * HP * 2;
    static constexpr int q = C64 * AP * 4;      // f16 [64][HP]: q, then Qdec, then beta v
    static constexpr int k = q + C64 * HP * 2;  // f16 [64][HP]: k, then Kdec, then T (float [64][LP])
    static constexpr int L = k + C64 * HP * 2;  // float [64][LP]; the U stage at the end
    static constexpr int P = L + C64 * LP * 4;  // E [64][PP]: Aqk
    static constexpr int x = P + C64 * PP * 2;  // float [4][128]: products of exp(g) per sub-block
    static constexpr int m = x + 4 * C64_S * 4; // f16 [3][128]: boundary decays of pairs (2,0), (3,0), (3,1)
    static constexpr int b = m + 3 * C64_S * 2; // float [64]: beta
    static constexpr size_t bytes = (size_t) b + C64 * 4;  // 98304
};
static_assert(Prep7Smem::kb + C64 * Prep7Smem::HP * 2 <= Prep7Smem::q, "R | Kb must fit over exp(g)");
static_assert(C64 * Prep7Smem::LP * 4 <= C64 * Prep7Smem::HP * 2, "T must fit over k");
static_assert(2 * (Prep7Smem::bytes + 1024) <= 233472, "two CTAs per SM");

__device__ __forceinline__ uint32_t hmul2u(uint32_t x, uint32_t y) {
    __half2 r = __hmul2(*reinterpret_cast<__half2 *>(&x), *reinterpret_cast<__half2 *>(&y));
    return *reinterpret_cast<uint32_t *>(&r);
}
__device__ __forceinline__ float4 ld_h4(const __half * p) {
    const uint2 u = *reinterpret_cast<const uint2 *>(p);
    const float2 lo = __half22float2(*reinterpret_cast<const __half2 *>(&u.x));
    const float2 hi = __half22float2(*reinterpret_cast<const __half2 *>(&u.y));
    return make_float4(lo.x, lo.y, hi.x, hi.y);
}

// One column pass: g, q, k of the thread's 16 tokens x 2 channels (zero past the end: a = 1, q = k = 0)
__device__ __forceinline__ void prep7_load(const float * gp, const float * qp, const float * kp, int64_t g2, int64_t q2,
                                           int64_t k2, int nvalid, float2 av[16], float2 qv[16], float2 kv[16]) {
    constexpr float LOG2E = 1.4426950408889634f;
#pragma unroll
    for (int t = 0; t < 16; ++t) {
        const bool ok = t < nvalid;
        const float2 z = make_float2(0.f, 0.f);
        const float2 gg = ok ? *reinterpret_cast<const float2 *>(gp + t * g2) : z;
        qv[t] = ok ? *reinterpret_cast<const float2 *>(qp + t * q2) : z;
        kv[t] = ok ? *reinterpret_cast<const float2 *>(kp + t * k2) : z;
        av[t] = make_float2(exp2f(gg.x * LOG2E), exp2f(gg.y * LOG2E));
    }
}

// L2 prefetch of one 512-byte row (an S = 128 row of q, k, g or v)
__device__ __forceinline__ void prefetch_l2_row(const void * p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(p), "r"(512) : "memory");
#elif defined(__CUDA_ARCH__)
#pragma unroll
    for (int i = 0; i < 4; ++i) asm volatile("prefetch.global.L2 [%0];\n" ::"l"(reinterpret_cast<const char *>(p) + 128 * i));
#endif
}

// Phase (2) of prep v7 on the tensor cores ($KIMI_KDA_CUDA_PREP7_DIAG = 1, 2, 3): the diagonal 16 x 16
// blocks of L (beta_t folded in) and Aqk with a second level of factorisation. Each 16-token sub-block
// is cut into 4 mini-blocks of 4 tokens; for t in mini-block m(t) > m(s) the decay prod_{u = s+1..t} a_u
// factors through the mini-block boundaries as F(t) * X_{m(s)+1} .. X_{m(t)-1} * Bk(s), with
// F(t) = prod_{u = 4 m(t) .. t} a_u, Bk(s) = prod_{u = s+1 .. 4 m(s) + 3} a_u and X_m the product over
// mini-block m: every factor a product of a = exp(g) <= 1 (no exp of differences). So one fp16 mma of
// A = x F (x = k for L, q for Aqk) by B = k Bk gives the pairs of adjacent mini-blocks, and a second
// one, whose A fragment is scaled in registers (rows 8..15 by X_{m-1}; rows 12..15 by X_1 X_2, placed in
// the fragment rows 4..7 that have no pair of their own), gives the pairs 2 and 3 mini-blocks apart.
// The 4 x 4 tiles of pairs inside a mini-block (10 per mini-block for Aqk, 6 for L) stay on the CUDA
// cores (fp32 running products, as the v7 code), reduced over the 8 lanes of the mini-block.
// Warp w: sub-block w / 2, product w % 2 (0: L, 1: Aqk); it builds its operands into its own scratch
// slot (in the L and Aqk areas; so only __syncwarp between build and mma), then one __syncthreads
// before the results overwrite those areas.
// Two operand precisions (mode: 1 both products fp16, 2 L fp16 / Aqk split, 3 both split):
//  - fp16 (prep7_diag_f16): A, B rounded to fp16 once (as the off-diagonal blocks), the boundary
//    factors X in fp16 (hmul2 on the fragments); channels in 4 quarters of 32; 2048 B of scratch.
//  - split (prep7_diag_split): A, B as fp16 hi + lo pairs (3 mma per product: hi hi, hi lo, lo hi), the
//    boundary factors applied in fp32 to hi + lo before splitting again: about fp32 accuracy, as the
//    CUDA-core code; channels in steps of 32 (4096 B of scratch: mode 2) or 16 (2432 B: mode 3).
// Scratch slots: modes 1, 3: 2432 B per warp, warps 0-6 in the L area, warp 7 in the Aqk area; mode 2:
// L warps 2048 B at the start of the L area, Aqk warps 4096 B (warps 1, 3 after them, 5, 7 in Aqk's).
constexpr int PREP7_DIAG_WS = 2432;  // scratch bytes per warp (modes 1, 3)
static_assert(7 * PREP7_DIAG_WS <= C64 * Prep7Smem::LP * 4 && PREP7_DIAG_WS <= C64 * Prep7Smem::PP * 2,
              "phase (2) scratch, modes 1, 3: 7 warps in the L area, one in the Aqk area");
static_assert(4 * 2048 + 2 * 4096 <= C64 * Prep7Smem::LP * 4 && 2 * 4096 <= C64 * Prep7Smem::PP * 2,
              "phase (2) scratch, mode 2");

__device__ __forceinline__ void split_h2(float x, float y, uint32_t & hi, uint32_t & lo) {
    hi = Half16<__half>::pack(x, y);
    const float2 f = Half16<__half>::unpack(hi);
    lo = Half16<__half>::pack(x - f.x, y - f.y);
}

// fp16 operands; vals[4 t + s] += x_t . k_s decay (pairs inside the lane's mini-block, its channels);
// c1: pass 1, c23: pass 2 / 3 (fragments of the 16 x 16 product)
__device__ __forceinline__ void prep7_diag_f16(const char * sm, char * scr, int o, bool isQ, float vals[16],
                                               float c1[2][4], float c23[2][4]) {
    using L7 = Prep7Smem;
    using HF = Half16<__half>;
    constexpr int AP = L7::AP, HP = L7::HP;
    constexpr int QP = 40;  // scratch pitch (halves): 32 channels + 8
    static_assert(2 * 12 * QP * 2 + 2 * 32 * 2 <= PREP7_DIAG_WS, "fp16 scratch fits a slot");
    const int lane = threadIdx.x & 31, gr = lane >> 2, tg = lane & 3;
    const float * sA = reinterpret_cast<const float *>(sm + L7::a);
    const __half * sK = reinterpret_cast<const __half *>(sm + L7::k);
    const __half * sQ = reinterpret_cast<const __half *>(sm + L7::q);
    __half * bufA = reinterpret_cast<__half *>(scr);  // [12][QP]: A rows 4..15
    __half * bufB = bufA + 12 * QP;                   // [12][QP]: B rows 0..11
    __half * bufX = bufB + 12 * QP;                   // [2][32]: X_1, X_2
    const uint32_t * bufX32 = reinterpret_cast<const uint32_t *>(bufX);
    const int mb = lane >> 3, c4 = 4 * (lane & 7);  // build: mini-block mb, channels c4 .. c4 + 3 of the quarter
    // ldmatrix rows: A rows 0..3 (no pairs) read row 4, B rows 12..15 (no pairs) read row 11
    const int ar = lane & 15, arow = (ar < 4 ? 4 : ar) - 4, acol = (lane >> 4) * 8;
    const int bn = (lane & 7) + ((lane >> 4) << 3), brow = bn > 11 ? 11 : bn, bcol = ((lane >> 3) & 1) * 8;
#pragma unroll 1
    for (int qq = 0; qq < 4; ++qq) {
        const int ch = 32 * qq + c4;
        float4 av[4], kf[4], xf[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int t = o + 4 * mb + j;
            av[j] = *reinterpret_cast<const float4 *>(sA + t * AP + ch);
            kf[j] = ld_h4(sK + t * HP + ch);
            xf[j] = isQ ? ld_h4(sQ + t * HP + ch) : kf[j];
        }
        if (mb > 0) {  // A = x F
            float4 f = make_float4(1.f, 1.f, 1.f, 1.f);
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                f.x *= av[j].x; f.y *= av[j].y; f.z *= av[j].z; f.w *= av[j].w;
                *reinterpret_cast<uint2 *>(bufA + (4 * (mb - 1) + j) * QP + c4) =
                    make_uint2(HF::pack(xf[j].x * f.x, xf[j].y * f.y), HF::pack(xf[j].z * f.z, xf[j].w * f.w));
            }
        }
        {  // B = k Bk; X_mb
            float4 b = make_float4(1.f, 1.f, 1.f, 1.f);
#pragma unroll
            for (int j = 3; j >= 0; --j) {
                if (mb < 3)
                    *reinterpret_cast<uint2 *>(bufB + (4 * mb + j) * QP + c4) =
                        make_uint2(HF::pack(kf[j].x * b.x, kf[j].y * b.y), HF::pack(kf[j].z * b.z, kf[j].w * b.w));
                b.x *= av[j].x; b.y *= av[j].y; b.z *= av[j].z; b.w *= av[j].w;
            }
            if (mb == 1 || mb == 2)
                *reinterpret_cast<uint2 *>(bufX + (mb - 1) * 32 + c4) = make_uint2(HF::pack(b.x, b.y), HF::pack(b.z, b.w));
        }
        // pairs inside the mini-block: vals[4 t + s] += x_t . k_s prod_{u = s+1..t} a_u (t >= s)
#pragma unroll
        for (int s = 0; s < 4; ++s) {
            float4 p = kf[s];
            vals[5 * s] += xf[s].x * p.x + xf[s].y * p.y + xf[s].z * p.z + xf[s].w * p.w;
#pragma unroll
            for (int t = s + 1; t < 4; ++t) {
                p.x *= av[t].x; p.y *= av[t].y; p.z *= av[t].z; p.w *= av[t].w;
                vals[4 * t + s] += xf[t].x * p.x + xf[t].y * p.y + xf[t].z * p.z + xf[t].w * p.w;
            }
        }
        __syncwarp();
#pragma unroll
        for (int kk = 0; kk < 2; ++kk) {
            uint32_t af[4], bf[4];
            ldsm4(af, bufA + arow * QP + 16 * kk + acol);
            ldsm4(bf, bufB + brow * QP + 16 * kk + bcol);
            const uint32_t x1lo = bufX32[8 * kk + tg], x1hi = bufX32[8 * kk + tg + 4];
            const uint32_t x2lo = bufX32[16 + 8 * kk + tg], x2hi = bufX32[16 + 8 * kk + tg + 4];
            const bool m3 = (gr & 4) != 0;  // fragment rows gr + 8 in mini-block 3 (else 2)
            const uint32_t a2[4] = {hmul2u(af[1], hmul2u(x1lo, x2lo)), hmul2u(af[1], m3 ? x2lo : x1lo),
                                    hmul2u(af[3], hmul2u(x1hi, x2hi)), hmul2u(af[3], m3 ? x2hi : x1hi)};
            HF::mma(c1[0], af, bf[0], bf[1]);
            HF::mma(c1[1], af, bf[2], bf[3]);
            HF::mma(c23[0], a2, bf[0], bf[1]);
            HF::mma(c23[1], a2, bf[2], bf[3]);
        }
        __syncwarp();
    }
}

// split operands (hi + lo fp16 pairs), same outputs as prep7_diag_f16. NC = channels per lane and step:
// 2 (steps of 16 channels, 2432 B of scratch) or 4 (steps of 32, 4096 B)
template <int NC>
__device__ __forceinline__ void prep7_diag_split(const char * sm, char * scr, int o, bool isQ, float vals[16],
                                                 float c1[2][4], float c23[2][4]) {
    using L7 = Prep7Smem;
    using HF = Half16<__half>;
    constexpr int AP = L7::AP, HP = L7::HP;
    constexpr int SC = 8 * NC, QP = SC + 8, KS = SC / 16;  // step channels, scratch pitch (halves), k steps
    static_assert(NC == 2 || NC == 4, "2 or 4 channels per lane");
    const int lane = threadIdx.x & 31, gr = lane >> 2, tg = lane & 3;
    const float * sA = reinterpret_cast<const float *>(sm + L7::a);
    const __half * sK = reinterpret_cast<const __half *>(sm + L7::k);
    const __half * sQ = reinterpret_cast<const __half *>(sm + L7::q);
    __half * Ah = reinterpret_cast<__half *>(scr);  // [12][QP] each: A rows 4..15, B rows 0..11
    __half * Al = Ah + 12 * QP;
    __half * Bh = Al + 12 * QP;
    __half * Bl = Bh + 12 * QP;
    float * Xf = reinterpret_cast<float *>(Bl + 12 * QP);  // [2][SC]: X_1, X_2 (fp32)
    const int mb = lane >> 3, cl = NC * (lane & 7);  // build: mini-block mb, channels cl .. cl + NC - 1 of the step
    const int ar = lane & 15, arow = (ar < 4 ? 4 : ar) - 4, acol = (lane >> 4) * 8;
    const int bn = (lane & 7) + ((lane >> 4) << 3), brow = bn > 11 ? 11 : bn, bcol = ((lane >> 3) & 1) * 8;
#pragma unroll 1
    for (int st = 0; st < C64_S / SC; ++st) {
        const int ch = SC * st + cl;
        float av[4][NC], kf[4][NC], xf[4][NC];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int t = o + 4 * mb + j;
            if constexpr (NC == 4) {
                const float4 a4 = *reinterpret_cast<const float4 *>(sA + t * AP + ch);
                const float4 k4 = ld_h4(sK + t * HP + ch);
                const float4 x4 = isQ ? ld_h4(sQ + t * HP + ch) : k4;
                av[j][0] = a4.x; av[j][1] = a4.y; av[j][2] = a4.z; av[j][3] = a4.w;
                kf[j][0] = k4.x; kf[j][1] = k4.y; kf[j][2] = k4.z; kf[j][3] = k4.w;
                xf[j][0] = x4.x; xf[j][1] = x4.y; xf[j][2] = x4.z; xf[j][3] = x4.w;
            } else {
                const float2 a2 = *reinterpret_cast<const float2 *>(sA + t * AP + ch);
                const float2 k2 = HF::unpack(*reinterpret_cast<const uint32_t *>(sK + t * HP + ch));
                const float2 x2 = isQ ? HF::unpack(*reinterpret_cast<const uint32_t *>(sQ + t * HP + ch)) : k2;
                av[j][0] = a2.x; av[j][1] = a2.y;
                kf[j][0] = k2.x; kf[j][1] = k2.y;
                xf[j][0] = x2.x; xf[j][1] = x2.y;
            }
        }
        if (mb > 0) {  // A = x F
            float f[NC];
#pragma unroll
            for (int c = 0; c < NC; ++c) f[c] = 1.f;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int r = (4 * (mb - 1) + j) * QP + cl;
#pragma unroll
                for (int c = 0; c < NC; c += 2) {
                    f[c] *= av[j][c]; f[c + 1] *= av[j][c + 1];
                    uint32_t hi, lo;
                    split_h2(xf[j][c] * f[c], xf[j][c + 1] * f[c + 1], hi, lo);
                    *reinterpret_cast<uint32_t *>(Ah + r + c) = hi;
                    *reinterpret_cast<uint32_t *>(Al + r + c) = lo;
                }
            }
        }
        {  // B = k Bk; X_mb
            float b[NC];
#pragma unroll
            for (int c = 0; c < NC; ++c) b[c] = 1.f;
#pragma unroll
            for (int j = 3; j >= 0; --j) {
                const int r = (4 * mb + j) * QP + cl;
#pragma unroll
                for (int c = 0; c < NC; c += 2) {
                    if (mb < 3) {
                        uint32_t hi, lo;
                        split_h2(kf[j][c] * b[c], kf[j][c + 1] * b[c + 1], hi, lo);
                        *reinterpret_cast<uint32_t *>(Bh + r + c) = hi;
                        *reinterpret_cast<uint32_t *>(Bl + r + c) = lo;
                    }
                    b[c] *= av[j][c]; b[c + 1] *= av[j][c + 1];
                }
            }
            if (mb == 1 || mb == 2) {
#pragma unroll
                for (int c = 0; c < NC; c += 2)
                    *reinterpret_cast<float2 *>(Xf + (mb - 1) * SC + cl + c) = make_float2(b[c], b[c + 1]);
            }
        }
#pragma unroll
        for (int s = 0; s < 4; ++s) {
            float p[NC];
            float acc = 0.f;
#pragma unroll
            for (int c = 0; c < NC; ++c) { p[c] = kf[s][c]; acc += xf[s][c] * p[c]; }
            vals[5 * s] += acc;
#pragma unroll
            for (int t = s + 1; t < 4; ++t) {
                float acc2 = 0.f;
#pragma unroll
                for (int c = 0; c < NC; ++c) { p[c] *= av[t][c]; acc2 += xf[t][c] * p[c]; }
                vals[4 * t + s] += acc2;
            }
        }
        __syncwarp();
#pragma unroll
        for (int kk = 0; kk < KS; ++kk) {
            uint32_t ah[4], al[4], bh[4], bl[4];
            ldsm4(ah, Ah + arow * QP + 16 * kk + acol);
            ldsm4(al, Al + arow * QP + 16 * kk + acol);
            ldsm4(bh, Bh + brow * QP + 16 * kk + bcol);
            ldsm4(bl, Bl + brow * QP + 16 * kk + bcol);
            const float * x1 = Xf + 16 * kk + 2 * tg, * x2 = Xf + SC + 16 * kk + 2 * tg;
            const float2 x1lo = *reinterpret_cast<const float2 *>(x1), x1hi = *reinterpret_cast<const float2 *>(x1 + 8);
            const float2 x2lo = *reinterpret_cast<const float2 *>(x2), x2hi = *reinterpret_cast<const float2 *>(x2 + 8);
            const bool m3 = (gr & 4) != 0;  // fragment rows gr + 8 in mini-block 3 (else 2)
            const float2 sl = m3 ? x2lo : x1lo, sh = m3 ? x2hi : x1hi;
            const float2 h1 = HF::unpack(ah[1]), l1 = HF::unpack(al[1]), h3 = HF::unpack(ah[3]), l3 = HF::unpack(al[3]);
            const float2 v1 = make_float2(h1.x + l1.x, h1.y + l1.y), v3 = make_float2(h3.x + l3.x, h3.y + l3.y);
            uint32_t a2h[4], a2l[4];
            split_h2(v1.x * (x1lo.x * x2lo.x), v1.y * (x1lo.y * x2lo.y), a2h[0], a2l[0]);
            split_h2(v1.x * sl.x, v1.y * sl.y, a2h[1], a2l[1]);
            split_h2(v3.x * (x1hi.x * x2hi.x), v3.y * (x1hi.y * x2hi.y), a2h[2], a2l[2]);
            split_h2(v3.x * sh.x, v3.y * sh.y, a2h[3], a2l[3]);
#pragma unroll
            for (int n = 0; n < 2; ++n) {
                HF::mma(c1[n], ah, bh[2 * n], bh[2 * n + 1]);
                HF::mma(c1[n], ah, bl[2 * n], bl[2 * n + 1]);
                HF::mma(c1[n], al, bh[2 * n], bh[2 * n + 1]);
                HF::mma(c23[n], a2h, bh[2 * n], bh[2 * n + 1]);
                HF::mma(c23[n], a2h, bl[2 * n], bl[2 * n + 1]);
                HF::mma(c23[n], a2l, bh[2 * n], bh[2 * n + 1]);
            }
        }
        __syncwarp();
    }
}

// mode 1: both products with fp16 operands; 2: L fp16, Aqk split; 3: both split
template <typename E>
__device__ __forceinline__ void prep7_diag_mma(char * sm, int mode) {
    using L7 = Prep7Smem;
    using H16 = Half16<E>;
    constexpr int LP = L7::LP, PP = L7::PP;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, gr = lane >> 2, tg = lane & 3;
    const int o = 16 * (warp >> 1), mb = lane >> 3;
    const bool isQ = warp & 1;
    char * scr = mode != 2 ? (warp < 7 ? sm + L7::L + warp * PREP7_DIAG_WS : sm + L7::P)
               : !isQ ? sm + L7::L + (warp >> 1) * 2048
               : warp < 4 ? sm + L7::L + 4 * 2048 + ((warp >> 1) & 1) * 4096 : sm + L7::P + ((warp >> 1) & 1) * 4096;
    float vals[16];
#pragma unroll
    for (int i = 0; i < 16; ++i) vals[i] = 0.f;
    float c1[2][4], c23[2][4];
#pragma unroll
    for (int n = 0; n < 2; ++n)
#pragma unroll
        for (int r = 0; r < 4; ++r) { c1[n][r] = 0.f; c23[n][r] = 0.f; }
    if (mode == 3) prep7_diag_split<2>(sm, scr, o, isQ, vals, c1, c23);
    else if (mode == 2 && isQ) prep7_diag_split<4>(sm, scr, o, isQ, vals, c1, c23);
    else prep7_diag_f16(sm, scr, o, isQ, vals, c1, c23);
    // the 16 sums of the mini-block over its 8 lanes: lane ends with entries 2 (lane & 7), + 1
    rs_stage<8, 4>(vals, (lane & 4) != 0);
    rs_stage<4, 2>(vals, (lane & 2) != 0);
    rs_stage<2, 1>(vals, (lane & 1) != 0);
    __syncthreads();  // every warp's scratch reads done: the results overwrite the L and Aqk areas
    float * sL = reinterpret_cast<float *>(sm + L7::L);
    E * sP = reinterpret_cast<E *>(sm + L7::P);
    const float * sB = reinterpret_cast<const float *>(sm + L7::b);
    // entries of different mini-blocks (d = m(row) - m(col) != 0); d < 0: upper, zero
#pragma unroll
    for (int n = 0; n < 2; ++n)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf)
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                const int row = gr + 8 * hf, col = 8 * n + 2 * tg + j, d = (row >> 2) - (col >> 2);
                if (d == 0) continue;
                const float v = d == 1 ? c1[n][2 * hf + j] : d == 2 ? c23[n][2 * hf + j] : d == 3 ? c23[n][j] : 0.f;
                if (isQ) sP[(o + row) * PP + o + col] = H16::one(v);
                else     sL[(o + row) * LP + o + col] = d > 0 ? sB[o + row] * v : 0.f;
            }
    // entries inside the mini-blocks
#pragma unroll
    for (int u = 0; u < 2; ++u) {
        const int e = 2 * (lane & 7) + u, t = e >> 2, s = e & 3, r = o + 4 * mb + t, cc = o + 4 * mb + s;
        if (isQ) sP[r * PP + cc] = H16::one(t >= s ? vals[u] : 0.f);
        else     sL[r * LP + cc] = t > s ? sB[r] * vals[u] : 0.f;
    }
}

// One work item (chunk c of head h, sequence seq). nc >= 0: after the first column pass, prefetch the
// q, k, g, v rows of item (nc, nh, ns) (this CTA's next one) into L2.
template <typename E>
__device__ __forceinline__ void prep7_item(const Args & a, char * __restrict__ ws, int n_chunks, int stop, int delay_ns,
                                           const int c, const int h, const int seq, const int nc, const int nh, const int ns,
                                           const int diag = 2) {
    using L7 = Prep7Smem;
    using H16 = Half16<E>;
    using HF = Half16<__half>;
    extern __shared__ __align__(16) float sm_f[];
    char * sm = reinterpret_cast<char *>(sm_f);
    constexpr int S = C64_S, AP = L7::AP, HP = L7::HP, LP = L7::LP, PP = L7::PP, HPW = HP / 2;
    const int hk = h % a.Hk, sqk = seq / a.rq3;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, gr = lane >> 2, tg = lane & 3;
    const int t0 = a.t_begin + c * C64;
    float * sA = reinterpret_cast<float *>(sm + L7::a);
    __half * sQ = reinterpret_cast<__half *>(sm + L7::q);
    __half * sK = reinterpret_cast<__half *>(sm + L7::k);
    uint32_t * sQ32 = reinterpret_cast<uint32_t *>(sm + L7::q);
    uint32_t * sK32 = reinterpret_cast<uint32_t *>(sm + L7::k);
    uint32_t * sR32 = reinterpret_cast<uint32_t *>(sm + L7::r);
    uint32_t * sKb32 = reinterpret_cast<uint32_t *>(sm + L7::kb);
    float * sL = reinterpret_cast<float *>(sm + L7::L);
    float * sT = reinterpret_cast<float *>(sm + L7::k);
    E * sP = reinterpret_cast<E *>(sm + L7::P);
    float * sX = reinterpret_cast<float *>(sm + L7::x);
    uint32_t * sM32 = reinterpret_cast<uint32_t *>(sm + L7::m);
    float * sB = reinterpret_cast<float *>(sm + L7::b);
    char * item = ws + (((int64_t) seq * a.H + h) * n_chunks + c) * (int64_t) Item64::size;

    // column layout: thread (cp, sb) = channels 2 cp, 2 cp + 1 of tokens 16 sb .. 16 sb + 15
    const int cp = tid & 63, sb = tid >> 6, tb0 = 16 * sb;
    const int nvalid = a.t_end - (t0 + tb0);
    const int tcl = nvalid > 0 ? t0 + tb0 : a.t_begin;  // a valid row for the (unused) address
    const float * gp = a.g + (int64_t) seq * a.g3 + (int64_t) tcl * a.g2 + (int64_t) h * a.g1 + 2 * cp;
    const float * qp = a.q + (int64_t) sqk * a.q3 + (int64_t) tcl * a.q2 + (int64_t) hk * a.q1 + 2 * cp;
    const float * kp = a.k + (int64_t) sqk * a.k3 + (int64_t) tcl * a.k2 + (int64_t) hk * a.k1 + 2 * cp;
    float2 av[16], qv[16], kv[16];

    // the second CTA of each SM in the first wave starts delay_ns later, so that the two CTAs of an
    // SM run out of phase (one loading while the other computes) instead of in lockstep
    if (delay_ns > 0) {
        const int64_t lin = blockIdx.x + (int64_t) gridDim.x * (blockIdx.y + (int64_t) gridDim.y * blockIdx.z);
        int nsm = 0;
        asm("mov.u32 %0, %%nsmid;" : "=r"(nsm));
        if (lin >= nsm && lin < 2 * nsm) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700
            for (int w = 0; w < delay_ns; w += 1000) __nanosleep(1000);
#endif
        }
    }

    // (1) first column pass: exp(g) (shared, for the diagonal blocks), sub-block products, Qg, Kd,
    //     exp(G_63) to the workspace, q and k in fp16, the boundary decays
    if (tid < C64) {
        const int tt = t0 + tid;
        sB[tid] = tt < a.t_end ? a.beta[(int64_t) seq * a.b3 + (int64_t) tt * a.b2 + (int64_t) h * a.b1] : 0.f;
    }
    prep7_load(gp, qp, kp, a.g2, a.q2, a.k2, nvalid, av, qv, kv);
    {
        float2 pr = make_float2(1.f, 1.f);
#pragma unroll
        for (int t = 0; t < 16; ++t) {
            *reinterpret_cast<float2 *>(sA + (tb0 + t) * AP + 2 * cp) = av[t];
            pr.x *= av[t].x; pr.y *= av[t].y;
        }
        *reinterpret_cast<float2 *>(sX + sb * S + 2 * cp) = pr;
    }
    __syncthreads();
    float2 pre = make_float2(1.f, 1.f), post = make_float2(1.f, 1.f);
    {
        float2 xs[4];
#pragma unroll
        for (int b = 0; b < 4; ++b) {
            xs[b] = *reinterpret_cast<const float2 *>(sX + b * S + 2 * cp);
            if (b < sb) { pre.x *= xs[b].x; pre.y *= xs[b].y; }
            if (b > sb) { post.x *= xs[b].x; post.y *= xs[b].y; }
        }
        uint32_t * oq = reinterpret_cast<uint32_t *>(item + Item64::qg);
        uint32_t * okd = reinterpret_cast<uint32_t *>(item + Item64::kd);
        float2 f = pre;
#pragma unroll
        for (int t = 0; t < 16; ++t) {
            f.x *= av[t].x; f.y *= av[t].y;
            oq[item_u32(tb0 + t, cp)] = H16::pack(qv[t].x * f.x, qv[t].y * f.y);
            sQ32[(tb0 + t) * HPW + cp] = HF::pack(qv[t].x, qv[t].y);
            sK32[(tb0 + t) * HPW + cp] = HF::pack(kv[t].x, kv[t].y);
        }
        float2 bk = post;
#pragma unroll
        for (int t = 15; t >= 0; --t) {
            okd[item_u32(tb0 + t, cp)] = H16::pack(kv[t].x * bk.x, kv[t].y * bk.y);
            bk.x *= av[t].x; bk.y *= av[t].y;
        }
        if (sb == 0) {
            float2 all;
            all.x = xs[0].x * xs[1].x * xs[2].x * xs[3].x;
            all.y = xs[0].y * xs[1].y * xs[2].y * xs[3].y;
            reinterpret_cast<float2 *>(item + Item64::gc)[cp] = all;
            sM32[cp] = HF::pack(xs[1].x, xs[1].y);
            sM32[S / 2 + cp] = HF::pack(xs[1].x * xs[2].x, xs[1].y * xs[2].y);
            sM32[S + cp] = HF::pack(xs[2].x, xs[2].y);
        }
    }
    __syncthreads();
    if (nc >= 0) {  // thread tid: row tid & 63 of tensor tid >> 6 (g, q, k, v) of the next item
        const int which = tid >> 6, tt = a.t_begin + nc * C64 + (tid & 63);
        if (tt < a.t_end) {
            const int nhk = nh % a.Hk, nsq = ns / a.rq3;
            const float * src = which == 0 ? a.g + (int64_t) ns * a.g3 + (int64_t) tt * a.g2 + (int64_t) nh * a.g1
                              : which == 1 ? a.q + (int64_t) nsq * a.q3 + (int64_t) tt * a.q2 + (int64_t) nhk * a.q1
                              : which == 2 ? a.k + (int64_t) nsq * a.k3 + (int64_t) tt * a.k2 + (int64_t) nhk * a.k1
                                           : a.v + (int64_t) ns * a.v3 + (int64_t) tt * a.v2 + (int64_t) nh * a.v1;
            prefetch_l2_row(src);
        }
    }
    if (stop == 1) return;

    // (2) diagonal 16 x 16 blocks of L (beta_t folded in) and Aqk. diag = 1, 2, 3: tensor-core form
    //     (prep7_diag_mma; the mode picks the operand precision); diag = 0: by running products (fp32 math on the fp16 q, k): thread (row
    //     pair sp, channel group cg) runs rows sp and 15 - sp
    if (diag) prep7_diag_mma<E>(sm, diag);
    else {
        const int sp = (tid & 127) >> 4, cg = tid & 15, s1 = sp, s2 = 15 - sp;
#pragma unroll 1
        for (int rnd = 0; rnd < 2; ++rnd) {  // a warp-uniform trip count: the shuffles below need no collective
            const int o = 16 * ((tid >> 7) + 2 * rnd);
            float aL1[16], aP1[16], aL2[16], aP2[16];
#pragma unroll
            for (int t = 0; t < 16; ++t) { aL1[t] = 0.f; aP1[t] = 0.f; aL2[t] = 0.f; aP2[t] = 0.f; }
#pragma unroll
            for (int ff = 0; ff < 2; ++ff) {
                const int f = cg + 16 * ff;
                float4 p1 = ld_h4(sK + (o + s1) * HP + 4 * f);
                float4 p2 = ld_h4(sK + (o + s2) * HP + 4 * f);
#pragma unroll
                for (int t = 0; t < 16; ++t) {
                    if (t >= s1) {
                        const float4 qt = ld_h4(sQ + (o + t) * HP + 4 * f);
                        if (t > s1) {
                            const float4 at = *reinterpret_cast<const float4 *>(sA + (o + t) * AP + 4 * f);
                            const float4 kt = ld_h4(sK + (o + t) * HP + 4 * f);
                            p1.x *= at.x; p1.y *= at.y; p1.z *= at.z; p1.w *= at.w;
                            aL1[t] += kt.x * p1.x + kt.y * p1.y + kt.z * p1.z + kt.w * p1.w;
                            if (t > s2) {
                                p2.x *= at.x; p2.y *= at.y; p2.z *= at.z; p2.w *= at.w;
                                aL2[t] += kt.x * p2.x + kt.y * p2.y + kt.z * p2.z + kt.w * p2.w;
                            }
                        }
                        aP1[t] += qt.x * p1.x + qt.y * p1.y + qt.z * p1.z + qt.w * p1.w;
                        if (t >= s2) aP2[t] += qt.x * p2.x + qt.y * p2.y + qt.z * p2.z + qt.w * p2.w;
                    }
                }
            }
#pragma unroll
            for (int row = 0; row < 2; ++row) {
                const int sr = row ? s2 : s1;
                float vals[32];
#pragma unroll
                for (int t = 0; t < 16; ++t) { vals[t] = row ? aL2[t] : aL1[t]; vals[16 + t] = row ? aP2[t] : aP1[t]; }
                reduce_scatter16(vals, lane);
#pragma unroll
                for (int jv = 0; jv < 2; ++jv) {
                    const int idx = 2 * cg + jv;
                    if (idx < 16) { const int t = idx;      sL[(o + t) * LP + o + sr] = t > sr ? sB[o + t] * vals[jv] : 0.f; }
                    else          { const int t = idx - 16; sP[(o + t) * PP + o + sr] = H16::one(t >= sr ? vals[jv] : 0.f); }
                }
            }
        }
    }
    __syncthreads();
    if (stop == 2) return;

    // (3) second column pass, from the fp16 q, k and the fp32 exp(g) in shared memory: Qdec, Kdec
    //     (sub-blocks 1-3) in place of q, k; R (sub-blocks 0-2) and Kb over exp(g). Then the loads of
    //     v are issued (registers; they land during (4) and are stored in (5))
    const int vf = tid & 31, vr = tid >> 5;  // v: column group vf of rows 8 i + vr
    float4 vx[8];
    {
        uint32_t qh[16], kh[16];
#pragma unroll
        for (int t = 0; t < 16; ++t) {
            av[t] = *reinterpret_cast<const float2 *>(sA + (tb0 + t) * AP + 2 * cp);
            qh[t] = sQ32[(tb0 + t) * HPW + cp];
            kh[t] = sK32[(tb0 + t) * HPW + cp];
        }
        __syncthreads();  // every read of exp(g) done before R, Kb overwrite it
        float2 f = make_float2(1.f, 1.f), fg = pre;
#pragma unroll
        for (int t = 0; t < 16; ++t) {
            f.x *= av[t].x; f.y *= av[t].y;
            fg.x *= av[t].x; fg.y *= av[t].y;
            const float2 qf = HF::unpack(qh[t]), kf = HF::unpack(kh[t]);
            if (sb > 0) {
                sQ32[(tb0 + t) * HPW + cp] = HF::pack(qf.x * f.x, qf.y * f.y);
                sK32[(tb0 + t) * HPW + cp] = HF::pack(kf.x * f.x, kf.y * f.y);
            }
            const float bt = sB[tb0 + t];
            sKb32[(tb0 + t) * HPW + cp] = HF::pack(bt * kf.x * fg.x, bt * kf.y * fg.y);
        }
        if (sb < 3) {
            float2 bk = make_float2(1.f, 1.f);
#pragma unroll
            for (int t = 15; t >= 0; --t) {
                const float2 kf = HF::unpack(kh[t]);
                sR32[(tb0 + t) * HPW + cp] = HF::pack(kf.x * bk.x, kf.y * bk.y);
                bk.x *= av[t].x; bk.y *= av[t].y;
            }
        }
        const float * vp = a.v + (int64_t) seq * a.v3 + (int64_t) h * a.v1 + 4 * vf;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const int tt = t0 + 8 * i + vr;
            vx[i] = tt < a.t_end ? *reinterpret_cast<const float4 *>(vp + (int64_t) tt * a.v2) : make_float4(0.f, 0.f, 0.f, 0.f);
        }
    }
    __syncthreads();
    if (stop == 3) return;

    // (4) off-diagonal blocks (a > b) of L (beta_t folded in) and Aqk, fp16 mma: 6 pairs x 2 products
    //     x 2 column halves = 24 warp tiles of 16 x 8, K = 128 (fragments by ldmatrix)
    {
        const int a_row = lane & 15, a_col = (lane >> 4) * 8;  // A: 16 rows x 16 k
        const int b_row = lane & 7, b_col = (lane >> 3) * 8;   // B: 8 rows (n) x 32 k (two k steps)
#pragma unroll 1
        for (int id = warp; id < 24; id += 8) {
            const int pair = id >> 2, prod = (id >> 1) & 1, half = id & 1;
            int pa, pb, mrow;
            switch (pair) {
                case 0: pa = 1; pb = 0; mrow = 0; break;
                case 1: pa = 2; pb = 1; mrow = 0; break;
                case 2: pa = 3; pb = 2; mrow = 0; break;
                case 3: pa = 2; pb = 0; mrow = 1; break;
                case 4: pa = 3; pb = 0; mrow = 2; break;
                default: pa = 3; pb = 1; mrow = 3; break;
            }
            const __half * A = (prod ? sQ : sK) + (16 * pa + a_row) * HP + a_col;
            const __half * Bm = reinterpret_cast<const __half *>(sR32) + (16 * pb + 8 * half + b_row) * HP + b_col;
            const uint32_t * Mr = sM32 + (mrow > 0 ? mrow - 1 : 0) * (S / 2) + tg;
            float c0[4] = {0.f, 0.f, 0.f, 0.f}, c1[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
            for (int k2 = 0; k2 < S / 32; ++k2) {
                uint32_t bf[4], af0[4], af1[4];
                ldsm4(bf, Bm + 32 * k2);
                ldsm4(af0, A + 32 * k2);
                ldsm4(af1, A + 32 * k2 + 16);
                if (mrow > 0) {
                    const uint32_t m0 = Mr[16 * k2], m1 = Mr[16 * k2 + 4], m2 = Mr[16 * k2 + 8], m3 = Mr[16 * k2 + 12];
                    af0[0] = hmul2u(af0[0], m0); af0[1] = hmul2u(af0[1], m0);
                    af0[2] = hmul2u(af0[2], m1); af0[3] = hmul2u(af0[3], m1);
                    af1[0] = hmul2u(af1[0], m2); af1[1] = hmul2u(af1[1], m2);
                    af1[2] = hmul2u(af1[2], m3); af1[3] = hmul2u(af1[3], m3);
                }
                HF::mma(c0, af0, bf[0], bf[1]);
                HF::mma(c1, af1, bf[2], bf[3]);
            }
            const int ta = 16 * pa + gr, tb = ta + 8, sc = 16 * pb + 8 * half + 2 * tg;
            const float r0 = c0[0] + c1[0], r1 = c0[1] + c1[1], r2 = c0[2] + c1[2], r3 = c0[3] + c1[3];
            if (prod) {
                *reinterpret_cast<uint32_t *>(sP + ta * PP + sc) = H16::pack(r0, r1);
                *reinterpret_cast<uint32_t *>(sP + tb * PP + sc) = H16::pack(r2, r3);
            } else {
                sL[ta * LP + sc] = sB[ta] * r0; sL[ta * LP + sc + 1] = sB[ta] * r1;
                sL[tb * LP + sc] = sB[tb] * r2; sL[tb * LP + sc + 1] = sB[tb] * r3;
            }
        }
    }
    __syncthreads();
    if (stop == 4) return;

    // (5) warps 0-3: diagonal blocks of T = (I + L)^-1 by forward substitution (over k: T is fp32);
    //     warps 4-7: Aqk to the workspace (upper blocks zero); then all: beta v in fp16 over Qdec
    if (warp < 4) {
        if (lane < 16) {
            const int o = 16 * warp, j = lane;
            float col[16];
#pragma unroll
            for (int t = 0; t < 16; ++t) {
                float acc = 0.f;
#pragma unroll
                for (int s2 = 0; s2 < t; ++s2) acc = fmaf(sL[(o + t) * LP + o + s2], col[s2], acc);
                col[t] = t == j ? 1.f : (t < j ? 0.f : -acc);
                sT[(o + t) * LP + o + j] = col[t];
            }
        }
    } else {
        uint4 * oa = reinterpret_cast<uint4 *>(item + Item64::aqk);
        for (int e = tid - 128; e < C64 * 8; e += 128) {
            const int t = e >> 3, f = e & 7;
            const uint4 z = make_uint4(0u, 0u, 0u, 0u);
            oa[8 * t + item_swz(t, f)] = (f >> 1) > (t >> 4) ? z : *reinterpret_cast<const uint4 *>(sP + t * PP + 8 * f);
        }
    }
    // beta v in fp16 over Qdec (dead since (4)), from the registers loaded in (3)
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const int t = 8 * i + vr;
        const float bt = sB[t];
        *reinterpret_cast<uint2 *>(sQ + t * HP + 4 * vf) =
            make_uint2(HF::pack(vx[i].x * bt, vx[i].y * bt), HF::pack(vx[i].z * bt, vx[i].w * bt));
    }
    __syncthreads();
    if (stop == 5) return;

    // (6) the off-diagonal blocks of (I + L)^-1 are never formed: W and U come from the block forward
    //     substitution W_a = T_aa Kb_a - sum_{c < a} M_ac W_c with M_ac = T_aa L_ac (6 blocks of
    //     16 x 16, fp32, stored in the (a, c) blocks of T)
    {
        const int i = tid >> 4, j = tid & 15;
#pragma unroll 1
        for (int blk = 0; blk < 6; ++blk) {
            // (a, c) = (1,0) (2,1) (3,2) (2,0) (3,1) (3,0)
            const int ab = blk < 3 ? 1 + blk : (blk == 3 ? 2 : 3), cb = blk < 3 ? blk : (blk == 4 ? 1 : 0);
            const float * tr = sT + (16 * ab + i) * LP + 16 * ab;
            const float * lc = sL + 16 * ab * LP + 16 * cb + j;
            float x0 = 0.f, x1 = 0.f;
#pragma unroll
            for (int kx = 0; kx < 16; kx += 2) {
                x0 = fmaf(tr[kx], lc[kx * LP], x0);
                x1 = fmaf(tr[kx + 1], lc[(kx + 1) * LP], x1);
            }
            sT[(16 * ab + i) * LP + 16 * cb + j] = -(x0 + x1);
        }
    }
    __syncthreads();
    if (stop == 6) return;

    // (7) W (warps 0-3) and U (warps 4-7), 32 columns per warp, sub-block by sub-block:
    //     X_a = T_aa B_a + sum_{c < a} (-M_ac) X_c (fp16 mma, fp32 accumulation); for a < 3, X_a in
    //     fp16 into the warp's columns of a recursion buffer [48][HP] (W: over R, U: over L; both
    //     dead) for the later sub-blocks; the outputs (E) stay in registers until (8)
    {
        const int isU = warp >> 2, n0 = 32 * (warp & 3);
        const __half * Bs = isU ? sQ : reinterpret_cast<const __half *>(sm + L7::kb);
        __half * Xr = reinterpret_cast<__half *>(sm + (isU ? L7::L : L7::r));
        const int bt_row = (lane & 7) + ((lane >> 3) & 1) * 8, bt_col = (lane >> 4) * 8;
        uint32_t pk[4][4][2];  // the warp's outputs, E-packed, staged after the last read of the inputs
#pragma unroll
        for (int ab = 0; ab < 4; ++ab) {
            float acc[4][4];
#pragma unroll
            for (int n = 0; n < 4; ++n)
#pragma unroll
                for (int r = 0; r < 4; ++r) acc[n][r] = 0.f;
#pragma unroll
            for (int cb = 0; cb <= ab; ++cb) {
                uint32_t b0[4], b1[4];
                const __half * src = cb == ab ? Bs : Xr;
                ldsm4t(b0, src + (16 * cb + bt_row) * HP + n0 + bt_col);
                ldsm4t(b1, src + (16 * cb + bt_row) * HP + n0 + 16 + bt_col);
                const float * tr = sT + (16 * ab + gr) * LP + 16 * cb + 2 * tg;
                const float2 t00 = *reinterpret_cast<const float2 *>(tr);
                const float2 t10 = *reinterpret_cast<const float2 *>(tr + 8 * LP);
                const float2 t01 = *reinterpret_cast<const float2 *>(tr + 8);
                const float2 t11 = *reinterpret_cast<const float2 *>(tr + 8 * LP + 8);
                const uint32_t af[4] = {HF::pack(t00.x, t00.y), HF::pack(t10.x, t10.y), HF::pack(t01.x, t01.y), HF::pack(t11.x, t11.y)};
                HF::mma(acc[0], af, b0[0], b0[1]);
                HF::mma(acc[1], af, b0[2], b0[3]);
                HF::mma(acc[2], af, b1[0], b1[1]);
                HF::mma(acc[3], af, b1[2], b1[3]);
            }
            const int row = 16 * ab + gr;
#pragma unroll
            for (int n = 0; n < 4; ++n) {
                const int col = n0 + 8 * n + 2 * tg;
                pk[ab][n][0] = H16::pack(acc[n][0], acc[n][1]);
                pk[ab][n][1] = H16::pack(acc[n][2], acc[n][3]);
                if (ab < 3) {
                    *reinterpret_cast<uint32_t *>(Xr + row * HP + col) = HF::pack(acc[n][0], acc[n][1]);
                    *reinterpret_cast<uint32_t *>(Xr + (row + 8) * HP + col) = HF::pack(acc[n][2], acc[n][3]);
                }
            }
            __syncwarp();
        }
        __syncthreads();  // every read of Kb, beta v, T done: stage W over beta v, U over T
        E * stg = reinterpret_cast<E *>(sm + (isU ? L7::k : L7::q));
#pragma unroll
        for (int ab = 0; ab < 4; ++ab)
#pragma unroll
            for (int n = 0; n < 4; ++n) {
                const int row = 16 * ab + gr, col = n0 + 8 * n + 2 * tg;
                *reinterpret_cast<uint32_t *>(stg + row * HP + col) = pk[ab][n][0];
                *reinterpret_cast<uint32_t *>(stg + (row + 8) * HP + col) = pk[ab][n][1];
            }
    }
    __syncthreads();
    // (8) staged W, U to the workspace, 16-byte stores (swizzled; U by 32-column slices)
    for (int e = tid; e < 2 * C64 * 16; e += 256) {
        const int isU = e >> 10, t = (e >> 4) & 63, f = e & 15;
        const uint4 x = *reinterpret_cast<const uint4 *>(sm + (isU ? L7::k : L7::q) + t * HP * 2 + 16 * f);
        const int off = isU ? Item64::u + (f >> 2) * Item64::u_slice + t * 64 + 16 * item_swz_u(t, f & 3)
                            : Item64::w + t * 256 + 16 * item_swz(t, f);
        *reinterpret_cast<uint4 *>(item + off) = x;
    }
}

// v7 prep kernel. persist = 0: one item per CTA (grid n_chunks x H x n_seqs); 1: a grid of about 2 CTAs
// per SM, each looping over items blockIdx.x, + gridDim.x, ... and prefetching its next item's
// inputs into L2 while it computes the current one.
template <typename E>
__global__ void __launch_bounds__(256, 2)
kda_prep64v7_kernel(const Args a, char * __restrict__ ws, int n_chunks, int stop, int delay_ns, int persist, int diag) {
    if (!persist) {
        prep7_item<E>(a, ws, n_chunks, stop, delay_ns, blockIdx.x, blockIdx.y, blockIdx.z, -1, 0, 0, diag);
        return;
    }
    const int64_t per_seq = (int64_t) n_chunks * a.H, total = per_seq * a.n_seqs;
    for (int64_t w = blockIdx.x; w < total; w += gridDim.x) {
        const int64_t nw = w + gridDim.x;
        const bool more = nw < total;
        prep7_item<E>(a, ws, n_chunks, stop, w == blockIdx.x ? delay_ns : 0,
                      (int) (w % n_chunks), (int) ((w / n_chunks) % a.H), (int) (w / per_seq),
                      more ? (int) (nw % n_chunks) : -1, more ? (int) ((nw / n_chunks) % a.H) : 0, more ? (int) (nw / per_seq) : 0,
                      diag);
        __syncthreads();  // shared memory reused by the next item
    }
}

// ---- state kernel -----------------------------------------------------------------------------
// One CTA per (head, sequence, 32 value columns): 8 warps. Warp w owns state rows (keys) 16 w .. 16 w + 15
// x the 32 columns as fp32 mma accumulators; a 16-bit copy of the slice in shared memory (sS) is the B
// operand of W S and Qg S. Per chunk: warps 0-3 compute V = U - W S for token tile w (-> sV), warps 4-7
// Y = Qg S for token tile w - 4, then O = scale (Y + Aqk V); all warps S <- exp(G_63) S + Kd^T V.
// The chunk operands arrive in NS stages, each an image of the item's parts (Item64, swizzled rows):
// on sm_90 three bulk copies (the TMA engine) per chunk, issued by one thread and counted by an
// mbarrier per stage; before sm_90 16-byte cp.async pieces from every thread. (Up to v8 every thread
// issued ~15 cp.async per chunk into padded rows: dropping the copies altogether made the kernel
// 279 -> 188 us at T = 8192, so the issue slots and the LSU queue, not bandwidth, were the cost.)
struct State64Smem {  // bytes
    static constexpr int VP = C64_BV + 8;                      // sS, sV pitch (elements): distinct banks per ldmatrix row
    static constexpr int qg = 0, w = Item64::w, kd = Item64::kd;  // stage = Qg | W | Kd | U slice | Aqk | exp(G_63)
    static constexpr int u = Item64::u, aqk = u + Item64::u_slice, gc = aqk + C64 * C64 * 2;
    static constexpr int STAGE = gc + C64_S * 4;               // 61952
    static constexpr int QWK = Item64::u, AQKG = STAGE - aqk;  // the three copies: 48 KiB, U slice, 8.5 KiB
    template <int NS> struct At {
        static constexpr int sS = NS * STAGE, sV = sS + C64_S * VP * 2, bar = sV + C64 * VP * 2;
        static constexpr size_t bytes = (size_t) bar + 8 * NS;  // NS = 3: 201240
    };
};
static_assert(Item64::aqk - Item64::u == 4 * Item64::u_slice && Item64::gc - Item64::aqk == C64 * C64 * 2, "item parts");

__device__ __forceinline__ uint32_t smem_u32(const void * p) { return (uint32_t) __cvta_generic_to_shared(p); }
__device__ __forceinline__ void mbar_init(uint64_t * bar, uint32_t count) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(count) : "memory");
#endif
}
__device__ __forceinline__ void mbar_init_fence() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void mbar_wait(uint64_t * bar, uint32_t parity) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    uint32_t done = 0;
    while (!done)
        asm volatile("{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(done) : "r"(smem_u32(bar)), "r"(parity) : "memory");
#endif
}
// global -> shared bulk copy (TMA) of `bytes` (a multiple of 16), completing on the mbarrier at shared address bar
__device__ __forceinline__ void bulk_g2s(void * dst, const void * src, int bytes, uint32_t bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n"
                 ::"r"(smem_u32(dst)), "l"(src), "r"((uint32_t) bytes), "r"(bar) : "memory");
#endif
}
// one stage: the chunk operands of `item` for value slice sl into stage `dst`, completing on `bar`
__device__ __forceinline__ void state64_issue(const char * item, char * dst, int sl, uint64_t * bar) {
    using L = State64Smem;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (threadIdx.x == 0) {
        const uint32_t b = smem_u32(bar);
        // the previous reads of this stage (generic proxy, ordered by the caller's barrier) before the async-proxy writes
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
        asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(b), "r"((uint32_t) L::STAGE) : "memory");
        bulk_g2s(dst, item, L::QWK, b);
        bulk_g2s(dst + L::u, item + Item64::u + sl * Item64::u_slice, Item64::u_slice, b);
        bulk_g2s(dst + L::aqk, item + Item64::aqk, L::AQKG, b);
    }
#else
    (void) bar;
    for (int e = threadIdx.x; e < L::STAGE / 16; e += blockDim.x) {
        const int o = 16 * e;
        const int src = o < L::u ? o : (o < L::aqk ? Item64::u + sl * Item64::u_slice + (o - L::u) : Item64::aqk + (o - L::aqk));
        cp_async16v(dst + o, item + src);
    }
    cp_async_commit();
#endif
}

// y (16 x 32, four m16n8 accumulators) += A (the 16 x 16 fragment af) x B (16 x 32, rows Bk.. of a
// padded [k][n] buffer of pitch VP; bt_row, bt_col: the lane's ldmatrix offsets)
template <typename H16, typename E>
__device__ __forceinline__ void mma_k16n32(float y[4][4], const uint32_t af[4], const E * Bk, int VP, int bt_row, int bt_col) {
    uint32_t b0[4], b1[4];
    ldsm4t(b0, Bk + bt_row * VP + bt_col);
    ldsm4t(b1, Bk + bt_row * VP + 16 + bt_col);
    H16::mma(y[0], af, b0[0], b0[1]);
    H16::mma(y[1], af, b0[2], b0[3]);
    H16::mma(y[2], af, b1[0], b1[1]);
    H16::mma(y[3], af, b1[2], b1[3]);
}

// NS: stages of chunk operands in flight (2: chunk c + 1 loads while c computes; 3: c + 1 and c + 2)
template <typename E, int NS = 3>
__global__ void __launch_bounds__(C64_THREADS, 1)
kda_state64_kernel(const Args a, const char * __restrict__ ws, int n_chunks) {
    using L = State64Smem;
    using LA = typename State64Smem::template At<NS>;
    using H16 = Half16<E>;
    static_assert(NS == 2 || NS == 3, "2 or 3 stages");
    extern __shared__ __align__(16) float sm_f[];
    char * sm = reinterpret_cast<char *>(sm_f);
    constexpr int VP = L::VP, S = C64_S;
    const int h = blockIdx.x, seq = blockIdx.y, sl = blockIdx.z, j0 = sl * C64_BV;
    const int tid = threadIdx.x, lane = tid & 31, gr = lane >> 2, tg = lane & 3, warp = tid >> 5;
    E * sS = reinterpret_cast<E *>(sm + LA::sS);
    E * sV = reinterpret_cast<E *>(sm + LA::sV);
    uint64_t * bar = reinterpret_cast<uint64_t *>(sm + LA::bar);
    const char * items = ws + ((int64_t) seq * a.H + h) * n_chunks * (int64_t) Item64::size;

    float acc[4][4];
    {
        const float * s_in = a.s_in + (int64_t) seq * a.s3 + (int64_t) h * a.s2;
#pragma unroll
        for (int n = 0; n < 4; ++n)
#pragma unroll
            for (int hf = 0; hf < 2; ++hf) {
                const int i = 16 * warp + gr + 8 * hf, j = 8 * n + 2 * tg;
                acc[n][2 * hf]     = s_in[(int64_t) (j0 + j) * a.s1 + i];
                acc[n][2 * hf + 1] = s_in[(int64_t) (j0 + j + 1) * a.s1 + i];
                *reinterpret_cast<uint32_t *>(sS + i * VP + j) = H16::pack(acc[n][2 * hf], acc[n][2 * hf + 1]);
            }
    }
    if (tid == 0) {
        for (int s = 0; s < NS; ++s) mbar_init(bar + s, 1);
        mbar_init_fence();
    }
    __syncthreads();
    for (int s = 0; s < NS - 1 && s < n_chunks; ++s) state64_issue(items + (int64_t) s * Item64::size, sm + s * L::STAGE, sl, bar + s);

    const int mt = warp & 3;
    const bool wside = warp < 4;
    // per-lane ldmatrix offsets: B operands from [k][n] (sS, sV: padded rows); the swizzled stage rows:
    // A row-major (Qg, W: row 16 mt + (lane & 15), chunk 2 kk + (lane >> 4)), A from [k][m] (Kd: row
    // 16 kk + (lane & 7) + 8 (lane >> 4), chunk 2 warp + ((lane >> 3) & 1)); the row's swizzle key is lane & 7
    const int bt_row = (lane & 7) + ((lane >> 3) & 1) * 8, bt_col = (lane >> 4) * 8;
    const int a_row = lane & 15, a_hi = lane >> 4, at_row = (lane & 7) + (lane >> 4) * 8, at_hi = (lane >> 3) & 1, key = lane & 7;
#pragma unroll 1
    for (int c = 0; c < n_chunks; ++c) {
        const int t0 = a.t_begin + c * C64;
        const char * st = sm + (c % NS) * L::STAGE;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
        mbar_wait(bar + c % NS, (uint32_t) (c / NS) & 1u);
#else
        if (NS == 3 && c + 1 < n_chunks) asm volatile("cp.async.wait_group 1;\n" ::);  // chunk c + 1 may stay in flight
        else cp_async_wait_all();
#endif
        __syncthreads();  // stage c landed; sS holds S_c; stage c - 1 and sV free
        if (c + NS - 1 < n_chunks)
            state64_issue(items + (int64_t) (c + NS - 1) * Item64::size, sm + ((c + NS - 1) % NS) * L::STAGE, sl, bar + (c + NS - 1) % NS);

        // (A) X = W S (warps 0-3) or Y = Qg S (warps 4-7) for token tile mt, all 32 columns
        float y[4][4];
#pragma unroll
        for (int n = 0; n < 4; ++n)
#pragma unroll
            for (int r = 0; r < 4; ++r) y[n][r] = 0.f;
        {
            const E * P = reinterpret_cast<const E *>(st + (wside ? L::w : L::qg)) + (16 * mt + a_row) * S;
#pragma unroll
            for (int kk = 0; kk < S / 16; ++kk) {
                uint32_t af[4];
                ldsm4(af, P + 8 * ((2 * kk + a_hi) ^ key));
                mma_k16n32<H16>(y, af, sS + 16 * kk * VP, VP, bt_row, bt_col);
            }
        }
        if (wside) {
            const E * U = reinterpret_cast<const E *>(st + L::u);
#pragma unroll
            for (int n = 0; n < 4; ++n)
#pragma unroll
                for (int hf = 0; hf < 2; ++hf) {
                    const int r = 16 * mt + gr + 8 * hf, cc = 8 * n + 2 * tg;
                    const float2 u = H16::unpack(*reinterpret_cast<const uint32_t *>(U + r * C64_BV + 8 * item_swz_u(r, n) + 2 * tg));
                    *reinterpret_cast<uint32_t *>(sV + r * VP + cc) = H16::pack(u.x - y[n][2 * hf], u.y - y[n][2 * hf + 1]);
                }
        }
        __syncthreads();  // sV complete; every read of sS for this chunk done

        // (B) O = scale (Y + Aqk V) for token tile mt (causal: key tiles 0..mt)
        if (!wside) {
            const E * A = reinterpret_cast<const E *>(st + L::aqk) + (16 * mt + a_row) * C64;
            for (int kk = 0; kk <= mt; ++kk) {
                uint32_t af[4];
                ldsm4(af, A + 8 * ((2 * kk + a_hi) ^ key));
                mma_k16n32<H16>(y, af, sV + 16 * kk * VP, VP, bt_row, bt_col);
            }
            const int64_t HS = (int64_t) a.H * S;
            float * ob = a.o + (int64_t) seq * a.T_total * HS + (int64_t) h * S + j0 + 2 * tg;
            const int ta = t0 + 16 * mt + gr, tb = ta + 8;
#pragma unroll
            for (int n = 0; n < 4; ++n) {
                if (ta < a.t_end) *reinterpret_cast<float2 *>(ob + (int64_t) ta * HS + 8 * n) = make_float2(y[n][0] * a.scale, y[n][1] * a.scale);
                if (tb < a.t_end) *reinterpret_cast<float2 *>(ob + (int64_t) tb * HS + 8 * n) = make_float2(y[n][2] * a.scale, y[n][3] * a.scale);
            }
        }
        // (C) S <- exp(G_63) S + Kd^T V for rows 16 warp .. +15
        {
            const float * gc = reinterpret_cast<const float *>(st + L::gc);
            const float ga = gc[16 * warp + gr], gb = gc[16 * warp + gr + 8];
#pragma unroll
            for (int n = 0; n < 4; ++n) { acc[n][0] *= ga; acc[n][1] *= ga; acc[n][2] *= gb; acc[n][3] *= gb; }
            const E * Kd = reinterpret_cast<const E *>(st + L::kd) + at_row * S + 8 * ((2 * warp + at_hi) ^ key);
#pragma unroll
            for (int kk = 0; kk < C64 / 16; ++kk) {
                uint32_t af[4];
                ldsm4t(af, Kd + 16 * kk * S);
                mma_k16n32<H16>(acc, af, sV + 16 * kk * VP, VP, bt_row, bt_col);
            }
#pragma unroll
            for (int n = 0; n < 4; ++n)
#pragma unroll
                for (int hf = 0; hf < 2; ++hf) {
                    const int i = 16 * warp + gr + 8 * hf, j = 8 * n + 2 * tg;
                    *reinterpret_cast<uint32_t *>(sS + i * VP + j) = H16::pack(acc[n][2 * hf], acc[n][2 * hf + 1]);
                }
        }
    }
    {
        float * so = a.s_out + ((int64_t) seq * a.H + h) * S * S;
#pragma unroll
        for (int n = 0; n < 4; ++n)
#pragma unroll
            for (int hf = 0; hf < 2; ++hf) {
                const int i = 16 * warp + gr + 8 * hf, j = j0 + 8 * n + 2 * tg;
                so[(int64_t) j * S + i] = acc[n][2 * hf];
                so[(int64_t) (j + 1) * S + i] = acc[n][2 * hf + 1];
            }
    }
}

} // namespace kimi_kda_cuda
