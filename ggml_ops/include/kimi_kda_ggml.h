// kimi_kda_ggml.h - the KDA op as a ggml graph node (ggml's custom-op API, so it runs on ggml's
// CPU thread pool), plus pointer-level helpers that build and run one-node graphs, with either
// this node or llama.cpp's builtin ggml_gated_delta_net, on the same ggml library (tests and the
// benchmark's anchor).
#ifndef KIMI_KDA_GGML_H
#define KIMI_KDA_GGML_H

#include "ggml.h"
#include "kimi_kda.h"

#ifdef __cplusplus
extern "C" {
#endif

// Same inputs and output tensor as ggml_gated_delta_net(ctx, q, k, v, g, beta, state, K) in KDA
// mode: result [S_v*H_v, T*n_seqs + K*S_v*n_seqs] f32 = attention scores then K state slots.
// Returns NULL (message in err) on bad input (types, shapes, strides), never aborts.
struct ggml_tensor * kimi_kda_ggml_op(struct ggml_context * ctx, struct ggml_tensor * q,
                                      struct ggml_tensor * k, struct ggml_tensor * v,
                                      struct ggml_tensor * g, struct ggml_tensor * beta,
                                      struct ggml_tensor * state, int64_t K, kimi_kda_algo algo,
                                      char * err, size_t err_len);

// --- one-node graphs over caller memory (no ggml types in the signatures: cffi-friendly) ---
typedef enum {
    KIMI_KDA_IMPL_OURS    = 0,  // kimi_kda_ggml_op (custom op)
    KIMI_KDA_IMPL_BUILTIN = 1,  // llama.cpp's ggml_gated_delta_net (needs contiguous g, beta, state)
} kimi_kda_impl;

typedef struct kimi_kda_graph kimi_kda_graph;

// Builds the graph with tensors viewing p's buffers and a ggml thread pool of n_threads.
int kimi_kda_graph_new(const kimi_kda_params * p, int impl, int n_threads, kimi_kda_graph ** out,
                       char * err, size_t err_len);
// Computes it n_iter times (into p->dst).
int  kimi_kda_graph_compute(kimi_kda_graph * gr, int n_iter, char * err, size_t err_len);
void kimi_kda_graph_free(kimi_kda_graph * gr);

// new + compute once + free.
int kimi_kda_eval_ggml(const kimi_kda_params * p, int impl, int n_threads, char * err, size_t err_len);

#ifdef __cplusplus
}
#endif

#endif
