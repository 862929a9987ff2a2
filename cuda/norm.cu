/* norm.cu — batch normalisation (optionally fused with its ReLU) and pooling on the GPU: the CUDA
 * twins of backend.c's batchnorm_*, maxpool_* and avgpool_* (see gpu.h).
 *
 * Activations are NHWC, so a channel's values lie C apart: a warp takes 32 neighbouring channels of
 * one pixel, and its loads are coalesced. Batch-norm reductions run in two launches, without
 * atomics, so results do not depend on scheduling: a grid of (channel tile, row chunk, group)
 * blocks writes per-chunk partials, then one small kernel combines them per group and channel.
 * Means and variances come from per-thread sums of each value minus the thread's first one, merged
 * with Chan's formula: a channel with a large mean and a small spread keeps its digits (plain sums
 * of squares minus the squared sum would not). A gpu_bn owns its per-group statistics (kept for the
 * backward) and its partials; both are sized by the first forward of a shape and reused. Pooling needs no buffers: the max-pool backward
 * recomputes each window's maximum from x instead of keeping an argmax. */
#include "gpu_internal.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>

/* Blocks are TILE channels wide (one warp per row) and LANES rows deep. */
enum { TILE = 32, LANES = 8, COMBINE_LANES = 16 };
/* Partial-sum launches aim at about this many blocks (an H100 has 132 SMs: several waves, a short
 * tail) without cutting a chunk below MIN_CHUNK_ROWS rows (8 per lane, so loads stay in flight). */
enum { TARGET_BLOCKS = 2048, MIN_CHUNK_ROWS = 64 };
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

/* Merge the moments of a block's `lanes` rows of threads (threadIdx.y) per channel (threadIdx.x);
 * thread row 0 ends up with the block's. Every thread of the block must call it. */
template <int lanes>
__device__ void block_merge(float (*sn)[TILE], float (*smean)[TILE], float (*sm2)[TILE], float &n, float &mean,
                            float &m2)
{
    int x = threadIdx.x, y = threadIdx.y;
    sn[y][x] = n, smean[y][x] = mean, sm2[y][x] = m2;
    __syncthreads();
    for (int s = lanes / 2; s > 0; s >>= 1) {
        if (y < s) {
            chan_merge(n, mean, m2, sn[y + s][x], smean[y + s][x], sm2[y + s][x]);
            sn[y][x] = n, smean[y][x] = mean, sm2[y][x] = m2;
        }
        __syncthreads();
    }
}

/* The same for two plain sums. */
template <int lanes>
__device__ void block_sum2(float (*sa)[TILE], float (*sb)[TILE], float &a, float &b)
{
    int x = threadIdx.x, y = threadIdx.y;
    sa[y][x] = a, sb[y][x] = b;
    __syncthreads();
    for (int s = lanes / 2; s > 0; s >>= 1) {
        if (y < s) {
            a += sa[y + s][x], b += sb[y + s][x];
            sa[y][x] = a, sb[y][x] = b;
        }
        __syncthreads();
    }
}

/* ---- batch-norm kernels; grid (channel tiles, chunks, groups), block (TILE, LANES) ---- */

