// kda_kernels.c - the two CPU algorithms for one task (sequence s, head h, value columns [j0, j1)).
//
// This file is compiled once per instruction set (CMake sets KDA_ISA and KDA_VW, the vector width in
// floats, plus the matching -m flags); kda_cpu.c picks the flavour at run time, so one binary runs
// everywhere and still uses AVX-512 where it exists. The code uses GCC/Clang vector extensions so
// the compiler emits the native width without intrinsics.
//
// Notation (per head, per sequence; state S is [S_k, S_v], S[i][j], i = key, j = value channel):
//   S_t = diag(exp(g_t)) S_{t-1} + k_t d_t^T,  d_t = beta_t (v_t - S_{t-1}^T diag(exp(g_t)) k_t)
//   o_t = scale * S_t^T q_t
// Value columns j evolve independently given k, q, g, beta: that is what lets threads split a head
// into column blocks with no communication.
#include "kda_internal.h"

#include <math.h>
#include <string.h>

#ifndef KDA_ISA
#define KDA_ISA generic
#endif
#ifndef KDA_VW
#define KDA_VW 4
#endif

#define KDA_CAT_(a, b) a##_##b
#define KDA_CAT(a, b) KDA_CAT_(a, b)
#define KDA_FN(name) KDA_CAT(name, KDA_ISA)

typedef float vf __attribute__((vector_size(KDA_VW * 4)));                 // in registers
typedef float vfu __attribute__((vector_size(KDA_VW * 4), aligned(4)));   // unaligned memory
#define VLOAD(p) ((vf)(*(const vfu *)(p)))
#define VSTORE(p, x) (*(vfu *)(p) = (x))

// Horizontal sum as a halving tree (a lane-by-lane loop is a 16-long dependent chain of
// extracts and adds, which dominated the decode kernel).
typedef float vf4h __attribute__((vector_size(16)));
static inline float hsum(vf x) {
#if KDA_VW >= 16
    typedef float vf8h __attribute__((vector_size(32)));
    vf8h a8, b8;
    __builtin_memcpy(&a8, &x, 32);
    __builtin_memcpy(&b8, (const char *)&x + 32, 32);
    const vf8h s8 = a8 + b8;
#elif KDA_VW == 8
    const vf s8 = x;
#endif
#if KDA_VW >= 8
    vf4h a4, b4;
    __builtin_memcpy(&a4, &s8, 16);
    __builtin_memcpy(&b4, (const char *)&s8 + 16, 16);
    const vf4h s4 = a4 + b4;
#else
    const vf4h s4 = x;
#endif
    return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}

// Broadcast: scalar-vector arithmetic converts the scalar (x - 0 folds away exactly).
static inline vf vsplat(float a) {
    return a - (vf){0};
}

typedef int32_t vi __attribute__((vector_size(KDA_VW * 4)));

static inline vf vselect(vi mask, vf a, vf b) {  // mask ? a : b (mask lanes are 0 or -1)
    return (vf)(((vi)a & mask) | ((vi)b & ~mask));
}

// exp(x) on a vector, Cephes-style: x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial for e^r,
// 2^n from the exponent bits. Relative error ~1 ulp (the op's tolerance is 1e-5 on outputs).
// Inputs below -87.3 (e^x below the smallest normal float) give 0; above 88.3 are clamped.
// libm's expf is a scalar call per channel per token: this keeps the gate work vectorised.
static inline vf vexp(vf x) {
    const vf lo = vsplat(-87.3f), hi = vsplat(88.3f);
    const vi tiny = x < lo;
    x = vselect(tiny, lo, x);
    x = vselect(x > hi, hi, x);
    const vf magic = vsplat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
    const vf n = (x * 1.44269504088896341f + magic) - magic;
    const vf r = x - n * 0.693359375f + n * 2.12194440e-4f;
    vf p = vsplat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    const vi e = (__builtin_convertvector(n, vi) + 127) << 23;
    return vselect(tiny, vsplat(0.0f), p * (vf)e);
}

