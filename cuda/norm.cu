/* norm.cu — batch normalisation (optionally fused with its ReLU, or ending a residual block) and
 * pooling on the GPU: the CUDA twins of backend.c's batchnorm_*, maxpool_* and avgpool_* (see gpu.h).
 *
 * Activations are NHWC, so a channel's values lie C apart: the threads of a row take neighbouring
 * channels of one pixel, 16 bytes each where the channels allow, and their loads are coalesced.
 * Batch-norm reductions run in two launches, without atomics, so results do not depend on
 * scheduling: a grid of (channel tile, row chunk, group) blocks writes per-chunk partials, then one
 * small kernel combines them per group and channel. Means and variances come from per-thread sums
 * of each value minus the thread's first one, merged with Chan's formula: a channel with a large
 * mean and a small spread keeps its digits (plain sums of squares minus the squared sum would
 * not). A gpu_bn owns its per-group statistics (kept for the backward) and its partials; both are
 * sized by the first forward of a shape and reused. Pooling needs no buffers: the max-pool backward
 * recomputes each window's maximum from x instead of keeping an argmax. */
#include "gpu_internal.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>

/* A block is BN_THREADS threads: rows of up to a warp across the channels (threadIdx.x), as many
 * rows deep as fit (threadIdx.y). Each thread takes V neighbouring channels of a row: one, or a
 * whole 16-byte pack of them (8 bf16, 4 floats) when the channels come in packs, as all of a
 * ResNet's do. The kernels are memory-bound, and a warp moving 16 bytes per thread keeps several
 * times more bytes in flight than one moving 2. */
enum { BN_THREADS = 256, MAX_ROW_THREADS = 32, TILE = 32 };
/* The combining kernels: TILE channels by COMBINE_LANES threads, each merging every
 * COMBINE_LANES-th chunk. Their grid is only channels / TILE blocks, so each block is wide: with
 * 8 lanes, merging a layer's thousand chunks took an H200 0.15 ms per call, a fifth of the step. */
enum { COMBINE_LANES = 32 };
/* Partial-sum launches aim at about this many blocks (an H100's 132 SMs hold 8 of them each: about
 * one wave) without giving a thread fewer than ROWS_PER_THREAD rows of a chunk (loads stay in
 * flight); fewer chunks also leave less to combine. */
enum { TARGET_BLOCKS = 1024, ROWS_PER_THREAD = 8 };
constexpr float BN_EPS = 1e-5f;

struct gpu_bn {
    gpu *g;
    int channels, fuse_relu;
    /* the last training forward: its shape and the cut of each group's rows into chunks */
    int n, h, w, groups, chunks, chunk_rows;
    /* 4 * groups * channels: mean, inverse std (forward), then dbias, dweight per group (backward) */
    float *stats;
    size_t stats_floats;
    /* 3 * groups * chunks * channels: count, mean, M2 per chunk (forward), or two sums (backward) */
    float *partial;
    size_t partial_floats;
};

/* ---- a thread's V channels of one row ---- */

template <typename T, int V> __device__ __forceinline__ void load_row(const T *p, size_t i, float (&v)[V])
{
    if constexpr (V == 1) {
        v[0] = act_load(p, i);
    } else {
        static_assert(V * sizeof(T) == 16, "a thread's channels are one 16-byte pack");
        pack16<T> a = *(const pack16<T> *)(p + i);
#pragma unroll
        for (int k = 0; k < V; k++)
            v[k] = act_load(a.v, k);
    }
}

template <typename T, int V> __device__ __forceinline__ void store_row(T *p, size_t i, const float (&v)[V])
{
    if constexpr (V == 1) {
        act_store(p, i, v[0]);
    } else {
        pack16<T> a;
#pragma unroll
        for (int k = 0; k < V; k++)
            act_store(a.v, k, v[k]);
        *(pack16<T> *)(p + i) = a;
    }
}

/* The first of this thread's V channels in channel tile `tile`, or -1 when the row has none left
 * for it. */
__device__ __forceinline__ int first_channel(unsigned tile, int channels, int V)
{
    int c = (tile * blockDim.x + threadIdx.x) * V;
    return c < channels ? c : -1;
}

/* ---- reductions ---- */

/* Merge moments (nb, mean_b, m2_b) into (n, mean, m2): Chan, Golub and LeVeque's pairwise update.
 * An empty side leaves the other unchanged. */
__device__ __forceinline__ void chan_merge(float &n, float &mean, float &m2, float nb, float mean_b, float m2_b)
{
    if (nb == 0)
        return;
    float total = n + nb, d = mean_b - mean, fb = nb / total;
    mean += d * fb;
    m2 += m2_b + d * d * n * fb;
    n = total;
}

/* A tree over the block's rows of threads: at each level, row y < s takes in row y + s (the rows
 * need not be a power of two), merge(me, other) folding shared slot `other` into this thread's
 * values and writing them to slot `me`. Thread row 0 ends with the whole block's. The caller has
 * written its slot; every thread of the block must call it. */
