// test_kda_errors.c - every invalid input to the C API and the ggml node gives the right error
// code and a message, never a crash (run under ASan + UBSan by tests/test_kda_c_sanitizers.py).
#include "kimi_kda.h"
#include "kimi_kda_ggml.h"
#include "kda_test_util.h"

static int failures = 0;

typedef struct {
    test_tensor q, k, v, g, beta, state;
    float * dst;
    kimi_kda_params p;
} problem;

static void make_problem(problem * pr, int64_t S, int64_t H, int64_t T, int64_t B, int64_t K) {
    tt_make(&pr->q, S, H, T, B, 0); tt_fill(&pr->q, FILL_UNIT_ROWS);
    tt_make(&pr->k, S, H, T, B, 0); tt_fill(&pr->k, FILL_UNIT_ROWS);
    tt_make(&pr->v, S, H, T, B, 0); tt_fill(&pr->v, FILL_NORMAL);
    tt_make(&pr->g, S, H, T, B, 0); tt_fill(&pr->g, FILL_GATE);
    tt_make(&pr->beta, 1, H, T, B, 0); tt_fill(&pr->beta, FILL_BETA);
    tt_make(&pr->state, S, S, H, B, 0); tt_fill(&pr->state, FILL_STATE);
    memset(&pr->p, 0, sizeof(pr->p));
    pr->p.q = pr->q.t; pr->p.k = pr->k.t; pr->p.v = pr->v.t; pr->p.g = pr->g.t;
    pr->p.beta = pr->beta.t; pr->p.state = pr->state.t;
    pr->p.n_snapshots = K;
    pr->p.algo = KIMI_KDA_ALGO_AUTO;
    const int64_t n = kimi_kda_dst_size(&pr->p);
    pr->dst = (float *)calloc((size_t)n, sizeof(float));
    pr->p.dst = pr->dst;
}

static void free_problem(problem * pr) {
    free(pr->q.buf); free(pr->k.buf); free(pr->v.buf); free(pr->g.buf); free(pr->beta.buf);
    free(pr->state.buf); free(pr->dst);
}

// Runs check + forward on a mutated copy of the params; both must return `want` with a message.
static void expect(const char * what, const kimi_kda_params * p, int want) {
    char err[KIMI_KDA_ERR_LEN] = {0};
    int rc = kimi_kda_check(p, err, sizeof(err));
    CHECK(rc == want, "%s: check returned %d, want %d (%s)", what, rc, want, err);
    CHECK(want == KIMI_KDA_OK || err[0] != '\0', "%s: no message", what);
    err[0] = '\0';
    rc = kimi_kda_forward_cpu(p, 0, 1, err, sizeof(err));
    CHECK(rc == want, "%s: forward returned %d, want %d (%s)", what, rc, want, err);
    rc = kimi_kda_forward_cpu_threads(p, 3, err, sizeof(err));
    CHECK(rc == want, "%s: forward_threads returned %d, want %d (%s)", what, rc, want, err);
    if (want != KIMI_KDA_OK) printf("  %-40s -> %d: %s\n", what, rc, err);
}

#define MUTATE(what, want, stmt) do { kimi_kda_params m = base; stmt; expect(what, &m, want); } while (0)

