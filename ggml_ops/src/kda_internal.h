// kda_internal.h - shared between the C API, the kernels and the ggml glue (not installed).
#ifndef KDA_INTERNAL_H
#define KDA_INTERNAL_H

#include "kimi_kda.h"

#include <stdarg.h>
#include <stdio.h>

// Problem geometry, derived once by kimi_kda_check() and read by every kernel.
typedef struct {
    int64_t S, H, T, n_seqs;   // S = S_v = S_k
    int64_t H_k, n_seqs_qk;    // q/k heads and sequences (broadcast: tiled heads, blocked seqs)
    int64_t rq3;               // n_seqs / n_seqs_qk
    int64_t K;                 // snapshot slots
    float   scale;             // 1 / sqrt(S_v)
} kda_dims;

// Fills d from p; returns KIMI_KDA_OK or an error code with a message.
int kda_validate(const kimi_kda_params * p, kda_dims * d, char * err, size_t err_len);
// Same, optionally without the pointer checks (dst NULL allowed, no overlap test): for graph nodes
// whose memory is not allocated yet.
int kda_validate_ex(const kimi_kda_params * p, kda_dims * d, int check_memory, char * err, size_t err_len);

// Writes a printf-style message into err (if non-NULL) and returns code.
int kda_fail(char * err, size_t err_len, int code, const char * fmt, ...)
    __attribute__((format(printf, 4, 5)));

// Element pointers (byte strides, ggml-style).
static inline const float * kda_row(const kimi_kda_tensor * t, int64_t i1, int64_t i2, int64_t i3) {
    return (const float *)((const char *)t->data + i1 * t->nb[1] + i2 * t->nb[2] + i3 * t->nb[3]);
}

// One unit of work: sequence s, v-head h, value columns [j0, j1), tokens [t0, t1).
typedef struct {
    const kimi_kda_params * p;
    const kda_dims *        d;
    int64_t s, h, j0, j1;
} kda_task;


// Kernels, one set per ISA (kda_kernels.c compiled several times).
#define KDA_DECLARE_ISA(isa)                                                                     \
    void kda_recurrent_##isa(const kda_task * tk, int64_t t0, int64_t t1, float * scratch);       \
    void kda_chunked_##isa(const kda_task * tk, int64_t t0, int64_t t1, float * scratch);      \
    void kda_scan_##isa(const kda_task * tk, int64_t t0, int64_t t1, float * scratch);         \
    int64_t kda_scan_scratch_##isa(int64_t S, int64_t vb);
KDA_DECLARE_ISA(generic)
#if defined(KDA_HAVE_X86_ISAS)
KDA_DECLARE_ISA(avx2)
KDA_DECLARE_ISA(avx512)
#endif

// Chunk length of the chunked kernel (tokens per WY/UT block).
#define KDA_CHUNK 32
// Token block of the recurrent kernel (per-token vectors precomputed per block).
#define KDA_RBLOCK 16

// Scratch floats one task of each kernel needs (vb = value-column block width).
static inline int64_t kda_recurrent_scratch_floats(int64_t S) {
    return 4 * KDA_RBLOCK * S + 2 * KDA_RBLOCK + 64;
}
static inline int64_t kda_chunk_scratch_floats(int64_t S, int64_t vb) {
    const int64_t C = KDA_CHUNK;
    return S * vb            // Sx: state tile, S layout
         + 2 * C * S         // A2 = [Khat; Qhat]
         + S * C             // ZT
         + 2 * C * C         // L, Aqk
         + 2 * C * vb        // P2 = A2 Sx
         + C * vb            // d
         + 2 * S + 3 * C     // gam, eg, beta, accL, accQ
         + 64;
}

#endif