template <typename Merge> __device__ void block_tree(Merge merge)
{
    int x = threadIdx.x, y = threadIdx.y, width = blockDim.x, rows = blockDim.y;
    __syncthreads();
    int span = 1;
    while (span < rows)
        span <<= 1;
    for (int s = span / 2; s > 0; s >>= 1) {
        if (y < s && y + s < rows)
            merge(y * width + x, (y + s) * width + x);
        __syncthreads();
    }
}

/* Per channel, the moments of all the block's rows (each thread holds a count and V means and M2s)
 * into thread row 0. The shared arrays hold V values per thread. */
template <int V>
__device__ void block_merge(float *sn, float *smean, float *sm2, float &n, float (&mean)[V], float (&m2)[V])
{
    int me = threadIdx.y * blockDim.x + threadIdx.x;
    sn[me] = n;
#pragma unroll
    for (int k = 0; k < V; k++)
        smean[me * V + k] = mean[k], sm2[me * V + k] = m2[k];
    block_tree([&](int slot, int other) {
        float nb = sn[other];
#pragma unroll
        for (int k = 0; k < V; k++) {
            float nk = n;
            chan_merge(nk, mean[k], m2[k], nb, smean[other * V + k], sm2[other * V + k]);
            smean[slot * V + k] = mean[k], sm2[slot * V + k] = m2[k];
        }
        n += nb;
        sn[slot] = n;
    });
}

/* The same for two plain sums per channel. */
template <int V> __device__ void block_sum2(float *sa, float *sb, float (&a)[V], float (&b)[V])
{
    int me = threadIdx.y * blockDim.x + threadIdx.x;
#pragma unroll
    for (int k = 0; k < V; k++)
        sa[me * V + k] = a[k], sb[me * V + k] = b[k];
    block_tree([&](int slot, int other) {
#pragma unroll
        for (int k = 0; k < V; k++) {
            a[k] += sa[other * V + k], b[k] += sb[other * V + k];
            sa[slot * V + k] = a[k], sb[slot * V + k] = b[k];
        }
    });
}

/* ---- batch-norm kernels; grid (channel tiles, chunks, groups), block of BN_THREADS ---- */

/* Moments of each channel over one chunk of one group's rows. */
template <typename T, int V>
__global__ void bn_stats_kernel(const void *xv, int channels, int group_rows, int chunk_rows, float *partial)
{
    __shared__ float sn[BN_THREADS], smean[BN_THREADS * V], sm2[BN_THREADS * V];
    const T *x = (const T *)xv;
    int c = first_channel(blockIdx.x, channels, V), chunk = blockIdx.y, group = blockIdx.z, chunks = gridDim.y;
    int begin = chunk * chunk_rows, end = min(begin + chunk_rows, group_rows), first = begin + threadIdx.y;
    float n = 0, mean[V], m2[V];
#pragma unroll
    for (int k = 0; k < V; k++)
        mean[k] = 0, m2[k] = 0;
    if (c >= 0 && first < end) {
        size_t base = (size_t)group * group_rows * channels + c;
        /* sums of v - s, s the thread's first value: no division per value (a Welford update's
         * dependent divide made this kernel 2.4x slower per value than bn_apply's on an H200),
         * and the shift by a value of the same channel keeps the digits of a small spread */
        float shift[V], sum[V], sum2[V];
        load_row<T, V>(x, base + (size_t)first * channels, shift);
#pragma unroll
        for (int k = 0; k < V; k++)
            sum[k] = 0, sum2[k] = 0;
        int count = 0;
#pragma unroll 4
        for (int r = first; r < end; r += blockDim.y) {
            float v[V];
            load_row<T, V>(x, base + (size_t)r * channels, v);
#pragma unroll
            for (int k = 0; k < V; k++) {
                float d = v[k] - shift[k];
                sum[k] += d;
                sum2[k] += d * d;
            }
            count++;
        }
        n = (float)count;
#pragma unroll
        for (int k = 0; k < V; k++) {
            mean[k] = shift[k] + sum[k] / n;
            m2[k] = fmaxf(sum2[k] - sum[k] * sum[k] / n, 0.0f);
        }
    }
    block_merge<V>(sn, smean, sm2, n, mean, m2);
    if (threadIdx.y == 0 && c >= 0) {
        size_t i = ((size_t)group * chunks + chunk) * channels + c, stride = (size_t)gridDim.z * chunks * channels;
#pragma unroll
        for (int k = 0; k < V; k++)
            partial[i + k] = n, partial[i + k + stride] = mean[k], partial[i + k + 2 * stride] = m2[k];
    }
}

/* Per group and channel: the chunks' moments merged into mean and 1/sqrt(var + eps) (biased
 * variance, as used for normalising), and the running statistics updated from group 0's as
 * backend.c does (PyTorch's momentum 0.1, unbiased variance). Grid: channel tiles; block (TILE,
 * COMBINE_LANES). */
