// kda_backend_gpu.cpp - the bridge's GPU devices: llama.cpp's KDA op on this project's CUDA kernels
// inside a llama-cpp-python built with CUDA.
//
// How the op gets here (llama.cpp 0c1e570, ggml-backend.cpp, ggml_backend_sched_split_graph):
//  - One device "KIMI_KDA_CUDA<i>" per ggml CUDA device <i>. It reports that device's buffer types
//    as its own, so the scheduler sees both backends on the same memory, and it supports only
//    GATED_DELTA_NET in KDA mode (plus views).
//  - Listed before CUDA<i> in llama_model_params.devices (bridge.py, only with enable_bridge(gpu=True):
//    the split graph costs generation more than the kernel saves, BENCHMARKS.md), it gets the higher scheduler
//    priority; pass 3 ("upgrade nodes to higher prio backends with compatible buffer types") then
//    moves each KDA node from CUDA<i> to us, and nothing is copied: our inputs and outputs live in
//    CUDA<i>'s buffers. It reports no free memory, so llama.cpp puts no layer (no weights) on it.
//  - It shares CUDA<i>'s PCI id, so llama.cpp's default device list (no explicit devices) skips it
//    as a duplicate: without the explicit list the bridge stays out of the GPU path entirely.
//  - No events and no async copies: the scheduler then synchronises the CUDA backend before our
//    split, and we finish our kernels (stream synchronise) before graph_compute returns, because
//    the scheduler does not synchronise us before the next CUDA split.
// Verify mode (kimi_bridge_set_verify): ggml's own CUDA op runs on each node too, and the worst
// relative difference is counted (the GPU tests' parity check: see tests/test_bridge.py for why
// end-to-end logits on a GPU are compared with the float64 reference rather than with builtin).
// Debug switches (environment): KIMI_BRIDGE_VERIFY=1 = verify mode that also prints each node and
// scans the node's compute buffer for bytes written outside dst; KIMI_BRIDGE_SYNC_START=1
// synchronises the whole device before each of our splits.
#include "bridge_internal.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#ifdef KIMI_BRIDGE_CUDA
#include "kimi_kda_cuda.h"
#include "kimi_kda_cuda_rt.h"
#endif