static inline void exp_row(const float * g, float * e, int64_t S) {
    for (int64_t i = 0; i < S; i += KDA_VW) VSTORE(e + i, vexp(VLOAD(g + i)));
}

// --------------------------------------------------------------------------------------------
// Token by token, on the state in ggml's transposed layout (row j = state column j, contiguous in
// i). One pass per row per token reads the row once for both dot products (decay folded into the
// precomputed k*exp(g) and q*exp(g)) and writes the updated row once:
//   sk = row . (k*eg),  sq = row . (q*eg),  d = beta (v_j - sk),  o_j = scale (sq + d (k . q))
//   row = row*eg + d k
// exp(g) is computed once per channel per token (per block of tokens), shared by all rows.
// Rows are processed in pairs so four independent FMA chains hide the latency.

// One token for a pair of state rows (value columns j, j+1) in ggml's layout.
static inline __attribute__((always_inline)) void rec_pair(
        const int64_t S, const float * src0, const float * src1, float * r0, float * r1,
        const float * e, const float * a, const float * b, const float * kv, const float * vj,
        float beta, float kq, float scale, float * oj) {
    enum { NVM = 128 / KDA_VW };
    const int nv = (int)(S / KDA_VW);
    vf x0[NVM], x1[NVM];
    vf ak0 = vsplat(0), aq0 = vsplat(0), ak1 = vsplat(0), aq1 = vsplat(0);
    for (int w = 0; w < nv; w++) {
        x0[w] = VLOAD(src0 + w * KDA_VW);
        x1[w] = VLOAD(src1 + w * KDA_VW);
        const vf va = VLOAD(a + w * KDA_VW), vb = VLOAD(b + w * KDA_VW);
        ak0 += x0[w] * va; aq0 += x0[w] * vb;
        ak1 += x1[w] * va; aq1 += x1[w] * vb;
    }
    const float d0 = beta * (vj[0] - hsum(ak0));
    const float d1 = beta * (vj[1] - hsum(ak1));
    oj[0] = scale * (hsum(aq0) + d0 * kq);
    oj[1] = scale * (hsum(aq1) + d1 * kq);
    for (int w = 0; w < nv; w++) {
        const vf ve = VLOAD(e + w * KDA_VW), vk = VLOAD(kv + w * KDA_VW);
        VSTORE(r0 + w * KDA_VW, x0[w] * ve + d0 * vk);
        VSTORE(r1 + w * KDA_VW, x1[w] * ve + d1 * vk);
    }
}

// Same for any S (rows re-read from memory instead of registers).
static void rec_pair_any(
        const int64_t S, const float * src0, const float * src1, float * r0, float * r1,
        const float * e, const float * a, const float * b, const float * kv, const float * vj,
        float beta, float kq, float scale, float * oj) {
    vf ak0 = vsplat(0), aq0 = vsplat(0), ak1 = vsplat(0), aq1 = vsplat(0);
    for (int64_t i = 0; i < S; i += KDA_VW) {
        const vf x0 = VLOAD(src0 + i), x1 = VLOAD(src1 + i);
        const vf va = VLOAD(a + i), vb = VLOAD(b + i);
        ak0 += x0 * va; aq0 += x0 * vb;
        ak1 += x1 * va; aq1 += x1 * vb;
    }
    const float d0 = beta * (vj[0] - hsum(ak0));
    const float d1 = beta * (vj[1] - hsum(ak1));
    oj[0] = scale * (hsum(aq0) + d0 * kq);
    oj[1] = scale * (hsum(aq1) + d1 * kq);
    for (int64_t i = 0; i < S; i += KDA_VW) {
        const vf ve = VLOAD(e + i), vk = VLOAD(kv + i);
        VSTORE(r0 + i, VLOAD(src0 + i) * ve + d0 * vk);
        VSTORE(r1 + i, VLOAD(src1 + i) * ve + d1 * vk);
    }
}