int main(void) {
    problem pr;
    make_problem(&pr, 32, 4, 5, 2, 1);
    const kimi_kda_params base = pr.p;
    float scratch_out[4];

    expect("valid problem", &base, KIMI_KDA_OK);
    {
        char err[KIMI_KDA_ERR_LEN];
        CHECK(kimi_kda_check(NULL, err, sizeof(err)) == KIMI_KDA_ERR_NULL, "NULL params");
        CHECK(kimi_kda_forward_cpu(NULL, 0, 1, NULL, 0) == KIMI_KDA_ERR_NULL, "NULL params, NULL err");
        CHECK(kimi_kda_dst_size(NULL) == -1, "dst_size(NULL)");
        CHECK(kimi_kda_forward_cpu(&base, 1, 1, err, sizeof(err)) == KIMI_KDA_ERR_ARG, "ith >= nth");
        CHECK(kimi_kda_forward_cpu(&base, 0, 0, err, sizeof(err)) == KIMI_KDA_ERR_ARG, "nth = 0");
        CHECK(kimi_kda_forward_cpu(&base, -1, 2, err, sizeof(err)) == KIMI_KDA_ERR_ARG, "ith < 0");
        CHECK(kimi_kda_forward_cpu(&base, 0, 1, err, 1) == KIMI_KDA_OK, "err_len 1");
        CHECK(kimi_kda_forward_cuda(&base, NULL, err, sizeof(err)) != KIMI_KDA_OK || kimi_kda_has_cuda(),
              "cuda without cuda");
    }
    // Null pointers.
    MUTATE("q NULL", KIMI_KDA_ERR_NULL, m.q.data = NULL);
    MUTATE("k NULL", KIMI_KDA_ERR_NULL, m.k.data = NULL);
    MUTATE("v NULL", KIMI_KDA_ERR_NULL, m.v.data = NULL);
    MUTATE("g NULL", KIMI_KDA_ERR_NULL, m.g.data = NULL);
    MUTATE("beta NULL", KIMI_KDA_ERR_NULL, m.beta.data = NULL);
    MUTATE("state NULL", KIMI_KDA_ERR_NULL, m.state.data = NULL);
    MUTATE("dst NULL", KIMI_KDA_ERR_NULL, m.dst = NULL);
    // Zero-sized and negative dims, every tensor, every dim.
    for (int d = 0; d < 4; d++) {
        char what[64];
        snprintf(what, sizeof(what), "q ne[%d] = 0", d);        MUTATE(what, KIMI_KDA_ERR_SHAPE, m.q.ne[d] = 0);
        snprintf(what, sizeof(what), "v ne[%d] = 0", d);        MUTATE(what, KIMI_KDA_ERR_SHAPE, m.v.ne[d] = 0);
        snprintf(what, sizeof(what), "g ne[%d] = -3", d);       MUTATE(what, KIMI_KDA_ERR_SHAPE, m.g.ne[d] = -3);
        snprintf(what, sizeof(what), "state ne[%d] = 0", d);    MUTATE(what, KIMI_KDA_ERR_SHAPE, m.state.ne[d] = 0);
        snprintf(what, sizeof(what), "beta ne[%d] = 0", d);     MUTATE(what, KIMI_KDA_ERR_SHAPE, m.beta.ne[d] = 0);
    }
    // Shape mismatches.
    MUTATE("S_v not a multiple of 16", KIMI_KDA_ERR_SHAPE, m.v.ne[0] = 24);
    MUTATE("S_k != S_v", KIMI_KDA_ERR_SHAPE, m.q.ne[0] = 16; m.k.ne[0] = 16);
    MUTATE("q/k heads differ", KIMI_KDA_ERR_SHAPE, m.k.ne[1] = 2);
    MUTATE("H_v not multiple of H_k", KIMI_KDA_ERR_SHAPE, m.q.ne[1] = 3; m.k.ne[1] = 3);
    MUTATE("q tokens != v tokens", KIMI_KDA_ERR_SHAPE, m.q.ne[2] = 4; m.k.ne[2] = 4);
    MUTATE("q seqs do not divide", KIMI_KDA_ERR_SHAPE, m.v.ne[3] = 3; m.g.ne[3] = 3; m.beta.ne[3] = 3);
    MUTATE("scalar gate (GDN mode)", KIMI_KDA_ERR_SHAPE, m.g.ne[0] = 1);
    MUTATE("beta ne[0] = 2", KIMI_KDA_ERR_SHAPE, m.beta.ne[0] = 2; m.beta.nb[1] = 8; m.beta.nb[2] = 32; m.beta.nb[3] = 160);
    MUTATE("state wrong heads", KIMI_KDA_ERR_SHAPE, m.state.ne[2] = 3);
    MUTATE("dims too large", KIMI_KDA_ERR_SHAPE, m.v.ne[2] = (int64_t)1 << 40);
    // Strides.
    MUTATE("q rows not contiguous", KIMI_KDA_ERR_STRIDE, m.q.nb[0] = 8);
    MUTATE("g rows not contiguous", KIMI_KDA_ERR_STRIDE, m.g.nb[0] = 8);
    MUTATE("state rows not contiguous", KIMI_KDA_ERR_STRIDE, m.state.nb[0] = 8);
    MUTATE("v stride not multiple of 4", KIMI_KDA_ERR_STRIDE, m.v.nb[1] = 130);
    MUTATE("k overlapping rows", KIMI_KDA_ERR_STRIDE, m.k.nb[1] = 64);
    MUTATE("v zero stride", KIMI_KDA_ERR_STRIDE, m.v.nb[2] = 0);
    MUTATE("state overlapping heads", KIMI_KDA_ERR_STRIDE, m.state.nb[2] = m.state.nb[1]);
    MUTATE("beta overlapping tokens", KIMI_KDA_ERR_STRIDE, m.beta.nb[2] = 4);
    MUTATE("misaligned q pointer", KIMI_KDA_ERR_STRIDE, m.q.data = (const float *)((const char *)m.q.data + 2));
    MUTATE("dst overlaps v", KIMI_KDA_ERR_STRIDE, m.dst = (float *)m.v.data);
    MUTATE("dst overlaps state end", KIMI_KDA_ERR_STRIDE,
           m.dst = (float *)m.state.data + 32 * 32 * 4 * 2 - 1);
    MUTATE("misaligned dst", KIMI_KDA_ERR_STRIDE, m.dst = (float *)((char *)m.dst + 1));
    // Other arguments.
    MUTATE("n_snapshots = 0", KIMI_KDA_ERR_ARG, m.n_snapshots = 0);
    MUTATE("algo = 7", KIMI_KDA_ERR_ARG, m.algo = (kimi_kda_algo)7);
    // A valid permuted layout is accepted.
    MUTATE("permuted q (valid)", KIMI_KDA_OK, m.q.nb[1] = 4 * 32 * 5; m.q.nb[2] = 4 * 32);

    // ggml node: types and NULLs.
    {
        struct ggml_init_params ip = {ggml_tensor_overhead() * 32 + 4096, NULL, true};
        struct ggml_context * ctx = ggml_init(ip);
        struct ggml_tensor * q = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, 32, 4, 5, 2);
        struct ggml_tensor * k = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, 32, 4, 5, 2);
        struct ggml_tensor * v = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, 32, 4, 5, 2);
        struct ggml_tensor * g = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, 32, 4, 5, 2);
        struct ggml_tensor * gh = ggml_new_tensor_4d(ctx, GGML_TYPE_F16, 32, 4, 5, 2);
        struct ggml_tensor * b = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, 1, 4, 5, 2);
        struct ggml_tensor * s = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, 32, 32, 4, 2);
        struct ggml_tensor * s_bad = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, 32, 16, 4, 2);
        char err[KIMI_KDA_ERR_LEN] = {0};
        CHECK(kimi_kda_ggml_op(ctx, q, k, v, g, b, s, 1, KIMI_KDA_ALGO_AUTO, err, sizeof(err)) != NULL, "valid node: %s", err);
        CHECK(kimi_kda_ggml_op(ctx, q, k, v, gh, b, s, 1, KIMI_KDA_ALGO_AUTO, err, sizeof(err)) == NULL && strstr(err, "f32"),
              "f16 gate accepted");
        printf("  %-40s -> %s\n", "ggml node, f16 g", err);
        CHECK(kimi_kda_ggml_op(ctx, q, k, v, g, b, s_bad, 1, KIMI_KDA_ALGO_AUTO, err, sizeof(err)) == NULL, "bad state shape");
        printf("  %-40s -> %s\n", "ggml node, state [32,16,4,2]", err);
        CHECK(kimi_kda_ggml_op(ctx, q, NULL, v, g, b, s, 1, KIMI_KDA_ALGO_AUTO, err, sizeof(err)) == NULL, "NULL k");
        CHECK(kimi_kda_ggml_op(NULL, q, k, v, g, b, s, 1, KIMI_KDA_ALGO_AUTO, err, sizeof(err)) == NULL, "NULL ctx");
        CHECK(kimi_kda_ggml_op(ctx, q, k, v, g, b, s, 0, KIMI_KDA_ALGO_AUTO, err, sizeof(err)) == NULL, "K = 0");
        ggml_free(ctx);
    }
    // One-node graphs: bad impl / threads; the builtin refuses (instead of aborting) on a
    // non-contiguous gate.
    {
        char err[KIMI_KDA_ERR_LEN] = {0};
        kimi_kda_graph * gr = NULL;
        CHECK(kimi_kda_graph_new(&base, 5, 1, &gr, err, sizeof(err)) == KIMI_KDA_ERR_ARG && !gr, "impl 5");
        CHECK(kimi_kda_graph_new(&base, 0, 0, &gr, err, sizeof(err)) == KIMI_KDA_ERR_ARG && !gr, "0 threads");
        CHECK(kimi_kda_graph_new(&base, 0, 1, NULL, err, sizeof(err)) == KIMI_KDA_ERR_NULL, "NULL out");
        kimi_kda_params m = base;
        float * gperm = (float *)malloc(sizeof(float) * 32 * 4 * 5 * 2);
        memcpy(gperm, pr.g.buf, sizeof(float) * 32 * 4 * 5 * 2);
        m.g.data = gperm; m.g.nb[1] = 4 * 32 * 5; m.g.nb[2] = 4 * 32;
        CHECK(kimi_kda_graph_new(&m, KIMI_KDA_IMPL_BUILTIN, 1, &gr, err, sizeof(err)) == KIMI_KDA_ERR_STRIDE && !gr,
              "builtin with permuted g");
        printf("  %-40s -> %s\n", "builtin graph, permuted g", err);
        CHECK(kimi_kda_eval_ggml(&m, KIMI_KDA_IMPL_OURS, 2, err, sizeof(err)) == KIMI_KDA_OK, "ours with permuted g: %s", err);
        CHECK(kimi_kda_graph_compute(NULL, 1, err, sizeof(err)) == KIMI_KDA_ERR_NULL, "compute NULL");
        kimi_kda_graph_free(NULL);
        free(gperm);
    }
    (void)scratch_out;
    free_problem(&pr);
    if (failures) { fprintf(stderr, "%d failure(s)\n", failures); return 1; }
    printf("test_kda_errors: all passed (isa %s)\n", kimi_kda_cpu_isa());
    return 0;
}
