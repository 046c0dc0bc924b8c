// bridge_internal.h - what the bridge's two device kinds share (not part of the C API).
//
// kda_backend.cpp: the registry, the CPU (ACCEL) device, node checks, counters, the C API.
// kda_backend_gpu.cpp: one GPU device per CUDA device of the running ggml (built with nvcc only).
#pragma once

#include "kimi_kda.h"

#include "ggml.h"
#include "ggml-backend.h"
#include "ggml-backend-impl.h"

#include <atomic>
#include <cstdint>
#include <string>

namespace kimi_bridge {

extern std::atomic<int> g_corrupt;
extern std::atomic<int> g_enabled;
extern std::atomic<int> g_cuda_math;  // kimi_kda_cuda_math of the GPU devices
extern std::atomic<int> g_delegate;   // benchmarks: claimed nodes computed by ggml's own op

void set_error(const std::string & msg);
void put_err(char * err, size_t err_len, const std::string & msg);

// Our kernel's parameters for one GATED_DELTA_NET node (placeholder: fake addresses for NULL data,
// so that shapes and strides alone are judged before allocation).
kimi_kda_params node_params(const ggml_tensor * node, bool placeholder);
bool is_kda_node(const ggml_tensor * op);  // KDA mode, f32, accepted by kimi_kda_check
bool is_noop(const ggml_tensor * t);       // views, reshapes: nothing to compute
int64_t output_elements(const ggml_tensor * node);  // the attention outputs (before the states)
void count_call(const ggml_tensor * node, int64_t ns, bool gpu);
// One node as a one-node graph on `backend` (delegate mode); returns when it is done.
ggml_status compute_node_with(ggml_backend_t backend, ggml_tensor * node);

ggml_backend_reg_t bridge_reg();

// GPU devices (kda_backend_gpu.cpp; without CUDA: none).
void gpu_discover(ggml_backend_reg_t reg);  // wraps every CUDA device the running ggml has
size_t gpu_device_count();
ggml_backend_dev_t gpu_device(size_t i);
// Runs `node` (whose sources hold host data) on CUDA device 0 and compares the written slots with
// ref; "" when it agrees or no CUDA device exists, else why not.
std::string gpu_selftest(const ggml_tensor * node, const float * ref, int64_t n_written);

} // namespace kimi_bridge
