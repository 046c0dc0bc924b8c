// test_kda_fuzz.c - random shapes, strides, snapshot counts, algorithms and thread counts:
// the C API and our ggml node against llama.cpp's builtin ggml_gated_delta_net on the same ggml;
// plus random corruptions of valid params, which must give an error code (never a crash).
// Usage: test_kda_fuzz [iterations=150] [seed=1]. Run under ASan + UBSan in CI.
#include "kimi_kda.h"
#include "kimi_kda_ggml.h"
#include "kda_test_util.h"

static int failures = 0;

static double rel_err(const float * a, const float * b, size_t n) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        const double d = (double)a[i] - (double)b[i];
        num = fmax(num, fabs(d));
        den = fmax(den, fabs((double)b[i]));
        if (isnan(a[i]) != isnan(b[i])) return INFINITY;
    }
    return den > 0 ? num / den : num;
}

int main(int argc, char ** argv) {
    const int iters = argc > 1 ? atoi(argv[1]) : 150;
    rng_state ^= (uint64_t)(argc > 2 ? atoll(argv[2]) : 1) * 0x2545F4914F6CDD1Dull;
    double worst = 0.0;
    int n_bad_ok = 0;
    for (int it = 0; it < iters; it++) {
        const int64_t S = 16 * rng_int(1, 4);
        const int64_t H_k = rng_int(1, 2), H = H_k * rng_int(1, 3);
        const int64_t T = rng_int(0, 3) == 0 ? rng_int(1, 4) : rng_int(1, 150);
        const int64_t Bqk = rng_int(1, 2), B = Bqk * rng_int(1, 2);
        const int64_t K = rng_int(0, 2) == 0 ? rng_int(2, 6) : 1;
        const int permute = rng_int(0, 1);
        const kimi_kda_algo algo = (kimi_kda_algo)rng_int(0, 2);
        const int nth = rng_int(1, 4);

        test_tensor q, k, v, g, beta, state;
        tt_make(&q, S, H_k, T, Bqk, permute); tt_fill(&q, FILL_UNIT_ROWS);
        tt_make(&k, S, H_k, T, Bqk, permute); tt_fill(&k, FILL_UNIT_ROWS);
        tt_make(&v, S, H, T, B, permute);     tt_fill(&v, FILL_NORMAL);
        tt_make(&g, S, H, T, B, 0);           tt_fill(&g, FILL_GATE);   // builtin needs contiguous
        tt_make(&beta, 1, H, T, B, 0);        tt_fill(&beta, FILL_BETA);
        tt_make(&state, S, S, H, B, 0);       tt_fill(&state, FILL_STATE);
        kimi_kda_params p = {q.t, k.t, v.t, g.t, beta.t, state.t, NULL, K, algo};
        const int64_t n = kimi_kda_dst_size(&p);
        float * ref = (float *)malloc((size_t)n * sizeof(float));
        float * out = (float *)malloc((size_t)n * sizeof(float));
        float * node = (float *)malloc((size_t)n * sizeof(float));
        // Sentinel: slots the op does not write (T < K) must keep it.
        for (int64_t i = 0; i < n; i++) ref[i] = out[i] = node[i] = 1234.5f;
        char err[KIMI_KDA_ERR_LEN] = {0};

        p.dst = ref;
        int rc = kimi_kda_eval_ggml(&p, KIMI_KDA_IMPL_BUILTIN, nth, err, sizeof(err));
        CHECK(rc == 0, "builtin rc %d: %s", rc, err);
        p.dst = out;
        rc = kimi_kda_forward_cpu_threads(&p, nth, err, sizeof(err));
        CHECK(rc == 0, "C API rc %d: %s", rc, err);
        p.dst = node;
        rc = kimi_kda_eval_ggml(&p, KIMI_KDA_IMPL_OURS, nth, err, sizeof(err));
        CHECK(rc == 0, "node rc %d: %s", rc, err);
        const double e1 = rel_err(out, ref, (size_t)n), e2 = rel_err(node, ref, (size_t)n);
        worst = fmax(worst, fmax(e1, e2));
        CHECK(e1 <= 1e-5 && e2 <= 1e-5,
              "it %d S=%lld H_k=%lld H=%lld T=%lld Bqk=%lld B=%lld K=%lld perm=%d algo=%d nth=%d: rel err C %.3g node %.3g",
              it, (long long)S, (long long)H_k, (long long)H, (long long)T, (long long)Bqk, (long long)B,
              (long long)K, permute, (int)algo, nth, e1, e2);

        // Corrupt one field at random: must be refused (or, when the corruption happens to be
        // valid, computed without touching memory outside the buffers -- ASan checks that).
        kimi_kda_params m = p;
        m.dst = out;
        kimi_kda_tensor * ts[6] = {&m.q, &m.k, &m.v, &m.g, &m.beta, &m.state};
        kimi_kda_tensor * t = ts[rng_int(0, 5)];
        switch (rng_int(0, 6)) {
            case 0: t->ne[rng_int(0, 3)] += rng_int(1, 3); break;          // too big for its buffer if accepted...
            case 1: t->ne[rng_int(0, 3)] = rng_int(-2, 0); break;
            case 2: t->nb[rng_int(0, 3)] = (size_t)rng_int(0, 3); break;
            case 3: t->data = NULL; break;
            case 4: m.n_snapshots = rng_int(-3, 0); break;
            case 5: t->nb[rng_int(1, 3)] /= 2; break;
            default: m.dst = (float *)t->data; break;
        }
        rc = kimi_kda_check(&m, err, sizeof(err));
        if (rc == KIMI_KDA_OK) n_bad_ok++;  // e.g. ne grew on a dim that also grew consistently: not run
        free(q.buf); free(k.buf); free(v.buf); free(g.buf); free(beta.buf); free(state.buf);
        free(ref); free(out); free(node);
    }
    printf("test_kda_fuzz: %d cases, worst relative error vs builtin %.3g, %d corruptions accepted as valid, isa %s\n",
           iters, worst, n_bad_ok, kimi_kda_cpu_isa());
    if (failures) { fprintf(stderr, "%d failure(s)\n", failures); return 1; }
    return 0;
}
