/* conv.cu — convolution without bias on cuDNN (see gpu.h), the twin of libcommon/backend.c's conv2d.
 *
 * Activations are NHWC in the backend's type; the caller's weight is float32 OIHW (torchvision's
 * layout, what the optimiser and checkpoints see). cuDNN gets its filter as (Cout,K,K,Cin) in the
 * activation type, so a small kernel converts the weight into `filter` on each call, and another
 * converts cuDNN's filter gradient (`filter_grad`, same layout) back into float32 OIHW. Both
 * buffers belong to the gpu_conv and are sized once, at creation.
 *
 * Algorithms are chosen by cudnnFind once per input shape (n, h, w) and kept until the shape
 * changes; in the float32 parity mode only FMA kernels are allowed (no TF32), so results match the
 * CPU to float rounding. Each direction has its own convolution descriptor because cuDNN picks the
 * kernel from the algorithm and the descriptor's math type together. The workspace is the
 * backend's shared one (gpu_workspace), grown to what the chosen algorithms need.
 *
 * In bf16, inputs whose channels are not a multiple of 8 (the stem's 3, or 1 for grey views) go to
 * cuDNN padded with zero channels to the next multiple: its tensor-core kernels want 16-byte channel
 * vectors, and on an H200 the 3-channel stem took about a tenth of the step for 3% of its
 * arithmetic. The padded copy lives in one buffer of the backend's (gpu_pad_buffer), made again for
 * each pass that reads it; the filter carries zero weights for the extra channels. */
#include "gpu_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct gpu_conv {
    gpu *g;
    int in_c, out_c, kernel, stride, pad;
    int cudnn_c;         /* input channels as cuDNN sees them: in_c, or padded (see above) */
    int n, h, w, oh, ow; /* the shape the descriptors and algorithms are for; n = 0: none yet */
    cudnnTensorDescriptor_t x_desc, y_desc;
    cudnnFilterDescriptor_t w_desc;
    cudnnConvolutionDescriptor_t fwd_desc, bwd_data_desc, bwd_filter_desc;
    cudnnConvolutionFwdAlgo_t fwd_algo;
    cudnnConvolutionBwdDataAlgo_t bwd_data_algo;
    cudnnConvolutionBwdFilterAlgo_t bwd_filter_algo;
    void *filter;      /* the weight as cuDNN reads it: (Cout,K,K,cudnn_c), activation type */
    void *filter_grad; /* cuDNN's weight gradient, same layout and type */
    char op[128];      /* "conv 3x3/1 64->64 on 256x56x56", for error messages */
};

static cudnnDataType_t act_type(const gpu *g)
{
    return g->precision == GPU_BF16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_FLOAT;
}

/* FMA only in float32: CUDNN_DEFAULT_MATH would let cuDNN use TF32 on sm_80+, breaking parity.
 * bf16 wants the tensor cores. */
static cudnnMathType_t base_math(const gpu *g)
{
    return g->precision == GPU_BF16 ? CUDNN_TENSOR_OP_MATH : CUDNN_FMA_MATH;
}

/* ---- weight layout conversions (one thread per element, in destination order so writes coalesce) ---- */

/* float32 OIHW -> (Cout,K,K,Cp) activations, zero for the padding channels in_c..Cp-1. kk = K*K.
 * Pointers are void so one argument list serves both instantiations of ACT_DISPATCH. */
template <typename T>
__global__ void oihw_to_filter(const float *weight, void *filter, int in_c, int cp, int kk, size_t count)
{
    T *f = (T *)filter;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count; i += (size_t)gridDim.x * blockDim.x) {
        size_t ci = i % cp, rest = i / cp, s = rest % kk, o = rest / kk;
        act_store(f, i, ci < (size_t)in_c ? weight[(o * in_c + ci) * kk + s] : 0.0f);
    }
}

/* (Cout,K,K,Cp) activations -> float32 OIHW of the in_c real channels, overwriting (the gradient is
 * written, not accumulated). */
template <typename T>
__global__ void filter_to_oihw(const void *filter, float *weight, int in_c, int cp, int kk, size_t count)
{
    const T *f = (const T *)filter;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count; i += (size_t)gridDim.x * blockDim.x) {
        size_t s = i % kk, rest = i / kk, ci = rest % in_c, o = rest / in_c;
        weight[i] = act_load(f, (o * kk + s) * cp + ci);
    }
}