void KDA_FN(kda_recurrent)(const kda_task * tk, int64_t t0, int64_t t1, float * scratch) {
    const kimi_kda_params * p = tk->p;
    const kda_dims * d = tk->d;
    const int64_t S = d->S, H = d->H, T = d->T, B = d->n_seqs, K = d->K;
    const int64_t s = tk->s, h = tk->h;
    const int64_t hq = h % d->H_k, sq3 = s / d->rq3;
    const float scale = d->scale;

    float * attn = p->dst;
    float * states = p->dst + S * H * T * B;
    const int64_t snap_stride = S * S * H * B;
    float * work = states + (s * H + h) * S * S;  // slot 0 rows of this head

    float * eg = scratch;                 // [RB][S] exp(g)
    float * kg = eg + KDA_RBLOCK * S;     // [RB][S] k * exp(g)
    float * qg = kg + KDA_RBLOCK * S;     // [RB][S] q * exp(g)
    float * kk = qg + KDA_RBLOCK * S;     // [RB][S] k
    float * kq = kk + KDA_RBLOCK * S;     // [RB]    k . q
    float * bt = kq + KDA_RBLOCK;         // [RB]    beta

    for (int64_t tb = t0; tb < t1; tb += KDA_RBLOCK) {
        const int64_t nt = (t1 - tb < KDA_RBLOCK) ? (t1 - tb) : KDA_RBLOCK;
        for (int64_t u = 0; u < nt; u++) {
            const int64_t t = tb + u;
            const float * q = kda_row(&p->q, hq, t, sq3);
            const float * k = kda_row(&p->k, hq, t, sq3);
            const float * g = kda_row(&p->g, h, t, s);
            exp_row(g, eg + u * S, S);
            vf vacc = vsplat(0);
            for (int64_t i = 0; i < S; i += KDA_VW) {
                const vf e = VLOAD(eg + u * S + i), ki = VLOAD(k + i), qi = VLOAD(q + i);
                VSTORE(kg + u * S + i, ki * e);
                VSTORE(qg + u * S + i, qi * e);
                VSTORE(kk + u * S + i, ki);
                vacc += ki * qi;
            }
            kq[u] = hsum(vacc);
            bt[u] = *kda_row(&p->beta, h, t, s);
        }
        for (int64_t j = tk->j0; j < tk->j1; j += 2) {
            // The first token of the sequence reads the caller's initial state; later ones work
            // in place in dst's slot 0.
            float * r0 = work + j * S;
            float * r1 = r0 + S;
            for (int64_t u = 0; u < nt; u++) {
                const int64_t t = tb + u;
                const float * src0 = r0, * src1 = r1;
                if (t == 0) {
                    src0 = kda_row(&p->state, j, h, s);
                    src1 = kda_row(&p->state, j + 1, h, s);
                }
                const float * e = eg + u * S, * a = kg + u * S, * b = qg + u * S, * kv = kk + u * S;
                const float * v = kda_row(&p->v, h, t, s);
                float * o = attn + ((s * T + t) * H + h) * S;
                // Common head sizes get the row pair held in registers (one read, one write).
                if (S == 128)
                    rec_pair(128, src0, src1, r0, r1, e, a, b, kv, v + j, bt[u], kq[u], scale, o + j);
                else if (S == 64)
                    rec_pair(64, src0, src1, r0, r1, e, a, b, kv, v + j, bt[u], kq[u], scale, o + j);
                else
                    rec_pair_any(S, src0, src1, r0, r1, e, a, b, kv, v + j, bt[u], kq[u], scale, o + j);
                // Snapshot slot n = state n tokens before the last (slot 0 is r0/r1 itself).
                const int64_t slot = T - 1 - t;
                if (K > 1 && slot >= 1 && slot < K) {
                    float * dstp = states + slot * snap_stride + ((s * H + h) * S + j) * S;
                    memcpy(dstp, r0, 2 * S * sizeof(float));
                }
            }
        }
    }
}