__global__ void bn_combine_stats_kernel(const float *partial, int channels, int groups, int chunks, float unbias,
                                        float *mean_out, float *invstd_out, float *running_mean,
                                        float *running_var)
{
    __shared__ float sn[TILE * COMBINE_LANES], smean[TILE * COMBINE_LANES], sm2[TILE * COMBINE_LANES];
    int c = blockIdx.x * TILE + threadIdx.x;
    size_t stride = (size_t)groups * chunks * channels;
    for (int gi = 0; gi < groups; gi++) {
        float n = 0, mean[1] = {0}, m2[1] = {0};
        if (c < channels)
            for (int k = threadIdx.y; k < chunks; k += COMBINE_LANES) {
                size_t i = ((size_t)gi * chunks + k) * channels + c;
                chan_merge(n, mean[0], m2[0], partial[i], partial[i + stride], partial[i + 2 * stride]);
            }
        block_merge<1>(sn, smean, sm2, n, mean, m2);
        if (threadIdx.y == 0 && c < channels) {
            float var = m2[0] / n;
            mean_out[(size_t)gi * channels + c] = mean[0];
            invstd_out[(size_t)gi * channels + c] = 1.0f / sqrtf(var + BN_EPS);
            if (gi == 0 && running_mean) {
                /* explicit roundings: the CPU's float expression, bit for bit (no FMA contraction) */
                running_mean[c] = __fadd_rn(__fmul_rn(0.9f, running_mean[c]), __fmul_rn(0.1f, mean[0]));
                running_var[c] = __fadd_rn(__fmul_rn(0.9f, running_var[c]), __fmul_rn(0.1f, __fmul_rn(var, unbias)));
            }
        }
        __syncthreads(); /* the shared arrays are reused by the next group */
    }
}

/* y = (x - mean) * invstd * weight + bias with each group's statistics (or, in evaluation, the
 * running mean and variance: `stat_var` then holds variances, not inverse deviations), plus the
 * shortcut when there is one, then the ReLU when fused or after a shortcut. y may equal x or the
 * shortcut: each element is read and written by one thread. */
template <typename T, int V>
__global__ void bn_apply_kernel(const void *xv, int channels, int group_rows, int chunk_rows, const float *stat_mean,
                                const float *stat_var, int eval, const float *weight, const float *bias,
                                const void *shortcutv, int relu, void *yv)
{
    const T *x = (const T *)xv, *shortcut = (const T *)shortcutv;
    T *y = (T *)yv;
    int c = first_channel(blockIdx.x, channels, V), group = blockIdx.z;
    if (c < 0)
        return;
    int begin = blockIdx.y * chunk_rows, end = min(begin + chunk_rows, group_rows);
    float mu[V], scale[V], shift[V];
#pragma unroll
    for (int k = 0; k < V; k++) {
        size_t gc = (size_t)group * channels + c + k;
        float is = eval ? 1.0f / sqrtf(stat_var[gc] + BN_EPS) : stat_var[gc];
        mu[k] = stat_mean[gc], scale[k] = is * weight[c + k], shift[k] = bias[c + k];
    }
    relu = relu || shortcut;
    size_t base = (size_t)group * group_rows * channels + c;
    for (int r = begin + threadIdx.y; r < end; r += blockDim.y) {
        size_t i = base + (size_t)r * channels;
        float v[V], s[V];
        load_row<T, V>(x, i, v);
        if (shortcut)
            load_row<T, V>(shortcut, i, s);
#pragma unroll
        for (int k = 0; k < V; k++) {
            float o = (v[k] - mu[k]) * scale[k] + shift[k];
            if (shortcut)
                o += s[k];
            v[k] = relu && !(o > 0) ? 0.0f : o;
        }
        store_row<T, V>(y, i, v);
    }
}

/* This thread's V gradients of a row: dy, or 0 where the fused ReLU's output y was not positive. */
template <typename T, int V>
__device__ __forceinline__ void bn_grad_row(const T *y, const T *dy, size_t i, int relu, float (&d)[V])
{
    load_row<T, V>(dy, i, d);
    if (relu) {
        float out[V];
        load_row<T, V>(y, i, out);
#pragma unroll
        for (int k = 0; k < V; k++)
            d[k] = out[k] > 0 ? d[k] : 0.0f;
    }
}

/* Per chunk and channel: sum of g and sum of g * (x - mean) (times invstd later, once). */
template <typename T, int V>
__global__ void bn_backward_sums_kernel(const void *xv, const void *yv, const void *dyv, int relu, int channels,
                                        int group_rows, int chunk_rows, const float *mean, float *partial)
{
    __shared__ float sa[BN_THREADS * V], sb[BN_THREADS * V];
    const T *x = (const T *)xv, *y = (const T *)yv, *dy = (const T *)dyv;
    int c = first_channel(blockIdx.x, channels, V), chunk = blockIdx.y, group = blockIdx.z, chunks = gridDim.y;
    int begin = chunk * chunk_rows, end = min(begin + chunk_rows, group_rows);
    float sum_g[V], sum_gx[V];
#pragma unroll
    for (int k = 0; k < V; k++)
        sum_g[k] = 0, sum_gx[k] = 0;
    if (c >= 0) {
        float mu[V];
#pragma unroll
        for (int k = 0; k < V; k++)
            mu[k] = mean[(size_t)group * channels + c + k];
        size_t base = (size_t)group * group_rows * channels + c;
#pragma unroll 4
        for (int r = begin + threadIdx.y; r < end; r += blockDim.y) {
            size_t i = base + (size_t)r * channels;
            float d[V], v[V];
            bn_grad_row<T, V>(y, dy, i, relu, d);
            load_row<T, V>(x, i, v);
#pragma unroll
            for (int k = 0; k < V; k++) {
                sum_g[k] += d[k];
                sum_gx[k] += d[k] * (v[k] - mu[k]);
            }
        }
    }
    block_sum2<V>(sa, sb, sum_g, sum_gx);
    if (threadIdx.y == 0 && c >= 0) {
        size_t i = ((size_t)group * chunks + chunk) * channels + c, stride = (size_t)gridDim.z * chunks * channels;
#pragma unroll
        for (int k = 0; k < V; k++)
            partial[i + k] = sum_g[k], partial[i + k + stride] = sum_gx[k];
    }
}

