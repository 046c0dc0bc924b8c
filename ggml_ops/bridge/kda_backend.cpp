// kda_backend.cpp - ggml backend "KIMI_KDA": llama.cpp's KDA op (GGML_OP_GATED_DELTA_NET with a
// per-channel gate) computed by this project's CPU kernels (kimi_kda.h).
//
// Why an ACCEL device on host buffers: llama.cpp adds every ACCEL device's backend ahead of the CPU
// backend (llama-context.cpp), and the scheduler's pass 3 moves a node to a higher-priority backend
// whose default buffer type equals the node's (both are the CPU buffer type here) when that backend
// supports the op. So claiming one op is enough; weights, caches and all other ops stay put, and no
// tensor is copied. The device reports the CPU buffer type as its own, which make_cpu_buft_list
// skips, so model weights never land in a buffer of ours.
//
// Contract: built against the public headers of the pinned llama-cpp-python wheel and
// ggml-backend-impl.h of the same commit (KIMI_GGML_COMMIT / KIMI_GGML_VERSION); the Python side
// refuses to register when the running ggml differs, and runs kimi_bridge_selftest first.
#include "kimi_bridge.h"
#include "bridge_internal.h"
#include "kimi_kda.h"

#include "ggml.h"
#include "ggml-backend.h"
#include "ggml-backend-impl.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#ifdef KIMI_BRIDGE_OPENMP
#include <omp.h>
#endif

#ifndef KIMI_GGML_COMMIT
#error "KIMI_GGML_COMMIT must be defined by the build (the pinned llama.cpp commit)"
#endif
#ifndef KIMI_GGML_VERSION
#error "KIMI_GGML_VERSION must be defined by the build (ggml version of the pinned commit)"
#endif

