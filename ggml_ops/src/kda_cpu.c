// kda_cpu.c - the CPU entry points: pick the algorithm and the SIMD flavour, split the work into
// tasks (sequence x head x block of value columns), run this thread's share.
#include "kda_internal.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

// ---- SIMD flavour -------------------------------------------------------------------------

typedef void (*kda_kernel_fn)(const kda_task *, int64_t, int64_t, float *);

typedef struct {
    const char *  name;
    kda_kernel_fn recurrent, chunked, scan;
    int64_t (*scan_scratch)(int64_t, int64_t);
} kda_isa;

#define ISA_ENTRY(isa) {#isa, kda_recurrent_##isa, kda_chunked_##isa, kda_scan_##isa, kda_scan_scratch_##isa}
static const kda_isa ISA_GENERIC = ISA_ENTRY(generic);
#if defined(KDA_HAVE_X86_ISAS)
static const kda_isa ISA_AVX2   = ISA_ENTRY(avx2);
static const kda_isa ISA_AVX512 = ISA_ENTRY(avx512);
#endif

static const kda_isa * isa_forced = NULL;

static int isa_supported(const kda_isa * isa) {
#if defined(KDA_HAVE_X86_ISAS)
    __builtin_cpu_init();
    if (isa == &ISA_AVX512)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (isa == &ISA_AVX2) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    return isa == &ISA_GENERIC;
}

static const kda_isa * isa_best(void) {
    if (isa_forced) return isa_forced;
#if defined(KDA_HAVE_X86_ISAS)
    if (isa_supported(&ISA_AVX512)) return &ISA_AVX512;
    if (isa_supported(&ISA_AVX2)) return &ISA_AVX2;
#endif
    return &ISA_GENERIC;
}

const char * kimi_kda_cpu_isa(void) { return isa_best()->name; }

// Testing aid: force a flavour ("generic", "avx2", "avx512"; NULL or "" = automatic). Returns
// KIMI_KDA_ERR_ARG for an unknown name or one this CPU cannot run.
int kimi_kda_force_isa(const char * name) {
    if (!name || !name[0]) { isa_forced = NULL; return KIMI_KDA_OK; }
    const kda_isa * all[] = {
        &ISA_GENERIC,
#if defined(KDA_HAVE_X86_ISAS)
        &ISA_AVX2, &ISA_AVX512,
#endif
    };
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
        if (strcmp(all[i]->name, name) == 0) {
            if (!isa_supported(all[i])) return KIMI_KDA_ERR_ARG;
            isa_forced = all[i];
            return KIMI_KDA_OK;
        }
    return KIMI_KDA_ERR_ARG;
}

// ---- algorithm and work split --------------------------------------------------------------

// AUTO picks the chunked (WY/UT) kernel from this many tokens on. On CPUs the scan kernel does
// 3 FMAs per state element per token while the chunked form needs 3 + C/S_k plus its intra-chunk
// O(C^2 S_k) work and triangular solves at lower SIMD efficiency; `kimi-gguf bench kda --algo
// chunked` measured it slower at every T (BENCHMARKS.md), so AUTO stays token by token.
#define KDA_CHUNK_MIN_T INT64_MAX
// Token-by-token runs of at least this many tokens use the S-layout scan kernel (its state
// transposes in and out cost about one token); shorter ones work on ggml's layout directly.
#define KDA_SCAN_MIN_T 12

kimi_kda_algo kimi_kda_resolve_algo(const kimi_kda_params * p) {
    if (!p) return KIMI_KDA_ALGO_RECURRENT;
    if (p->algo == KIMI_KDA_ALGO_RECURRENT || p->algo == KIMI_KDA_ALGO_CHUNKED) return p->algo;
    return (p->v.ne[2] >= KDA_CHUNK_MIN_T) ? KIMI_KDA_ALGO_CHUNKED : KIMI_KDA_ALGO_RECURRENT;
}

// Column blocks per head: enough tasks for every thread. The recurrent kernel shares nothing
// between blocks, so it takes more, smaller blocks (better balance); the chunked kernel repeats
// its per-chunk O(C^2 S) work per block, so it takes as few as keep all threads busy.
static int64_t n_col_blocks(const kda_dims * d, kimi_kda_algo algo, int nth) {
    const int64_t heads = d->H * d->n_seqs, maxb = d->S / 16;
    const int64_t want = (algo == KIMI_KDA_ALGO_CHUNKED) ? nth : 4 * (int64_t)nth;
    int64_t nb = (want + heads - 1) / heads;
    if (nb < 1) nb = 1;
    if (nb > maxb) nb = maxb;
    return nb;
}

static void block_cols(const kda_dims * d, int64_t nb, int64_t b, int64_t * j0, int64_t * j1) {
    const int64_t units = d->S / 16;
    *j0 = 16 * (units * b / nb);
    *j1 = 16 * (units * (b + 1) / nb);
}