// State tile between ggml's transposed layout (row j contiguous in i) and S layout (row i
// contiguous in j), in 16 x 16 blocks so both sides stay in cache lines.
static void tile_in(const kimi_kda_params * p, int64_t h, int64_t s, int64_t j0, int64_t vb, int64_t S,
                    int from_input, const float * work, float * Sx) {
    for (int64_t jb = 0; jb < vb; jb += 16) {
        const float * src[16];
        for (int r = 0; r < 16; r++)
            src[r] = from_input ? kda_row(&p->state, j0 + jb + r, h, s) : work + (j0 + jb + r) * S;
        for (int64_t i = 0; i < S; i++) {
            float * o = Sx + i * vb + jb;
            for (int r = 0; r < 16; r++) o[r] = src[r][i];
        }
    }
}

static void tile_out(const float * Sx, int64_t vb, int64_t S, int64_t j0, float * work) {
    for (int64_t jb = 0; jb < vb; jb += 16) {
        float * dst[16];
        for (int r = 0; r < 16; r++) dst[r] = work + (j0 + jb + r) * S;
        for (int64_t i = 0; i < S; i++) {
            const float * x = Sx + i * vb + jb;
            for (int r = 0; r < 16; r++) dst[r][i] = x[r];
        }
    }
}

// --------------------------------------------------------------------------------------------
// Chunked (WY/UT form). Within a chunk of c tokens, with Gam_t = prod_{r<=t} exp(g_r) (per
// channel, <= 1) and the chunk-start state S0:
//   d = (I + L)^-1 beta (V - Khat S0),   Khat_t = k_t * Gam_t,
//   L[t][s] = beta_t sum_i k_t[i] k_s[i] Gam_t[i]/Gam_s[i]   (s < t)
//   o_t = scale (Qhat_t S0 + sum_{s<=t} Aqk[t][s] d_s),  Aqk[t][s] = sum_i q_t[i] k_s[i] Gam_t/Gam_s
//   S_c = diag(Gam_last) S0 + Ktil^T d,  Ktil_s = k_s * Gam_last/Gam_s
// The ratios Gam_t/Gam_s (s <= t) are never formed as a quotient (which overflows when gates are
// strongly negative): Z^T[i][s] = k_s[i] Gam_t[i]/Gam_s[i] is carried forward by multiplying with
// exp(g_t), so every factor stays <= 1. At the end of the chunk Z^T is exactly Ktil^T.
// The column work (Khat S0, Qhat S0, the triangular solve, Ktil^T d) is dense products on a
// [S_k, vb] tile of the state held in S layout (j contiguous), so they vectorise over j.

// C[m][n] (=|+=) sum_k A[m][k] B[k][n], optionally C = diag(cs) C + A B. N % 16 == 0.
// Register tiles of 4 rows x 32 (or 16) columns.
static inline __attribute__((always_inline)) void gemm_tile(
        int64_t mr, int nv, int64_t Kd, const float * A, int64_t lda, const float * Bm, int64_t ldb,
        float * Cm, int64_t ldc, const float * cs) {
    enum { NVMAX = 32 / KDA_VW };
    vf acc[4][NVMAX];
    for (int r = 0; r < 4; r++)
        for (int v = 0; v < NVMAX; v++) acc[r][v] = vsplat(0);
    if (cs) {
        for (int r = 0; r < mr; r++) {
            const vf c = vsplat(cs[r]);
            for (int v = 0; v < nv; v++) acc[r][v] = c * VLOAD(Cm + r * ldc + v * KDA_VW);
        }
    }
    for (int64_t kk = 0; kk < Kd; kk++) {
        vf b[NVMAX];
        for (int v = 0; v < nv; v++) b[v] = VLOAD(Bm + kk * ldb + v * KDA_VW);
        for (int r = 0; r < mr; r++) {
            const vf a = vsplat(A[r * lda + kk]);
            for (int v = 0; v < nv; v++) acc[r][v] += a * b[v];
        }
    }
    for (int r = 0; r < mr; r++)
        for (int v = 0; v < nv; v++) VSTORE(Cm + r * ldc + v * KDA_VW, acc[r][v]);
}

