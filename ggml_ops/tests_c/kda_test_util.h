// kda_test_util.h - helpers shared by the C tests: random model-like inputs in ggml layout.
#ifndef KDA_TEST_UTIL_H
#define KDA_TEST_UTIL_H

#include "kimi_kda.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static inline uint64_t rng_u64(void) {  // xorshift64*
    rng_state ^= rng_state >> 12; rng_state ^= rng_state << 25; rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}
static inline double rng_unif(void) { return (double)(rng_u64() >> 11) / 9007199254740992.0; }
static inline int rng_int(int lo, int hi) { return lo + (int)(rng_u64() % (uint64_t)(hi - lo + 1)); }
static inline float rng_normal(void) {
    const double u = rng_unif() + 1e-12, v = rng_unif();
    return (float)(sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v));
}

// A tensor over its own buffer. With permute, dims 1 and 2 are stored swapped in memory
// ([S, T, H, B] storage viewed as [S, H, T, B]) -- the permuted views llama.cpp produces.
typedef struct {
    float * buf;
    kimi_kda_tensor t;
} test_tensor;

static inline void tt_make(test_tensor * x, int64_t n0, int64_t n1, int64_t n2, int64_t n3, int permute) {
    const size_t n = (size_t)(n0 * n1 * n2 * n3);
    x->buf = (float *)malloc(n * sizeof(float));
    x->t.data = x->buf;
    x->t.ne[0] = n0; x->t.ne[1] = n1; x->t.ne[2] = n2; x->t.ne[3] = n3;
    x->t.nb[0] = 4;
    if (permute) {
        x->t.nb[2] = 4 * n0; x->t.nb[1] = 4 * n0 * n2; x->t.nb[3] = 4 * n0 * n1 * n2;
    } else {
        x->t.nb[1] = 4 * n0; x->t.nb[2] = 4 * n0 * n1; x->t.nb[3] = 4 * n0 * n1 * n2;
    }
}

static inline float * tt_at(test_tensor * x, int64_t i0, int64_t i1, int64_t i2, int64_t i3) {
    return (float *)((char *)x->buf + i0 * x->t.nb[0] + i1 * x->t.nb[1] + i2 * x->t.nb[2] + i3 * x->t.nb[3]);
}

// Rows l2-normalised (q, k), N(0,1) (v), log-gates in [-20, -1e-4] (g), [0, 1] (beta), small state.
enum { FILL_UNIT_ROWS, FILL_NORMAL, FILL_GATE, FILL_BETA, FILL_STATE };
static inline void tt_fill(test_tensor * x, int kind) {
    const kimi_kda_tensor * t = &x->t;
    for (int64_t i3 = 0; i3 < t->ne[3]; i3++)
        for (int64_t i2 = 0; i2 < t->ne[2]; i2++)
            for (int64_t i1 = 0; i1 < t->ne[1]; i1++) {
                double nrm = 0.0;
                for (int64_t i0 = 0; i0 < t->ne[0]; i0++) {
                    float v;
                    switch (kind) {
                        case FILL_GATE: v = (float)(-1e-4 - (20.0 - 1e-4) * pow(rng_unif(), 3.0)); break;
                        case FILL_BETA: v = (float)rng_unif(); break;
                        case FILL_STATE: v = 0.3f * rng_normal(); break;
                        default: v = rng_normal();
                    }
                    *tt_at(x, i0, i1, i2, i3) = v;
                    nrm += (double)v * v;
                }
                if (kind == FILL_UNIT_ROWS)
                    for (int64_t i0 = 0; i0 < t->ne[0]; i0++) *tt_at(x, i0, i1, i2, i3) /= (float)sqrt(nrm);
            }
}

#define CHECK(cond, ...) do { if (!(cond)) { fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
    fprintf(stderr, __VA_ARGS__); fprintf(stderr, "\n"); failures++; } } while (0)

#endif