/* Per group and channel: dbias_g = sum g, dweight_g = invstd * sum g (x - mean), kept for the dx
 * pass; dweight and dbias = their sums over the groups, in group order as backend.c adds them.
 * Grid: channel tiles; block (TILE, COMBINE_LANES). */
__global__ void bn_combine_grads_kernel(const float *partial, int channels, int groups, int chunks,
                                        const float *invstd, float *group_dbias, float *group_dweight,
                                        float *dweight, float *dbias)
{
    __shared__ float sa[TILE * COMBINE_LANES], sb[TILE * COMBINE_LANES];
    int c = blockIdx.x * TILE + threadIdx.x;
    size_t stride = (size_t)groups * chunks * channels;
    float total_db = 0, total_dw = 0;
    for (int gi = 0; gi < groups; gi++) {
        float a[1] = {0}, b[1] = {0};
        if (c < channels)
            for (int k = threadIdx.y; k < chunks; k += COMBINE_LANES) {
                size_t i = ((size_t)gi * chunks + k) * channels + c;
                a[0] += partial[i], b[0] += partial[i + stride];
            }
        block_sum2<1>(sa, sb, a, b);
        if (threadIdx.y == 0 && c < channels) {
            size_t gc = (size_t)gi * channels + c;
            float dw = b[0] * invstd[gc];
            group_dbias[gc] = a[0], group_dweight[gc] = dw;
            total_db += a[0], total_dw += dw;
        }
        __syncthreads(); /* the shared arrays are reused by the next group */
    }
    if (threadIdx.y == 0 && c < channels)
        dweight[c] = total_dw, dbias[c] = total_db;
}

/* dx = weight * invstd * (g - dbias_g / m - xhat * dweight_g / m). Each element is read and written
 * by one thread, so dx may equal dy. */
template <typename T, int V>
__global__ void bn_backward_dx_kernel(const void *xv, const void *yv, const void *dyv, int relu, int channels,
                                      int group_rows, int chunk_rows, const float *mean, const float *invstd,
                                      const float *weight, const float *group_dbias, const float *group_dweight,
                                      void *dxv)
{
    const T *x = (const T *)xv, *y = (const T *)yv, *dy = (const T *)dyv;
    T *dx = (T *)dxv;
    int c = first_channel(blockIdx.x, channels, V), group = blockIdx.z;
    if (c < 0)
        return;
    int begin = blockIdx.y * chunk_rows, end = min(begin + chunk_rows, group_rows);
    float m = (float)group_rows, mu[V], is[V], scale[V], db_mean[V], dw_mean[V];
#pragma unroll
    for (int k = 0; k < V; k++) {
        size_t gc = (size_t)group * channels + c + k;
        mu[k] = mean[gc], is[k] = invstd[gc], scale[k] = weight[c + k] * is[k];
        db_mean[k] = group_dbias[gc] / m, dw_mean[k] = group_dweight[gc] / m;
    }
    size_t base = (size_t)group * group_rows * channels + c;
    for (int r = begin + threadIdx.y; r < end; r += blockDim.y) {
        size_t i = base + (size_t)r * channels;
        float d[V], v[V];
        bn_grad_row<T, V>(y, dy, i, relu, d);
        load_row<T, V>(x, i, v);
#pragma unroll
        for (int k = 0; k < V; k++) {
            float xhat = (v[k] - mu[k]) * is[k];
            v[k] = scale[k] * (d[k] - db_mean[k] - xhat * dw_mean[k]);
        }
        store_row<T, V>(dx, i, v);
    }
}

/* ---- batch norm, host side ---- */

/* The op and shape for error messages; only formatted when a call has failed. */
static const char *bn_op(char *buf, size_t len, const char *what, const gpu_bn *bn, int n, int h, int w, int groups)
{
    snprintf(buf, len, "batch norm %s (%d channels, %dx%dx%d, %d group%s)", what, bn->channels, n, h, w, groups,
             groups == 1 ? "" : "s");
    return buf;
}

/* How a launch lays threads over the channels: V per thread (1, or a 16-byte pack when the channels
 * come in packs and every pointer is 16-byte aligned), rows of `width` threads, `tiles` blocks
 * across. */
typedef struct {
    int packed;
    dim3 block;
    unsigned tiles;
} chan_layout;