namespace kimi_bridge {

#ifndef KIMI_BRIDGE_CUDA

void gpu_discover(ggml_backend_reg_t) {}
size_t gpu_device_count() { return 0; }
ggml_backend_dev_t gpu_device(size_t) { return nullptr; }
std::string gpu_selftest(const ggml_tensor *, const float *, int64_t) { return ""; }

#else

namespace {

struct gpu_device_ctx {
    int cuda_index;               // the CUDA runtime's device number
    ggml_backend_dev_t cuda;      // ggml's device for it ("CUDA<i>")
    std::string name, description;
    ggml_backend_device device;   // what the registry hands out
};

std::vector<std::unique_ptr<gpu_device_ctx>> g_devices;

gpu_device_ctx * ctx_of(ggml_backend_dev_t dev) { return (gpu_device_ctx *) dev->context; }

// What the CUDA path accepts, judged before allocation: kimi_kda_cuda_check on placeholder
// addresses (node_params), and the views' offsets standing in for the real addresses' alignment
// (ggml's CUDA buffers are 128-byte aligned).
bool cuda_layout_ok(const ggml_tensor * op) {
    kimi_kda_params p = node_params(op, true);
    if (kimi_kda_cuda_check(&p, nullptr, 0) != KIMI_KDA_OK) {
        return false;
    }
    for (int i = 0; i < 6; ++i) {
        if (op->src[i]->view_offs % 16 != 0) {
            return false;
        }
    }
    return op->view_offs % 16 == 0;
}

// ---------------------------------------------------------------- backend (stream)

struct gpu_backend_ctx {
    gpu_device_ctx * dev;
    void * stream = nullptr;
    void * ws = nullptr;      // the chunked kernel's scratch, grown on demand and kept
    size_t ws_bytes = 0;
    ggml_backend_t cuda = nullptr;  // delegate mode and verify only: a private ggml CUDA backend
    bool verify = false;            // $KIMI_BRIDGE_VERIFY, read once per backend (see the top)
    bool sync_start = false;        // $KIMI_BRIDGE_SYNC_START
};

ggml_guid_t gpu_guid() {
    static ggml_guid guid = { 0x6b, 0x69, 0x6d, 0x69, 0x2d, 0x6b, 0x64, 0x61, 0x2d, 0x63, 0x75, 0x64, 0x61, 0x00, 0x00, 0x01 };
    return &guid;
}

const char * gpu_backend_name(ggml_backend_t backend) { return ((gpu_backend_ctx *) backend->context)->dev->name.c_str(); }

void gpu_backend_free(ggml_backend_t backend) {
    gpu_backend_ctx * ctx = (gpu_backend_ctx *) backend->context;
    if (ctx->stream) {
        kimi_kda_cuda_stream_sync(ctx->stream);
        kimi_kda_cuda_stream_destroy(ctx->stream);
    }
    kimi_kda_cuda_free(ctx->ws);
    if (ctx->cuda) {
        ggml_backend_free(ctx->cuda);
    }
    delete ctx;
    delete backend;
}

void gpu_backend_synchronize(ggml_backend_t backend) {
    gpu_backend_ctx * ctx = (gpu_backend_ctx *) backend->context;
    kimi_kda_cuda_stream_sync(ctx->stream);
}

ggml_status fail_node(const ggml_tensor * node, const std::string & why) {
    report(std::string("kimi bridge (CUDA): ") + node->name + ": " + why);
    return GGML_STATUS_FAILED;
}

// The private ggml CUDA backend of delegate mode and verify, started on first use.
ggml_backend_t ggml_cuda_of(gpu_backend_ctx * ctx) {
    if (ctx->cuda == nullptr) {
        ctx->cuda = ggml_backend_dev_init(ctx->dev->cuda, nullptr);
    }
    return ctx->cuda;
}

// Verify mode (kimi_bridge_set_verify, or $KIMI_BRIDGE_VERIFY which also prints): ggml's own CUDA
// op on the same node into scratch, compared with what our kernel left in dst.
ggml_status verify_node(gpu_backend_ctx * ctx, ggml_tensor * node) {
    if (ggml_cuda_of(ctx) == nullptr) {
        return fail_node(node, "verify mode: cannot start a ggml CUDA backend");
    }
    const size_t n = (size_t) ggml_nelements(node);
    void * scratch = nullptr;
    int rc = kimi_kda_cuda_malloc(ctx->dev->cuda_index, &scratch, n * sizeof(float));
    if (rc != 0) {
        return fail_node(node, std::string("verify mode: ") + kimi_kda_cuda_error_string(rc));
    }
    ggml_tensor tmp = *node;
    tmp.data = scratch;
    const ggml_status st = compute_node_with(ctx->cuda, &tmp);
    std::vector<float> ours(n), ref(n);
    rc = kimi_kda_cuda_memcpy(ours.data(), node->data, n * sizeof(float));
    if (rc == 0) {
        rc = kimi_kda_cuda_memcpy(ref.data(), scratch, n * sizeof(float));
    }
    kimi_kda_cuda_free(scratch);
    if (st != GGML_STATUS_SUCCESS || rc != 0) {
        return fail_node(node, "verify mode: ggml's CUDA op failed");
    }
    const double rel = record_verify(ours.data(), ref.data(), (int64_t) n, output_elements(node));
    if (ctx->verify) {
        fprintf(stderr, "kimi bridge verify %s: T=%lld H=%lld S=%lld seqs=%lld max rel diff vs ggml's CUDA op %.3g\n",
                node->name, (long long) node->src[2]->ne[2], (long long) node->src[2]->ne[1],
                (long long) node->src[2]->ne[0], (long long) node->src[2]->ne[3], rel);
    }
    return GGML_STATUS_SUCCESS;
}

// Our kernel on one node: scratch, kernel, corrupt switch, and finished before returning (the
// scheduler starts the next CUDA split without waiting for us).
ggml_status run_ours(gpu_backend_ctx * ctx, ggml_tensor * node) {
    kimi_kda_params p = node_params(node, false);
    const size_t need = kimi_kda_cuda_workspace_bytes(&p);
    if (need > ctx->ws_bytes) {
        kimi_kda_cuda_free(ctx->ws);
        ctx->ws = nullptr;
        ctx->ws_bytes = 0;
        // on failure the kernel allocates stream-ordered scratch itself, or runs the fused path
        if (kimi_kda_cuda_malloc(ctx->dev->cuda_index, &ctx->ws, need) == 0) {
            ctx->ws_bytes = need;
        }
    }
    char err[KIMI_KDA_ERR_LEN] = {0};
    int rc = kimi_kda_forward_cuda_ws(&p, g_cuda_math.load(), ctx->ws, ctx->ws_bytes, ctx->stream, err, sizeof(err));
    if (rc != KIMI_KDA_OK) {
        return fail_node(node, err);
    }
    if (g_corrupt.load()) {
        rc = kimi_kda_cuda_add_scalar(p.dst, output_elements(node), 0.5f, ctx->stream);
        if (rc != 0) {
            return fail_node(node, std::string("corrupt switch: ") + kimi_kda_cuda_error_string(rc));
        }
    }
    rc = kimi_kda_cuda_stream_sync(ctx->stream);
    if (rc != 0) {
        return fail_node(node, std::string("kernel failed: ") + kimi_kda_cuda_error_string(rc));
    }
    return GGML_STATUS_SUCCESS;
}

// llama.cpp's own CUDA op, in place and timed the same way (delegate mode): its share of the time.
ggml_status run_delegate(gpu_backend_ctx * ctx, ggml_tensor * node) {
    if (ggml_cuda_of(ctx) == nullptr) {
        return fail_node(node, "delegate mode: cannot start a ggml CUDA backend");
    }
    if (compute_node_with(ctx->cuda, node) != GGML_STATUS_SUCCESS) {
        return fail_node(node, "delegate mode: ggml's CUDA op failed");
    }
    return GGML_STATUS_SUCCESS;
}

// Debug ($KIMI_BRIDGE_VERIFY): run_ours, then report bytes of the node's compute buffer written
// outside dst, and compare with ggml's own op on the same inputs (verify_node).
ggml_status run_scanned(gpu_backend_ctx * ctx, ggml_tensor * node) {
    ggml_backend_buffer_t buf = node->view_src ? node->view_src->buffer : node->buffer;
    std::vector<uint8_t> before, after;
    if (buf) {
        kimi_kda_cuda_stream_sync(ctx->stream);
        before.resize(ggml_backend_buffer_get_size(buf));
        kimi_kda_cuda_memcpy(before.data(), ggml_backend_buffer_get_base(buf), before.size());
    }
    const ggml_status st = run_ours(ctx, node);
    if (st != GGML_STATUS_SUCCESS || !buf) {
        return st;
    }
    after.resize(before.size());
    kimi_kda_cuda_memcpy(after.data(), ggml_backend_buffer_get_base(buf), after.size());
    const size_t d0 = (size_t) ((const char *) node->data - (const char *) ggml_backend_buffer_get_base(buf));
    const size_t d1 = d0 + ggml_nbytes(node);
    size_t n_stray = 0, first = 0, last = 0;
    for (size_t i = 0; i < after.size(); ++i) {
        if ((i < d0 || i >= d1) && after[i] != before[i]) {
            if (n_stray++ == 0) first = i;
            last = i;
        }
    }
    fprintf(stderr, "kimi bridge verify %s: compute buffer %zu B, dst [%zu, %zu), stray bytes %zu (first %zu, last %zu), ws %p %zu B\n",
            node->name, after.size(), d0, d1, n_stray, first, last, ctx->ws, ctx->ws_bytes);
    return verify_node(ctx, node);
}

ggml_status gpu_graph_compute(ggml_backend_t backend, ggml_cgraph * cgraph) {
    gpu_backend_ctx * ctx = (gpu_backend_ctx *) backend->context;
    // ggml-cuda moves the thread's current device around; our stream belongs to ours.
    const int rc = kimi_kda_cuda_set_device(ctx->dev->cuda_index);
    if (rc != 0) {
        report(std::string("kimi bridge (CUDA): cudaSetDevice: ") + kimi_kda_cuda_error_string(rc));
        return GGML_STATUS_FAILED;
    }
    if (ctx->sync_start) {
        kimi_kda_cuda_device_sync();
    }
    return for_each_kda_node(cgraph, "kimi bridge (CUDA)", [ctx](ggml_tensor * node) {
        const auto t0 = std::chrono::steady_clock::now();
        ggml_status st = g_delegate.load() ? run_delegate(ctx, node)
                       : ctx->verify        ? run_scanned(ctx, node)
                                            : run_ours(ctx, node);
        if (st == GGML_STATUS_SUCCESS && g_verify.load() && !ctx->verify && !g_delegate.load()) {
            st = verify_node(ctx, node);
        }
        if (st == GGML_STATUS_SUCCESS) {
            const auto t1 = std::chrono::steady_clock::now();
            count_call(node, std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count(), true);
        }
        return st;
    });
}

const ggml_backend_i gpu_backend_i = {
    /* .get_name            = */ gpu_backend_name,
    /* .free                = */ gpu_backend_free,
    /* .set_tensor_async    = */ nullptr,
    /* .get_tensor_async    = */ nullptr,
    /* .set_tensor_2d_async = */ nullptr,
    /* .get_tensor_2d_async = */ nullptr,
    /* .cpy_tensor_async    = */ nullptr,
    /* .synchronize         = */ gpu_backend_synchronize,
    /* .graph_plan_create   = */ nullptr,
    /* .graph_plan_free     = */ nullptr,
    /* .graph_plan_update   = */ nullptr,
    /* .graph_plan_compute  = */ nullptr,
    /* .graph_compute       = */ gpu_graph_compute,
    /* .event_record        = */ nullptr,
    /* .event_wait          = */ nullptr,
    /* .graph_optimize      = */ nullptr,
};

// ---------------------------------------------------------------- device

const char * gpu_dev_name(ggml_backend_dev_t dev) { return ctx_of(dev)->name.c_str(); }
const char * gpu_dev_description(ggml_backend_dev_t dev) { return ctx_of(dev)->description.c_str(); }

// No free memory, so that llama.cpp's layer split (by free memory) gives us no layer. The total is
// the CUDA device's: a 0/0 answer would make llama.cpp fall back to the host's memory figures.
void gpu_dev_memory(ggml_backend_dev_t dev, size_t * free, size_t * total) {
    size_t cuda_free = 0;
    ggml_backend_dev_memory(ctx_of(dev)->cuda, &cuda_free, total);
    *free = 0;
    if (*total == 0) {
        *total = 1;
    }
}

enum ggml_backend_dev_type gpu_dev_type(ggml_backend_dev_t) { return GGML_BACKEND_DEVICE_TYPE_GPU; }

void gpu_dev_props(ggml_backend_dev_t dev, ggml_backend_dev_props * props) {
    ggml_backend_dev_props cuda_props;
    ggml_backend_dev_get_props(ctx_of(dev)->cuda, &cuda_props);
    props->name        = gpu_dev_name(dev);
    props->description = gpu_dev_description(dev);
    props->type        = GGML_BACKEND_DEVICE_TYPE_GPU;
    props->device_id   = cuda_props.device_id;  // same card: default device lists skip us (see top)
    gpu_dev_memory(dev, &props->memory_free, &props->memory_total);
    props->caps = {
        /* .async                = */ false,
        /* .host_buffer          = */ ggml_backend_dev_host_buffer_type(ctx_of(dev)->cuda) != nullptr,
        /* .buffer_from_host_ptr = */ false,
        /* .events               = */ false,
        /* .mmap_support         = */ false,
    };
}

ggml_backend_t gpu_dev_init_backend(ggml_backend_dev_t dev, const char *) {
    gpu_device_ctx * d = ctx_of(dev);
    auto * ctx = new gpu_backend_ctx{d};
    ctx->verify = std::getenv("KIMI_BRIDGE_VERIFY") != nullptr;
    ctx->sync_start = std::getenv("KIMI_BRIDGE_SYNC_START") != nullptr;
    const int rc = kimi_kda_cuda_stream_create(d->cuda_index, &ctx->stream);
    if (rc != 0) {
        fprintf(stderr, "kimi bridge (CUDA): cannot create a stream on %s: %s\n", d->name.c_str(), kimi_kda_cuda_error_string(rc));
        delete ctx;
        return nullptr;
    }
    return new ggml_backend {
        /* .guid    = */ gpu_guid(),
        /* .iface   = */ gpu_backend_i,
        /* .device  = */ dev,
        /* .context = */ ctx,
    };
}

ggml_backend_buffer_type_t gpu_dev_buffer_type(ggml_backend_dev_t dev) { return ggml_backend_dev_buffer_type(ctx_of(dev)->cuda); }

// llama.cpp stages the CPU backend's intermediate tensors in the first device's host buffer type.
ggml_backend_buffer_type_t gpu_dev_host_buffer_type(ggml_backend_dev_t dev) {
    return ggml_backend_dev_host_buffer_type(ctx_of(dev)->cuda);
}

bool gpu_dev_supports_op(ggml_backend_dev_t, const ggml_tensor * op) {
    if (!g_enabled.load()) {
        return false;
    }
    if (is_noop(op)) {
        return true;  // views of our output stay with us instead of splitting the graph
    }
    return is_kda_node(op) && cuda_layout_ok(op);
}

bool gpu_dev_supports_buft(ggml_backend_dev_t dev, ggml_backend_buffer_type_t buft) {
    return buft == ggml_backend_dev_buffer_type(ctx_of(dev)->cuda);
}

const ggml_backend_device_i gpu_device_i = {
    /* .get_name             = */ gpu_dev_name,
    /* .get_description      = */ gpu_dev_description,
    /* .get_memory           = */ gpu_dev_memory,
    /* .get_type             = */ gpu_dev_type,
    /* .get_props            = */ gpu_dev_props,
    /* .init_backend         = */ gpu_dev_init_backend,
    /* .get_buffer_type      = */ gpu_dev_buffer_type,
    /* .get_host_buffer_type = */ gpu_dev_host_buffer_type,
    /* .buffer_from_host_ptr = */ nullptr,
    /* .supports_op          = */ gpu_dev_supports_op,
    /* .supports_buft        = */ gpu_dev_supports_buft,
    /* .offload_op           = */ nullptr,
    /* .event_new            = */ nullptr,
    /* .event_free           = */ nullptr,
    /* .event_synchronize    = */ nullptr,
};

// "CUDA3" -> 3; -1 for any other name.
int cuda_index_of(const char * name) {
    int idx = -1;
    char tail = 0;
    if (name && std::sscanf(name, "CUDA%d%c", &idx, &tail) == 1 && idx >= 0) {
        return idx;
    }
    return -1;
}

} // namespace

void gpu_discover(ggml_backend_reg_t reg) {
    if (!g_devices.empty()) {
        return;
    }
    int n_cuda = 0;
    if (kimi_kda_cuda_device_count(&n_cuda) != 0 || n_cuda == 0) {
        return;  // no usable CUDA device for our kernels: CPU device only
    }
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        if (ggml_backend_dev_type(dev) != GGML_BACKEND_DEVICE_TYPE_GPU ||
            std::strcmp(ggml_backend_reg_name(ggml_backend_dev_backend_reg(dev)), "CUDA") != 0) {
            continue;
        }
        const int idx = cuda_index_of(ggml_backend_dev_name(dev));
        if (idx < 0 || idx >= n_cuda) {
            continue;
        }
        auto d = std::make_unique<gpu_device_ctx>();
        d->cuda_index = idx;
        d->cuda = dev;
        d->name = std::string("KIMI_KDA_") + ggml_backend_dev_name(dev);
        d->description = std::string("kimi-gguf KDA kernels on ") + ggml_backend_dev_name(dev) + " (" +
                         ggml_backend_dev_description(dev) + ")";
        d->device = ggml_backend_device{ gpu_device_i, reg, d.get() };
        g_devices.push_back(std::move(d));
    }
}

