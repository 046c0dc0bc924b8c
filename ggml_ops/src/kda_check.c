// kda_check.c - validation of kimi_kda_params: every bad input becomes an error code + message.
#include "kda_internal.h"

#include <math.h>
#include <string.h>

int kda_fail(char * err, size_t err_len, int code, const char * fmt, ...) {
    if (err && err_len > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, err_len, fmt, ap);
        va_end(ap);
    }
    return code;
}

// Bounds on sizes so that every index product below fits comfortably in int64 (and a fuzzer
// cannot make us compute a wrapped size). 2^31 elements per dim, 2^40 per tensor.
#define KDA_MAX_DIM   ((int64_t)1 << 31)
#define KDA_MAX_ELEMS ((int64_t)1 << 40)

static int check_tensor(const char * name, const kimi_kda_tensor * t, int row_contig, int check_memory,
                        char * err, size_t err_len) {
    if (check_memory && !t->data) return kda_fail(err, err_len, KIMI_KDA_ERR_NULL, "%s: data pointer is NULL", name);
    int64_t n = 1;
    for (int i = 0; i < 4; i++) {
        if (t->ne[i] <= 0 || t->ne[i] > KDA_MAX_DIM)
            return kda_fail(err, err_len, KIMI_KDA_ERR_SHAPE, "%s: ne[%d] = %lld out of range [1, 2^31]",
                            name, i, (long long)t->ne[i]);
        n *= t->ne[i];
        if (n > KDA_MAX_ELEMS)
            return kda_fail(err, err_len, KIMI_KDA_ERR_SHAPE, "%s: more than 2^40 elements", name);
        if (t->nb[i] % sizeof(float) != 0 || t->nb[i] > ((size_t)1 << 46))
            return kda_fail(err, err_len, KIMI_KDA_ERR_STRIDE, "%s: nb[%d] = %zu is not a multiple of 4 (or too large)",
                            name, i, t->nb[i]);
        if (t->ne[i] > 1 && t->nb[i] == 0)
            return kda_fail(err, err_len, KIMI_KDA_ERR_STRIDE, "%s: nb[%d] = 0 with ne[%d] = %lld (elements overlap)",
                            name, i, i, (long long)t->ne[i]);
    }
    if (check_memory && ((uintptr_t)t->data) % sizeof(float) != 0)
        return kda_fail(err, err_len, KIMI_KDA_ERR_STRIDE, "%s: data pointer not 4-byte aligned", name);
    if (row_contig && t->nb[0] != sizeof(float))
        return kda_fail(err, err_len, KIMI_KDA_ERR_STRIDE, "%s: rows must be contiguous (nb[0] = %zu, need 4)",
                        name, t->nb[0]);
    // No two elements may share memory: sorted by stride, each dim must step past the whole
    // extent of the smaller ones (the ggml notion of a non-overlapping view, any permutation).
    int order[4] = {0, 1, 2, 3};
    for (int a = 1; a < 4; a++)
        for (int b = a; b > 0 && t->nb[order[b]] < t->nb[order[b - 1]]; b--) {
            int tmp = order[b]; order[b] = order[b - 1]; order[b - 1] = tmp;
        }
    size_t extent = sizeof(float);  // bytes spanned by the dims seen so far
    for (int a = 0; a < 4; a++) {
        const int i = order[a];
        if (t->ne[i] == 1) continue;
        if (t->nb[i] < extent)
            return kda_fail(err, err_len, KIMI_KDA_ERR_STRIDE, "%s: strides overlap (nb[%d] = %zu < %zu bytes spanned by faster dims)",
                            name, i, t->nb[i], extent);
        extent = t->nb[i] * (size_t)(t->ne[i] - 1) + extent;
    }
    return KIMI_KDA_OK;
}

// Bytes [lo, hi) a tensor touches.
static void tensor_span(const kimi_kda_tensor * t, uintptr_t * lo, uintptr_t * hi) {
    size_t last = 0;
    for (int i = 0; i < 4; i++) last += (size_t)(t->ne[i] - 1) * t->nb[i];
    *lo = (uintptr_t)t->data;
    *hi = *lo + last + sizeof(float);
}