static chan_layout chan_layout_for(const gpu *g, int channels, const void *a, const void *b, const void *c, const void *d)
{
    int per_pack = (int)(16 / gpu_act_size(g));
    int packed = channels % per_pack == 0 && ((uintptr_t)a | (uintptr_t)b | (uintptr_t)c | (uintptr_t)d) % 16 == 0;
    int lanes = packed ? channels / per_pack : channels, width = lanes < MAX_ROW_THREADS ? lanes : MAX_ROW_THREADS;
    chan_layout l = {packed, dim3((unsigned)width, (unsigned)(BN_THREADS / width)), (unsigned)((lanes + width - 1) / width)};
    return l;
}

/* Launch a batch-norm kernel with the backend's type and the layout's channels per thread. */
#define CHAN_LAUNCH(g, layout, kernel, grid, ...)                                                    \
    do {                                                                                           \
        if ((g)->precision == GPU_BF16) {                                                          \
            if ((layout).packed)                                                                   \
                kernel<__nv_bfloat16, 16 / sizeof(__nv_bfloat16)><<<(grid), (layout).block, 0, (g)->stream>>>(__VA_ARGS__); \
            else                                                                                   \
                kernel<__nv_bfloat16, 1><<<(grid), (layout).block, 0, (g)->stream>>>(__VA_ARGS__); \
        } else {                                                                                   \
            if ((layout).packed)                                                                   \
                kernel<float, 4><<<(grid), (layout).block, 0, (g)->stream>>>(__VA_ARGS__);        \
            else                                                                                   \
                kernel<float, 1><<<(grid), (layout).block, 0, (g)->stream>>>(__VA_ARGS__);        \
        }                                                                                          \
    } while (0)

/* Cut `rows` rows per group into chunks: enough blocks to fill the GPU, chunks not too thin. */
static void bn_geometry(int rows, const chan_layout *l, int groups, int *chunks, int *chunk_rows)
{
    long long blocks = (long long)l->tiles * groups;
    long long want = (TARGET_BLOCKS + blocks - 1) / blocks;
    long long min_rows = (long long)ROWS_PER_THREAD * l->block.y, most = (rows + min_rows - 1) / min_rows;
    long long k = want < most ? want : most;
    if (k < 1)
        k = 1;
    *chunk_rows = (int)((rows + k - 1) / k);
    *chunks = (rows + *chunk_rows - 1) / *chunk_rows; /* no empty chunk */
}

gpu_bn *gpu_bn_create(gpu *g, int channels, int fuse_relu, moco_error *err)
{
    if (channels < 1) {
        moco_fail(err, "batch norm: %d channels", channels);
        return NULL;
    }
    gpu_bn *bn = (gpu_bn *)calloc(1, sizeof *bn);
    if (!bn) {
        moco_fail(err, "out of memory");
        return NULL;
    }
    bn->g = g, bn->channels = channels, bn->fuse_relu = fuse_relu != 0;
    return bn;
}

void gpu_bn_destroy(gpu_bn *bn)
{
    if (!bn)
        return;
    if (bn->stats || bn->partial)
        cudaStreamSynchronize(bn->g->stream); /* queued kernels may still use the buffers */
    gpu_free(bn->g, bn->stats);
    gpu_free(bn->g, bn->partial);
    free(bn);
}

/* Grow the statistics and partials to at least the given sizes (once per larger shape). */
static int bn_reserve(gpu_bn *bn, size_t stats_floats, size_t partial_floats, const char *op, moco_error *err)
{
    gpu *g = bn->g;
    if (stats_floats <= bn->stats_floats && partial_floats <= bn->partial_floats)
        return MOCO_OK;
    /* work queued on the stream may still read the old buffers */
    CUDA_CHECK(cudaStreamSynchronize(g->stream), err, op);
    bn->n = 0; /* the saved statistics are gone: no backward until the next forward */
    if (stats_floats > bn->stats_floats) {
        gpu_free(g, bn->stats);
        bn->stats = NULL, bn->stats_floats = 0;
        if (!(bn->stats = (float *)gpu_alloc(g, stats_floats * sizeof(float), err)))
            return moco_prefix(err, "%s", op);
        bn->stats_floats = stats_floats;
    }
    if (partial_floats > bn->partial_floats) {
        gpu_free(g, bn->partial);
        bn->partial = NULL, bn->partial_floats = 0;
        if (!(bn->partial = (float *)gpu_alloc(g, partial_floats * sizeof(float), err)))
            return moco_prefix(err, "%s", op);
        bn->partial_floats = partial_floats;
    }
    return MOCO_OK;
}

