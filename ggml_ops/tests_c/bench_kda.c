// bench_kda.c - the `kimi-gguf bench kda` measurement without Python (for machines that have
// only the built libraries): ours vs llama.cpp's ggml_gated_delta_net as one-node ggml graphs on
// the same ggml, same thread count; H = 32, S_v = 128, one sequence; best of R batches.
// Usage: bench_kda [threads=2] [T list, e.g. 1,64,1024,8192] [algo 0|1|2] [repeats=5]
#include "kimi_kda.h"
#include "kimi_kda_ggml.h"
#include "kda_test_util.h"

#include <time.h>

static int failures = 0;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double time_graph(kimi_kda_graph * gr, double min_time) {
    int n = 1;
    for (;;) {
        const double t0 = now();
        kimi_kda_graph_compute(gr, n, NULL, 0);
        const double dt = now() - t0;
        if (dt >= min_time || n >= 100000) return dt / n;
        n = (int)(n * (min_time / (dt > 1e-9 ? dt : 1e-9)) * 1.2) + 1;
    }
}

int main(int argc, char ** argv) {
    const int nth = argc > 1 ? atoi(argv[1]) : 2;
    const char * list = argc > 2 ? argv[2] : "1,64,1024,8192";
    const int algo = argc > 3 ? atoi(argv[3]) : 0;
    const int reps = argc > 4 ? atoi(argv[4]) : 5;
    const int64_t H = 32, S = 128;
    printf("KDA op, CPU (C bench): H=%lld S_v=%lld threads=%d isa=%s algo=%d\n", (long long)H, (long long)S, nth,
           kimi_kda_cpu_isa(), algo);
    printf("%6s %13s %10s %10s %10s %9s\n", "T", "llama.cpp ms", "tok/s", "ours ms", "tok/s", "speed-up");
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", list);
    for (char * tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        const int64_t T = atoll(tok);
        test_tensor q, k, v, g, beta, state;
        tt_make(&q, S, H, T, 1, 0); tt_fill(&q, FILL_UNIT_ROWS);
        tt_make(&k, S, H, T, 1, 0); tt_fill(&k, FILL_UNIT_ROWS);
        tt_make(&v, S, H, T, 1, 0); tt_fill(&v, FILL_NORMAL);
        tt_make(&g, S, H, T, 1, 0); tt_fill(&g, FILL_GATE);
        tt_make(&beta, 1, H, T, 1, 0); tt_fill(&beta, FILL_BETA);
        tt_make(&state, S, S, H, 1, 0); tt_fill(&state, FILL_STATE);
        kimi_kda_params p = {q.t, k.t, v.t, g.t, beta.t, state.t, NULL, 1, (kimi_kda_algo)algo};
        const int64_t n = kimi_kda_dst_size(&p);
        float * d0 = (float *)calloc((size_t)n, 4), * d1 = (float *)calloc((size_t)n, 4);
        kimi_kda_graph * ref = NULL, * ours = NULL;
        char err[KIMI_KDA_ERR_LEN];
        p.dst = d0;
        if (kimi_kda_graph_new(&p, KIMI_KDA_IMPL_BUILTIN, nth, &ref, err, sizeof(err))) { fprintf(stderr, "%s\n", err); return 1; }
        p.dst = d1;
        if (kimi_kda_graph_new(&p, KIMI_KDA_IMPL_OURS, nth, &ours, err, sizeof(err))) { fprintf(stderr, "%s\n", err); return 1; }
        kimi_kda_graph_compute(ref, 1, NULL, 0);
        kimi_kda_graph_compute(ours, 1, NULL, 0);
        double num = 0, den = 0;
        for (int64_t i = 0; i < n; i++) { num = fmax(num, fabs(d0[i] - d1[i])); den = fmax(den, fabs(d0[i])); }
        CHECK(num / den <= 1e-5, "T=%lld rel err %g", (long long)T, num / den);
        double tr = 1e30, to = 1e30;
        for (int r = 0; r < reps; r++) {
            tr = fmin(tr, time_graph(ref, 0.25));
            to = fmin(to, time_graph(ours, 0.25));
        }
        printf("%6lld %13.3f %10.0f %10.3f %10.0f %8.2fx\n", (long long)T, tr * 1e3, T / tr, to * 1e3, T / to, tr / to);
        fflush(stdout);
        kimi_kda_graph_free(ref); kimi_kda_graph_free(ours);
        free(d0); free(d1); free(q.buf); free(k.buf); free(v.buf); free(g.buf); free(beta.buf); free(state.buf);
    }
    return failures ? 1 : 0;
}
