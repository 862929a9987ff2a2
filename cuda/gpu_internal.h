/* gpu_internal.h — what the .cu files of the CUDA backend share and the C side never sees: the
 * backend's state, the activation types, and the status checks every CUDA, cuDNN and cuBLAS call
 * goes through (a failing call becomes a moco_error naming the call and the op, never a print). */
#ifndef MOCO_CUDA_GPU_INTERNAL_H
#define MOCO_CUDA_GPU_INTERNAL_H

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include "gpu.h"

typedef struct {
    void *p;
    size_t bytes;
} gpu_block;

struct gpu {
    int device;
    gpu_precision precision;
    cudaStream_t stream;
    cudnnHandle_t cudnn;
    cublasHandle_t cublas;
    void *workspace;           /* shared by every cuDNN call of this backend (one stream: one at a time) */
    void *cublas_workspace;    /* cuBLAS's, set once: a captured graph must not make it allocate */
    size_t workspace_bytes;
    void *pad_buffer;          /* a convolution's input or dx with its channels padded for cuDNN (conv.cu) */
    size_t pad_bytes;
    size_t allocated, peak;    /* bytes through gpu_alloc and the workspace */
    gpu_block *blocks;         /* gpu_alloc's live allocations */
    int nblocks, block_capacity;
    char description[192];
};

/* Grow the shared workspace to at least `bytes` (waits for the stream first: work queued may use it). */
int gpu_workspace(gpu *g, size_t bytes, moco_error *err);
/* The same for the padded-channels buffer. */
int gpu_pad_buffer(gpu *g, size_t bytes, moco_error *err);

/* The failing call's status as text, with the op: "cudnnConvolutionForward (conv 3x3 64->64, 256x56x56): CUDNN_STATUS_...". */
int gpu_fail_cuda(moco_error *err, cudaError_t rc, const char *call, const char *op);
int gpu_fail_cudnn(moco_error *err, cudnnStatus_t rc, const char *call, const char *op);
int gpu_fail_cublas(moco_error *err, cublasStatus_t rc, const char *call, const char *op);

/* Check a call; `op` is a string naming the op and shape (may be built with snprintf beforehand). */
#define CUDA_CHECK(call, err, op)                                                                  \
    do {                                                                                           \
        cudaError_t rc_ = (call);                                                                  \
        if (rc_ != cudaSuccess)                                                                    \
            return gpu_fail_cuda((err), rc_, #call, (op));                                         \
    } while (0)
#define CUDNN_CHECK(call, err, op)                                                                 \
    do {                                                                                           \
        cudnnStatus_t rc_ = (call);                                                                \
        if (rc_ != CUDNN_STATUS_SUCCESS)                                                           \
            return gpu_fail_cudnn((err), rc_, #call, (op));                                        \
    } while (0)
#define CUBLAS_CHECK(call, err, op)                                                                \
    do {                                                                                           \
        cublasStatus_t rc_ = (call);                                                               \
        if (rc_ != CUBLAS_STATUS_SUCCESS)                                                          \
            return gpu_fail_cublas((err), rc_, #call, (op));                                       \
    } while (0)
/* After a kernel launch: a bad configuration shows here, a fault at the next gpu_sync. */
#define LAUNCH_CHECK(err, op) CUDA_CHECK(cudaGetLastError(), err, op)

/* Activations: loaded into float32, computed, stored back in the backend's type. */
__device__ __forceinline__ float act_load(const float *p, size_t i) { return p[i]; }
__device__ __forceinline__ float act_load(const __nv_bfloat16 *p, size_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void act_store(float *p, size_t i, float v) { p[i] = v; }
__device__ __forceinline__ void act_store(__nv_bfloat16 *p, size_t i, float v) { p[i] = __float2bfloat16(v); }

/* 16 bytes of activations (8 bf16 or 4 floats), moved with one load or store instruction: the
 * memory-bound kernels move these rather than single values, which keeps several times more bytes
 * in flight per warp. */
template <typename T> struct alignas(16) pack16 {
    T v[16 / sizeof(T)];
};

/* Blocks for a grid-stride loop over `count` items, 256 threads each, capped so launches stay cheap. */
static inline unsigned gpu_blocks(size_t count)
{
    size_t b = (count + 255) / 256;
    return (unsigned)(b < 1 ? 1 : b > 65535 * 4 ? 65535 * 4 : b);
}

/* Run a kernel templated on the activation type with the backend's: ACT_DISPATCH(g, kern, grid, block, args...) */
#define ACT_DISPATCH(g, kernel, grid, block, ...)                                                  \
    do {                                                                                           \
        if ((g)->precision == GPU_BF16)                                                            \
            kernel<__nv_bfloat16><<<(grid), (block), 0, (g)->stream>>>(__VA_ARGS__);               \
        else                                                                                       \
            kernel<float><<<(grid), (block), 0, (g)->stream>>>(__VA_ARGS__);                       \
    } while (0)

#endif