namespace kimi_bridge {

std::atomic<int64_t> g_calls{0};
std::atomic<int64_t> g_ns{0};
std::atomic<int64_t> g_tokens{0};
std::atomic<int64_t> g_gpu_calls{0};  // of g_calls, those on a GPU device
std::atomic<int>     g_corrupt{0};
std::atomic<int>     g_enabled{1};
std::atomic<kimi_kda_algo> g_algo{KIMI_KDA_ALGO_AUTO};
std::atomic<int>     g_delegate{0};  // compute claimed nodes with ggml's own op (CPU or CUDA)
std::atomic<int>     g_cuda_math{-1};  // KIMI_KDA_CUDA_MATH_DEFAULT
std::atomic<int>     g_verify{0};  // kimi_bridge_set_verify
std::atomic<int64_t> g_verify_nodes{0};
double               g_verify_max_rel = 0.0;  // under g_verify_mutex
std::mutex           g_verify_mutex;
std::atomic<int>     g_last_threads{0};
std::mutex           g_err_mutex;
std::string          g_last_error;

void set_error(const std::string & msg) {
    std::lock_guard<std::mutex> lock(g_err_mutex);
    g_last_error = msg;
}

std::string selftest_compare(const float * ref, const float * got, int64_t n, const char * what) {
    double max_ref = 0.0, max_diff = 0.0;
    int64_t worst = 0;
    for (int64_t i = 0; i < n; ++i) {
        max_ref = std::max(max_ref, (double) std::fabs(ref[i]));
        const double d = std::fabs((double) ref[i] - (double) got[i]);
        if (!(d <= max_diff)) {  // also catches NaN
            max_diff = d;
            worst = i;
        }
    }
    if (max_diff <= 1e-4 * std::max(max_ref, 1e-6)) {
        return "";
    }
    char buf[256];
    snprintf(buf, sizeof(buf), "%s differs from ggml's op on the dummy node (max |diff| %.3g at element %lld, max |ref| %.3g)",
             what, max_diff, (long long) worst, max_ref);
    return buf;
}

void report(const std::string & msg) {
    set_error(msg);
    fprintf(stderr, "%s\n", msg.c_str());
}

void put_err(char * err, size_t err_len, const std::string & msg) {
    if (err && err_len > 0) {
        snprintf(err, err_len, "%s", msg.c_str());
    }
}

// op_params[0] of GATED_DELTA_NET is the snapshot count K (ggml.c: ggml_set_op_params_i32(result, 0, K));
// the accessor lives in ggml-impl.h, which is not part of the contract, so read it directly.
int32_t op_param_k(const ggml_tensor * t) {
    int32_t k;
    std::memcpy(&k, t->op_params, sizeof(k));
    return k;
}

kimi_kda_tensor describe(const ggml_tensor * t, const void * data) {
    kimi_kda_tensor d;
    d.data = (const float *) data;
    for (int i = 0; i < 4; ++i) {
        d.ne[i] = t->ne[i];
        d.nb[i] = t->nb[i];
    }
    return d;
}

// Parameters of our kernel for one GATED_DELTA_NET node. With placeholder == true, NULL data
// pointers (supports_op runs before allocation) are replaced by distinct fake addresses far apart
// in the upper half of the address space, so that only shapes and strides are judged:
// kimi_kda_check never dereferences, and its overlap test sees disjoint tensors.
kimi_kda_params node_params(const ggml_tensor * node, bool placeholder) {
    auto ptr = [&](const ggml_tensor * t, int slot) -> const void * {
        if (t->data != nullptr || !placeholder) {
            return t->data;
        }
        return (const void *) (uintptr_t) (0x8000000000000000ULL + (uint64_t) (slot + 1) * (1ULL << 52));
    };
    kimi_kda_params p;
    p.q     = describe(node->src[0], ptr(node->src[0], 0));
    p.k     = describe(node->src[1], ptr(node->src[1], 1));
    p.v     = describe(node->src[2], ptr(node->src[2], 2));
    p.g     = describe(node->src[3], ptr(node->src[3], 3));
    p.beta  = describe(node->src[4], ptr(node->src[4], 4));
    p.state = describe(node->src[5], ptr(node->src[5], 5));
    p.dst   = (float *) ptr(node, 6);
    p.n_snapshots = op_param_k(node);
    p.algo = g_algo.load();
    return p;
}

int64_t output_elements(const ggml_tensor * node) {
    return node->src[2]->ne[0] * node->src[2]->ne[1] * node->src[2]->ne[2] * node->src[2]->ne[3];
}

void count_call(const ggml_tensor * node, int64_t ns, bool gpu) {
    g_calls.fetch_add(1);
    if (gpu) {
        g_gpu_calls.fetch_add(1);
    }
    g_ns.fetch_add(ns);
    g_tokens.fetch_add(node->src[2]->ne[2] * node->src[2]->ne[3]);
}

double record_verify(const float * ours, const float * ref, int64_t n, int64_t n_out) {
    double d_out = 0, r_out = 0, d_st = 0, r_st = 0;
    for (int64_t i = 0; i < n; ++i) {
        const double d = std::fabs((double) ours[i] - (double) ref[i]), r = std::fabs((double) ref[i]);
        // a NaN difference must not hide behind max(): count it as infinitely wrong
        const double dd = std::isnan(d) ? INFINITY : d;
        if (i < n_out) { d_out = std::max(d_out, dd); r_out = std::max(r_out, r); }
        else           { d_st = std::max(d_st, dd); r_st = std::max(r_st, r); }
    }
    const double rel = std::max(d_out / std::max(r_out, 1e-30), n > n_out ? d_st / std::max(r_st, 1e-30) : 0.0);
    g_verify_nodes.fetch_add(1);
    std::lock_guard<std::mutex> lock(g_verify_mutex);
    g_verify_max_rel = std::max(g_verify_max_rel, rel);
    return rel;
}

// KDA mode only: the scalar-gate (Gated DeltaNet) form stays with ggml.
bool is_kda_node(const ggml_tensor * op) {
    if (op->op != GGML_OP_GATED_DELTA_NET || op->type != GGML_TYPE_F32) {
        return false;
    }
    for (int i = 0; i < 6; ++i) {
        if (op->src[i] == nullptr || op->src[i]->type != GGML_TYPE_F32) {
            return false;
        }
    }
    if (op->src[3]->ne[0] != op->src[2]->ne[0] || op->src[3]->ne[0] == 1) {
        return false;
    }
    if (!ggml_is_contiguous(op)) {
        return false;
    }
    kimi_kda_params p = node_params(op, true);
    if (kimi_kda_dst_size(&p) > ggml_nelements(op)) {
        return false;
    }
    char err[KIMI_KDA_ERR_LEN] = {0};
    if (kimi_kda_check(&p, err, sizeof(err)) != KIMI_KDA_OK) {
        // A declined node silently runs ggml's builtin op; say why when asked to.
        if (std::getenv("KIMI_BRIDGE_DEBUG")) {
            fprintf(stderr, "kimi bridge: declining %s: %s\n", op->name, err);
        }
        return false;
    }
    return true;
}

// Runs our kernel on one node with n_threads threads; returns KIMI_KDA_OK or an error code.
int run_kernel(const kimi_kda_params * p, int n_threads, char * err, size_t err_len) {
    if (n_threads < 1) {
        n_threads = 1;
    }
#ifdef KIMI_BRIDGE_OPENMP
    // The wheel's CPU backend uses libgomp too: reusing its thread team avoids a second set of
    // threads competing for the same cores.
    if (n_threads == 1) {
        return kimi_kda_forward_cpu(p, 0, 1, err, err_len);
    }
    std::atomic<int> status{KIMI_KDA_OK};
    std::vector<char> errs((size_t) n_threads * KIMI_KDA_ERR_LEN, 0);
    #pragma omp parallel num_threads(n_threads)
    {
        const int ith = omp_get_thread_num();
        const int nth = omp_get_num_threads();
        const int rc = kimi_kda_forward_cpu(p, ith, nth, &errs[(size_t) ith * KIMI_KDA_ERR_LEN], KIMI_KDA_ERR_LEN);
        if (rc != KIMI_KDA_OK) {
            int expected = KIMI_KDA_OK;
            status.compare_exchange_strong(expected, rc);
        }
    }
    if (status.load() != KIMI_KDA_OK) {
        for (int i = 0; i < n_threads; ++i) {
            if (errs[(size_t) i * KIMI_KDA_ERR_LEN] != 0) {
                put_err(err, err_len, &errs[(size_t) i * KIMI_KDA_ERR_LEN]);
                break;
            }
        }
    }
    return status.load();
#else
    return kimi_kda_forward_cpu_threads(p, n_threads, err, err_len);
#endif
}

// ---------------------------------------------------------------- backend (stream)

struct bridge_context {
    int n_threads;
    ggml_backend_t cpu = nullptr;  // delegate mode only: ggml's own CPU backend
};

ggml_status compute_node_with(ggml_backend_t backend, ggml_tensor * node) {
    ggml_init_params ip = { ggml_graph_overhead_custom(1, false), nullptr, /* no_alloc */ true };
    ggml_context * gctx = ggml_init(ip);
    if (gctx == nullptr) {
        return GGML_STATUS_ALLOC_FAILED;
    }
    ggml_cgraph * gf = ggml_new_graph_custom(gctx, 1, false);
    ggml_graph_add_node(gf, node);  // only the node: its sources are already computed
    const ggml_status st = ggml_backend_graph_compute(backend, gf);  // synchronous
    ggml_free(gctx);
    return st;
}

// Delegate mode: compute the node with ggml's own CPU op (a private CPU backend, same thread
// count), in place, as a one-node graph. The op still travels through the bridge (scheduling,
// buffers, counters), so this measures the builtin op's time in situ and proves the plumbing adds
// nothing: logits must be bit-identical to the builtin path.
ggml_status compute_with_ggml(bridge_context * ctx, ggml_tensor * node) {
    if (ctx->cpu == nullptr) {
        ctx->cpu = ggml_backend_init_by_type(GGML_BACKEND_DEVICE_TYPE_CPU, nullptr);
        if (ctx->cpu == nullptr) {
            return GGML_STATUS_FAILED;
        }
    }
    ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(ggml_backend_get_device(ctx->cpu));
    auto set_threads = (ggml_backend_set_n_threads_t) ggml_backend_reg_get_proc_address(reg, "ggml_backend_set_n_threads");
    if (set_threads) {
        set_threads(ctx->cpu, ctx->n_threads);
    }
    return compute_node_with(ctx->cpu, node);
}

ggml_guid_t bridge_guid() {
    static ggml_guid guid = { 0x6b, 0x69, 0x6d, 0x69, 0x2d, 0x6b, 0x64, 0x61, 0x2d, 0x62, 0x72, 0x69, 0x64, 0x67, 0x65, 0x01 };
    return &guid;
}

const char * backend_get_name(ggml_backend_t) { return "KIMI_KDA"; }

void backend_free(ggml_backend_t backend) {
    bridge_context * ctx = (bridge_context *) backend->context;
    if (ctx->cpu) {
        ggml_backend_free(ctx->cpu);
    }
    delete ctx;
    delete backend;
}

bool is_noop(const ggml_tensor * t) {
    switch (t->op) {
        case GGML_OP_NONE:
        case GGML_OP_RESHAPE:
        case GGML_OP_VIEW:
        case GGML_OP_PERMUTE:
        case GGML_OP_TRANSPOSE:
            return true;
        default:
            return false;
    }
}

ggml_status backend_graph_compute(ggml_backend_t backend, ggml_cgraph * cgraph) {
    bridge_context * ctx = (bridge_context *) backend->context;
    return for_each_kda_node(cgraph, "kimi bridge", [ctx](ggml_tensor * node) {
        kimi_kda_params p = node_params(node, false);
        char err[KIMI_KDA_ERR_LEN] = {0};
        g_last_threads.store(ctx->n_threads);
        const auto t0 = std::chrono::steady_clock::now();
        int rc;
        if (g_delegate.load()) {
            rc = compute_with_ggml(ctx, node) == GGML_STATUS_SUCCESS ? KIMI_KDA_OK : KIMI_KDA_ERR_BACKEND;
            if (rc != KIMI_KDA_OK) {
                snprintf(err, sizeof(err), "ggml's CPU op failed (delegate mode)");
            }
        } else {
            rc = run_kernel(&p, ctx->n_threads, err, sizeof(err));
        }
        const auto t1 = std::chrono::steady_clock::now();
        if (rc != KIMI_KDA_OK) {
            report(std::string("kimi bridge: KDA kernel failed on ") + node->name + ": " + err);
            return GGML_STATUS_FAILED;
        }
        if (g_corrupt.load()) {
            const int64_t n_out = output_elements(node);
            for (int64_t j = 0; j < n_out; ++j) {
                p.dst[j] += 0.5f;
            }
        }
        if (g_verify.load()) {
            // ggml's CPU op on the same inputs into scratch, against what the graph will read
            std::vector<float> ref((size_t) ggml_nelements(node));
            ggml_tensor tmp = *node;
            tmp.data = ref.data();
            if (compute_with_ggml(ctx, &tmp) != GGML_STATUS_SUCCESS) {
                report(std::string("kimi bridge: verify mode: ggml's CPU op failed on ") + node->name);
                return GGML_STATUS_FAILED;
            }
            record_verify(p.dst, ref.data(), ggml_nelements(node), output_elements(node));
        }
        count_call(node, std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count(), false);
        return GGML_STATUS_SUCCESS;
    });
}

const ggml_backend_i bridge_backend_i = {
    /* .get_name            = */ backend_get_name,
    /* .free                = */ backend_free,
    /* .set_tensor_async    = */ nullptr,
    /* .get_tensor_async    = */ nullptr,
    /* .set_tensor_2d_async = */ nullptr,
    /* .get_tensor_2d_async = */ nullptr,
    /* .cpy_tensor_async    = */ nullptr,
    /* .synchronize         = */ nullptr,
    /* .graph_plan_create   = */ nullptr,
    /* .graph_plan_free     = */ nullptr,
    /* .graph_plan_update   = */ nullptr,
    /* .graph_plan_compute  = */ nullptr,
    /* .graph_compute       = */ backend_graph_compute,
    /* .event_record        = */ nullptr,
    /* .event_wait          = */ nullptr,
    /* .graph_optimize      = */ nullptr,
};

int default_threads() {
    const unsigned n = std::thread::hardware_concurrency();
    return n == 0 ? 1 : (int) n;
}

ggml_backend_reg_t bridge_reg();

ggml_backend_t backend_init() {
    return new ggml_backend {
        /* .guid    = */ bridge_guid(),
        /* .iface   = */ bridge_backend_i,
        /* .device  = */ ggml_backend_reg_dev_get(bridge_reg(), 0),
        /* .context = */ new bridge_context { default_threads() },
    };
}

// llama.cpp finds this through get_proc_address("ggml_backend_set_n_threads") and passes the
// context's n_threads (n_threads_batch for prompt batches), as it does for BLAS.
void backend_set_n_threads(ggml_backend_t backend, int n_threads) {
    if (backend == nullptr || !ggml_guid_matches(backend->guid, bridge_guid())) {
        return;
    }
    ((bridge_context *) backend->context)->n_threads = n_threads < 1 ? 1 : n_threads;
}

// ---------------------------------------------------------------- device

const char * dev_get_name(ggml_backend_dev_t) { return "KIMI_KDA"; }
const char * dev_get_description(ggml_backend_dev_t) { return "kimi-gguf KDA kernels (CPU)"; }

void dev_get_memory(ggml_backend_dev_t, size_t * free, size_t * total) {
    *free = 0;
    *total = 0;
}

enum ggml_backend_dev_type dev_get_type(ggml_backend_dev_t) { return GGML_BACKEND_DEVICE_TYPE_ACCEL; }

void dev_get_props(ggml_backend_dev_t dev, ggml_backend_dev_props * props) {
    props->name        = dev_get_name(dev);
    props->description = dev_get_description(dev);
    props->type        = dev_get_type(dev);
    props->device_id   = nullptr;
    dev_get_memory(dev, &props->memory_free, &props->memory_total);
    props->caps = {
        /* .async                = */ false,
        /* .host_buffer          = */ false,
        /* .buffer_from_host_ptr = */ false,
        /* .events               = */ false,
        /* .mmap_support         = */ false,
    };
}

ggml_backend_t dev_init_backend(ggml_backend_dev_t, const char *) { return backend_init(); }

// The CPU buffer type, taken from the running CPU device (the same object as
// ggml_backend_cpu_buffer_type(), which llama.cpp compares against).
ggml_backend_buffer_type_t dev_get_buffer_type(ggml_backend_dev_t) {
    ggml_backend_dev_t cpu = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    return cpu ? ggml_backend_dev_buffer_type(cpu) : nullptr;
}

bool dev_supports_op(ggml_backend_dev_t, const ggml_tensor * op) {
    if (!g_enabled.load()) {
        return false;
    }
    if (is_noop(op)) {
        return true;  // like BLAS: views of our output stay with us instead of splitting the graph
    }
    return is_kda_node(op);
}

bool dev_supports_buft(ggml_backend_dev_t, ggml_backend_buffer_type_t buft) {
    return ggml_backend_buft_is_host(buft);
}

const ggml_backend_device_i bridge_device_i = {
    /* .get_name             = */ dev_get_name,
    /* .get_description      = */ dev_get_description,
    /* .get_memory           = */ dev_get_memory,
    /* .get_type             = */ dev_get_type,
    /* .get_props            = */ dev_get_props,
    /* .init_backend         = */ dev_init_backend,
    /* .get_buffer_type      = */ dev_get_buffer_type,
    /* .get_host_buffer_type = */ nullptr,
    /* .buffer_from_host_ptr = */ nullptr,
    /* .supports_op          = */ dev_supports_op,
    /* .supports_buft        = */ dev_supports_buft,
    /* .offload_op           = */ nullptr,
    /* .event_new            = */ nullptr,
    /* .event_free           = */ nullptr,
    /* .event_synchronize    = */ nullptr,
};

// ---------------------------------------------------------------- reg

// Device 0 is the CPU (ACCEL) device; 1.. wrap the running ggml's CUDA devices (gpu_discover).
const char * reg_get_name(ggml_backend_reg_t) { return "KIMI_KDA"; }
size_t reg_get_device_count(ggml_backend_reg_t) { return 1 + gpu_device_count(); }

ggml_backend_dev_t reg_get_device(ggml_backend_reg_t reg, size_t index) {
    static ggml_backend_device device = {
        /* .iface   = */ bridge_device_i,
        /* .reg     = */ reg,
        /* .context = */ nullptr,
    };
    if (index == 0) {
        return &device;
    }
    return index - 1 < gpu_device_count() ? gpu_device(index - 1) : nullptr;
}

ggml_backend_feature * reg_get_features(ggml_backend_reg_t) {
    static ggml_backend_feature features[] = {
        { "KDA", "1" },
        { "GGML_COMMIT", KIMI_GGML_COMMIT },
        { nullptr, nullptr },
    };
    return features;
}

void * reg_get_proc_address(ggml_backend_reg_t, const char * name) {
    if (std::strcmp(name, "ggml_backend_set_n_threads") == 0) {
        return (void *) backend_set_n_threads;
    }
    if (std::strcmp(name, "ggml_backend_get_features") == 0) {
        return (void *) reg_get_features;
    }
    return nullptr;
}

const ggml_backend_reg_i bridge_reg_i = {
    /* .get_name         = */ reg_get_name,
    /* .get_device_count = */ reg_get_device_count,
    /* .get_device       = */ reg_get_device,
    /* .get_proc_address = */ reg_get_proc_address,
};

ggml_backend_reg_t bridge_reg() {
    static ggml_backend_reg reg = {
        /* .api_version = */ GGML_BACKEND_API_VERSION,
        /* .iface       = */ bridge_reg_i,
        /* .context     = */ nullptr,
    };
    return &reg;
}

// ---------------------------------------------------------------- self-test helpers

struct lcg {
    uint64_t s;
    float uniform() {  // [0, 1)
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        return (float) ((s >> 40) & 0xFFFFFF) / 16777216.0f;
    }
};

void fill_unit_rows(ggml_tensor * t, lcg & rng) {  // l2-normalised rows, like the model's q and k
    float * d = (float *) t->data;
    const int64_t n = t->ne[0];
    for (int64_t r = 0; r < ggml_nrows(t); ++r) {
        double ss = 0.0;
        for (int64_t i = 0; i < n; ++i) {
            d[r * n + i] = 2.0f * rng.uniform() - 1.0f;
            ss += (double) d[r * n + i] * d[r * n + i];
        }
        const float inv = (float) (1.0 / std::sqrt(ss + 1e-12));
        for (int64_t i = 0; i < n; ++i) {
            d[r * n + i] *= inv;
        }
    }
}

void fill(ggml_tensor * t, lcg & rng, float lo, float hi) {
    float * d = (float *) t->data;
    for (int64_t i = 0; i < ggml_nelements(t); ++i) {
        d[i] = lo + (hi - lo) * rng.uniform();
    }
}

} // namespace kimi_bridge

