// kimi_bridge.h - the out-of-tree ggml backend that runs llama.cpp's KDA op on our kernels.
//
// The library is a ggml backend "KIMI_KDA": one ACCEL device on host buffers (like ggml's BLAS
// backend) and, with CUDA, one GPU device per CUDA device that uses that device's buffers.
// Registered in the libggml that libllama uses, it claims GGML_OP_GATED_DELTA_NET in KDA mode
// (per-channel gate) and the scheduler moves that op to it. Everything else stays with ggml. Loading goes through ggml_backend_load(path), which calls ggml_backend_init() below.
//
// Extra entry points (plain C, for ctypes) guard and observe the bridge:
//   kimi_bridge_check_version: the running ggml must be the one this library was compiled against;
//   kimi_bridge_selftest:      builds one dummy GATED_DELTA_NET node with the running ggml, checks
//                              op number, source order, result layout and op params, and compares
//                              our kernel with ggml's CPU op on it;
//   stats / corrupt switch:    tests prove the op ran here, and that its output is really used.
#ifndef KIMI_BRIDGE_H
#define KIMI_BRIDGE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KIMI_BRIDGE_EXPORT __attribute__((visibility("default")))

// The ggml commit / version this library was compiled against (e.g. "0c1e570", "0.25.3").
KIMI_BRIDGE_EXPORT const char * kimi_bridge_built_commit(void);
KIMI_BRIDGE_EXPORT const char * kimi_bridge_built_version(void);

// 0 when the running ggml (ggml_commit()/ggml_version() of the process) matches; otherwise 1 and a
// one-line message in err. expected_commit == NULL means the compiled-in commit (tests pass another
// value to exercise the refusal path).
KIMI_BRIDGE_EXPORT int kimi_bridge_check_version(const char * expected_commit, char * err, size_t err_len);

// 0 when the dummy-node check passes; otherwise 1 and a message in err.
KIMI_BRIDGE_EXPORT int kimi_bridge_selftest(char * err, size_t err_len);

// Call count and wall time (ns) of GATED_DELTA_NET nodes computed by the bridge since the last reset;
// n_tokens = sum of T*n_seqs over those calls.
KIMI_BRIDGE_EXPORT void kimi_bridge_stats(int64_t * calls, int64_t * ns, int64_t * n_tokens);
// Of those calls, the ones computed on a GPU device.
KIMI_BRIDGE_EXPORT int64_t kimi_bridge_gpu_calls(void);
KIMI_BRIDGE_EXPORT void kimi_bridge_reset_stats(void);

// Debug: when on, the bridge adds 0.5 to every attention output it writes (proves the result is used).
KIMI_BRIDGE_EXPORT void kimi_bridge_set_corrupt(int on);

// When off, the device claims no op, so graphs built afterwards run the builtin op (default on).
KIMI_BRIDGE_EXPORT void kimi_bridge_set_enabled(int on);

// Delegate mode (benchmarks, plumbing test): nodes the bridge claims are computed by ggml's own CPU
// op instead of our kernel, timed in the same counters.
KIMI_BRIDGE_EXPORT void kimi_bridge_set_delegate(int on);

// Kernel algorithm for the nodes computed from now on (kimi_kda_algo: 0 auto, 1 recurrent,
// 2 chunked); 0 on success, 1 for an unknown value. Default auto.
KIMI_BRIDGE_EXPORT int kimi_bridge_set_algo(int algo);

// Thread count of the last node computed (llama.cpp sets it through ggml_backend_set_n_threads).
KIMI_BRIDGE_EXPORT int kimi_bridge_last_n_threads(void);

// Last kernel error (empty if none).
KIMI_BRIDGE_EXPORT const char * kimi_bridge_last_error(void);

// GPU devices: one per CUDA device of the running ggml ("KIMI_KDA_CUDA0", ...), created when the
// library is loaded into a llama-cpp-python built with CUDA and this library with nvcc; 0 otherwise.
// Each must come before its CUDA device in llama_model_params.devices (bridge.py does that).
KIMI_BRIDGE_EXPORT int kimi_bridge_gpu_device_count(void);
KIMI_BRIDGE_EXPORT const char * kimi_bridge_gpu_device_name(int i);  // NULL when out of range

// Verify mode (tests, debugging): every node the bridge computes is computed again by ggml's own op
// (CPU or CUDA) on the same inputs, and the two results are compared (slow: a copy per node).
KIMI_BRIDGE_EXPORT void kimi_bridge_set_verify(int on);
// Nodes verified since the last reset, and the worst relative difference (max|d| / max|ggml|, over
// the outputs and over the states, the larger) of what the graph received vs ggml's op.
KIMI_BRIDGE_EXPORT void kimi_bridge_verify_stats(int64_t * nodes, double * max_rel);
// Math of the CUDA chunked kernel (kimi_kda_cuda_math; -1 = its default, fp32-accurate 3xtf32).
KIMI_BRIDGE_EXPORT void kimi_bridge_set_cuda_math(int math);

#ifdef __cplusplus
}
#endif

#endif // KIMI_BRIDGE_H