/* Moments of each channel over one chunk of one group's rows. */
template <typename T>
__global__ void bn_stats_kernel(const void *xv, int channels, int group_rows, int chunk_rows, float *partial)
{
    __shared__ float sn[LANES][TILE], smean[LANES][TILE], sm2[LANES][TILE];
    const T *x = (const T *)xv;
    int c = blockIdx.x * TILE + threadIdx.x, chunk = blockIdx.y, group = blockIdx.z, chunks = gridDim.y;
    int begin = chunk * chunk_rows, end = min(begin + chunk_rows, group_rows);
    float n = 0, mean = 0, m2 = 0;
    int first = begin + threadIdx.y;
    if (c < channels && first < end) {
        size_t base = (size_t)group * group_rows * channels + c;
        /* sums of v - k, k the thread's first value: no division per value (a Welford update's
         * dependent divide made this kernel 2.4x slower per value than bn_apply's on an H200),
         * and the shift by a value of the same channel keeps the digits of a small spread */
        float k = act_load(x, base + (size_t)first * channels), sum = 0, sum2 = 0;
        int count = 0;
#pragma unroll 4
        for (int r = first; r < end; r += LANES) {
            float d = act_load(x, base + (size_t)r * channels) - k;
            sum += d;
            sum2 += d * d;
            count++;
        }
        n = (float)count;
        mean = k + sum / n;
        m2 = fmaxf(sum2 - sum * sum / n, 0.0f);
    }
    block_merge<LANES>(sn, smean, sm2, n, mean, m2);
    if (threadIdx.y == 0 && c < channels) {
        size_t i = ((size_t)group * chunks + chunk) * channels + c, stride = (size_t)gridDim.z * chunks * channels;
        partial[i] = n, partial[i + stride] = mean, partial[i + 2 * stride] = m2;
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
    __shared__ float sn[COMBINE_LANES][TILE], smean[COMBINE_LANES][TILE], sm2[COMBINE_LANES][TILE];
    int c = blockIdx.x * TILE + threadIdx.x;
    size_t stride = (size_t)groups * chunks * channels;
    for (int gi = 0; gi < groups; gi++) {
        float n = 0, mean = 0, m2 = 0;
        if (c < channels)
            for (int k = threadIdx.y; k < chunks; k += COMBINE_LANES) {
                size_t i = ((size_t)gi * chunks + k) * channels + c;
                chan_merge(n, mean, m2, partial[i], partial[i + stride], partial[i + 2 * stride]);
            }
        block_merge<COMBINE_LANES>(sn, smean, sm2, n, mean, m2);
        if (threadIdx.y == 0 && c < channels) {
            float var = m2 / n;
            mean_out[(size_t)gi * channels + c] = mean;
            invstd_out[(size_t)gi * channels + c] = 1.0f / sqrtf(var + BN_EPS);
            if (gi == 0 && running_mean) {
                /* explicit roundings: the CPU's float expression, bit for bit (no FMA contraction) */
                running_mean[c] = __fadd_rn(__fmul_rn(0.9f, running_mean[c]), __fmul_rn(0.1f, mean));
                running_var[c] = __fadd_rn(__fmul_rn(0.9f, running_var[c]), __fmul_rn(0.1f, __fmul_rn(var, unbias)));
            }
        }
        __syncthreads(); /* the shared arrays are reused by the next group */
    }
}

/* y = (x - mean) * invstd * weight + bias with each group's statistics, then the ReLU when fused.
 * y may equal x. */
template <typename T>
__global__ void bn_apply_kernel(const void *xv, int channels, int group_rows, int chunk_rows, const float *mean,
                                const float *invstd, const float *weight, const float *bias, int relu, void *yv)
{
    const T *x = (const T *)xv;
    T *y = (T *)yv;
    int c = blockIdx.x * TILE + threadIdx.x, group = blockIdx.z;
    if (c >= channels)
        return;
    int begin = blockIdx.y * chunk_rows, end = min(begin + chunk_rows, group_rows);
    size_t gc = (size_t)group * channels + c;
    float mu = mean[gc], scale = invstd[gc] * weight[c], shift = bias[c];
    size_t base = (size_t)group * group_rows * channels + c;
    for (int r = begin + threadIdx.y; r < end; r += LANES) {
        size_t i = base + (size_t)r * channels;
        float v = (act_load(x, i) - mu) * scale + shift;
        act_store(y, i, relu && !(v > 0) ? 0.0f : v);
    }
}

/* Evaluation: the running statistics, one "group" of all rows. Grid (channel tiles, chunks). */
template <typename T>
__global__ void bn_eval_kernel(const void *xv, int channels, int rows, int chunk_rows, const float *running_mean,
                               const float *running_var, const float *weight, const float *bias, int relu, void *yv)
{
    const T *x = (const T *)xv;
    T *y = (T *)yv;
    int c = blockIdx.x * TILE + threadIdx.x;
    if (c >= channels)
        return;
    int begin = blockIdx.y * chunk_rows, end = min(begin + chunk_rows, rows);
    float mu = running_mean[c], scale = 1.0f / sqrtf(running_var[c] + BN_EPS) * weight[c], shift = bias[c];
    for (int r = begin + threadIdx.y; r < end; r += LANES) {
        size_t i = (size_t)r * channels + c;
        float v = (act_load(x, i) - mu) * scale + shift;
        act_store(y, i, relu && !(v > 0) ? 0.0f : v);
    }
}

/* The gradient through the fused ReLU: dy where the forward's output was positive. */
template <typename T>
__device__ __forceinline__ float bn_grad(const T *y, const T *dy, size_t i, int relu)
{
    float d = act_load(dy, i);
    return relu && !(act_load(y, i) > 0) ? 0.0f : d;
}

/* Per chunk and channel: sum of g and sum of g * (x - mean) (times invstd later, once). */
template <typename T>
__global__ void bn_backward_sums_kernel(const void *xv, const void *yv, const void *dyv, int relu, int channels,
                                        int group_rows, int chunk_rows, const float *mean, float *partial)
{
    __shared__ float sa[LANES][TILE], sb[LANES][TILE];
    const T *x = (const T *)xv, *y = (const T *)yv, *dy = (const T *)dyv;
    int c = blockIdx.x * TILE + threadIdx.x, chunk = blockIdx.y, group = blockIdx.z, chunks = gridDim.y;
    int begin = chunk * chunk_rows, end = min(begin + chunk_rows, group_rows);
    float sum_g = 0, sum_gx = 0;
    if (c < channels) {
        float mu = mean[(size_t)group * channels + c];
        size_t base = (size_t)group * group_rows * channels + c;
#pragma unroll 4
        for (int r = begin + threadIdx.y; r < end; r += LANES) {
            size_t i = base + (size_t)r * channels;
            float d = bn_grad(y, dy, i, relu);
            sum_g += d;
            sum_gx += d * (act_load(x, i) - mu);
        }
    }
    block_sum2<LANES>(sa, sb, sum_g, sum_gx);
    if (threadIdx.y == 0 && c < channels) {
        size_t i = ((size_t)group * chunks + chunk) * channels + c, stride = (size_t)gridDim.z * chunks * channels;
        partial[i] = sum_g, partial[i + stride] = sum_gx;
    }
}

/* Per group and channel: dbias_g = sum g, dweight_g = invstd * sum g (x - mean), kept for the dx
 * pass; dweight and dbias = their sums over the groups, in group order as backend.c adds them.
 * Grid: channel tiles; block (TILE, COMBINE_LANES). */
__global__ void bn_combine_grads_kernel(const float *partial, int channels, int groups, int chunks,
                                        const float *invstd, float *group_dbias, float *group_dweight,
                                        float *dweight, float *dbias)
{
    __shared__ float sa[COMBINE_LANES][TILE], sb[COMBINE_LANES][TILE];
    int c = blockIdx.x * TILE + threadIdx.x;
    size_t stride = (size_t)groups * chunks * channels;
    float total_db = 0, total_dw = 0;
    for (int gi = 0; gi < groups; gi++) {
        float a = 0, b = 0;
        if (c < channels)
            for (int k = threadIdx.y; k < chunks; k += COMBINE_LANES) {
                size_t i = ((size_t)gi * chunks + k) * channels + c;
                a += partial[i], b += partial[i + stride];
            }
        block_sum2<COMBINE_LANES>(sa, sb, a, b);
        if (threadIdx.y == 0 && c < channels) {
            size_t gc = (size_t)gi * channels + c;
            float dw = b * invstd[gc];
            group_dbias[gc] = a, group_dweight[gc] = dw;
            total_db += a, total_dw += dw;
        }
        __syncthreads(); /* the shared arrays are reused by the next group */
    }
    if (threadIdx.y == 0 && c < channels)
        dweight[c] = total_dw, dbias[c] = total_db;
}

/* dx = weight * invstd * (g - dbias_g / m - xhat * dweight_g / m). Each element is read and written
 * by one thread, so dx may equal dy. */
template <typename T>
__global__ void bn_backward_dx_kernel(const void *xv, const void *yv, const void *dyv, int relu, int channels,
                                      int group_rows, int chunk_rows, const float *mean, const float *invstd,
                                      const float *weight, const float *group_dbias, const float *group_dweight,
                                      void *dxv)
{
    const T *x = (const T *)xv, *y = (const T *)yv, *dy = (const T *)dyv;
    T *dx = (T *)dxv;
    int c = blockIdx.x * TILE + threadIdx.x, group = blockIdx.z;
    if (c >= channels)
        return;
    int begin = blockIdx.y * chunk_rows, end = min(begin + chunk_rows, group_rows);
    size_t gc = (size_t)group * channels + c;
    float m = (float)group_rows, mu = mean[gc], is = invstd[gc], scale = weight[c] * is;
    float db_mean = group_dbias[gc] / m, dw_mean = group_dweight[gc] / m;
    size_t base = (size_t)group * group_rows * channels + c;
    for (int r = begin + threadIdx.y; r < end; r += LANES) {
        size_t i = base + (size_t)r * channels;
        float d = bn_grad(y, dy, i, relu);
        float xhat = (act_load(x, i) - mu) * is;
        act_store(dx, i, scale * (d - db_mean - xhat * dw_mean));
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

/* Cut `rows` rows per group into chunks: enough blocks to fill the GPU, chunks not too thin. */
static void bn_geometry(int rows, int channels, int groups, int *chunks, int *chunk_rows)
{
    long long tiles = (channels + TILE - 1) / TILE;
    long long want = (TARGET_BLOCKS + tiles * groups - 1) / (tiles * groups);
    long long most = (rows + MIN_CHUNK_ROWS - 1) / MIN_CHUNK_ROWS;
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
                         const float *bias, void *y, float *running_mean, float *running_var, moco_error *err)
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
    bn_geometry(rows, c, groups, &chunks, &chunk_rows);
    size_t gc = (size_t)groups * c;
    if (bn_reserve(bn, 4 * gc, 3 * gc * chunks, bn_op(op, sizeof op, "forward", bn, n, h, w, groups), err))
        return MOCO_ERR;
    bn->n = 0; /* set again once everything is queued */
    float *mean = bn->stats, *invstd = bn->stats + gc;
    unsigned tiles = (unsigned)((c + TILE - 1) / TILE);
    dim3 grid(tiles, (unsigned)chunks, (unsigned)groups), block(TILE, LANES);
    ACT_DISPATCH(g, bn_stats_kernel, grid, block, x, c, rows, chunk_rows, bn->partial);
    LAUNCH_CHECK(err, bn_op(op, sizeof op, "forward statistics", bn, n, h, w, groups));
    float unbias = (float)((double)rows / (rows - 1)); /* as backend.c computes it */
    bn_combine_stats_kernel<<<tiles, dim3(TILE, COMBINE_LANES), 0, g->stream>>>(
        bn->partial, c, groups, chunks, unbias, mean, invstd, running_mean, running_var);
    LAUNCH_CHECK(err, bn_op(op, sizeof op, "forward statistics", bn, n, h, w, groups));
    ACT_DISPATCH(g, bn_apply_kernel, grid, block, x, c, rows, chunk_rows, mean, invstd, weight, bias, bn->fuse_relu, y);
    LAUNCH_CHECK(err, bn_op(op, sizeof op, "forward", bn, n, h, w, groups));
    bn->n = n, bn->h = h, bn->w = w, bn->groups = groups, bn->chunks = chunks, bn->chunk_rows = chunk_rows;
    return MOCO_OK;
}

int gpu_bn_forward_eval(gpu_bn *bn, const void *x, int n, int h, int w, const float *weight, const float *bias,
                        const float *running_mean, const float *running_var, void *y, moco_error *err)
{
    gpu *g = bn->g;
    int c = bn->channels;
    char op[192];
    if (n < 1 || h < 1 || w < 1 || (long long)n * h * w > INT_MAX)
        return moco_fail(err, "%s: bad shape", bn_op(op, sizeof op, "evaluation", bn, n, h, w, 1));
    int rows = n * h * w, chunks, chunk_rows;
    bn_geometry(rows, c, 1, &chunks, &chunk_rows);
    dim3 grid((unsigned)((c + TILE - 1) / TILE), (unsigned)chunks), block(TILE, LANES);
    ACT_DISPATCH(g, bn_eval_kernel, grid, block, x, c, rows, chunk_rows, running_mean, running_var, weight, bias,
                 bn->fuse_relu, y);
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
    unsigned tiles = (unsigned)((c + TILE - 1) / TILE);
    dim3 grid(tiles, (unsigned)chunks, (unsigned)groups), block(TILE, LANES);
    ACT_DISPATCH(g, bn_backward_sums_kernel, grid, block, x, y, dy, bn->fuse_relu, c, rows, bn->chunk_rows, mean,
                 bn->partial);
    LAUNCH_CHECK(err, bn_op(op, sizeof op, "backward sums", bn, n, h, w, groups));
    bn_combine_grads_kernel<<<tiles, dim3(TILE, COMBINE_LANES), 0, g->stream>>>(
        bn->partial, c, groups, chunks, invstd, group_dbias, group_dweight, dweight, dbias);
    LAUNCH_CHECK(err, bn_op(op, sizeof op, "backward sums", bn, n, h, w, groups));
    ACT_DISPATCH(g, bn_backward_dx_kernel, grid, block, x, y, dy, bn->fuse_relu, c, rows, bn->chunk_rows, mean,
                 invstd, weight, group_dbias, group_dweight, dx);
    LAUNCH_CHECK(err, bn_op(op, sizeof op, "backward", bn, n, h, w, groups));
    return MOCO_OK;
}

/* ---- pooling ---- */

/* Max-pool 3x3 stride 2 pad 1; grid (pixel blocks, channel tiles), block (TILE, LANES), a thread per
 * output pixel and channel. The first maximum in scan order wins; padding never does. */
template <typename T>
__global__ void maxpool_forward_kernel(const void *xv, int n, int h, int w, int channels, int oh, int ow, void *yv)
{
    const T *x = (const T *)xv;
    T *y = (T *)yv;
    int c = blockIdx.y * TILE + threadIdx.x;
    if (c >= channels)
        return;
    int pixels = n * oh * ow;
    for (int p = blockIdx.x * LANES + threadIdx.y; p < pixels; p += gridDim.x * LANES) {
        int img = p / (oh * ow), rem = p % (oh * ow), i = rem / ow, j = rem % ow;
        float best = 0;
        bool found = false;
#pragma unroll
        for (int kh = 0; kh < 3; kh++) {
            int ih = 2 * i - 1 + kh;
            if (ih < 0 || ih >= h)
                continue;
#pragma unroll
            for (int kw = 0; kw < 3; kw++) {
                int iw = 2 * j - 1 + kw;
                if (iw < 0 || iw >= w)
                    continue;
                float v = act_load(x, (((size_t)img * h + ih) * w + iw) * channels + c);
                if (!found || v > best)
                    best = v, found = true;
            }
        }
        act_store(y, (size_t)p * channels + c, best);
    }
}

/* Max-pool backward as a gather. The inputs are cut into 2x2 patches, patch (i, j) holding rows
 * 2i..2i+1 and columns 2j..2j+1; only windows (i..i+1, j..j+1) cover it, and those four windows lie
 * in the 5x5 inputs from (2i-1, 2j-1). A thread loads that 5x5 once, finds each window's maximum as
 * the forward does, and adds the window's dy to its patch when the maximum falls there: every dx
 * is written once, by one thread, with no atomics; the windows are added in (row, column) order. */
template <typename T>
__global__ void maxpool_backward_kernel(const void *xv, const void *dyv, int n, int h, int w, int channels, int oh,
                                        int ow, void *dxv)
{
    const T *x = (const T *)xv, *dy = (const T *)dyv;
    T *dx = (T *)dxv;
    int c = blockIdx.y * TILE + threadIdx.x;
    if (c >= channels)
        return;
    int patches = n * oh * ow;
    for (int p = blockIdx.x * LANES + threadIdx.y; p < patches; p += gridDim.x * LANES) {
        int img = p / (oh * ow), rem = p % (oh * ow), i = rem / ow, j = rem % ow;
        int row0 = 2 * i - 1, col0 = 2 * j - 1;
        float v[5][5];
        bool ok_row[5], ok_col[5];
#pragma unroll
        for (int r = 0; r < 5; r++) {
            ok_row[r] = row0 + r >= 0 && row0 + r < h;
            ok_col[r] = col0 + r >= 0 && col0 + r < w;
        }
#pragma unroll
        for (int r = 0; r < 5; r++)
#pragma unroll
            for (int s = 0; s < 5; s++)
                v[r][s] = ok_row[r] && ok_col[s]
                              ? act_load(x, (((size_t)img * h + row0 + r) * w + col0 + s) * channels + c)
                              : 0.0f;
        float acc[2][2] = {{0, 0}, {0, 0}};
#pragma unroll
        for (int a = 0; a < 2; a++)
#pragma unroll
            for (int b = 0; b < 2; b++) {
                if (i + a >= oh || j + b >= ow)
                    continue;
                int br = -1, bs = -1;
                float best = 0;
#pragma unroll
                for (int kh = 0; kh < 3; kh++)
#pragma unroll
                    for (int kw = 0; kw < 3; kw++) {
                        int r = 2 * a + kh, s = 2 * b + kw;
                        if (ok_row[r] && ok_col[s] && (br < 0 || v[r][s] > best))
                            best = v[r][s], br = r, bs = s;
                    }
                /* local rows and columns 1..2 are this thread's patch */
                if (br >= 1 && br <= 2 && bs >= 1 && bs <= 2) {
                    float d = act_load(dy, (((size_t)img * oh + i + a) * ow + j + b) * channels + c);
#pragma unroll
                    for (int pr = 0; pr < 2; pr++)
#pragma unroll
                        for (int ps = 0; ps < 2; ps++)
                            if (br == pr + 1 && bs == ps + 1)
                                acc[pr][ps] += d;
                }
            }
#pragma unroll
        for (int pr = 0; pr < 2; pr++)
#pragma unroll
            for (int ps = 0; ps < 2; ps++) {
                int ih = 2 * i + pr, iw = 2 * j + ps;
                if (ih < h && iw < w)
                    act_store(dx, (((size_t)img * h + ih) * w + iw) * channels + c, acc[pr][ps]);
            }
    }
}

/* Blocks of LANES pixels along x, capped: the kernels stride over the rest. */
static dim3 pool_grid(int pixels, int channels)
{
    unsigned blocks = (unsigned)((pixels + LANES - 1) / LANES);
    return dim3(blocks < 65535 ? blocks : 65535, (unsigned)((channels + TILE - 1) / TILE));
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
    ACT_DISPATCH(g, maxpool_forward_kernel, pool_grid(n * oh * ow, c), dim3(TILE, LANES), x, n, h, w, c, oh, ow, y);
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
    ACT_DISPATCH(g, maxpool_backward_kernel, pool_grid(n * oh * ow, c), dim3(TILE, LANES), x, dy, n, h, w, c, oh,
                 ow, dx);
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