using namespace kimi_bridge;

// ---------------------------------------------------------------- exported C API

extern "C" {

const char * kimi_bridge_built_commit(void) { return KIMI_GGML_COMMIT; }
const char * kimi_bridge_built_version(void) { return KIMI_GGML_VERSION; }

int kimi_bridge_check_version(const char * expected_commit, char * err, size_t err_len) {
    const char * want = expected_commit ? expected_commit : KIMI_GGML_COMMIT;
    const char * have = ggml_commit();
    const char * have_version = ggml_version();
    const size_t n = std::strlen(want);
    // The wheel's build reports e.g. "0c1e570-dirty": same commit, local build marker.
    const bool commit_ok = have != nullptr && n > 0 && std::strncmp(have, want, n) == 0 && (have[n] == '\0' || have[n] == '-');
    const bool version_ok = have_version != nullptr && std::strcmp(have_version, KIMI_GGML_VERSION) == 0;
    if (commit_ok && version_ok) {
        return 0;
    }
    put_err(err, err_len, std::string("kimi bridge refused: built for ggml ") + want + " (version " + KIMI_GGML_VERSION +
            ") but the running ggml is " + (have ? have : "?") + " (version " + (have_version ? have_version : "?") +
            "); rebuild the bridge against this llama-cpp-python (make ops)");
    return 1;
}

int kimi_bridge_selftest(char * err, size_t err_len) {
    if (std::strcmp(ggml_op_name(GGML_OP_GATED_DELTA_NET), "GATED_DELTA_NET") != 0) {
        put_err(err, err_len, std::string("kimi bridge self-test: op number ") + std::to_string((int) GGML_OP_GATED_DELTA_NET) +
                " is '" + ggml_op_name(GGML_OP_GATED_DELTA_NET) + "' in the running ggml, not GATED_DELTA_NET");
        return 1;
    }
    // A small KDA problem in the model's head size; K = 2 snapshots, T = 5 tokens, 2 sequences.
    const int64_t S = 128, H = 2, T = 5, B = 2, K = 2;
    ggml_init_params ip = { /* mem_size */ 8u << 20, /* mem_buffer */ nullptr, /* no_alloc */ false };
    ggml_context * ctx = ggml_init(ip);
    if (!ctx) {
        put_err(err, err_len, "kimi bridge self-test: ggml_init failed");
        return 1;
    }
    ggml_tensor * q  = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, S, H, T, B);
    ggml_tensor * k  = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, S, H, T, B);
    ggml_tensor * v  = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, S, H, T, B);
    ggml_tensor * g  = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, S, H, T, B);
    ggml_tensor * be = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, 1, H, T, B);
    ggml_tensor * s0 = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, S, S, H, B);
    lcg rng{0x6b696d69ULL};
    fill_unit_rows(q, rng);
    fill_unit_rows(k, rng);
    fill(v, rng, -1.0f, 1.0f);
    fill(g, rng, -3.0f, -1e-4f);
    fill(be, rng, 0.0f, 1.0f);
    fill(s0, rng, -0.1f, 0.1f);

    ggml_tensor * out = ggml_gated_delta_net(ctx, q, k, v, g, be, s0, K);
    std::string why;
    if (out->op != GGML_OP_GATED_DELTA_NET) {
        why = "result op is not GATED_DELTA_NET";
    } else if (out->src[0] != q || out->src[1] != k || out->src[2] != v || out->src[3] != g || out->src[4] != be || out->src[5] != s0) {
        why = "source order differs from (q, k, v, g, beta, state)";
    } else if (op_param_k(out) != K) {
        why = "op param 0 is not the snapshot count K";
    } else if (out->type != GGML_TYPE_F32 || out->ne[0] != S * H || out->ne[1] != T * B + K * S * B || out->ne[2] != 1 || out->ne[3] != 1) {
        why = "result layout differs from [S_v*H, T*n_seqs + K*S_v*n_seqs]";
    } else if (!is_kda_node(out)) {
        why = "the kernel does not accept the dummy node";
    }
    if (!why.empty()) {
        put_err(err, err_len, "kimi bridge self-test: " + why + " in the running ggml");
        ggml_free(ctx);
        return 1;
    }

    // ggml's own CPU op on the node, then ours, on the slots both write (output + min(T, K) states).
    ggml_backend_t cpu = ggml_backend_init_by_type(GGML_BACKEND_DEVICE_TYPE_CPU, nullptr);
    if (!cpu) {
        put_err(err, err_len, "kimi bridge self-test: no CPU backend in the running ggml");
        ggml_free(ctx);
        return 1;
    }
    ggml_cgraph * gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, out);
    const ggml_status st = ggml_backend_graph_compute(cpu, gf);
    ggml_backend_free(cpu);
    if (st != GGML_STATUS_SUCCESS) {
        put_err(err, err_len, "kimi bridge self-test: ggml's CPU op failed on the dummy node");
        ggml_free(ctx);
        return 1;
    }
    const int64_t n_written = S * H * T * B + std::min(T, K) * S * S * H * B;
    std::vector<float> ours((size_t) ggml_nelements(out), 0.0f);
    kimi_kda_params p = node_params(out, false);
    p.dst = ours.data();
    char kerr[KIMI_KDA_ERR_LEN] = {0};
    const int rc = run_kernel(&p, 1, kerr, sizeof(kerr));
    if (rc != KIMI_KDA_OK) {
        put_err(err, err_len, std::string("kimi bridge self-test: kernel failed: ") + kerr);
        ggml_free(ctx);
        return 1;
    }
    const float * ref = (const float *) out->data;
    const std::string cpu_why = selftest_compare(ref, ours.data(), n_written, "kernel");
    if (!cpu_why.empty()) {
        put_err(err, err_len, "kimi bridge self-test: " + cpu_why);
        ggml_free(ctx);
        return 1;
    }
    // The CUDA kernels on the same node, when this library and the machine have them.
    const std::string gpu_why = gpu_selftest(out, ref, n_written);
    ggml_free(ctx);
    if (!gpu_why.empty()) {
        put_err(err, err_len, "kimi bridge self-test (CUDA): " + gpu_why);
        return 1;
    }
    return 0;
}