static void gemm(int64_t M, int64_t N, int64_t Kd, const float * A, int64_t lda, const float * Bm, int64_t ldb,
                 float * Cm, int64_t ldc, const float * cs) {
    enum { NV32 = 32 / KDA_VW, NV16 = 16 / KDA_VW };
    for (int64_t m = 0; m < M; m += 4) {
        const int64_t mr = (M - m < 4) ? (M - m) : 4;
        const float * cm = cs ? cs + m : NULL;
        int64_t n = 0;
        if (mr == 4) {
            for (; n + 32 <= N; n += 32)
                gemm_tile(4, NV32, Kd, A + m * lda, lda, Bm + n, ldb, Cm + m * ldc + n, ldc, cm);
            for (; n < N; n += 16)
                gemm_tile(4, NV16, Kd, A + m * lda, lda, Bm + n, ldb, Cm + m * ldc + n, ldc, cm);
        } else {
            for (; n < N; n += 16)
                gemm_tile(mr, NV16, Kd, A + m * lda, lda, Bm + n, ldb, Cm + m * ldc + n, ldc, cm);
        }
    }
}

void KDA_FN(kda_chunked)(const kda_task * tk, int64_t t0, int64_t t1, float * scratch) {
    const kimi_kda_params * p = tk->p;
    const kda_dims * dd = tk->d;
    const int64_t S = dd->S, H = dd->H, T = dd->T, B = dd->n_seqs;
    const int64_t s = tk->s, h = tk->h, j0 = tk->j0, vb = tk->j1 - tk->j0;
    const int64_t hq = h % dd->H_k, sq3 = s / dd->rq3;
    const float scale = dd->scale;
    const int64_t C = KDA_CHUNK;

    float * attn = p->dst;
    float * work = p->dst + S * H * T * B + (s * H + h) * S * S;

    float * Sx  = scratch;            // [S][vb]
    float * A2  = Sx + S * vb;        // [2C][S]  rows 0..c-1 Khat, c..2c-1 Qhat
    float * ZT  = A2 + 2 * C * S;     // [S][C]
    float * L   = ZT + S * C;         // [C][C]
    float * Aq  = L + C * C;          // [C][C]
    float * P2  = Aq + C * C;         // [2C][vb]
    float * D   = P2 + 2 * C * vb;    // [C][vb]
    float * gam = D + C * vb;         // [S]
    float * eg  = gam + S;            // [S]
    float * bet = eg + S;             // [C]  beta_t
    float * accL = bet + C;           // [C]
    float * accQ = accL + C;          // [C]

    // State tile in: Sx[i][jj] = S[i][j0+jj]; the source rows are ggml's transposed layout.
    tile_in(p, h, s, j0, vb, S, t0 == 0, work, Sx);

    for (int64_t tc = t0; tc < t1; tc += C) {
        const int64_t c = (t1 - tc < C) ? (t1 - tc) : C;
        // Shared per-chunk quantities (the same for every column block of this head).
        for (int64_t i = 0; i < S; i++) gam[i] = 1.0f;
        memset(ZT, 0, (size_t)(S * C) * sizeof(float));
        for (int64_t t = 0; t < c; t++) {
            const float * q = kda_row(&p->q, hq, tc + t, sq3);
            const float * k = kda_row(&p->k, hq, tc + t, sq3);
            const float * g = kda_row(&p->g, h, tc + t, s);
            const float beta = *kda_row(&p->beta, h, tc + t, s);
            exp_row(g, eg, S);
            for (int64_t i = 0; i < S; i++) {
                gam[i] *= eg[i];
                A2[t * S + i] = k[i] * gam[i];
                A2[(c + t) * S + i] = q[i] * gam[i];
            }
            // Carry Z^T forward by one token and read off row t of L and Aqk. Vectorised over u
            // (previous tokens), rounded up to whole vectors: lanes u >= t hold zeros or stale
            // finite values whose results are never read (ZT is zeroed per chunk).
            const int64_t tv = (t + KDA_VW - 1) / KDA_VW * KDA_VW;
            for (int64_t u = 0; u < tv; u += KDA_VW) { VSTORE(accL + u, vsplat(0)); VSTORE(accQ + u, vsplat(0)); }
            vf kqv = vsplat(0);
            for (int64_t i = 0; i < S; i++) {
                float * z = ZT + i * C;
                const float e = eg[i], ki = k[i], qi = q[i];
                for (int64_t u = 0; u < tv; u += KDA_VW) {
                    const vf zz = VLOAD(z + u) * e;
                    VSTORE(z + u, zz);
                    VSTORE(accL + u, VLOAD(accL + u) + ki * zz);
                    VSTORE(accQ + u, VLOAD(accQ + u) + qi * zz);
                }
                z[t] = ki;
            }
            for (int64_t i = 0; i < S; i += KDA_VW) kqv += VLOAD(k + i) * VLOAD(q + i);
            const float kq = hsum(kqv);
            for (int64_t u = 0; u < t; u++) {
                L[t * C + u] = beta * accL[u];
                Aq[t * C + u] = accQ[u];
            }
            Aq[t * C + t] = kq;
            bet[t] = beta;
        }
        // P2 = [Khat; Qhat] Sx.
        gemm(2 * c, vb, S, A2, S, Sx, vb, P2, vb, NULL);
        // d = (I + L)^-1 beta (V - Khat S0), forward substitution, vectorised over columns.
        for (int64_t t = 0; t < c; t++) {
            const float * v = kda_row(&p->v, h, tc + t, s) + j0;
            const float beta = bet[t];
            float * dt = D + t * vb;
            const float * pt = P2 + t * vb;
            for (int64_t jj = 0; jj < vb; jj += KDA_VW) {
                vf x = vsplat(beta) * (VLOAD(v + jj) - VLOAD(pt + jj));
                for (int64_t u = 0; u < t; u++) x -= vsplat(L[t * C + u]) * VLOAD(D + u * vb + jj);
                VSTORE(dt + jj, x);
            }
        }
        // o_t = scale (Qhat_t S0 + sum_{u<=t} Aqk[t][u] d_u).
        for (int64_t t = 0; t < c; t++) {
            float * o = attn + ((s * T + tc + t) * H + h) * S + j0;
            const float * pq = P2 + (c + t) * vb;
            for (int64_t jj = 0; jj < vb; jj += KDA_VW) {
                vf x = VLOAD(pq + jj);
                for (int64_t u = 0; u <= t; u++) x += vsplat(Aq[t * C + u]) * VLOAD(D + u * vb + jj);
                VSTORE(o + jj, vsplat(scale) * x);
            }
        }
        // S_c = diag(Gam_last) S0 + Ktil^T d.
        gemm(S, vb, c, ZT, C, D, vb, Sx, vb, gam);
    }

    // State tile out, back to the transposed layout in dst slot 0.
    tile_out(Sx, vb, S, j0, work);
}