int gpu_bn_forward_train(gpu_bn *bn, const void *x, int n, int h, int w, int groups, const float *weight,
                         const float *bias, const void *shortcut, void *y, float *running_mean, float *running_var,
                         moco_error *err)
{
    gpu *g = bn->g;
    int c = bn->channels;
    char op[192];
    if (n < 1 || h < 1 || w < 1 || groups < 1 || groups > 65535 || n % groups)
        return moco_fail(err, "%s: a batch of %d does not split into %d groups",
                         bn_op(op, sizeof op, "forward", bn, n, h, w, groups), n, groups);
    long long rows_ll = (long long)(n / groups) * h * w;
    if (rows_ll < 2)
        return moco_fail(err, "%s: %lld value(s) per channel in a group; training needs more than 1",
                         bn_op(op, sizeof op, "forward", bn, n, h, w, groups), rows_ll);
    if ((long long)n * h * w > INT_MAX)
        return moco_fail(err, "%s: too many pixels", bn_op(op, sizeof op, "forward", bn, n, h, w, groups));
    if (!running_mean != !running_var)
        return moco_fail(err, "%s: running mean and variance go together",
                         bn_op(op, sizeof op, "forward", bn, n, h, w, groups));
    int rows = (int)rows_ll, chunks, chunk_rows;
    chan_layout l = chan_layout_for(g, c, x, y, shortcut, NULL);
    bn_geometry(rows, &l, groups, &chunks, &chunk_rows);
    size_t gc = (size_t)groups * c;
    if (bn_reserve(bn, 4 * gc, 3 * gc * chunks, bn_op(op, sizeof op, "forward", bn, n, h, w, groups), err))
        return MOCO_ERR;
    bn->n = 0; /* set again once everything is queued */
    float *mean = bn->stats, *invstd = bn->stats + gc;
    dim3 grid(l.tiles, (unsigned)chunks, (unsigned)groups);
    CHAN_LAUNCH(g, l, bn_stats_kernel, grid, x, c, rows, chunk_rows, bn->partial);
    LAUNCH_CHECK(err, bn_op(op, sizeof op, "forward statistics", bn, n, h, w, groups));
    float unbias = (float)((double)rows / (rows - 1)); /* as backend.c computes it */
    unsigned combine_tiles = (unsigned)((c + TILE - 1) / TILE);
    bn_combine_stats_kernel<<<combine_tiles, dim3(TILE, COMBINE_LANES), 0, g->stream>>>(
        bn->partial, c, groups, chunks, unbias, mean, invstd, running_mean, running_var);
    LAUNCH_CHECK(err, bn_op(op, sizeof op, "forward statistics", bn, n, h, w, groups));
    CHAN_LAUNCH(g, l, bn_apply_kernel, grid, x, c, rows, chunk_rows, mean, invstd, 0, weight, bias, shortcut,
              bn->fuse_relu, y);
    LAUNCH_CHECK(err, bn_op(op, sizeof op, "forward", bn, n, h, w, groups));
    bn->n = n, bn->h = h, bn->w = w, bn->groups = groups, bn->chunks = chunks, bn->chunk_rows = chunk_rows;
    return MOCO_OK;
}

int gpu_bn_forward_eval(gpu_bn *bn, const void *x, int n, int h, int w, const float *weight, const float *bias,
                        const float *running_mean, const float *running_var, const void *shortcut, void *y,
                        moco_error *err)
{
    gpu *g = bn->g;
    int c = bn->channels;
    char op[192];
    if (n < 1 || h < 1 || w < 1 || (long long)n * h * w > INT_MAX)
        return moco_fail(err, "%s: bad shape", bn_op(op, sizeof op, "evaluation", bn, n, h, w, 1));
    int rows = n * h * w, chunks, chunk_rows;
    chan_layout l = chan_layout_for(g, c, x, y, shortcut, NULL);
    bn_geometry(rows, &l, 1, &chunks, &chunk_rows);
    CHAN_LAUNCH(g, l, bn_apply_kernel, dim3(l.tiles, (unsigned)chunks), x, c, rows, chunk_rows, running_mean,
              running_var, 1, weight, bias, shortcut, bn->fuse_relu, y);
    LAUNCH_CHECK(err, bn_op(op, sizeof op, "evaluation", bn, n, h, w, 1));
    return MOCO_OK;
}

int gpu_bn_backward(gpu_bn *bn, const void *x, const void *y, const void *dy, const float *weight, void *dx,
                    float *dweight, float *dbias, moco_error *err)
{
    gpu *g = bn->g;
    int c = bn->channels, n = bn->n, h = bn->h, w = bn->w, groups = bn->groups, chunks = bn->chunks;
    char op[192];
    if (!n)
        return moco_fail(err, "batch norm backward (%d channels) needs a training forward first", c);
    int rows = n / groups * h * w;
    size_t gc = (size_t)groups * c;
    float *mean = bn->stats, *invstd = bn->stats + gc, *group_dbias = bn->stats + 2 * gc,
          *group_dweight = bn->stats + 3 * gc;
    /* the forward's chunks (the partials are sized for them), whatever this launch's layout */
    chan_layout l = chan_layout_for(g, c, x, bn->fuse_relu ? y : NULL, dy, dx);
    dim3 grid(l.tiles, (unsigned)chunks, (unsigned)groups);
    CHAN_LAUNCH(g, l, bn_backward_sums_kernel, grid, x, y, dy, bn->fuse_relu, c, rows, bn->chunk_rows, mean,
              bn->partial);
    LAUNCH_CHECK(err, bn_op(op, sizeof op, "backward sums", bn, n, h, w, groups));
    unsigned combine_tiles = (unsigned)((c + TILE - 1) / TILE);
    bn_combine_grads_kernel<<<combine_tiles, dim3(TILE, COMBINE_LANES), 0, g->stream>>>(
        bn->partial, c, groups, chunks, invstd, group_dbias, group_dweight, dweight, dbias);
    LAUNCH_CHECK(err, bn_op(op, sizeof op, "backward sums", bn, n, h, w, groups));
    CHAN_LAUNCH(g, l, bn_backward_dx_kernel, grid, x, y, dy, bn->fuse_relu, c, rows, bn->chunk_rows, mean, invstd,
              weight, group_dbias, group_dweight, dx);
    LAUNCH_CHECK(err, bn_op(op, sizeof op, "backward", bn, n, h, w, groups));
    return MOCO_OK;
}