void kimi_bridge_stats(int64_t * calls, int64_t * ns, int64_t * n_tokens) {
    if (calls) *calls = g_calls.load();
    if (ns) *ns = g_ns.load();
    if (n_tokens) *n_tokens = g_tokens.load();
}

int64_t kimi_bridge_gpu_calls(void) { return g_gpu_calls.load(); }

void kimi_bridge_verify_stats(int64_t * nodes, double * max_rel) {
    std::lock_guard<std::mutex> lock(g_verify_mutex);
    if (nodes) *nodes = g_verify_nodes.load();
    if (max_rel) *max_rel = g_verify_max_rel;
}

void kimi_bridge_set_verify(int on) { g_verify.store(on ? 1 : 0); }

void kimi_bridge_reset_stats(void) {
    {
        std::lock_guard<std::mutex> lock(g_verify_mutex);
        g_verify_nodes.store(0);
        g_verify_max_rel = 0.0;
    }
    g_calls.store(0);
    g_gpu_calls.store(0);
    g_ns.store(0);
    g_tokens.store(0);
}

void kimi_bridge_set_corrupt(int on) { g_corrupt.store(on ? 1 : 0); }
void kimi_bridge_set_enabled(int on) { g_enabled.store(on ? 1 : 0); }

int kimi_bridge_last_n_threads(void) { return g_last_threads.load(); }

