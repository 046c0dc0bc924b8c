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
extern std::atomic<int> g_verify;     // tests: each node also computed by ggml's own op, compared

void set_error(const std::string & msg);
void put_err(char * err, size_t err_len, const std::string & msg);

// Our kernel's parameters for one GATED_DELTA_NET node (placeholder: fake addresses for NULL data,
// so that shapes and strides alone are judged before allocation).
kimi_kda_params node_params(const ggml_tensor * node, bool placeholder);
bool is_kda_node(const ggml_tensor * op);  // KDA mode, f32, accepted by kimi_kda_check
bool is_noop(const ggml_tensor * t);       // views, reshapes: nothing to compute
int64_t output_elements(const ggml_tensor * node);  // the attention outputs (before the states)
void count_call(const ggml_tensor * node, int64_t ns, bool gpu);
// Verify mode: the node's result as the graph will use it (`ours`, n values: outputs, then states)
// against ggml's own op on the same inputs (`ref`); records the worst relative difference in the
// counters (kimi_bridge_verify_stats) and returns it. Relative = max|d| / max|ref|, taken
// separately over the outputs and the states, the larger of the two.
double record_verify(const float * ours, const float * ref, int64_t n, int64_t n_out);
// One node as a one-node graph on `backend` (delegate mode); returns when it is done.
ggml_status compute_node_with(ggml_backend_t backend, ggml_tensor * node);

// The self-test's judgement of a kernel against ggml's op on the dummy node: "" when every one of
// the n written values is within 1e-4 of the largest reference value, else why not (NaN fails).
std::string selftest_compare(const float * ref, const float * got, int64_t n, const char * what);

// set_error + one line on stderr: how a failed node is reported (a failed graph returns no text).
void report(const std::string & msg);

// run(node) for each GATED_DELTA_NET node of a split of ours, in order: views and nodes not to be
// computed are skipped; any other op means the scheduler gave us what we never claimed (reported
// with `who` as the prefix). Stops at the first status other than success.
template <typename Run>
ggml_status for_each_kda_node(ggml_cgraph * cgraph, const char * who, Run && run) {
    const int n_nodes = ggml_graph_n_nodes(cgraph);
    for (int i = 0; i < n_nodes; ++i) {
        ggml_tensor * node = ggml_graph_node(cgraph, i);
        if (is_noop(node) || (node->flags & GGML_TENSOR_FLAG_COMPUTE) == 0) {
            continue;
        }
        if (node->op != GGML_OP_GATED_DELTA_NET) {
            report(std::string(who) + ": asked to compute unsupported op " + ggml_op_name(node->op));
            return GGML_STATUS_FAILED;
        }
        const ggml_status st = run(node);
        if (st != GGML_STATUS_SUCCESS) {
            return st;
        }
    }
    return GGML_STATUS_SUCCESS;
}

ggml_backend_reg_t bridge_reg();

// GPU devices (kda_backend_gpu.cpp; without CUDA: none).
void gpu_discover(ggml_backend_reg_t reg);  // wraps every CUDA device the running ggml has
size_t gpu_device_count();
ggml_backend_dev_t gpu_device(size_t i);
// Runs `node` (whose sources hold host data) on CUDA device 0 and compares the written slots with
// ref; "" when it agrees or no CUDA device exists, else why not.
std::string gpu_selftest(const ggml_tensor * node, const float * ref, int64_t n_written);

} // namespace kimi_bridge
