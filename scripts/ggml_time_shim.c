// ggml_time_shim.c - debugging aid: an LD_PRELOAD library that times the ggml calls llama.cpp makes
// during llama_decode (graph planning, input upload, each backend's graph_compute, synchronise), so
// host time can be placed without a profiler. Calls between libraries (libllama -> libggml-base)
// always go through the PLT; calls inside libggml-base may not, and then simply count 0.
//
//   gcc -O2 -shared -fPIC scripts/ggml_time_shim.c -o /tmp/libggml_time_shim.so -ldl
//   LD_PRELOAD=/tmp/libggml_time_shim.so python scripts/bridge_splits.py ... --shim /tmp/libggml_time_shim.so
// shim_report(tag) prints the totals since the last report (one line per call kind / backend) and
// resets them.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static void * real_fn(const char * name);

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

#define MAX_SLOTS 64
typedef struct { const char * what; char backend[32]; double ms; long n; } slot;
static slot g_slots[MAX_SLOTS];

// the backend's name now, while it is alive (a report may come after its context was freed)
static const char * backend_name(const void * backend) {
    static const char * (*fn)(const void *);
    if (!fn) fn = (const char * (*)(const void *)) real_fn("ggml_backend_name");
    return fn && backend ? fn(backend) : "";
}

static void add(const char * what, const void * backend, double ms) {
    const char * name = backend_name(backend);
    for (int i = 0; i < MAX_SLOTS; ++i) {
        if (g_slots[i].what == NULL) {
            g_slots[i].what = what;
            snprintf(g_slots[i].backend, sizeof(g_slots[i].backend), "%s", name);
        }
        if (g_slots[i].what == what && strcmp(g_slots[i].backend, name) == 0) {
            g_slots[i].ms += ms;
            g_slots[i].n += 1;
            return;
        }
    }
}

void shim_report(const char * tag) {
    for (int i = 0; i < MAX_SLOTS && g_slots[i].what; ++i) {
        slot * s = &g_slots[i];
        if (s->n == 0) continue;
        fprintf(stderr, "shim %-14s %-36s %-16s %9.2f ms in %5ld calls\n", tag, s->what, s->backend, s->ms, s->n);
        s->ms = 0;
        s->n = 0;
    }
}

// The real functions live in libggml-base, which Python loads with RTLD_LOCAL: dlsym(RTLD_NEXT)
// cannot see it, so find the loaded file and look the symbol up in its own handle.
static int find_base(struct dl_phdr_info * info, size_t size, void * out) {
    (void) size;
    if (info->dlpi_name && strstr(info->dlpi_name, "libggml-base.so")) {
        snprintf((char *) out, 4096, "%s", info->dlpi_name);
        return 1;
    }
    return 0;
}

static void * real_fn(const char * name) {
    static void * handle;
    if (!handle) {
        char path[4096] = "";
        dl_iterate_phdr(find_base, path);
        handle = path[0] ? dlopen(path, RTLD_LAZY | RTLD_NOLOAD) : NULL;
        if (!handle) {
            fprintf(stderr, "ggml_time_shim: libggml-base is not loaded (%s)\n", path);
            return NULL;
        }
    }
    return dlsym(handle, name);
}

#define REAL(name, type) static __typeof__(type) real; if (!real) real = (__typeof__(type)) real_fn(#name)

int ggml_backend_sched_graph_compute_async(void * sched, void * graph) {
    REAL(ggml_backend_sched_graph_compute_async, int (*)(void *, void *));
    double t0 = now_ms(); int r = real(sched, graph); add("sched_graph_compute_async", NULL, now_ms() - t0); return r;
}
bool ggml_backend_sched_alloc_graph(void * sched, void * graph) {
    REAL(ggml_backend_sched_alloc_graph, bool (*)(void *, void *));
    double t0 = now_ms(); bool r = real(sched, graph); add("sched_alloc_graph", NULL, now_ms() - t0); return r;
}
void ggml_backend_sched_reset(void * sched) {
    REAL(ggml_backend_sched_reset, void (*)(void *));
    double t0 = now_ms(); real(sched); add("sched_reset", NULL, now_ms() - t0);
}
void ggml_backend_sched_synchronize(void * sched) {
    REAL(ggml_backend_sched_synchronize, void (*)(void *));
    double t0 = now_ms(); real(sched); add("sched_synchronize", NULL, now_ms() - t0);
}
void ggml_backend_tensor_set(void * tensor, const void * data, size_t offset, size_t size) {
    REAL(ggml_backend_tensor_set, void (*)(void *, const void *, size_t, size_t));
    double t0 = now_ms(); real(tensor, data, offset, size); add("tensor_set", NULL, now_ms() - t0);
}
void ggml_backend_tensor_get(const void * tensor, void * data, size_t offset, size_t size) {
    REAL(ggml_backend_tensor_get, void (*)(const void *, void *, size_t, size_t));
    double t0 = now_ms(); real(tensor, data, offset, size); add("tensor_get", NULL, now_ms() - t0);
}
int ggml_backend_graph_compute_async(void * backend, void * cgraph) {
    REAL(ggml_backend_graph_compute_async, int (*)(void *, void *));
    double t0 = now_ms(); int r = real(backend, cgraph); add("graph_compute_async", backend, now_ms() - t0); return r;
}
void ggml_backend_synchronize(void * backend) {
    REAL(ggml_backend_synchronize, void (*)(void *));
    double t0 = now_ms(); real(backend); add("synchronize", backend, now_ms() - t0);
}
void ggml_backend_tensor_copy(void * src, void * dst) {
    REAL(ggml_backend_tensor_copy, void (*)(void *, void *));
    double t0 = now_ms(); real(src, dst); add("tensor_copy", NULL, now_ms() - t0);
}
