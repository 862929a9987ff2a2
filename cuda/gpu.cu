/* gpu.cu — the CUDA backend's device, stream, handles and memory (see gpu.h). */
#include "gpu_internal.h"

#include <stdio.h>
#include <stdlib.h>

int gpu_fail_cuda(moco_error *err, cudaError_t rc, const char *call, const char *op)
{
    return moco_fail(err, "%s: %s: %s", op, call, cudaGetErrorString(rc));
}

int gpu_fail_cudnn(moco_error *err, cudnnStatus_t rc, const char *call, const char *op)
{
    return moco_fail(err, "%s: %s: %s", op, call, cudnnGetErrorString(rc));
}

int gpu_fail_cublas(moco_error *err, cublasStatus_t rc, const char *call, const char *op)
{
    return moco_fail(err, "%s: %s: %s", op, call, cublasGetStatusString(rc));
}

/* Everything gpu_create made, in reverse; safe on a half-made backend. */
void gpu_destroy(gpu *g)
{
    if (!g)
        return;
    if (g->stream)
        cudaStreamSynchronize(g->stream);
    cudaFree(g->workspace);
    cudaFree(g->pad_buffer);
    cudaFree(g->cublas_workspace);
    if (g->cublas)
        cublasDestroy(g->cublas);
    if (g->cudnn)
        cudnnDestroy(g->cudnn);
    if (g->stream)
        cudaStreamDestroy(g->stream);
    free(g->blocks);
    free(g);
}

static int setup(gpu *g, int index, moco_error *err)
{
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess)
        count = 0;
    if (index < 0 || index >= count)
        return moco_fail(err, "cuda:%d: no such device (%d visible)", index, count);
    CUDA_CHECK(cudaSetDevice(index), err, "selecting the device");
    /* Wait for the GPU asleep, not spinning: the default spins while fewer contexts than cores are
     * active, and a training process beside moco-augment's workers would keep a core busy through
     * every step. A device in use with other flags keeps them (this is no reason to fail). */
    if (cudaSetDeviceFlags(cudaDeviceScheduleBlockingSync) != cudaSuccess)
        cudaGetLastError();
    cudaDeviceProp p;
    CUDA_CHECK(cudaGetDeviceProperties(&p, index), err, "describing the device");
    CUDA_CHECK(cudaStreamCreateWithFlags(&g->stream, cudaStreamNonBlocking), err, "creating the stream");
    CUDNN_CHECK(cudnnCreate(&g->cudnn), err, "starting cuDNN");
    CUDNN_CHECK(cudnnSetStream(g->cudnn, g->stream), err, "starting cuDNN");
    CUBLAS_CHECK(cublasCreate(&g->cublas), err, "starting cuBLAS");
    CUBLAS_CHECK(cublasSetStream(g->cublas, g->stream), err, "starting cuBLAS");
    /* float32 products stay float32 (no TF32): the parity mode must match the CPU */
    CUBLAS_CHECK(cublasSetMathMode(g->cublas, CUBLAS_PEDANTIC_MATH), err, "starting cuBLAS");
    /* 32 MiB, what cuBLAS asks for on Hopper; given once, so capturing a step allocates nothing */
    enum { CUBLAS_WORKSPACE = 32 << 20 };
    CUDA_CHECK(cudaMalloc(&g->cublas_workspace, CUBLAS_WORKSPACE), err, "the cuBLAS workspace");
    CUBLAS_CHECK(cublasSetWorkspace(g->cublas, g->cublas_workspace, CUBLAS_WORKSPACE), err, "starting cuBLAS");
    size_t v = cudnnGetVersion();
    snprintf(g->description, sizeof g->description, "%s (sm_%d%d, %.1f GiB, cuDNN %zu.%zu.%zu), %s", p.name, p.major,
             p.minor, (double)p.totalGlobalMem / (1 << 30), v / 10000, v / 100 % 100, v % 100,
             g->precision == GPU_BF16 ? "bf16" : "float32");
    return MOCO_OK;
}

gpu *gpu_create(int index, gpu_precision precision, moco_error *err)
{
    gpu *g = (gpu *)calloc(1, sizeof *g);
    if (!g) {
        moco_fail(err, "out of memory");
        return NULL;
    }
    g->device = index, g->precision = precision;
    if (setup(g, index, err)) {
        gpu_destroy(g);
        return NULL;
    }
    return g;
}

gpu_precision gpu_get_precision(const gpu *g) { return g->precision; }
size_t gpu_act_size(const gpu *g) { return g->precision == GPU_BF16 ? 2 : 4; }
const char *gpu_describe(const gpu *g) { return g->description; }
size_t gpu_peak_bytes(const gpu *g) { return g->peak; }

int gpu_sync(gpu *g, moco_error *err)
{
    CUDA_CHECK(cudaStreamSynchronize(g->stream), err, "running the queued GPU work");
    return MOCO_OK;
}

/* Live allocations and their sizes, kept on the host (a few hundred at most, made at setup), so
 * gpu_free can count what is live without touching the device. */