/* ---- pooling ---- */

/* Window (wi, wj) of the 3x3 stride-2 pad-1 max-pool over image img: per channel of this thread's
 * V, the first maximum in scan order (padding never wins) and where it is, 3 * row + column within
 * the window. */
template <typename T, int V>
__device__ __forceinline__ void window_max(const T *x, int img, int wi, int wj, int h, int w, int channels, int c,
                                           float (&best)[V], int (&at)[V])
{
    bool found = false;
#pragma unroll
    for (int kh = 0; kh < 3; kh++) {
        int ih = 2 * wi - 1 + kh;
        if (ih < 0 || ih >= h)
            continue;
#pragma unroll
        for (int kw = 0; kw < 3; kw++) {
            int iw = 2 * wj - 1 + kw;
            if (iw < 0 || iw >= w)
                continue;
            float v[V];
            load_row<T, V>(x, (((size_t)img * h + ih) * w + iw) * channels + c, v);
#pragma unroll
            for (int k = 0; k < V; k++)
                if (!found || v[k] > best[k])
                    best[k] = v[k], at[k] = 3 * kh + kw;
            found = true;
        }
    }
}

/* Max-pool 3x3 stride 2 pad 1; grid (pixel blocks, channel tiles), a thread per output pixel and
 * V channels (chan_layout). The first maximum in scan order wins; padding never does. */
template <typename T, int V>
__global__ void maxpool_forward_kernel(const void *xv, int n, int h, int w, int channels, int oh, int ow, void *yv)
{
    const T *x = (const T *)xv;
    T *y = (T *)yv;
    int c = first_channel(blockIdx.y, channels, V);
    if (c < 0)
        return;
    int pixels = n * oh * ow;
    for (int p = blockIdx.x * blockDim.y + threadIdx.y; p < pixels; p += gridDim.x * blockDim.y) {
        int img = p / (oh * ow), rem = p % (oh * ow), i = rem / ow, j = rem % ow;
        float best[V];
        int at[V];
        window_max<T, V>(x, img, i, j, h, w, channels, c, best, at);
        store_row<T, V>(y, (size_t)p * channels + c, best);
    }
}

/* Max-pool backward as a gather. The inputs are cut into 2x2 patches, patch (i, j) holding rows
 * 2i..2i+1 and columns 2j..2j+1; only windows (i..i+1, j..j+1) cover it. A thread finds each of
 * those windows' maxima as the forward does, and adds the window's dy to its patch where the
 * maximum falls there: every dx is written once, by one thread, with no atomics; the windows are
 * added in (row, column) order. Grid and threads as the forward's, a thread per patch. */
template <typename T, int V>
__global__ void maxpool_backward_kernel(const void *xv, const void *dyv, int n, int h, int w, int channels, int oh,
                                        int ow, void *dxv)
{
    const T *x = (const T *)xv, *dy = (const T *)dyv;
    T *dx = (T *)dxv;
    int c = first_channel(blockIdx.y, channels, V);
    if (c < 0)
        return;
    int patches = n * oh * ow;
    for (int p = blockIdx.x * blockDim.y + threadIdx.y; p < patches; p += gridDim.x * blockDim.y) {
        int img = p / (oh * ow), rem = p % (oh * ow), i = rem / ow, j = rem % ow;
        float acc[2][2][V];
#pragma unroll
        for (int k = 0; k < V; k++)
            acc[0][0][k] = acc[0][1][k] = acc[1][0][k] = acc[1][1][k] = 0;
#pragma unroll
        for (int a = 0; a < 2; a++)
#pragma unroll
            for (int b = 0; b < 2; b++) {
                int wi = i + a, wj = j + b; /* the window, over inputs from (2wi - 1, 2wj - 1) */
                if (wi >= oh || wj >= ow)
                    continue;
                float best[V];
                int at[V];
                window_max<T, V>(x, img, wi, wj, h, w, channels, c, best, at);
                float d[V];
                load_row<T, V>(dy, (((size_t)img * oh + wi) * ow + wj) * channels + c, d);
                /* window (wi, wj)'s input (kh, kw) is this patch's (2a + kh - 1, 2b + kw - 1) */
#pragma unroll
                for (int pr = 0; pr < 2; pr++)
#pragma unroll
                    for (int ps = 0; ps < 2; ps++) {
                        int kh = pr + 1 - 2 * a, kw = ps + 1 - 2 * b;
                        if (kh < 0 || kh > 2 || kw < 0 || kw > 2)
                            continue;
#pragma unroll
                        for (int k = 0; k < V; k++)
                            if (at[k] == 3 * kh + kw)
                                acc[pr][ps][k] += d[k];
                    }
            }
#pragma unroll
        for (int pr = 0; pr < 2; pr++)
#pragma unroll
            for (int ps = 0; ps < 2; ps++) {
                int ih = 2 * i + pr, iw = 2 * j + ps;
                if (ih < h && iw < w)
                    store_row<T, V>(dx, (((size_t)img * h + ih) * w + iw) * channels + c, acc[pr][ps]);
            }
    }
}

