// kimi_kda_cuda_rt.h - the few CUDA runtime calls the llama.cpp bridge needs, behind plain C.
//
// Why: the bridge (ggml_ops/bridge) is ordinary C++ compiled without nvcc or CUDA headers. The
// kernels' library already carries a CUDA runtime (statically linked), so the bridge asks it for
// streams, scratch memory and copies instead of linking a second runtime. Every function returns 0
// on success or the CUDA error code; kimi_kda_cuda_error_string names it.
#ifndef KIMI_KDA_CUDA_RT_H
#define KIMI_KDA_CUDA_RT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

int  kimi_kda_cuda_device_count(int * count);
// A non-blocking stream on `device` (also makes `device` current for the calling thread).
int  kimi_kda_cuda_stream_create(int device, void ** stream);
int  kimi_kda_cuda_stream_sync(void * stream);
void kimi_kda_cuda_stream_destroy(void * stream);
int  kimi_kda_cuda_set_device(int device);
int  kimi_kda_cuda_malloc(int device, void ** ptr, size_t bytes);
void kimi_kda_cuda_free(void * ptr);
// Synchronous copy between any host/device pointers (unified addressing decides the direction).
int  kimi_kda_cuda_memcpy(void * dst, const void * src, size_t bytes);
// x[i] += value for i < n, on stream (the bridge's debug "corrupt" switch).
int  kimi_kda_cuda_add_scalar(float * x, int64_t n, float value, void * stream);
const char * kimi_kda_cuda_error_string(int code);

#ifdef __cplusplus
}
#endif

#endif // KIMI_KDA_CUDA_RT_H