/* Activations (pixels, c) -> (pixels, cp) with zeros after the c real channels, and back. */
template <typename T> __global__ void pad_channels(const void *x, void *padded, int c, int cp, size_t count)
{
    const T *in = (const T *)x;
    T *out = (T *)padded;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count; i += (size_t)gridDim.x * blockDim.x) {
        size_t k = i % cp, p = i / cp;
        act_store(out, i, k < (size_t)c ? act_load(in, p * c + k) : 0.0f);
    }
}

template <typename T> __global__ void unpad_channels(const void *padded, void *x, int c, int cp, size_t count)
{
    const T *in = (const T *)padded;
    T *out = (T *)x;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count; i += (size_t)gridDim.x * blockDim.x)
        act_store(out, i, act_load(in, i / c * cp + i % c));
}

static size_t filter_count(const gpu_conv *c) { return (size_t)c->out_c * c->cudnn_c * c->kernel * c->kernel; }

static int load_filter(gpu_conv *c, const float *weight, moco_error *err)
{
    size_t count = filter_count(c);
    ACT_DISPATCH(c->g, oihw_to_filter, gpu_blocks(count), 256, weight, c->filter, c->in_c, c->cudnn_c,
                 c->kernel * c->kernel, count);
    LAUNCH_CHECK(err, c->op);
    return MOCO_OK;
}

static int store_filter_grad(gpu_conv *c, float *dweight, moco_error *err)
{
    size_t count = (size_t)c->out_c * c->in_c * c->kernel * c->kernel;
    ACT_DISPATCH(c->g, filter_to_oihw, gpu_blocks(count), 256, c->filter_grad, dweight, c->in_c, c->cudnn_c,
                 c->kernel * c->kernel, count);
    LAUNCH_CHECK(err, c->op);
    return MOCO_OK;
}

/* What cuDNN reads as the input: *x itself, or its padded copy in the backend's buffer. */
static int cudnn_input(gpu_conv *c, const void **x, moco_error *err)
{
    if (c->cudnn_c == c->in_c)
        return MOCO_OK;
    size_t count = (size_t)c->n * c->h * c->w * c->cudnn_c;
    ACT_DISPATCH(c->g, pad_channels, gpu_blocks(count), 256, *x, c->g->pad_buffer, c->in_c, c->cudnn_c, count);
    LAUNCH_CHECK(err, c->op);
    *x = c->g->pad_buffer;
    return MOCO_OK;
}

/* ---- creation ---- */

void gpu_conv_destroy(gpu_conv *c)
{
    if (!c)
        return;
    gpu_free(c->g, c->filter);
    gpu_free(c->g, c->filter_grad);
    if (c->x_desc)
        cudnnDestroyTensorDescriptor(c->x_desc);
    if (c->y_desc)
        cudnnDestroyTensorDescriptor(c->y_desc);
    if (c->w_desc)
        cudnnDestroyFilterDescriptor(c->w_desc);
    if (c->fwd_desc)
        cudnnDestroyConvolutionDescriptor(c->fwd_desc);
    if (c->bwd_data_desc)
        cudnnDestroyConvolutionDescriptor(c->bwd_data_desc);
    if (c->bwd_filter_desc)
        cudnnDestroyConvolutionDescriptor(c->bwd_filter_desc);
    free(c);
}

/* The shape-independent half: descriptors, the filter and the two weight buffers. */
static int setup(gpu_conv *c, moco_error *err)
{
    gpu *g = c->g;
    CUDNN_CHECK(cudnnCreateTensorDescriptor(&c->x_desc), err, c->op);
    CUDNN_CHECK(cudnnCreateTensorDescriptor(&c->y_desc), err, c->op);
    CUDNN_CHECK(cudnnCreateFilterDescriptor(&c->w_desc), err, c->op);
    /* dims are always given as (out, in, kh, kw); NHWC format makes the memory (out, kh, kw, in) */
    CUDNN_CHECK(cudnnSetFilter4dDescriptor(c->w_desc, act_type(g), CUDNN_TENSOR_NHWC, c->out_c, c->cudnn_c, c->kernel,
                                           c->kernel),
                err, c->op);
    cudnnConvolutionDescriptor_t *descs[] = {&c->fwd_desc, &c->bwd_data_desc, &c->bwd_filter_desc};
    for (int i = 0; i < 3; i++) {
        CUDNN_CHECK(cudnnCreateConvolutionDescriptor(descs[i]), err, c->op);
        /* cross-correlation is what PyTorch and oneDNN call convolution; float32 accumulation in both modes */
        CUDNN_CHECK(cudnnSetConvolution2dDescriptor(*descs[i], c->pad, c->pad, c->stride, c->stride, 1, 1,
                                                    CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT),
                    err, c->op);
        CUDNN_CHECK(cudnnSetConvolutionMathType(*descs[i], base_math(g)), err, c->op);
    }
    size_t bytes = filter_count(c) * gpu_act_size(g);
    if (!(c->filter = gpu_alloc(g, bytes, err)) || !(c->filter_grad = gpu_alloc(g, bytes, err)))
        return moco_prefix(err, "%s", c->op);
    return MOCO_OK;
}

