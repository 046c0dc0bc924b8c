// kda_cuda_rt.cu - kimi_kda_cuda_rt.h: thin wrappers over the CUDA runtime for the bridge.
#include "kimi_kda_cuda_rt.h"

#include <cuda_runtime.h>

namespace {

__global__ void add_scalar_kernel(float * x, int64_t n, float value) {
    for (int64_t i = (int64_t) blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t) gridDim.x * blockDim.x) {
        x[i] += value;
    }
}

int code(cudaError_t e) { return (int) e; }

} // namespace

extern "C" int kimi_kda_cuda_device_count(int * count) {
    *count = 0;
    const cudaError_t e = cudaGetDeviceCount(count);
    if (e != cudaSuccess) {
        (void) cudaGetLastError();  // "no device" must not stick to later calls
        *count = 0;
    }
    return code(e);
}

extern "C" int kimi_kda_cuda_set_device(int device) { return code(cudaSetDevice(device)); }

extern "C" int kimi_kda_cuda_stream_create(int device, void ** stream) {
    *stream = nullptr;
    cudaError_t e = cudaSetDevice(device);
    if (e != cudaSuccess) return code(e);
    cudaStream_t s = nullptr;
    e = cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
    if (e == cudaSuccess) *stream = (void *) s;
    return code(e);
}

extern "C" int kimi_kda_cuda_stream_sync(void * stream) { return code(cudaStreamSynchronize((cudaStream_t) stream)); }

extern "C" void kimi_kda_cuda_stream_destroy(void * stream) {
    if (stream) (void) cudaStreamDestroy((cudaStream_t) stream);
}

extern "C" int kimi_kda_cuda_malloc(int device, void ** ptr, size_t bytes) {
    *ptr = nullptr;
    cudaError_t e = cudaSetDevice(device);
    if (e == cudaSuccess) e = cudaMalloc(ptr, bytes);
    if (e != cudaSuccess) {
        (void) cudaGetLastError();
        *ptr = nullptr;
    }
    return code(e);
}

extern "C" void kimi_kda_cuda_free(void * ptr) {
    if (ptr) (void) cudaFree(ptr);
}

extern "C" int kimi_kda_cuda_memcpy(void * dst, const void * src, size_t bytes) {
    return code(cudaMemcpy(dst, src, bytes, cudaMemcpyDefault));
}

extern "C" int kimi_kda_cuda_add_scalar(float * x, int64_t n, float value, void * stream) {
    if (n <= 0) return 0;
    const int threads = 256;
    const int64_t want = (n + threads - 1) / threads;
    const int blocks = (int) (want < 4096 ? want : 4096);
    add_scalar_kernel<<<blocks, threads, 0, (cudaStream_t) stream>>>(x, n, value);
    return code(cudaGetLastError());
}

extern "C" const char * kimi_kda_cuda_error_string(int c) { return cudaGetErrorString((cudaError_t) c); }