int kimi_kda_forward_cpu(const kimi_kda_params * p, int ith, int nth, char * err, size_t err_len) {
    kda_dims d;
    int rc = kda_validate(p, &d, err, err_len);
    if (rc) return rc;
    if (nth < 1 || ith < 0 || ith >= nth)
        return kda_fail(err, err_len, KIMI_KDA_ERR_ARG, "thread index ith = %d, nth = %d", ith, nth);

    const kda_isa * isa = isa_best();
    const kimi_kda_algo algo = kimi_kda_resolve_algo(p);
    const int64_t nb = n_col_blocks(&d, algo, nth);
    const int64_t ntasks = d.H * d.n_seqs * nb;
    if (ith >= ntasks) return KIMI_KDA_OK;

    // With K > 1 snapshots the last K-1 tokens run token by token on ggml's layout (each needs
    // its own state written out); the rest runs on the main kernel.
    const int64_t n_rec_tail = (d.K > 1) ? ((d.K - 1 < d.T) ? d.K - 1 : d.T) : 0;
    kda_kernel_fn main_fn = NULL;
    if (algo == KIMI_KDA_ALGO_CHUNKED) main_fn = isa->chunked;
    else if (d.T - n_rec_tail >= KDA_SCAN_MIN_T) main_fn = isa->scan;
    const int64_t n_chunk = main_fn ? d.T - n_rec_tail : 0;

    const int64_t vb_max = 16 * ((d.S / 16 + nb - 1) / nb);
    int64_t nfl = kda_recurrent_scratch_floats(d.S);
    if (n_chunk > 0) {
        const int64_t c = (main_fn == isa->chunked) ? kda_chunk_scratch_floats(d.S, vb_max)
                                                    : isa->scan_scratch(d.S, vb_max);
        if (c > nfl) nfl = c;
    }
    float * scratch = (float *)aligned_alloc(64, (size_t)((nfl * sizeof(float) + 63) / 64 * 64));
    if (!scratch) return kda_fail(err, err_len, KIMI_KDA_ERR_NOMEM, "cannot allocate %lld floats of scratch", (long long)nfl);

    const int64_t snap_stride = d.S * d.S * d.H * d.n_seqs;
    float * states = p->dst + d.S * d.H * d.T * d.n_seqs;
    for (int64_t task = ith; task < ntasks; task += nth) {
        // Heads vary fastest so that neighbouring threads share no column block of one head.
        const int64_t b = task / (d.H * d.n_seqs);
        const int64_t hs = task % (d.H * d.n_seqs);
        kda_task tk = {p, &d, hs / d.H, hs % d.H, 0, 0};
        block_cols(&d, nb, b, &tk.j0, &tk.j1);
        if (n_chunk > 0) {
            main_fn(&tk, 0, n_chunk, scratch);
            const int64_t slot = d.T - n_chunk;
            if (slot >= 1 && slot < d.K) {
                const int64_t off = ((tk.s * d.H + tk.h) * d.S + tk.j0) * d.S;
                memcpy(states + slot * snap_stride + off, states + off, (size_t)((tk.j1 - tk.j0) * d.S) * sizeof(float));
            }
        }
        if (n_chunk < d.T) isa->recurrent(&tk, n_chunk, d.T, scratch);
    }
    free(scratch);
    return KIMI_KDA_OK;
}

// ---- convenience: POSIX threads ----------------------------------------------------------

typedef struct {
    const kimi_kda_params * p;
    int ith, nth, rc;
    char err[KIMI_KDA_ERR_LEN];
} kda_thread_arg;

static void * kda_thread_main(void * a) {
    kda_thread_arg * t = (kda_thread_arg *)a;
    t->rc = kimi_kda_forward_cpu(t->p, t->ith, t->nth, t->err, sizeof(t->err));
    return NULL;
}

int kimi_kda_forward_cpu_threads(const kimi_kda_params * p, int n_threads, char * err, size_t err_len) {
    int rc = kda_validate(p, NULL, err, err_len);
    if (rc) return rc;
    if (n_threads <= 1) return kimi_kda_forward_cpu(p, 0, 1, err, err_len);
    if (n_threads > 1024) n_threads = 1024;
    kda_thread_arg * args = (kda_thread_arg *)calloc((size_t)n_threads, sizeof(*args));
    pthread_t * th = (pthread_t *)calloc((size_t)n_threads, sizeof(*th));
    if (!args || !th) {
        free(args); free(th);
        return kda_fail(err, err_len, KIMI_KDA_ERR_NOMEM, "cannot allocate %d thread slots", n_threads);
    }
    // Share 0 runs on the calling thread; a share whose thread cannot start runs here too.
    char * started = (char *)calloc((size_t)n_threads, 1);
    for (int i = 0; i < n_threads; i++) args[i] = (kda_thread_arg){p, i, n_threads, 0, {0}};
    for (int i = 1; i < n_threads; i++)
        if (started) started[i] = (char)(pthread_create(&th[i], NULL, kda_thread_main, &args[i]) == 0);
    kda_thread_main(&args[0]);
    for (int i = 1; i < n_threads; i++) {
        if (started && started[i]) pthread_join(th[i], NULL);
        else kda_thread_main(&args[i]);
    }
    free(started);
    rc = KIMI_KDA_OK;
    for (int i = 0; i < n_threads && !rc; i++)
        if (args[i].rc) { rc = args[i].rc; if (err && err_len) snprintf(err, err_len, "%s", args[i].err); }
    free(args); free(th);
    return rc;
}

#if !defined(KIMI_KDA_WITH_CUDA)
int kimi_kda_forward_cuda(const kimi_kda_params * p, void * stream, char * err, size_t err_len) {
    (void)p; (void)stream;
    return kda_fail(err, err_len, KIMI_KDA_ERR_BACKEND, "this kimi_kda library was built without CUDA");
}
int kimi_kda_has_cuda(void) { return 0; }
#endif