/* MOCO_CUDA_PAD_CHANNELS=0 turns the channel padding off: for timing both ways in one run. */
static int pad_wanted(void)
{
    const char *v = getenv("MOCO_CUDA_PAD_CHANNELS");
    return !v || strcmp(v, "0") != 0;
}

gpu_conv *gpu_conv_create(gpu *g, int in_channels, int out_channels, int kernel, int stride, int pad,
                          moco_error *err)
{
    if (in_channels < 1 || out_channels < 1 || kernel < 1 || stride < 1 || pad < 0) {
        moco_fail(err, "conv %dx%d/%d %d->%d pad %d: bad shape", kernel, kernel, stride, in_channels, out_channels,
                  pad);
        return NULL;
    }
    gpu_conv *c = (gpu_conv *)calloc(1, sizeof *c);
    if (!c) {
        moco_fail(err, "out of memory");
        return NULL;
    }
    c->g = g;
    c->in_c = in_channels, c->out_c = out_channels, c->kernel = kernel, c->stride = stride, c->pad = pad;
    c->cudnn_c = g->precision == GPU_BF16 && in_channels % 8 && pad_wanted() ? (in_channels + 7) / 8 * 8 : in_channels;
    snprintf(c->op, sizeof c->op, "conv %dx%d/%d %d->%d", kernel, kernel, stride, in_channels, out_channels);
    if (setup(c, err)) {
        gpu_conv_destroy(c);
        return NULL;
    }
    return c;
}

/* ---- algorithm choice, once per input shape ---- */

/* The fastest result that ran, among those the precision allows: in float32 only FMA kernels
 * (DEFAULT is accepted as cuDNN's label for a plain kernel: the descriptor stays FMA, so no TF32
 * kernel can run). -1 when none qualifies. Results are sorted by time, but the minimum is taken
 * rather than trusting the order. */
template <typename Perf> static int fastest(const Perf *perf, int count, gpu_precision precision)
{
    int best = -1;
    for (int i = 0; i < count; i++) {
        if (perf[i].status != CUDNN_STATUS_SUCCESS)
            continue;
        if (precision == GPU_F32 && perf[i].mathType != CUDNN_FMA_MATH && perf[i].mathType != CUDNN_DEFAULT_MATH)
            continue;
        if (best < 0 || perf[i].time < perf[best].time)
            best = i;
    }
    return best;
}

/* In bf16 the chosen result's math type goes on its descriptor (cuDNN picks the kernel from the
 * algorithm and the math type together); in float32 the descriptor stays FMA. */
static int set_math(gpu_conv *c, cudnnConvolutionDescriptor_t desc, cudnnMathType_t chosen, moco_error *err)
{
    if (c->g->precision == GPU_BF16)
        CUDNN_CHECK(cudnnSetConvolutionMathType(desc, chosen), err, c->op);
    return MOCO_OK;
}

enum { MAX_RESULTS = 32 }; /* more than cuDNN's algorithm counts, math-type variants included */

static int choose_forward(gpu_conv *c, size_t *workspace, moco_error *err)
{
    gpu *g = c->g;
    cudnnConvolutionFwdAlgoPerf_t perf[MAX_RESULTS];
    int wanted = 0, got = 0;
    CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithmMaxCount(g->cudnn, &wanted), err, c->op);
    wanted = wanted < 1 ? 1 : wanted > MAX_RESULTS ? MAX_RESULTS : wanted;
    CUDNN_CHECK(cudnnFindConvolutionForwardAlgorithm(g->cudnn, c->x_desc, c->w_desc, c->fwd_desc, c->y_desc, wanted,
                                                     &got, perf),
                err, c->op);
    int i = fastest(perf, got, g->precision);
    if (i < 0)
        return moco_fail(err, "%s: cuDNN has no forward algorithm for it%s", c->op,
                         g->precision == GPU_F32 ? " without TF32" : "");
    c->fwd_algo = perf[i].algo;
    if (set_math(c, c->fwd_desc, perf[i].mathType, err))
        return MOCO_ERR;
    size_t bytes = 0;
    CUDNN_CHECK(cudnnGetConvolutionForwardWorkspaceSize(g->cudnn, c->x_desc, c->w_desc, c->fwd_desc, c->y_desc,
                                                        c->fwd_algo, &bytes),
                err, c->op);
    *workspace = bytes > perf[i].memory ? bytes : perf[i].memory;
    return MOCO_OK;
}