int64_t kimi_kda_dst_size(const kimi_kda_params * p) {
    if (!p) return -1;
    const kimi_kda_tensor * v = &p->v;
    if (v->ne[0] <= 0 || v->ne[1] <= 0 || v->ne[2] <= 0 || v->ne[3] <= 0 || p->n_snapshots < 1) return -1;
    if (v->ne[0] > KDA_MAX_DIM || v->ne[1] > KDA_MAX_DIM || v->ne[2] > KDA_MAX_DIM || v->ne[3] > KDA_MAX_DIM ||
        p->n_snapshots > KDA_MAX_DIM) return -1;
    const int64_t S = v->ne[0], H = v->ne[1], T = v->ne[2], B = v->ne[3];
    // Guard the products against overflow before forming them.
    const double approx = (double)S * H * T * B + (double)p->n_snapshots * S * S * H * B;
    if (approx > (double)KDA_MAX_ELEMS * 4) return -1;
    return S * H * T * B + p->n_snapshots * S * S * H * B;
}

int kda_validate(const kimi_kda_params * p, kda_dims * d, char * err, size_t err_len) {
    return kda_validate_ex(p, d, 1, err, err_len);
}

int kda_validate_ex(const kimi_kda_params * p, kda_dims * d, int check_memory, char * err, size_t err_len) {
    if (err && err_len) err[0] = '\0';
    if (!p) return kda_fail(err, err_len, KIMI_KDA_ERR_NULL, "params pointer is NULL");
    int rc;
    if ((rc = check_tensor("q", &p->q, 1, check_memory, err, err_len))) return rc;
    if ((rc = check_tensor("k", &p->k, 1, check_memory, err, err_len))) return rc;
    if ((rc = check_tensor("v", &p->v, 1, check_memory, err, err_len))) return rc;
    if ((rc = check_tensor("g", &p->g, 1, check_memory, err, err_len))) return rc;
    if ((rc = check_tensor("beta", &p->beta, 0, check_memory, err, err_len))) return rc;
    if ((rc = check_tensor("state", &p->state, 1, check_memory, err, err_len))) return rc;
    if (check_memory && !p->dst) return kda_fail(err, err_len, KIMI_KDA_ERR_NULL, "dst pointer is NULL");
    if (check_memory && ((uintptr_t)p->dst) % sizeof(float) != 0)
        return kda_fail(err, err_len, KIMI_KDA_ERR_STRIDE, "dst pointer not 4-byte aligned");

    const int64_t S = p->v.ne[0], H = p->v.ne[1], T = p->v.ne[2], B = p->v.ne[3];
    if (S % 16 != 0)
        return kda_fail(err, err_len, KIMI_KDA_ERR_SHAPE, "v: S_v = %lld is not a multiple of 16", (long long)S);
    if (p->q.ne[0] != S || p->k.ne[0] != S)
        return kda_fail(err, err_len, KIMI_KDA_ERR_SHAPE, "q/k: S_k = %lld/%lld differs from S_v = %lld",
                        (long long)p->q.ne[0], (long long)p->k.ne[0], (long long)S);
    for (int i = 1; i < 4; i++)
        if (p->q.ne[i] != p->k.ne[i])
            return kda_fail(err, err_len, KIMI_KDA_ERR_SHAPE, "q/k: ne[%d] differ (%lld vs %lld)", i,
                            (long long)p->q.ne[i], (long long)p->k.ne[i]);
    const int64_t H_k = p->q.ne[1], B_qk = p->q.ne[3];
    if (H % H_k != 0)
        return kda_fail(err, err_len, KIMI_KDA_ERR_SHAPE, "q/k: H_v = %lld is not a multiple of H_k = %lld",
                        (long long)H, (long long)H_k);
    if (p->q.ne[2] != T)
        return kda_fail(err, err_len, KIMI_KDA_ERR_SHAPE, "q/k: n_tokens = %lld differs from v's %lld",
                        (long long)p->q.ne[2], (long long)T);
    if (B % B_qk != 0)
        return kda_fail(err, err_len, KIMI_KDA_ERR_SHAPE, "q/k: n_seqs = %lld does not divide v's %lld",
                        (long long)B_qk, (long long)B);
    if (p->g.ne[0] != S || p->g.ne[1] != H || p->g.ne[2] != T || p->g.ne[3] != B)
        return kda_fail(err, err_len, KIMI_KDA_ERR_SHAPE,
                        "g: shape [%lld, %lld, %lld, %lld], need [S_v, H_v, T, n_seqs] = [%lld, %lld, %lld, %lld] (KDA per-channel gate)",
                        (long long)p->g.ne[0], (long long)p->g.ne[1], (long long)p->g.ne[2], (long long)p->g.ne[3],
                        (long long)S, (long long)H, (long long)T, (long long)B);
    if (p->beta.ne[0] != 1 || p->beta.ne[1] != H || p->beta.ne[2] != T || p->beta.ne[3] != B)
        return kda_fail(err, err_len, KIMI_KDA_ERR_SHAPE, "beta: shape [%lld, %lld, %lld, %lld], need [1, H_v, T, n_seqs]",
                        (long long)p->beta.ne[0], (long long)p->beta.ne[1], (long long)p->beta.ne[2], (long long)p->beta.ne[3]);
    if (p->state.ne[0] != S || p->state.ne[1] != S || p->state.ne[2] != H || p->state.ne[3] != B)
        return kda_fail(err, err_len, KIMI_KDA_ERR_SHAPE, "state: shape [%lld, %lld, %lld, %lld], need [S_v, S_v, H_v, n_seqs]",
                        (long long)p->state.ne[0], (long long)p->state.ne[1], (long long)p->state.ne[2], (long long)p->state.ne[3]);
    if (p->n_snapshots < 1 || p->n_snapshots > KDA_MAX_DIM)
        return kda_fail(err, err_len, KIMI_KDA_ERR_ARG, "n_snapshots = %lld out of range [1, 2^31]", (long long)p->n_snapshots);
    if (p->algo != KIMI_KDA_ALGO_AUTO && p->algo != KIMI_KDA_ALGO_RECURRENT && p->algo != KIMI_KDA_ALGO_CHUNKED)
        return kda_fail(err, err_len, KIMI_KDA_ERR_ARG, "algo = %d is not auto/recurrent/chunked", (int)p->algo);
    const int64_t n_dst = kimi_kda_dst_size(p);
    if (n_dst < 0)
        return kda_fail(err, err_len, KIMI_KDA_ERR_SHAPE, "dst would exceed 2^42 floats");

    // dst is written while inputs are read: they must not share memory.
    const uintptr_t dlo = (uintptr_t)p->dst, dhi = dlo + (uintptr_t)n_dst * sizeof(float);
    const kimi_kda_tensor * ins[6] = {&p->q, &p->k, &p->v, &p->g, &p->beta, &p->state};
    const char * names[6] = {"q", "k", "v", "g", "beta", "state"};
    for (int i = 0; i < 6 && check_memory; i++) {
        uintptr_t lo, hi;
        tensor_span(ins[i], &lo, &hi);
        if (lo < dhi && dlo < hi)
            return kda_fail(err, err_len, KIMI_KDA_ERR_STRIDE, "dst overlaps input %s", names[i]);
    }

    if (d) {
        d->S = S; d->H = H; d->T = T; d->n_seqs = B;
        d->H_k = H_k; d->n_seqs_qk = B_qk; d->rq3 = B / B_qk;
        d->K = p->n_snapshots;
        d->scale = 1.0f / sqrtf((float)S);
    }
    return KIMI_KDA_OK;
}

int kimi_kda_check(const kimi_kda_params * p, char * err, size_t err_len) {
    return kda_validate(p, NULL, err, err_len);
}