size_t gpu_device_count() { return g_devices.size(); }

ggml_backend_dev_t gpu_device(size_t i) { return i < g_devices.size() ? &g_devices[i]->device : nullptr; }

std::string gpu_selftest(const ggml_tensor * node, const float * ref, int64_t n_written) {
    int n_cuda = 0;
    if (kimi_kda_cuda_device_count(&n_cuda) != 0 || n_cuda == 0) {
        return "";
    }
    // device copies of the node's sources and a poisoned destination
    std::vector<void *> bufs;
    auto release = [&]() {
        for (void * b : bufs) {
            kimi_kda_cuda_free(b);
        }
    };
    auto upload = [&](const ggml_tensor * t, void ** out) -> int {
        int rc = kimi_kda_cuda_malloc(0, out, ggml_nbytes(t));
        if (rc == 0) {
            bufs.push_back(*out);
            rc = kimi_kda_cuda_memcpy(*out, t->data, ggml_nbytes(t));
        }
        return rc;
    };
    kimi_kda_params p = node_params(node, false);
    kimi_kda_tensor * srcs[6] = { &p.q, &p.k, &p.v, &p.g, &p.beta, &p.state };
    for (int i = 0; i < 6; ++i) {
        void * d = nullptr;
        const int rc = upload(node->src[i], &d);
        if (rc != 0) {
            release();
            return std::string("copy to the GPU: ") + kimi_kda_cuda_error_string(rc);
        }
        srcs[i]->data = (const float *) d;
    }
    std::vector<float> host((size_t) ggml_nelements(node), 12345.0f);
    void * dst = nullptr;
    int rc = kimi_kda_cuda_malloc(0, &dst, ggml_nbytes(node));
    if (rc == 0) {
        bufs.push_back(dst);
        rc = kimi_kda_cuda_memcpy(dst, host.data(), ggml_nbytes(node));
    }
    void * stream = nullptr;
    if (rc == 0) {
        rc = kimi_kda_cuda_stream_create(0, &stream);
    }
    if (rc != 0) {
        release();
        return std::string("GPU set-up: ") + kimi_kda_cuda_error_string(rc);
    }
    p.dst = (float *) dst;
    char err[KIMI_KDA_ERR_LEN] = {0};
    // the default (fp32-accurate) math: the 1e-4 bar below is not for plain tf32
    const int krc = kimi_kda_forward_cuda_ws(&p, KIMI_KDA_CUDA_MATH_DEFAULT, nullptr, 0, stream, err, sizeof(err));
    rc = kimi_kda_cuda_stream_sync(stream);
    kimi_kda_cuda_stream_destroy(stream);
    if (krc == KIMI_KDA_OK && rc == 0) {
        rc = kimi_kda_cuda_memcpy(host.data(), dst, ggml_nbytes(node));
    }
    release();
    if (krc != KIMI_KDA_OK) {
        return std::string("kernel refused the dummy node: ") + err;
    }
    if (rc != 0) {
        return std::string("kernel failed: ") + kimi_kda_cuda_error_string(rc);
    }
    return selftest_compare(ref, host.data(), n_written, "CUDA kernel");
}

#endif // KIMI_BRIDGE_CUDA

} // namespace kimi_bridge