static int choose_backward_data(gpu_conv *c, size_t *workspace, moco_error *err)
{
    gpu *g = c->g;
    cudnnConvolutionBwdDataAlgoPerf_t perf[MAX_RESULTS];
    int wanted = 0, got = 0;
    CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithmMaxCount(g->cudnn, &wanted), err, c->op);
    wanted = wanted < 1 ? 1 : wanted > MAX_RESULTS ? MAX_RESULTS : wanted;
    CUDNN_CHECK(cudnnFindConvolutionBackwardDataAlgorithm(g->cudnn, c->w_desc, c->y_desc, c->bwd_data_desc,
                                                          c->x_desc, wanted, &got, perf),
                err, c->op);
    int i = fastest(perf, got, g->precision);
    if (i < 0)
        return moco_fail(err, "%s: cuDNN has no backward-data algorithm for it%s", c->op,
                         g->precision == GPU_F32 ? " without TF32" : "");
    c->bwd_data_algo = perf[i].algo;
    if (set_math(c, c->bwd_data_desc, perf[i].mathType, err))
        return MOCO_ERR;
    size_t bytes = 0;
    CUDNN_CHECK(cudnnGetConvolutionBackwardDataWorkspaceSize(g->cudnn, c->w_desc, c->y_desc, c->bwd_data_desc,
                                                             c->x_desc, c->bwd_data_algo, &bytes),
                err, c->op);
    *workspace = bytes > perf[i].memory ? bytes : perf[i].memory;
    return MOCO_OK;
}

static int choose_backward_filter(gpu_conv *c, size_t *workspace, moco_error *err)
{
    gpu *g = c->g;
    cudnnConvolutionBwdFilterAlgoPerf_t perf[MAX_RESULTS];
    int wanted = 0, got = 0;
    CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithmMaxCount(g->cudnn, &wanted), err, c->op);
    wanted = wanted < 1 ? 1 : wanted > MAX_RESULTS ? MAX_RESULTS : wanted;
    CUDNN_CHECK(cudnnFindConvolutionBackwardFilterAlgorithm(g->cudnn, c->x_desc, c->y_desc, c->bwd_filter_desc,
                                                            c->w_desc, wanted, &got, perf),
                err, c->op);
    int i = fastest(perf, got, g->precision);
    if (i < 0)
        return moco_fail(err, "%s: cuDNN has no backward-filter algorithm for it%s", c->op,
                         g->precision == GPU_F32 ? " without TF32" : "");
    c->bwd_filter_algo = perf[i].algo;
    if (set_math(c, c->bwd_filter_desc, perf[i].mathType, err))
        return MOCO_ERR;
    size_t bytes = 0;
    CUDNN_CHECK(cudnnGetConvolutionBackwardFilterWorkspaceSize(g->cudnn, c->x_desc, c->y_desc, c->bwd_filter_desc,
                                                               c->w_desc, c->bwd_filter_algo, &bytes),
                err, c->op);
    *workspace = bytes > perf[i].memory ? bytes : perf[i].memory;
    return MOCO_OK;
}

/* Descriptors and algorithms for input (n, h, w); nothing to do when the shape is the last one.
 * cudnnFind (the variant that allocates its own buffers, as backward's dy is not known yet) times
 * every algorithm, so this runs once per shape, never per step. */
