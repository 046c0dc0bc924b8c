// kimi_kda.h - the KDA recurrence (Kimi Delta Attention) as a plain C API.
//
// Semantics are exactly those of llama.cpp's GGML_OP_GATED_DELTA_NET in KDA mode (per-channel
// gate, g->ne[0] == S_v) at llama.cpp 0c1e570:
//
//   shapes (ggml order, ne[0] fastest):
//     q, k  : [S_k, H_k, T, n_seqs_qk]     S_k == S_v; H_v % H_k == 0; n_seqs % n_seqs_qk == 0
//     v     : [S_v, H_v, T, n_seqs]
//     g     : [S_v, H_v, T, n_seqs]         log-space decay per key channel
//     beta  : [1,   H_v, T, n_seqs]
//     state : [S_v, S_v, H_v, n_seqs]       initial state, stored transposed: element (ne0 = i, ne1 = j)
//                                           holds S[i][j] (i = key channel, j = value channel)
//   per head h, sequence s, token t (S is [S_k, S_v]):
//     S = diag(exp(g_t)) S;  S += beta_t * k_t (v_t - S^T k_t)^T;  o_t = (S^T q_t) / sqrt(S_v)
//   dst (contiguous f32) = attention output [S_v, H_v, T, n_seqs]
//                          followed by K state snapshots [S_v, S_v, H_v, n_seqs] each,
//                          slot 0 = final state, slot s = state s tokens back (slots >= T untouched).
//   Head broadcast is tiled: v-head h reads q/k head (h % H_k); seq broadcast: s / (n_seqs / n_seqs_qk).
//
// Tensors are described ggml-style: ne[4] element counts, nb[4] byte strides. Rows (ne[0]) of
// q, k, v, g and state must be contiguous (nb[0] == 4); other strides are free (permuted views
// allowed) as long as no two elements of one tensor share memory and dst overlaps no input.
// Every entry point validates first and returns KIMI_KDA_OK or an error code, with a message in
// err (if non-NULL); it never aborts on bad input.
#ifndef KIMI_KDA_H
#define KIMI_KDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KIMI_KDA_ERR_LEN 256

typedef enum {
    KIMI_KDA_OK            = 0,
    KIMI_KDA_ERR_NULL      = 1,   // a required pointer is NULL
    KIMI_KDA_ERR_SHAPE     = 2,   // shapes inconsistent / zero-sized / unsupported S_v
    KIMI_KDA_ERR_STRIDE    = 3,   // strides invalid (row not contiguous, overlapping, ...)
    KIMI_KDA_ERR_TYPE      = 4,   // tensor type is not f32 (graph-node entry points)
    KIMI_KDA_ERR_ARG       = 5,   // other argument out of range (K, algo, thread index)
    KIMI_KDA_ERR_BACKEND   = 6,   // backend unavailable (e.g. no CUDA device) or launch failed
    KIMI_KDA_ERR_NOMEM     = 7,   // scratch allocation failed
} kimi_kda_status;

typedef enum {
    KIMI_KDA_ALGO_AUTO      = 0,  // the fastest measured for T on this backend (CPU: recurrent)
    KIMI_KDA_ALGO_RECURRENT = 1,  // token by token (CPU: ggml layout below 12 tokens, else the
                                  // S-layout scan with per-row decay scales)
    KIMI_KDA_ALGO_CHUNKED   = 2,  // chunked WY/UT form (dense products per chunk of tokens)
} kimi_kda_algo;

typedef struct {
    const float * data;
    int64_t       ne[4];
    size_t        nb[4];   // bytes
} kimi_kda_tensor;

typedef struct {
    kimi_kda_tensor q, k, v, g, beta, state;
    float *         dst;          // contiguous, (S_v*H_v*T*n_seqs + K*S_v*S_v*H_v*n_seqs) floats
    int64_t         n_snapshots;  // K >= 1
    kimi_kda_algo   algo;
} kimi_kda_params;

// Validate shapes/strides/pointers. Returns KIMI_KDA_OK or an error (message in err).
int kimi_kda_check(const kimi_kda_params * p, char * err, size_t err_len);

// Number of floats dst must hold.
int64_t kimi_kda_dst_size(const kimi_kda_params * p);

// CPU: compute the share of work for thread ith of nth (call with ith = 0..nth-1, e.g. from
// ggml's thread pool; nth == 1 computes everything). Work is split over heads x value-column
// blocks, so every thread gets work even for one sequence of few heads.
int kimi_kda_forward_cpu(const kimi_kda_params * p, int ith, int nth, char * err, size_t err_len);

// CPU, convenience: run all shares on n_threads POSIX threads (n_threads <= 0: one thread).
int kimi_kda_forward_cpu_threads(const kimi_kda_params * p, int n_threads, char * err, size_t err_len);

// The algorithm KIMI_KDA_ALGO_AUTO picks for this problem (never AUTO).
kimi_kda_algo kimi_kda_resolve_algo(const kimi_kda_params * p);

// The SIMD flavour the CPU kernels dispatch to on this machine: "avx512", "avx2" or "generic".
const char * kimi_kda_cpu_isa(void);

// Testing aid: force a flavour ("generic", "avx2", "avx512"; NULL or "" = automatic). Returns
// KIMI_KDA_ERR_ARG for an unknown name or one this CPU cannot run. Not thread-safe.
int kimi_kda_force_isa(const char * name);

// CUDA (only when built with CUDA; otherwise returns KIMI_KDA_ERR_BACKEND). All pointers are
// device pointers; stream is a cudaStream_t (NULL = default stream). Asynchronous on the stream.
int kimi_kda_forward_cuda(const kimi_kda_params * p, void * stream, char * err, size_t err_len);

// 1 if this library was built with CUDA support.
int kimi_kda_has_cuda(void);

#ifdef __cplusplus
}
#endif

#endif // KIMI_KDA_H
