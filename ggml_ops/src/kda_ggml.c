// kda_ggml.c - ggml glue: the custom-op graph node and one-node graphs over caller memory.
#include "kimi_kda_ggml.h"
#include "kda_internal.h"

#include "ggml-cpu.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static void tensor_to_param(const struct ggml_tensor * t, kimi_kda_tensor * o) {
    o->data = (const float *)t->data;
    for (int i = 0; i < 4; i++) { o->ne[i] = t->ne[i]; o->nb[i] = t->nb[i]; }
}

// K and the algorithm travel in the userdata pointer itself: nothing to allocate or free.
static void * pack_ud(int64_t K, kimi_kda_algo algo) { return (void *)(uintptr_t)(((uint64_t)K << 2) | (uint64_t)algo); }
static void unpack_ud(void * ud, int64_t * K, kimi_kda_algo * algo) {
    const uint64_t x = (uint64_t)(uintptr_t)ud;
    *K = (int64_t)(x >> 2);
    *algo = (kimi_kda_algo)(x & 3);
}

static void params_from_node(const struct ggml_tensor * dst, int64_t K, kimi_kda_algo algo, kimi_kda_params * p) {
    memset(p, 0, sizeof(*p));
    tensor_to_param(dst->src[0], &p->q);
    tensor_to_param(dst->src[1], &p->k);
    tensor_to_param(dst->src[2], &p->v);
    tensor_to_param(dst->src[3], &p->g);
    tensor_to_param(dst->src[4], &p->beta);
    tensor_to_param(dst->src[5], &p->state);
    p->dst = (float *)dst->data;
    p->n_snapshots = K;
    p->algo = algo;
}

static void kda_custom_op(struct ggml_tensor * dst, int ith, int nth, void * userdata) {
    int64_t K;
    kimi_kda_algo algo;
    unpack_ud(userdata, &K, &algo);
    kimi_kda_params p;
    params_from_node(dst, K, algo, &p);
    char err[KIMI_KDA_ERR_LEN];
    if (kimi_kda_forward_cpu(&p, ith, nth, err, sizeof(err)) != KIMI_KDA_OK && ith == 0) {
        // Checked when the node was built; reaching this means the graph was altered since.
        // Poison the output rather than abort the host process.
        fprintf(stderr, "kimi_kda: %s\n", err);
        if (dst->data) {
            const int64_t n = ggml_nelements(dst);
            for (int64_t i = 0; i < n; i++) ((float *)dst->data)[i] = NAN;
        }
    }
}

struct ggml_tensor * kimi_kda_ggml_op(struct ggml_context * ctx, struct ggml_tensor * q,
                                      struct ggml_tensor * k, struct ggml_tensor * v,
                                      struct ggml_tensor * g, struct ggml_tensor * beta,
                                      struct ggml_tensor * state, int64_t K, kimi_kda_algo algo,
                                      char * err, size_t err_len) {
    if (!ctx || !q || !k || !v || !g || !beta || !state) {
        kda_fail(err, err_len, KIMI_KDA_ERR_NULL, "ggml context or input tensor is NULL");
        return NULL;
    }
    struct ggml_tensor * ins[6] = {q, k, v, g, beta, state};
    const char * names[6] = {"q", "k", "v", "g", "beta", "state"};
    for (int i = 0; i < 6; i++)
        if (ins[i]->type != GGML_TYPE_F32) {
            kda_fail(err, err_len, KIMI_KDA_ERR_TYPE, "%s: type %s, need f32", names[i], ggml_type_name(ins[i]->type));
            return NULL;
        }
    // Validate geometry now; memory may not be allocated yet (checked again at compute time).
    kimi_kda_params p;
    memset(&p, 0, sizeof(p));
    kimi_kda_tensor * outs[6] = {&p.q, &p.k, &p.v, &p.g, &p.beta, &p.state};
    for (int i = 0; i < 6; i++) tensor_to_param(ins[i], outs[i]);
    p.n_snapshots = K;
    p.algo = algo;
    kda_dims d;
    if (kda_validate_ex(&p, &d, 0, err, err_len) != KIMI_KDA_OK) return NULL;
    struct ggml_tensor * args[6] = {q, k, v, g, beta, state};
    struct ggml_tensor * r = ggml_custom_4d(ctx, GGML_TYPE_F32, d.S * d.H, d.T * d.n_seqs + K * d.S * d.n_seqs, 1, 1,
                                            args, 6, kda_custom_op, GGML_N_TASKS_MAX, pack_ud(K, algo));
    if (!r) kda_fail(err, err_len, KIMI_KDA_ERR_NOMEM, "ggml context out of memory");
    else if (err && err_len) err[0] = '\0';
    return r;
}

// ---- one-node graphs over caller memory ----------------------------------------------------

struct kimi_kda_graph {
    struct ggml_context *    ctx;
    struct ggml_cgraph *     gf;
    struct ggml_threadpool * pool;
    struct ggml_cplan        plan;
    uint8_t *                work;
};

static struct ggml_tensor * view_of(struct ggml_context * ctx, const kimi_kda_tensor * t) {
    struct ggml_tensor * x = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, t->ne[0], t->ne[1], t->ne[2], t->ne[3]);
    if (!x) return NULL;
    for (int i = 0; i < 4; i++) x->nb[i] = t->nb[i];
    x->data = (void *)t->data;
    return x;
}

static int is_contig(const kimi_kda_tensor * t) {
    size_t nb = sizeof(float);
    for (int i = 0; i < 4; i++) {
        if (t->ne[i] > 1 && t->nb[i] != nb) return 0;
        nb *= (size_t)t->ne[i];
    }
    return 1;
}