// --------------------------------------------------------------------------------------------
// Token by token for longer runs ("scan"): the state tile is held in S layout (row i = key channel,
// columns j contiguous) so every operation is a vector op over value columns -- no horizontal
// sums -- and the decay is a per-row scalar instead of a per-element multiply:
//   stored row x_i = S[i][:] / c_i, c_i = product of exp(g) since the row was last renormalised.
//   decay by exp(g_t):  c_i *= exp(g_t[i])                             (scalar per row)
//   rank-1 update:      x_i += (k_t[i] / c_i) d_t                       (1 FMA per element)
//   next token's dots:  S^T(k*e) = sum_i (k[i] c_i) x_i, S^T(q*e) alike (2 FMAs per element)
// That is 3 vector FMAs per state element per token (the direct form needs 4), in one pass that
// applies token t's update and accumulates token t+1's dot products. When c_i would fall below
// 2^-64 (strong decay), the row is renormalised (x_i *= c_i, c_i = 1) first, so neither x nor
// k/c can overflow (stored values stay below 2^64 |S|); rows whose true decay underflows become exactly 0, as in the direct form.
// Each column tile (a few vectors wide) stays in registers/L1 across a block of tokens.

#define SCAN_TB 8
// Vectors per column tile: the tile (S_k x NW*VW floats) should stay in L1 across a token block.
#ifndef KDA_SCAN_NW
#define KDA_SCAN_NW (KDA_VW == 16 ? 2 : KDA_VW == 8 ? 2 : 4)
#endif
#define SCAN_THR 5.42101086242752217e-20f  /* 2^-64 */

