// kimi_kda_cuda.h - extra entry points of the CUDA KDA kernels beyond kimi_kda.h.
#ifndef KIMI_KDA_CUDA_H
#define KIMI_KDA_CUDA_H

#include "kimi_kda.h"

#ifdef __cplusplus
extern "C" {
#endif

// Math inside the chunked kernel's dense products (the recurrent kernel is always fp32).
typedef enum {
    KIMI_KDA_CUDA_MATH_DEFAULT = -1,  // what kimi_kda_forward_cuda uses (TF32X3)
    KIMI_KDA_CUDA_MATH_FP32    = 0,   // CUDA cores only: the fp32 reference path
    KIMI_KDA_CUDA_MATH_TF32X3  = 1,   // tensor cores, error-compensated: fp32-level accuracy
    KIMI_KDA_CUDA_MATH_TF32    = 2,   // tensor cores, plain tf32: ~1e-3 relative
    // 64-token chunks, 16-bit tensor-core operands and workspace, fp32 accumulation and state
    // (S_v = 128; other S_v and the fused kernel run the tf32 path): the fast prefill, <= 3e-3
    KIMI_KDA_CUDA_MATH_BF16    = 3,
    KIMI_KDA_CUDA_MATH_F16     = 4,   // same with fp16 operands (4x finer rounding than bf16)
} kimi_kda_cuda_math;

// OR-ed into math: run the chunked part as the single fused kernel (no workspace, slower: its
// per-chunk critical path includes the state-independent work) instead of prep + state kernels.
#define KIMI_KDA_CUDA_FUSED 0x100

// kimi_kda_forward_cuda with an explicit math mode. Same contract: device pointers, asynchronous
// on stream, validation first, error code + message on failure.
int kimi_kda_forward_cuda_ex(const kimi_kda_params * p, int math, void * stream, char * err, size_t err_len);

// Scratch the chunked path needs (0 for the recurrent one): about 34 KiB per head, sequence and
// 16-token chunk of one segment (the 16-bit modes: 72.5 KiB per 64-token chunk; the size returned
// covers every math mode); segments are sized so this stays under about 320 MiB
// ($KIMI_KDA_CUDA_SEG = tokens per segment overrides).
size_t kimi_kda_cuda_workspace_bytes(const kimi_kda_params * p);

// With caller-provided device scratch (workspace may be NULL or too small: then it is allocated with
// cudaMallocAsync on stream and freed after; if that fails, the fused kernel runs instead).
int kimi_kda_forward_cuda_ws(const kimi_kda_params * p, int math, void * workspace, size_t ws_bytes,
                             void * stream, char * err, size_t err_len);

// KIMI_KDA_OK when the CUDA path accepts p's shapes and strides (kimi_kda_check plus the kernels'
// own limits: S_v a multiple of 16 up to 256, 16-byte aligned rows and dst); never reads the data.
int kimi_kda_cuda_check(const kimi_kda_params * p, char * err, size_t err_len);

// The algorithm the CUDA path runs for p (KIMI_KDA_ALGO_RECURRENT or _CHUNKED; never AUTO).
kimi_kda_algo kimi_kda_cuda_resolve_algo(const kimi_kda_params * p);

#ifdef __cplusplus
}
#endif

#endif // KIMI_KDA_CUDA_H