/* Blocks of the layout's rows of pixels along x, capped: the kernels stride over the rest. */
static dim3 pool_grid(const chan_layout *l, int pixels)
{
    unsigned blocks = (unsigned)((pixels + l->block.y - 1) / l->block.y);
    return dim3(blocks < 65535 ? blocks : 65535, l->tiles);
}

static const char *pool_op(char *buf, size_t len, const char *what, int n, int h, int w, int c)
{
    snprintf(buf, len, "max-pool %s (%dx%dx%dx%d)", what, n, h, w, c);
    return buf;
}

/* Output size of the 3x3 stride-2 pad-1 window (conv2d_out_size(h, 3, 2, 1)). */
static int pool_out(int in) { return (in + 2 - 3) / 2 + 1; }

int gpu_maxpool_forward(gpu *g, const void *x, int n, int h, int w, int c, void *y, moco_error *err)
{
    char op[128];
    if (n < 1 || h < 1 || w < 1 || c < 1 || (long long)n * h * w > INT_MAX || c > 65535 * TILE)
        return moco_fail(err, "%s: bad shape", pool_op(op, sizeof op, "forward", n, h, w, c));
    int oh = pool_out(h), ow = pool_out(w);
    chan_layout l = chan_layout_for(g, c, x, y, NULL, NULL);
    CHAN_LAUNCH(g, l, maxpool_forward_kernel, pool_grid(&l, n * oh * ow), x, n, h, w, c, oh, ow, y);
    LAUNCH_CHECK(err, pool_op(op, sizeof op, "forward", n, h, w, c));
    return MOCO_OK;
}

int gpu_maxpool_backward(gpu *g, const void *x, const void *dy, int n, int h, int w, int c, void *dx,
                         moco_error *err)
{
    char op[128];
    if (n < 1 || h < 1 || w < 1 || c < 1 || (long long)n * h * w > INT_MAX || c > 65535 * TILE)
        return moco_fail(err, "%s: bad shape", pool_op(op, sizeof op, "backward", n, h, w, c));
    int oh = pool_out(h), ow = pool_out(w);
    chan_layout l = chan_layout_for(g, c, x, dy, dx, NULL);
    CHAN_LAUNCH(g, l, maxpool_backward_kernel, pool_grid(&l, n * oh * ow), x, dy, n, h, w, c, oh, ow, dx);
    LAUNCH_CHECK(err, pool_op(op, sizeof op, "backward", n, h, w, c));
    return MOCO_OK;
}

/* Global average pool: a thread per (image, channel) walks the positions in order, as backend.c's
 * loop adds them, so float32 results match it exactly. Neighbouring threads take neighbouring
 * channels: coalesced. */
template <typename T>
__global__ void avgpool_forward_kernel(const void *xv, int n, int hw, int channels, float *y)
{
    const T *x = (const T *)xv;
    size_t total = (size_t)n * channels;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        size_t img = i / channels, k = i % channels, base = img * hw * channels + k;
        float s = 0;
        for (int p = 0; p < hw; p++)
            s += act_load(x, base + (size_t)p * channels);
        y[i] = s / (float)hw;
    }
}

template <typename T>
__global__ void avgpool_backward_kernel(const float *dy, int n, int hw, int channels, void *dxv)
{
    T *dx = (T *)dxv;
    size_t total = (size_t)n * channels;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        size_t img = i / channels, k = i % channels, base = img * hw * channels + k;
        float v = dy[i] / (float)hw;
        for (int p = 0; p < hw; p++)
            act_store(dx, base + (size_t)p * channels, v);
    }
}

static const char *avg_op(char *buf, size_t len, const char *what, int n, int hw, int c)
{
    snprintf(buf, len, "average pool %s (%dx%dx%d)", what, n, hw, c);
    return buf;
}

int gpu_avgpool_forward(gpu *g, const void *x, int n, int hw, int c, float *y, moco_error *err)
{
    char op[128];
    if (n < 1 || hw < 1 || c < 1)
        return moco_fail(err, "%s: bad shape", avg_op(op, sizeof op, "forward", n, hw, c));
    ACT_DISPATCH(g, avgpool_forward_kernel, gpu_blocks((size_t)n * c), 256, x, n, hw, c, y);
    LAUNCH_CHECK(err, avg_op(op, sizeof op, "forward", n, hw, c));
    return MOCO_OK;
}

int gpu_avgpool_backward(gpu *g, const float *dy, int n, int hw, int c, void *dx, moco_error *err)
{
    char op[128];
    if (n < 1 || hw < 1 || c < 1)
        return moco_fail(err, "%s: bad shape", avg_op(op, sizeof op, "backward", n, hw, c));
    ACT_DISPATCH(g, avgpool_backward_kernel, gpu_blocks((size_t)n * c), 256, dy, n, hw, c, dx);
    LAUNCH_CHECK(err, avg_op(op, sizeof op, "backward", n, hw, c));
    return MOCO_OK;
}