static int prepare(gpu_conv *c, int n, int h, int w, moco_error *err)
{
    if (c->n && c->n == n && c->h == h && c->w == w)
        return MOCO_OK;
    gpu *g = c->g;
    c->n = 0; /* until every step below has succeeded */
    int oh = (h + 2 * c->pad - c->kernel) / c->stride + 1, ow = (w + 2 * c->pad - c->kernel) / c->stride + 1;
    snprintf(c->op, sizeof c->op, "conv %dx%d/%d %d->%d on %dx%dx%d", c->kernel, c->kernel, c->stride, c->in_c,
             c->out_c, n, h, w);
    if (n < 1 || h < 1 || w < 1 || oh < 1 || ow < 1)
        return moco_fail(err, "%s: input too small (pad %d)", c->op, c->pad);
    CUDNN_CHECK(cudnnSetTensor4dDescriptor(c->x_desc, CUDNN_TENSOR_NHWC, act_type(g), n, c->cudnn_c, h, w), err,
                c->op);
    CUDNN_CHECK(cudnnSetTensor4dDescriptor(c->y_desc, CUDNN_TENSOR_NHWC, act_type(g), n, c->out_c, oh, ow), err,
                c->op);
    /* the last shape's choice may have changed the math types (bf16); Find starts from the precision's */
    cudnnConvolutionDescriptor_t descs[] = {c->fwd_desc, c->bwd_data_desc, c->bwd_filter_desc};
    for (int i = 0; i < 3; i++)
        CUDNN_CHECK(cudnnSetConvolutionMathType(descs[i], base_math(g)), err, c->op);
    size_t fwd = 0, bwd_data = 0, bwd_filter = 0;
    if (choose_forward(c, &fwd, err) || choose_backward_data(c, &bwd_data, err) ||
        choose_backward_filter(c, &bwd_filter, err))
        return MOCO_ERR;
    size_t need = fwd > bwd_data ? fwd : bwd_data;
    need = need > bwd_filter ? need : bwd_filter;
    if (gpu_workspace(g, need, err) ||
        (c->cudnn_c != c->in_c && gpu_pad_buffer(g, (size_t)n * h * w * c->cudnn_c * gpu_act_size(g), err)))
        return moco_prefix(err, "%s", c->op);
    c->n = n, c->h = h, c->w = w, c->oh = oh, c->ow = ow;
    return MOCO_OK;
}

/* ---- the passes ---- */

int gpu_conv_forward(gpu_conv *c, const void *x, int n, int h, int w, const float *weight, void *y,
                     moco_error *err)
{
    gpu *g = c->g;
    if (prepare(c, n, h, w, err) || load_filter(c, weight, err) || cudnn_input(c, &x, err))
        return MOCO_ERR;
    const float one = 1.0f, zero = 0.0f; /* float scaling factors for float and bf16 data alike */
    CUDNN_CHECK(cudnnConvolutionForward(g->cudnn, &one, c->x_desc, x, c->w_desc, c->filter, c->fwd_desc, c->fwd_algo,
                                        g->workspace, g->workspace_bytes, &zero, c->y_desc, y),
                err, c->op);
    return MOCO_OK;
}

int gpu_conv_backward(gpu_conv *c, const void *x, const float *weight, const void *dy, void *dx,
                      float *dweight, moco_error *err)
{
    gpu *g = c->g;
    if (!c->n)
        return moco_fail(err, "%s: backward without a successful forward", c->op);
    const float one = 1.0f, zero = 0.0f; /* beta 0: dx and dweight are overwritten */
    if (dx) {
        /* converted again: the caller may have passed a different weight than to the forward */
        if (load_filter(c, weight, err))
            return MOCO_ERR;
        int padded = c->cudnn_c != c->in_c; /* then dx comes padded, into the backend's buffer */
        CUDNN_CHECK(cudnnConvolutionBackwardData(g->cudnn, &one, c->w_desc, c->filter, c->y_desc, dy,
                                                 c->bwd_data_desc, c->bwd_data_algo, g->workspace,
                                                 g->workspace_bytes, &zero, c->x_desc, padded ? g->pad_buffer : dx),
                    err, c->op);
        if (padded) {
            size_t count = (size_t)c->n * c->h * c->w * c->in_c;
            ACT_DISPATCH(g, unpad_channels, gpu_blocks(count), 256, g->pad_buffer, dx, c->in_c, c->cudnn_c, count);
            LAUNCH_CHECK(err, c->op);
        }
    }
    if (cudnn_input(c, &x, err))
        return MOCO_ERR;
    CUDNN_CHECK(cudnnConvolutionBackwardFilter(g->cudnn, &one, c->x_desc, x, c->y_desc, dy, c->bwd_filter_desc,
                                               c->bwd_filter_algo, g->workspace, g->workspace_bytes, &zero,
                                               c->w_desc, c->filter_grad),
                err, c->op);
    return store_filter_grad(c, dweight, err);
}
