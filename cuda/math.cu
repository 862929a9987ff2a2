/* math.cu — the CUDA backend's element-wise ops, float32 products and head, and the MoCo step's own
 * kernels (see gpu.h). Read beside libcommon/backend.c, moco.c and optim.c: each op computes what its
 * CPU twin does, in float32.
 *
 * Products go through cuBLAS, which is column-major: a row-major (r, c) matrix with row stride ld is,
 * byte for byte, the column-major (c, r) matrix of leading dimension ld, its transpose. So row-major
 * Y = op(A) op(B) is computed as column-major Y^T = op(B)^T op(A)^T (gemm_rows below), and every
 * leading dimension passed is the row stride of the row-major matrix.
 *
 * Element-wise updates of float32 state (momentum update, SGD) round each product and sum on its own
 * (__fmul_rn, __fadd_rn) rather than letting the compiler fuse them: the CPU reference is built
 * without FMA, so the parity mode then matches it bit for bit. */
#include "gpu_internal.h"

#include <stdarg.h>
#include <stdio.h>

/* ---- checks that name the op and its shape (formatted only on failure: ops run every step) ---- */

static int launch_failed(moco_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int launch_failed(moco_error *err, const char *fmt, ...)
{
    cudaError_t rc = cudaGetLastError();
    if (rc == cudaSuccess)
        return MOCO_OK;
    char op[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(op, sizeof op, fmt, ap);
    va_end(ap);
    return gpu_fail_cuda(err, rc, "kernel launch", op);
}

/* ---- reductions within a warp and within a block ---- */

struct op_sum {
    template <typename T> __device__ T operator()(T a, T b) const { return a + b; }
};
struct op_max {
    __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

template <typename T, typename Op> __device__ __forceinline__ T warp_reduce(T v, Op op)
{
    for (int offset = 16; offset > 0; offset >>= 1)
        v = op(v, __shfl_xor_sync(0xFFFFFFFFu, v, offset));
    return v;
}

/* Every thread of the block gets the result; blockDim.x is a multiple of 32, at most 1024. The
 * leading barrier lets one scratch array serve reductions in a row. */
template <typename T, typename Op> __device__ T block_reduce(T v, Op op, T identity, T *scratch)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_reduce(v, op);
    __syncthreads();
    if (lane == 0)
        scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : identity;
    return warp_reduce(v, op);
}

/* ---- element-wise on activations ----
 * Kernels take void pointers and cast to their activation type T, so ACT_DISPATCH can pass the same
 * arguments to both instantiations. */

#define GRID_STRIDE(i, count)                                                                      \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (count); i += (size_t)gridDim.x * blockDim.x)

/* The element-wise ops below are memory-bound (on an H200 they moved 2.2 TB/s two bytes at a time),
 * so each thread moves a pack16 at a time. The caller passes how many whole packs are aligned for
 * that (`packs`); the values after them go one by one. */

/* Whole 16-byte packs of `count` values at each pointer: 0 unless both are 16-byte aligned. */
static size_t packs_of(size_t count, size_t value_bytes, const void *a, const void *b)
{
    return ((uintptr_t)a | (uintptr_t)b) % 16 ? 0 : count / (16 / value_bytes);
}

/* y[i] = op(y[i], x[i]) for count values: the packs first, then the tail, each grid-strided. */
template <typename T, typename Op>
__device__ void packed_apply(void *y_, const void *x_, size_t count, size_t packs, Op op)
{
    constexpr int per_pack = 16 / sizeof(T);
    pack16<T> *yp = (pack16<T> *)y_;
    const pack16<T> *xp = (const pack16<T> *)x_;
    GRID_STRIDE(p, packs)
    {
        pack16<T> a = yp[p], b = xp[p];
        for (int k = 0; k < per_pack; k++)
            act_store(a.v, k, op(act_load(a.v, k), act_load(b.v, k)));
        yp[p] = a;
    }
    T *y = (T *)y_;
    const T *x = (const T *)x_;
    for (size_t i = packs * per_pack + blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count;
         i += (size_t)gridDim.x * blockDim.x)
        act_store(y, i, op(act_load(y, i), act_load(x, i)));
}

struct op_relu_mask { /* dy where the output y was positive */
    __device__ float operator()(float dy, float y) const { return y > 0.0f ? dy : 0.0f; }
};

template <typename T> __global__ void relu_backward_kernel(const void *y, void *dy, size_t count, size_t packs)
{
    packed_apply<T>(dy, y, count, packs, op_relu_mask());
}

template <typename T> __global__ void add_kernel(void *y, const void *x, size_t count, size_t packs)
{
    packed_apply<T>(y, x, count, packs, op_sum());
}

/* Blocks for `count` values moved in packs of 16 bytes. */
static unsigned packed_blocks(const gpu *g, size_t count)
{
    size_t per_pack = 16 / gpu_act_size(g);
    return gpu_blocks((count + per_pack - 1) / per_pack);
}

extern "C" int gpu_relu_backward(gpu *g, const void *y, void *dy, size_t count, moco_error *err)
{
    if (!count)
        return MOCO_OK;
    size_t packs = packs_of(count, gpu_act_size(g), y, dy);
    ACT_DISPATCH(g, relu_backward_kernel, packed_blocks(g, count), 256, y, dy, count, packs);
    return launch_failed(err, "relu backward (%zu values)", count);
}

extern "C" int gpu_add_inplace(gpu *g, void *y, const void *x, size_t count, moco_error *err)
{
    if (!count)
        return MOCO_OK;
    size_t packs = packs_of(count, gpu_act_size(g), y, x);
    ACT_DISPATCH(g, add_kernel, packed_blocks(g, count), 256, y, x, count, packs);
    return launch_failed(err, "add in place (%zu values)", count);
}

/* ---- float32 products and the head ---- */

/* Row-major Y (M,N) = alpha op(A) op(B) + beta Y, op(X) = X^T when tx; lda, ldb, ldy are the stored
 * matrices' row strides. As column-major Y^T = op(B)^T op(A)^T: B comes first, the sizes are N, M. */
static int gemm_rows(gpu *g, int ta, int tb, int m, int n, int k, float alpha, const float *a, int lda,
                     const float *b, int ldb, float beta, float *y, int ldy, moco_error *err, const char *what)
{
    cublasStatus_t rc = cublasSgemm(g->cublas, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, n, m, k,
                                    &alpha, b, ldb, a, lda, &beta, y, ldy);
    if (rc == CUBLAS_STATUS_SUCCESS)
        return MOCO_OK;
    char op[256];
    snprintf(op, sizeof op, "%s (M %d, N %d, K %d, A%s, B%s, row strides %d %d %d)", what, m, n, k, ta ? "^T" : "",
             tb ? "^T" : "", lda, ldb, ldy);
    return gpu_fail_cublas(err, rc, "cublasSgemm", op);
}

__global__ void add_bias_kernel(float *y, const float *bias, int out, size_t count)
{
    GRID_STRIDE(i, count)
    {
        y[i] += bias[i % out];
    }
}

/* db[j] = sum over rows of dy[i][j], summed in row order as the CPU does; one thread per column
 * keeps the reads of a warp on one row, adjacent. */
__global__ void column_sums_kernel(const float *dy, int n, int out, float *db)
{
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= out)
        return;
    float s = 0.0f;
    for (int i = 0; i < n; i++)
        s += dy[(size_t)i * out + j];
    db[j] = s;
}

extern "C" int gpu_linear_forward(gpu *g, const float *x, int n, int in, int out, const float *weight,
                                  const float *bias, float *y, moco_error *err)
{
    if (n < 1 || in < 1 || out < 1)
        return moco_fail(err, "linear forward: bad shape %dx%d -> %d", n, in, out);
    /* y (N,out) = x (N,in) W^T, W stored (out,in) */
    if (gemm_rows(g, 0, 1, n, out, in, 1.0f, x, in, weight, in, 0.0f, y, out, err, "linear forward"))
        return MOCO_ERR;
    if (!bias)
        return MOCO_OK;
    size_t count = (size_t)n * out;
    add_bias_kernel<<<gpu_blocks(count), 256, 0, g->stream>>>(y, bias, out, count);
    return launch_failed(err, "linear forward bias (%dx%d -> %d)", n, in, out);
}

extern "C" int gpu_linear_backward(gpu *g, const float *x, const float *dy, int n, int in, int out,
                                   const float *weight, float *dx, float *dweight, float *dbias, moco_error *err)
{
    if (n < 1 || in < 1 || out < 1)
        return moco_fail(err, "linear backward: bad shape %dx%d -> %d", n, in, out);
    /* dW (out,in) = dy^T (out,N) x (N,in) */
    if (gemm_rows(g, 1, 0, out, in, n, 1.0f, dy, out, x, in, 0.0f, dweight, in, err, "linear backward dW"))
        return MOCO_ERR;
    if (dbias) {
        column_sums_kernel<<<(out + 255) / 256, 256, 0, g->stream>>>(dy, n, out, dbias);
        if (launch_failed(err, "linear backward bias (%dx%d -> %d)", n, in, out))
            return MOCO_ERR;
    }
    /* dx (N,in) = dy (N,out) W (out,in) */
    if (dx && gemm_rows(g, 0, 0, n, in, out, 1.0f, dy, out, weight, in, 0.0f, dx, in, err, "linear backward dx"))
        return MOCO_ERR;
    return MOCO_OK;
}

__global__ void relu_f32_kernel(float *x, size_t count)
{
    GRID_STRIDE(i, count)
    {
        x[i] = x[i] > 0.0f ? x[i] : 0.0f;
    }
}

__global__ void relu_backward_f32_kernel(const float *y, float *dy, size_t count)
{
    GRID_STRIDE(i, count)
    {
        if (!(y[i] > 0.0f))
            dy[i] = 0.0f;
    }
}

extern "C" int gpu_relu_f32(gpu *g, float *x, size_t count, moco_error *err)
{
    if (!count)
        return MOCO_OK;
    relu_f32_kernel<<<gpu_blocks(count), 256, 0, g->stream>>>(x, count);
    return launch_failed(err, "relu (%zu float32 values)", count);
}

extern "C" int gpu_relu_backward_f32(gpu *g, const float *y, float *dy, size_t count, moco_error *err)
{
    if (!count)
        return MOCO_OK;
    relu_backward_f32_kernel<<<gpu_blocks(count), 256, 0, g->stream>>>(y, dy, count);
    return launch_failed(err, "relu backward (%zu float32 values)", count);
}

extern "C" int gpu_matmul(gpu *g, const float *a, const float *b, float *y, int m, int n, int k, int b_transposed,
                          float alpha, int ldy, moco_error *err)
{
    if (m < 1 || n < 1 || k < 1 || ldy < n)
        return moco_fail(err, "matmul: bad shape %dx%d by %dx%d%s into rows of %d", m, k, k, n,
                         b_transposed ? " (B stored transposed)" : "", ldy);
    return gemm_rows(g, 0, b_transposed, m, n, k, alpha, a, k, b, b_transposed ? k : n, 0.0f, y, ldy, err, "matmul");
}

/* One warp per row: D is the key dimension (128 in MoCo v2), a warp's loads of a row coalesce. */
enum { ROWS_PER_BLOCK = 8 };

__global__ void l2norm_forward_kernel(const float *x, int n, int d, float *y, float *norms)
{
    int row = blockIdx.x * ROWS_PER_BLOCK + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= n)
        return;
    const float *xr = x + (size_t)row * d;
    float s = 0.0f;
    for (int j = lane; j < d; j += 32)
        s += xr[j] * xr[j];
    s = warp_reduce(s, op_sum());
    float norm = fmaxf(sqrtf(s), 1e-12f); /* torch.nn.functional.normalize's eps */
    for (int j = lane; j < d; j += 32)
        y[(size_t)row * d + j] = xr[j] / norm;
    if (lane == 0)
        norms[row] = norm;
}