void kimi_bridge_set_delegate(int on) { g_delegate.store(on ? 1 : 0); }

int kimi_bridge_set_algo(int algo) {
    if (algo != KIMI_KDA_ALGO_AUTO && algo != KIMI_KDA_ALGO_RECURRENT && algo != KIMI_KDA_ALGO_CHUNKED) {
        return 1;
    }
    g_algo.store((kimi_kda_algo) algo);
    return 0;
}

const char * kimi_bridge_last_error(void) {
    static thread_local std::string copy;
    std::lock_guard<std::mutex> lock(g_err_mutex);
    copy = g_last_error;
    return copy.c_str();
}

int kimi_bridge_gpu_device_count(void) { return (int) gpu_device_count(); }

const char * kimi_bridge_gpu_device_name(int i) {
    return i >= 0 && (size_t) i < gpu_device_count() ? ggml_backend_dev_name(gpu_device((size_t) i)) : nullptr;
}

void kimi_bridge_set_cuda_math(int math) { g_cuda_math.store(math); }

// Entry point for ggml_backend_load(path). The running ggml's CUDA devices are known by now (they
// register when libggml starts), so the GPU devices are created before the registry counts ours.
KIMI_BRIDGE_EXPORT ggml_backend_reg_t ggml_backend_init(void) {
    gpu_discover(bridge_reg());
    return bridge_reg();
}

} // extern "C"