void kimi_kda_graph_free(kimi_kda_graph * gr) {
    if (!gr) return;
    if (gr->pool) ggml_threadpool_free(gr->pool);
    if (gr->ctx) ggml_free(gr->ctx);
    free(gr->work);
    free(gr);
}

static kimi_kda_graph * graph_new(const kimi_kda_params * p, int impl, int n_threads, int * rc_out, char * err, size_t err_len);

int kimi_kda_graph_new(const kimi_kda_params * p, int impl, int n_threads, kimi_kda_graph ** out,
                       char * err, size_t err_len) {
    if (!out) return kda_fail(err, err_len, KIMI_KDA_ERR_NULL, "out pointer is NULL");
    int rc = KIMI_KDA_OK;
    *out = graph_new(p, impl, n_threads, &rc, err, err_len);
    return *out ? KIMI_KDA_OK : rc;
}

#define FAIL(code, ...) do { *rc_out = kda_fail(err, err_len, code, __VA_ARGS__); kimi_kda_graph_free(gr); return NULL; } while (0)

static kimi_kda_graph * graph_new(const kimi_kda_params * p, int impl, int n_threads, int * rc_out, char * err, size_t err_len) {
    kda_dims d;
    kimi_kda_graph * gr = NULL;
    if ((*rc_out = kda_validate(p, &d, err, err_len)) != KIMI_KDA_OK) return NULL;
    if (impl != KIMI_KDA_IMPL_OURS && impl != KIMI_KDA_IMPL_BUILTIN)
        FAIL(KIMI_KDA_ERR_ARG, "impl = %d is not ours (0) or builtin (1)", impl);
    if (n_threads < 1 || n_threads > 512)
        FAIL(KIMI_KDA_ERR_ARG, "n_threads = %d out of range [1, 512]", n_threads);
    // ggml_gated_delta_net asserts (aborts) on these: refuse instead.
    if (impl == KIMI_KDA_IMPL_BUILTIN && (!is_contig(&p->g) || !is_contig(&p->beta) || !is_contig(&p->state)))
        FAIL(KIMI_KDA_ERR_STRIDE, "builtin ggml_gated_delta_net needs contiguous g, beta and state");
    ggml_cpu_init();
    gr = (kimi_kda_graph *)calloc(1, sizeof(*gr));
    if (!gr) FAIL(KIMI_KDA_ERR_NOMEM, "out of memory");
    struct ggml_init_params ip = {
        /*.mem_size   =*/ ggml_tensor_overhead() * 16 + ggml_graph_overhead_custom(8, false) + 1024,
        /*.mem_buffer =*/ NULL,
        /*.no_alloc   =*/ true,
    };
    gr->ctx = ggml_init(ip);
    if (!gr->ctx) FAIL(KIMI_KDA_ERR_NOMEM, "ggml_init failed");
    struct ggml_tensor * q = view_of(gr->ctx, &p->q), * k = view_of(gr->ctx, &p->k), * v = view_of(gr->ctx, &p->v);
    struct ggml_tensor * g = view_of(gr->ctx, &p->g), * b = view_of(gr->ctx, &p->beta), * s = view_of(gr->ctx, &p->state);
    struct ggml_tensor * out;
    if (impl == KIMI_KDA_IMPL_OURS) {
        out = kimi_kda_ggml_op(gr->ctx, q, k, v, g, b, s, p->n_snapshots, p->algo, err, err_len);
        if (!out) FAIL(KIMI_KDA_ERR_SHAPE, "%s", "kimi_kda_ggml_op refused the inputs");
    } else {
        out = ggml_gated_delta_net(gr->ctx, q, k, v, g, b, s, p->n_snapshots);
    }
    out->data = p->dst;
    gr->gf = ggml_new_graph_custom(gr->ctx, 8, false);
    ggml_build_forward_expand(gr->gf, out);
    struct ggml_threadpool_params tpp = ggml_threadpool_params_default(n_threads);
    gr->pool = ggml_threadpool_new(&tpp);
    if (!gr->pool) FAIL(KIMI_KDA_ERR_NOMEM, "ggml_threadpool_new failed");
    gr->plan = ggml_graph_plan(gr->gf, n_threads, gr->pool);
    if (gr->plan.work_size > 0) {
        gr->work = (uint8_t *)malloc(gr->plan.work_size);
        if (!gr->work) FAIL(KIMI_KDA_ERR_NOMEM, "cannot allocate %zu bytes of ggml work buffer", gr->plan.work_size);
        gr->plan.work_data = gr->work;
    }
    return gr;
}

int kimi_kda_graph_compute(kimi_kda_graph * gr, int n_iter, char * err, size_t err_len) {
    if (!gr) return kda_fail(err, err_len, KIMI_KDA_ERR_NULL, "graph is NULL");
    if (n_iter < 0) return kda_fail(err, err_len, KIMI_KDA_ERR_ARG, "n_iter = %d < 0", n_iter);
    for (int i = 0; i < n_iter; i++) {
        const enum ggml_status st = ggml_graph_compute(gr->gf, &gr->plan);
        if (st != GGML_STATUS_SUCCESS)
            return kda_fail(err, err_len, KIMI_KDA_ERR_BACKEND, "ggml_graph_compute failed (status %d)", (int)st);
    }
    return KIMI_KDA_OK;
}

int kimi_kda_eval_ggml(const kimi_kda_params * p, int impl, int n_threads, char * err, size_t err_len) {
    kimi_kda_graph * gr = NULL;
    int rc = kimi_kda_graph_new(p, impl, n_threads, &gr, err, err_len);
    if (rc != KIMI_KDA_OK) return rc;
    rc = kimi_kda_graph_compute(gr, 1, err, err_len);
    kimi_kda_graph_free(gr);
    return rc;
}