__global__ void l2norm_backward_kernel(const float *y, const float *norms, const float *dy, int n, int d, float *dx)
{
    int row = blockIdx.x * ROWS_PER_BLOCK + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= n)
        return;
    const float *yr = y + (size_t)row * d, *gr = dy + (size_t)row * d;
    float dot = 0.0f;
    for (int j = lane; j < d; j += 32)
        dot += yr[j] * gr[j];
    dot = warp_reduce(dot, op_sum());
    float norm = norms[row];
    for (int j = lane; j < d; j += 32)
        dx[(size_t)row * d + j] = (gr[j] - yr[j] * dot) / norm;
}

extern "C" int gpu_l2norm_forward(gpu *g, const float *x, int n, int d, float *y, float *norms, moco_error *err)
{
    if (n < 1 || d < 1)
        return moco_fail(err, "l2norm forward: bad shape %dx%d", n, d);
    l2norm_forward_kernel<<<(n + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK, 32 * ROWS_PER_BLOCK, 0, g->stream>>>(x, n, d, y,
                                                                                                        norms);
    return launch_failed(err, "l2norm forward (%dx%d)", n, d);
}

extern "C" int gpu_l2norm_backward(gpu *g, const float *y, const float *norms, const float *dy, int n, int d,
                                   float *dx, moco_error *err)
{
    if (n < 1 || d < 1)
        return moco_fail(err, "l2norm backward: bad shape %dx%d", n, d);
    l2norm_backward_kernel<<<(n + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK, 32 * ROWS_PER_BLOCK, 0, g->stream>>>(
        y, norms, dy, n, d, dx);
    return launch_failed(err, "l2norm backward (%dx%d)", n, d);
}

/* One block per row (C is K+1 = 65537 in MoCo v2): max, then the sum of exp(x - max), then the
 * gradient, each a pass over the row. A row counts for top-k when fewer than k logits other than the
 * label's are >= it (ties count against the label, as backend.c). The row's loss / N and its hits are
 * added to result with atomics (result zeroed on the stream first); the loss's last bits therefore
 * depend on the order rows finish, the counts are exact. dlogits may equal logits: each thread reads
 * an element before writing it, and the label's logit is read before any write. */
enum { XENT_THREADS = 512 };

__global__ void __launch_bounds__(XENT_THREADS)
    softmax_xent_kernel(const float *logits, int c, const int64_t *labels, float *dlogits, float *result, float scale)
{
    __shared__ float scratch_f[32];
    __shared__ int scratch_i[32];
    const float *row = logits + (size_t)blockIdx.x * c;
    int64_t label = labels ? labels[blockIdx.x] : 0;
    int valid = label >= 0 && label < c; /* a bad label gives a NaN loss rather than a stray read */
    float target = valid ? row[label] : __int_as_float(0x7FC00000);
    float mx = -INFINITY;
    int above = 0;
    for (int j = threadIdx.x; j < c; j += blockDim.x) {
        float v = row[j];
        mx = fmaxf(mx, v);
        above += j != label && v >= target;
    }
    mx = block_reduce(mx, op_max(), -INFINITY, scratch_f);
    above = block_reduce(above, op_sum(), 0, scratch_i);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < c; j += blockDim.x)
        sum += expf(row[j] - mx);
    sum = block_reduce(sum, op_sum(), 0.0f, scratch_f);
    if (threadIdx.x == 0) {
        float loss = logf(sum) + mx - target;
        atomicAdd(&result[0], loss * scale);
        if (valid && above < 1)
            atomicAdd(&result[1], 1.0f);
        if (valid && above < 5)
            atomicAdd(&result[2], 1.0f);
    }
    if (!dlogits)
        return;
    float *drow = dlogits + (size_t)blockIdx.x * c;
    float inv_sum = 1.0f / sum;
    for (int j = threadIdx.x; j < c; j += blockDim.x)
        drow[j] = (expf(row[j] - mx) * inv_sum - (j == label ? 1.0f : 0.0f)) * scale;
}

extern "C" int gpu_softmax_cross_entropy(gpu *g, const float *logits, int n, int c, const int64_t *labels,
                                         float *dlogits, float *result, moco_error *err)
{
    char op[96];
    if (n < 1 || c < 1)
        return moco_fail(err, "softmax cross-entropy: bad shape %dx%d", n, c);
    snprintf(op, sizeof op, "softmax cross-entropy (%dx%d)", n, c);
    CUDA_CHECK(cudaMemsetAsync(result, 0, 3 * sizeof(float), g->stream), err, op);
    /* the CPU scales the gradient by (float)(1.0 / n); the loss's mean is taken with the same factor */
    float scale = (float)(1.0 / n);
    softmax_xent_kernel<<<n, XENT_THREADS, 0, g->stream>>>(logits, c, labels, dlogits, result, scale);
    LAUNCH_CHECK(err, op);
    return MOCO_OK;
}

/* ---- the MoCo step's own kernels ---- */

/* The per-channel table batcher.c builds, (float)((v / 255.0 - mean) / std) in double, so the
 * GPU's float32 inputs are the CPU's bit for bit. Passed by value (3 KiB of kernel parameters) and
 * copied into shared memory, where the lookups of a warp may differ freely. */
typedef struct {
    float v[3 * 256];
} normalise_table;

template <typename T>
__global__ void normalise_u8_kernel(const uint8_t *x, size_t count, size_t packs, int c,
                                    const __grid_constant__ normalise_table table, void *y_)
{
    __shared__ float lut[3 * 256];
    for (int t = threadIdx.x; t < c * 256; t += blockDim.x)
        lut[t] = table.v[t];
    __syncthreads();
    T *y = (T *)y_;
    /* 16 bytes in, two or four 16-byte packs out; one channel division per 16 values */
    constexpr int per_pack = 16 / sizeof(T);
    GRID_STRIDE(p, packs)
    {
        uint4 in = ((const uint4 *)x)[p];
        const uint8_t *b = (const uint8_t *)&in;
        int ch = (int)(p * 16 % c);
        pack16<T> out[16 / per_pack];
#pragma unroll
        for (int k = 0; k < 16; k++) {
            act_store(out[k / per_pack].v, k % per_pack, lut[ch * 256 + b[k]]);
            ch = ch + 1 == c ? 0 : ch + 1;
        }
#pragma unroll
        for (int s = 0; s < 16 / per_pack; s++)
            ((pack16<T> *)(y + p * 16))[s] = out[s];
    }
    for (size_t i = packs * 16 + blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count;
         i += (size_t)gridDim.x * blockDim.x)
        act_store(y, i, lut[(int)(i % c) * 256 + x[i]]);
}

extern "C" int gpu_normalise_u8(gpu *g, const uint8_t *x, size_t pixels, int c, const double host_mean[3],
                                const double host_std[3], void *y, moco_error *err)
{
    if (c < 1 || c > 3)
        return moco_fail(err, "normalise: %d channels (1 to 3)", c);
    normalise_table table = {};
    for (int ch = 0; ch < c; ch++)
        for (int v = 0; v < 256; v++)
            table.v[ch * 256 + v] = (float)((v / 255.0 - host_mean[ch]) / host_std[ch]);
    size_t count = pixels * c;
    if (!count)
        return MOCO_OK;
    size_t packs = ((uintptr_t)x | (uintptr_t)y) % 16 ? 0 : count / 16; /* whole 16-byte loads of x */
    ACT_DISPATCH(g, normalise_u8_kernel, gpu_blocks(packs ? packs : count), 256, x, count, packs, c, table, y);
    return launch_failed(err, "normalise (%zu pixels of %d channels)", pixels, c);
}

/* Whole rows moved in words of W bytes (W divides row_bytes and both pointers' alignment). */
template <typename W>
__global__ void copy_rows_kernel(const void *src_, const int64_t *index, size_t row_words, size_t count, void *dst_,
                                 int scatter)
{
    const W *src = (const W *)src_;
    W *dst = (W *)dst_;
    GRID_STRIDE(i, count)
    {
        size_t r = i / row_words, col = i - r * row_words;
        size_t other = (size_t)index[r] * row_words + col;
        if (scatter)
            dst[other] = src[i];
        else
            dst[i] = src[other];
    }
}

static int copy_rows(gpu *g, const void *src, const int64_t *index, int n, size_t row_bytes, void *dst, int scatter,
                     moco_error *err)
{
    const char *what = scatter ? "scatter rows" : "gather rows";
    if (n < 0)
        return moco_fail(err, "%s: %d rows", what, n);
    if (!n || !row_bytes)
        return MOCO_OK;
    /* the widest word that divides the row size and both addresses: 16-byte vectors in practice */
    size_t align = row_bytes | (size_t)(uintptr_t)src | (size_t)(uintptr_t)dst;
    if (align % 16 == 0) {
        size_t words = row_bytes / 16;
        copy_rows_kernel<uint4><<<gpu_blocks(words * n), 256, 0, g->stream>>>(src, index, words, words * n, dst, scatter);
    } else if (align % 4 == 0) {
        size_t words = row_bytes / 4;
        copy_rows_kernel<uint32_t><<<gpu_blocks(words * n), 256, 0, g->stream>>>(src, index, words, words * n, dst,
                                                                              scatter);
    } else if (align % 2 == 0) {
        size_t words = row_bytes / 2;
        copy_rows_kernel<uint16_t><<<gpu_blocks(words * n), 256, 0, g->stream>>>(src, index, words, words * n, dst,
                                                                              scatter);
    } else {
        copy_rows_kernel<uint8_t><<<gpu_blocks(row_bytes * n), 256, 0, g->stream>>>(src, index, row_bytes,
                                                                                 row_bytes * n, dst, scatter);
    }
    return launch_failed(err, "%s (%d rows of %zu bytes)", what, n, row_bytes);
}

extern "C" int gpu_gather_rows(gpu *g, const void *src, const int64_t *index, int n, size_t row_bytes, void *dst,
                               moco_error *err)
{
    return copy_rows(g, src, index, n, row_bytes, dst, 0, err);
}

extern "C" int gpu_scatter_rows(gpu *g, const void *src, const int64_t *index, int n, size_t row_bytes, void *dst,
                                moco_error *err)
{
    return copy_rows(g, src, index, n, row_bytes, dst, 1, err);
}

/* out[i * ld] = q_i . k_i / tau, one warp per row. */
__global__ void positive_logits_kernel(const float *q, const float *k, int n, int d, float tau, float *out, size_t ld)
{
    int row = blockIdx.x * ROWS_PER_BLOCK + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= n)
        return;
    const float *qr = q + (size_t)row * d, *kr = k + (size_t)row * d;
    float dot = 0.0f;
    for (int j = lane; j < d; j += 32)
        dot += qr[j] * kr[j];
    dot = warp_reduce(dot, op_sum());
    if (lane == 0)
        out[row * ld] = dot / tau;
}