int64_t KDA_FN(kda_scan_scratch)(int64_t S, int64_t vb) {
    return S * vb + 4 * S + 3 * SCAN_TB * S + 2 * SCAN_TB * S + vb + 4 * SCAN_TB + 64;
}

// One tile of NW vectors: tokens [tb, tb+nt) of the block. d carries the previous token's d.
static inline __attribute__((always_inline)) void scan_tile(
        int nw, int64_t S, int64_t vb, float * Sx, int64_t jt, int64_t nt,
        const float * KCP, const float * A, const float * Bq, const int * nren, const int * ren_i,
        const float * ren_m, const float * bet, const float * kq, const float * const * vrow,
        float * const * orow, float scale, float * dprev) {
    enum { NWMAX = KDA_SCAN_NW };
    vf d[NWMAX];
    for (int w = 0; w < nw; w++) d[w] = VLOAD(dprev + jt + w * KDA_VW);
    for (int64_t u = 0; u < nt; u++) {
        const float * kcp = KCP + u * S, * a = A + u * S, * b = Bq + u * S;
        // Rows renormalised before this token: scale them (their update coefficient in kcp was
        // scaled alike).
        for (int r = 0; r < nren[u]; r++) {
            float * x = Sx + (int64_t)ren_i[u * S + r] * vb + jt;
            const float m = ren_m[u * S + r];
            for (int w = 0; w < nw; w++) VSTORE(x + w * KDA_VW, VLOAD(x + w * KDA_VW) * m);
        }
        vf ak[NWMAX], aq[NWMAX];
        for (int w = 0; w < nw; w++) { ak[w] = vsplat(0); aq[w] = vsplat(0); }
        float * x = Sx + jt;
        for (int64_t i = 0; i < S; i++, x += vb) {
            const float ci = kcp[i], ai = a[i], bi = b[i];
            for (int w = 0; w < nw; w++) {
                const vf xv = VLOAD(x + w * KDA_VW) + ci * d[w];
                VSTORE(x + w * KDA_VW, xv);
                ak[w] += ai * xv;
                aq[w] += bi * xv;
            }
        }
        const float * v = vrow[u] + jt;
        float * o = orow[u] + jt;
        for (int w = 0; w < nw; w++) {
            d[w] = bet[u] * (VLOAD(v + w * KDA_VW) - ak[w]);
            VSTORE(o + w * KDA_VW, scale * (aq[w] + kq[u] * d[w]));
        }
    }
    for (int w = 0; w < nw; w++) VSTORE(dprev + jt + w * KDA_VW, d[w]);
}