static int remember(gpu *g, void *p, size_t bytes)
{
    if (g->nblocks == g->block_capacity) {
        int cap = g->block_capacity ? 2 * g->block_capacity : 256;
        gpu_block *grown = (gpu_block *)realloc(g->blocks, sizeof *grown * cap);
        if (!grown)
            return MOCO_ERR;
        g->blocks = grown, g->block_capacity = cap;
    }
    g->blocks[g->nblocks++] = (gpu_block){p, bytes};
    return MOCO_OK;
}

void *gpu_alloc(gpu *g, size_t bytes, moco_error *err)
{
    void *p = NULL;
    cudaError_t rc = cudaMalloc(&p, bytes ? bytes : 1);
    if (rc != cudaSuccess) {
        moco_fail(err, "cudaMalloc of %.1f MiB: %s", bytes / 1048576.0, cudaGetErrorString(rc));
        return NULL;
    }
    if (remember(g, p, bytes)) {
        cudaFree(p);
        moco_fail(err, "out of memory");
        return NULL;
    }
    g->allocated += bytes;
    if (g->allocated > g->peak)
        g->peak = g->allocated;
    return p;
}

void gpu_free(gpu *g, void *p)
{
    if (!p)
        return;
    for (int i = g->nblocks - 1; i >= 0; i--) /* the newest first: buffers are often freed in reverse */
        if (g->blocks[i].p == p) {
            g->allocated -= g->blocks[i].bytes;
            g->blocks[i] = g->blocks[--g->nblocks];
            break;
        }
    cudaFree(p);
}

/* Grow a buffer the backend owns to at least `bytes` (waits for the stream first: work queued may
 * use it); counted in the peak like gpu_alloc's. */
static int grow(gpu *g, void **p, size_t *have, size_t bytes, const char *what, moco_error *err)
{
    if (bytes <= *have)
        return MOCO_OK;
    CUDA_CHECK(cudaStreamSynchronize(g->stream), err, what);
    cudaFree(*p);
    g->allocated -= *have;
    *p = NULL, *have = 0;
    CUDA_CHECK(cudaMalloc(p, bytes), err, what);
    *have = bytes;
    g->allocated += bytes;
    if (g->allocated > g->peak)
        g->peak = g->allocated;
    return MOCO_OK;
}

int gpu_workspace(gpu *g, size_t bytes, moco_error *err)
{
    return grow(g, &g->workspace, &g->workspace_bytes, bytes, "the convolution workspace", err);
}

int gpu_pad_buffer(gpu *g, size_t bytes, moco_error *err)
{
    return grow(g, &g->pad_buffer, &g->pad_bytes, bytes, "the convolutions' padded inputs", err);
}

int gpu_upload(gpu *g, void *dst, const void *host_src, size_t bytes, moco_error *err)
{
    CUDA_CHECK(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, g->stream), err, "copying to the GPU");
    CUDA_CHECK(cudaStreamSynchronize(g->stream), err, "copying to the GPU");
    return MOCO_OK;
}

int gpu_download(gpu *g, void *host_dst, const void *src, size_t bytes, moco_error *err)
{
    CUDA_CHECK(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, g->stream), err, "copying from the GPU");
    CUDA_CHECK(cudaStreamSynchronize(g->stream), err, "copying from the GPU");
    return MOCO_OK;
}

int gpu_copy(gpu *g, void *dst, const void *src, size_t bytes, moco_error *err)
{
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, g->stream), err, "copying on the GPU");
    return MOCO_OK;
}

int gpu_zero(gpu *g, void *dst, size_t bytes, moco_error *err)
{
    CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, g->stream), err, "zeroing GPU memory");
    return MOCO_OK;
}

int gpu_upload_act(gpu *g, void *dst, const float *host_src, size_t count, moco_error *err)
{
    if (g->precision == GPU_F32)
        return gpu_upload(g, dst, host_src, count * sizeof(float), err);
    __nv_bfloat16 *tmp = (__nv_bfloat16 *)malloc(count * sizeof *tmp);
    if (!tmp)
        return moco_fail(err, "out of memory");
    for (size_t i = 0; i < count; i++)
        tmp[i] = __float2bfloat16(host_src[i]);
    int rc = gpu_upload(g, dst, tmp, count * sizeof *tmp, err);
    free(tmp);
    return rc;
}

int gpu_download_act(gpu *g, float *host_dst, const void *src, size_t count, moco_error *err)
{
    if (g->precision == GPU_F32)
        return gpu_download(g, host_dst, src, count * sizeof(float), err);
    __nv_bfloat16 *tmp = (__nv_bfloat16 *)malloc(count * sizeof *tmp);
    if (!tmp)
        return moco_fail(err, "out of memory");
    int rc = gpu_download(g, tmp, src, count * sizeof *tmp, err);
    for (size_t i = 0; !rc && i < count; i++)
        host_dst[i] = __bfloat162float(tmp[i]);
    free(tmp);
    return rc;
}

void *gpu_host_alloc(gpu *g, size_t bytes, moco_error *err)
{
    (void)g;
    void *p = NULL;
    cudaError_t rc = cudaMallocHost(&p, bytes);
    if (rc != cudaSuccess) {
        moco_fail(err, "cudaMallocHost of %.1f MiB: %s", bytes / 1048576.0, cudaGetErrorString(rc));
        return NULL;
    }
    return p;
}

void gpu_host_free(gpu *g, void *host_p)
{
    (void)g;
    if (host_p)
        cudaFreeHost(host_p);
}