extern "C" int gpu_positive_logits(gpu *g, const float *q, const float *k, int n, int d, float tau, float *logits,
                                   int ld, moco_error *err)
{
    if (n < 1 || d < 1 || ld < 1 || !(tau > 0))
        return moco_fail(err, "positive logits: bad shape %dx%d (row stride %d) or temperature %g", n, d, ld, tau);
    positive_logits_kernel<<<(n + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK, 32 * ROWS_PER_BLOCK, 0, g->stream>>>(
        q, k, n, d, tau, logits, ld);
    return launch_failed(err, "positive logits (%dx%d)", n, d);
}

__global__ void positive_backward_kernel(const float *dlogits, int ld, const float *k, int d, float tau, float *d_q,
                                         size_t count)
{
    GRID_STRIDE(i, count)
    {
        size_t row = i / d;
        float dpos = dlogits[row * ld] / tau; /* as moco.c: the scaled logit gradient, then the product */
        d_q[i] = __fadd_rn(d_q[i], __fmul_rn(dpos, k[i]));
    }
}

extern "C" int gpu_positive_backward(gpu *g, const float *dlogits, int ld, const float *k, int n, int d, float tau,
                                     float *d_q, moco_error *err)
{
    if (n < 1 || d < 1 || ld < 1 || !(tau > 0))
        return moco_fail(err, "positive backward: bad shape %dx%d (row stride %d) or temperature %g", n, d, ld, tau);
    size_t count = (size_t)n * d;
    positive_backward_kernel<<<gpu_blocks(count), 256, 0, g->stream>>>(dlogits, ld, k, d, tau, d_q, count);
    return launch_failed(err, "positive backward (%dx%d)", n, d);
}

__global__ void momentum_update_kernel(float *k, const float *q, size_t count, float m, float rest)
{
    GRID_STRIDE(i, count)
    {
        k[i] = __fadd_rn(__fmul_rn(k[i], m), __fmul_rn(rest, q[i]));
    }
}

extern "C" int gpu_momentum_update(gpu *g, float *k, const float *q, size_t count, double m, moco_error *err)
{
    if (!count)
        return MOCO_OK;
    /* both factors rounded from the double setting, as moco.c does, so the two agree bit for bit */
    momentum_update_kernel<<<gpu_blocks(count), 256, 0, g->stream>>>(k, q, count, (float)m, (float)(1.0 - m));
    return launch_failed(err, "momentum update (%zu parameters, m %g)", count, m);
}

__global__ void sgd_kernel(float *param, const float *grad, float *buf, size_t count, const float *lr, float momentum,
                           float weight_decay)
{
    float step = -*lr;
    GRID_STRIDE(i, count)
    {
        float d = __fadd_rn(grad[i], __fmul_rn(weight_decay, param[i]));
        float b = __fadd_rn(__fmul_rn(buf[i], momentum), d);
        buf[i] = b;
        param[i] = __fadd_rn(param[i], __fmul_rn(step, b));
    }
}

extern "C" int gpu_sgd_step(gpu *g, float *param, const float *grad, float *buf, size_t count, const float *lr,
                            float momentum, float weight_decay, moco_error *err)
{
    if (!count)
        return MOCO_OK;
    sgd_kernel<<<gpu_blocks(count), 256, 0, g->stream>>>(param, grad, buf, count, lr, momentum, weight_decay);
    return launch_failed(err, "sgd step (%zu parameters)", count);
}

/* Copy keys [skip, n) to rows (*ptr + r) mod K: with more keys than rows only the last K survive, as
 * they do in moco.c's loop, and no two threads write one row. Every thread reads *ptr; it changes
 * only in enqueue_advance_kernel, queued after. */
__global__ void enqueue_kernel(float *queue, int k_rows, int d, const float *keys, int skip, size_t count,
                               const int64_t *ptr)
{
    int64_t start = *ptr % k_rows;
    if (start < 0)
        start += k_rows;
    GRID_STRIDE(i, count)
    {
        size_t r = skip + i / d, col = i % d;
        size_t row = (size_t)((start + (int64_t)r) % k_rows);
        queue[row * d + col] = keys[r * d + col];
    }
}

__global__ void enqueue_advance_kernel(int64_t *ptr, int n, int k_rows)
{
    int64_t p = *ptr % k_rows;
    if (p < 0)
        p += k_rows;
    *ptr = (p + n) % k_rows;
}

extern "C" int gpu_enqueue(gpu *g, float *queue, int k_rows, int d, const float *keys, int n, int64_t *ptr,
                           moco_error *err)
{
    if (k_rows < 1 || d < 1 || n < 0)
        return moco_fail(err, "enqueue: %d keys of %d into a queue of %d", n, d, k_rows);
    if (!n)
        return MOCO_OK;
    int skip = n > k_rows ? n - k_rows : 0;
    size_t count = (size_t)(n - skip) * d;
    enqueue_kernel<<<gpu_blocks(count), 256, 0, g->stream>>>(queue, k_rows, d, keys, skip, count, ptr);
    if (launch_failed(err, "enqueue (%d keys of %d into a queue of %d)", n, d, k_rows))
        return MOCO_ERR;
    enqueue_advance_kernel<<<1, 1, 0, g->stream>>>(ptr, n, k_rows);
    return launch_failed(err, "enqueue: advancing the queue pointer (%d keys, queue of %d)", n, k_rows);
}