void KDA_FN(kda_scan)(const kda_task * tk, int64_t t0, int64_t t1, float * scratch) {
    const kimi_kda_params * p = tk->p;
    const kda_dims * dd = tk->d;
    const int64_t S = dd->S, H = dd->H, T = dd->T, B = dd->n_seqs;
    const int64_t s = tk->s, h = tk->h, j0 = tk->j0, vb = tk->j1 - tk->j0;
    const int64_t hq = h % dd->H_k, sq3 = s / dd->rq3;
    float * attn = p->dst;
    float * work = p->dst + S * H * T * B + (s * H + h) * S * S;

    float * Sx    = scratch;               // [S][vb]
    float * c     = Sx + S * vb;           // [S] row scales
    float * kcp   = c + S;                 // [S] k/c of the previous token
    float * eg    = kcp + S;               // [S]
    float * KCP   = eg + 2 * S;            // [TB][S] previous token's k/c, times this token's renorm
    float * A     = KCP + SCAN_TB * S;     // [TB][S] k * c
    float * Bq    = A + SCAN_TB * S;       // [TB][S] q * c
    float * ren_m = Bq + SCAN_TB * S;      // [TB][S] renormalisation factors
    int * ren_i   = (int *)(ren_m + SCAN_TB * S);  // [TB][S] their rows
    float * dprev = (float *)(ren_i + SCAN_TB * S); // [vb]
    float * bet   = dprev + vb;            // [TB]
    float * kq    = bet + SCAN_TB;         // [TB]
    int nren[SCAN_TB];
    const float * vrow[SCAN_TB];
    float * orow[SCAN_TB];

    tile_in(p, h, s, j0, vb, S, t0 == 0, work, Sx);
    for (int64_t i = 0; i < S; i++) { c[i] = 1.0f; kcp[i] = 0.0f; }
    for (int64_t jj = 0; jj < vb; jj++) dprev[jj] = 0.0f;

    for (int64_t tb = t0; tb < t1; tb += SCAN_TB) {
        const int64_t nt = (t1 - tb < SCAN_TB) ? (t1 - tb) : SCAN_TB;
        for (int64_t u = 0; u < nt; u++) {
            const int64_t t = tb + u;
            const float * q = kda_row(&p->q, hq, t, sq3);
            const float * k = kda_row(&p->k, hq, t, sq3);
            exp_row(kda_row(&p->g, h, t, s), eg, S);
            float * kc = KCP + u * S, * a = A + u * S, * b = Bq + u * S;
            vf acc = vsplat(0);
            vi any_ren = {0};
            for (int64_t i = 0; i < S; i += KDA_VW) {
                const vf ki = VLOAD(k + i), qi = VLOAD(q + i);
                vf cn = VLOAD(c + i) * VLOAD(eg + i);
                const vi ren = cn < SCAN_THR;
                any_ren |= ren;
                const vf m = vselect(ren, cn, vsplat(1.0f));
                cn = vselect(ren, vsplat(1.0f), cn);
                VSTORE(kc + i, VLOAD(kcp + i) * m);
                VSTORE(ren_m + u * S + i, m);
                VSTORE(a + i, ki * cn);
                VSTORE(b + i, qi * cn);
                VSTORE(c + i, cn);
                VSTORE(kcp + i, ki / cn);
                acc += ki * qi;
            }
            int nr = 0, any = 0;
            for (int l = 0; l < KDA_VW; l++) any |= any_ren[l];
            for (int64_t i = 0; any && i < S; i++)
                if (ren_m[u * S + i] != 1.0f) { ren_m[u * S + nr] = ren_m[u * S + i]; ren_i[u * S + nr] = (int)i; nr++; }
            nren[u] = nr;
            kq[u] = hsum(acc);
            bet[u] = *kda_row(&p->beta, h, t, s);
            vrow[u] = kda_row(&p->v, h, t, s) + j0;
            orow[u] = attn + ((s * T + t) * H + h) * S + j0;
        }
        enum { NWMAX = KDA_SCAN_NW };
        int64_t jt = 0;
        for (; jt + NWMAX * KDA_VW <= vb; jt += NWMAX * KDA_VW)
            scan_tile(NWMAX, S, vb, Sx, jt, nt, KCP, A, Bq, nren, ren_i, ren_m, bet, kq, vrow, orow, dd->scale, dprev);
        for (; jt < vb; jt += KDA_VW)
            scan_tile(1, S, vb, Sx, jt, nt, KCP, A, Bq, nren, ren_i, ren_m, bet, kq, vrow, orow, dd->scale, dprev);
    }
    // The last token's update, then back to true values and ggml's transposed layout.
    for (int64_t i = 0; i < S; i++) {
        float * x = Sx + i * vb;
        for (int64_t jj = 0; jj < vb; jj += KDA_VW)
            VSTORE(x + jj, (VLOAD(x + jj) + kcp[i] * VLOAD(dprev + jj)) * c[i]);
    }
    tile_out(Sx, vb, S, j0, work);
}
