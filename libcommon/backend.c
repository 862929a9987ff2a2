/* backend.c — the CPU backend: oneDNN primitives, OpenBLAS products, OpenMP loops (see backend.h).
 *
 * oneDNN pattern used throughout: memory descriptors give logical NCHW dims with an NHWC layout tag;
 * weights are described as `any` so the convolution picks its blocked layout, and a reorder
 * primitive converts from (or back to) torchvision's OIHW. Memory objects are created without data
 * and bound to the caller's pointers just before each execute. */
#include "backend.h"

#include <cblas.h>
#include <math.h>
#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl_debug.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

struct backend {
    dnnl_engine_t engine;
    dnnl_stream_t stream;
    int threads;
    int winograd; /* 3x3 stride-1 convolutions by Winograd where oneDNN has it (backend_set_winograd) */
    /* Two buffers the Winograd convolutions share for their blocked copies of an input and an
     * output (conv_side IN and OUT): the ops run one at a time, so one pair serves every layer. */
    void *blocked[2];
    size_t blocked_bytes[2];
};

backend *backend_create(int threads, moco_error *err)
{
    backend *b = calloc(1, sizeof *b);
    if (!b) {
        moco_fail(err, "out of memory");
        return NULL;
    }
#ifdef _OPENMP
    if (threads <= 0)
        threads = omp_get_num_procs();
    omp_set_num_threads(threads);
#else
    if (threads <= 0)
        threads = 1;
#endif
    openblas_set_num_threads(1); /* see matmul */
    b->threads = threads;
    b->winograd = 1;
    dnnl_status_t st = dnnl_engine_create(&b->engine, dnnl_cpu, 0);
    if (st == dnnl_success)
        st = dnnl_stream_create(&b->stream, b->engine, dnnl_stream_default_flags);
    if (st != dnnl_success) {
        moco_fail(err, "oneDNN: cannot create the CPU engine (%s)", dnnl_status2str(st));
        backend_destroy(b);
        return NULL;
    }
    return b;
}

void backend_destroy(backend *b)
{
    if (!b)
        return;
    if (b->stream)
        dnnl_stream_destroy(b->stream);
    if (b->engine)
        dnnl_engine_destroy(b->engine);
    free(b->blocked[0]);
    free(b->blocked[1]);
    free(b);
}

int backend_threads(const backend *b) { return b->threads; }

void backend_set_winograd(backend *b, int on) { b->winograd = on; }

/* Shared buffer i of at least `bytes`, grown when a layer needs more. */
static void *blocked_buffer(backend *b, int i, size_t bytes, moco_error *err)
{
    if (b->blocked_bytes[i] >= bytes)
        return b->blocked[i];
    free(b->blocked[i]);
    b->blocked_bytes[i] = 0;
    if (!(b->blocked[i] = aligned_alloc(64, (bytes + 63) / 64 * 64))) {
        moco_fail(err, "out of memory for a convolution's blocked buffer (%zu bytes)", bytes);
        return NULL;
    }
    b->blocked_bytes[i] = bytes;
    return b->blocked[i];
}

/* ---- small oneDNN helpers ---- */

static void md_nhwc(dnnl_memory_desc_t *md, int n, int c, int h, int w)
{
    dnnl_dims_t dims = {n, c, h, w};
    dnnl_memory_desc_init_by_tag(md, 4, dims, dnnl_f32, dnnl_nhwc);
}

static void md_vector(dnnl_memory_desc_t *md, int c)
{
    dnnl_dims_t dims = {c};
    dnnl_memory_desc_init_by_tag(md, 1, dims, dnnl_f32, dnnl_a);
}

/* The OpenMP thread count is the process's, and oneDNN cuts each primitive's work (and sizes its
 * barriers) by the count when the primitive is made: under a second backend's count (the tests make
 * several) a primitive would run with more or fewer threads than it was built for, which can hang.
 * So whatever makes or runs primitives sets its backend's count first (a no-op when it is set). */
static void use_threads(const backend *b)
{
#ifdef _OPENMP
    if (omp_get_max_threads() != b->threads)
        omp_set_num_threads(b->threads);
#else
    (void)b;
#endif
}

static int execute(backend *b, dnnl_primitive_t p, int nargs, const dnnl_exec_arg_t *args,
                   moco_error *err, const char *what)
{
    use_threads(b);
    dnnl_status_t st = dnnl_primitive_execute(p, b->stream, nargs, args);
    if (st == dnnl_success)
        st = dnnl_stream_wait(b->stream);
    if (st != dnnl_success)
        return moco_fail(err, "oneDNN: %s failed (%s)", what, dnnl_status2str(st));
    return MOCO_OK;
}

/* A memory object with no data of its own; bind() points it at a buffer before each execute. */
static dnnl_memory_t unbound(backend *b, const dnnl_memory_desc_t *md)
{
    dnnl_memory_t m = NULL;
    if (dnnl_memory_create(&m, md, b->engine, DNNL_MEMORY_NONE) != dnnl_success)
        return NULL;
    return m;
}

static dnnl_memory_t bind(dnnl_memory_t m, const void *data)
{
    dnnl_memory_set_data_handle(m, (void *)data);
    return m;
}

static void free_memory(dnnl_memory_t *m)
{
    if (*m)
        dnnl_memory_destroy(*m);
    *m = NULL;
}

static void free_primitive(dnnl_primitive_t *p)
{
    if (*p)
        dnnl_primitive_destroy(*p);
    *p = NULL;
}

static int make_primitive(dnnl_primitive_desc_t pd, dnnl_primitive_t *p, moco_error *err, const char *what)
{
    dnnl_status_t st = dnnl_primitive_create(p, pd);
    if (st != dnnl_success)
        return moco_fail(err, "oneDNN: cannot create the %s primitive (%s)", what, dnnl_status2str(st));
    return MOCO_OK;
}

/* A reorder between two layouts of the same tensor, or NULL when they are the same layout. */
static int make_reorder(backend *b, const dnnl_memory_desc_t *from, const dnnl_memory_desc_t *to,
                        dnnl_primitive_t *p, moco_error *err)
{
    *p = NULL;
    if (dnnl_memory_desc_equal(from, to))
        return MOCO_OK;
    dnnl_primitive_desc_t pd;
    dnnl_status_t st = dnnl_reorder_primitive_desc_create(&pd, from, b->engine, to, b->engine, NULL);
    if (st != dnnl_success)
        return moco_fail(err, "oneDNN: cannot create a reorder (%s)", dnnl_status2str(st));
    int rc = make_primitive(pd, p, err, "reorder");
    dnnl_primitive_desc_destroy(pd);
    return rc;
}

/* Run a reorder from -> to (both described by the memories' descriptors). */
static int reorder(backend *b, dnnl_primitive_t p, dnnl_memory_t from, const void *src, dnnl_memory_t to,
                   void *dst, moco_error *err)
{
    dnnl_exec_arg_t args[] = {{DNNL_ARG_FROM, bind(from, src)}, {DNNL_ARG_TO, bind(to, dst)}};
    return execute(b, p, 2, args, err, "reorder");
}

/* ---- convolution ---- */

/* The two activations a convolution touches: IN (x and dx) and OUT (y and dy). */
enum { IN = 0, OUT = 1 };

typedef struct {
    dnnl_memory_t user; /* the NHWC tensor */
    /* Winograd: the primitives' blocked (nChw16c) layout, copied in and out through the backend's
     * shared buffer blocked[side]; with NULL reorders (16 channels) it is NHWC's bytes, used in place */
    dnnl_memory_t blocked;
    dnnl_primitive_t to_blocked, from_blocked;
    size_t blocked_bytes;
} conv_side;

struct conv2d {
    backend *b;
    int in_c, out_c, kernel, stride, pad;
    int n, h, w, oh, ow; /* the shape the primitives below are built for; n = 0: none yet */
    dnnl_primitive_t fwd, bwd_data, bwd_weights;
    dnnl_primitive_t to_fwd_weights, to_bwd_weights, from_diff_weights; /* reorders, NULL = same layout */
    dnnl_memory_t user_weights, fwd_weights, bwd_weights_mem, diff_weights, user_diff_weights;
    float *fwd_weights_buf, *bwd_weights_buf, *diff_weights_buf; /* NULL when the user layout is used */
    int winograd; /* 0: direct convolution, on the NHWC tensors themselves */
    conv_side side[2];
};

conv2d *conv2d_create(backend *b, int in_channels, int out_channels, int kernel, int stride, int pad,
                      moco_error *err)
{
    conv2d *c = calloc(1, sizeof *c);
    if (!c) {
        moco_fail(err, "out of memory");
        return NULL;
    }
    *c = (conv2d){.b = b, .in_c = in_channels, .out_c = out_channels, .kernel = kernel, .stride = stride, .pad = pad};
    return c;
}

static void conv2d_release(conv2d *c)
{
    free_primitive(&c->fwd);
    free_primitive(&c->bwd_data);
    free_primitive(&c->bwd_weights);
    free_primitive(&c->to_fwd_weights);
    free_primitive(&c->to_bwd_weights);
    free_primitive(&c->from_diff_weights);
    dnnl_memory_t *mems[] = {&c->user_weights, &c->fwd_weights, &c->bwd_weights_mem, &c->diff_weights,
                             &c->user_diff_weights};
    for (size_t i = 0; i < sizeof mems / sizeof *mems; i++)
        free_memory(mems[i]);
    for (int i = IN; i <= OUT; i++) {
        free_primitive(&c->side[i].to_blocked);
        free_primitive(&c->side[i].from_blocked);
        free_memory(&c->side[i].user);
        free_memory(&c->side[i].blocked);
    }
    free(c->fwd_weights_buf);
    free(c->bwd_weights_buf);
    free(c->diff_weights_buf);
    c->fwd_weights_buf = c->bwd_weights_buf = c->diff_weights_buf = NULL;
    c->n = 0;
    c->winograd = 0;
}

void conv2d_destroy(conv2d *c)
{
    if (!c)
        return;
    conv2d_release(c);
    free(c);
}

int conv2d_out_size(int in, int kernel, int stride, int pad) { return (in + 2 * pad - kernel) / stride + 1; }

/* A weight buffer in the primitive's layout, or NULL when that layout is the user's OIHW. */
static int weights_buffer(const dnnl_memory_desc_t *md, const dnnl_memory_desc_t *user, float **buf,
                          moco_error *err)
{
    *buf = NULL;
    if (dnnl_memory_desc_equal(md, user))
        return MOCO_OK;
    size_t bytes = dnnl_memory_desc_get_size(md);
    if (!(*buf = aligned_alloc(64, (bytes + 63) / 64 * 64)))
        return moco_fail(err, "out of memory for convolution weights");
    return MOCO_OK;
}

/* oneDNN's first implementation for a convolution descriptor, passing over those `avoid` turns down
 * (its implementation name): the next one it offers instead, or the first when none is left. */
static dnnl_status_t conv_pd_avoiding(backend *b, const void *desc, const_dnnl_primitive_desc_t hint,
                                      int (*avoid)(const conv2d *, const char *), const conv2d *c,
                                      dnnl_primitive_desc_t *pd)
{
    dnnl_primitive_desc_iterator_t it;
    dnnl_status_t st = dnnl_primitive_desc_iterator_create(&it, desc, NULL, b->engine, hint);
    if (st != dnnl_success)
        return st;
    dnnl_primitive_desc_t first = NULL, chosen = NULL;
    do {
        dnnl_primitive_desc_t p = dnnl_primitive_desc_iterator_fetch(it);
        const char *impl = NULL;
        dnnl_primitive_desc_query(p, dnnl_query_impl_info_str, 0, &impl);
        if (!avoid(c, impl ? impl : "")) {
            chosen = p;
            break;
        }
        if (!first)
            first = p;
        else
            dnnl_primitive_desc_destroy(p);
    } while (dnnl_primitive_desc_iterator_next(it) == dnnl_success);
    dnnl_primitive_desc_iterator_destroy(it);
    if (chosen && first)
        dnnl_primitive_desc_destroy(first);
    *pd = chosen ? chosen : first;
    return *pd ? dnnl_success : dnnl_unimplemented;
}

/* Forward: with few channels (<= 32 in and out) oneDNN's plain JIT kernel beats the brgemm one it
 * prefers (the demo model's forward convolutions: 142 instead of 154 ms a step on 2 cores). */
static int avoid_forward(const conv2d *c, const char *impl)
{
    return c->in_c <= 32 && c->out_c <= 32 && !strncmp(impl, "brgconv", 7);
}

/* Backward-weights: oneDNN 2.7's jit_1x1 kernel for a strided 1x1 convolution with fewer than 16
 * input channels (ResNet's downsample at width 4 or 8) corrupts the heap at some thread counts (3,
 * 5, 12 and 16 of them, with AVX-512); its next implementation is right at all of them. */
static int avoid_backward_weights(const conv2d *c, const char *impl)
{
    return c->kernel == 1 && c->stride > 1 && c->in_c < 16 && !strncmp(impl, "jit_1x1", 7);
}

/* The three primitive descriptors of one algorithm; src_md and dst_md may have format "any"
 * (Winograd picks its blocked layout). Winograd is kept only when all three agree on the
 * layouts of the activations, so one blocked copy of x and one of y (or dy) serve them all. */
static dnnl_status_t conv_pds(conv2d *c, dnnl_alg_kind_t alg, const dnnl_memory_desc_t *src_md,
                              const dnnl_memory_desc_t *dst_md, dnnl_primitive_desc_t pd[3])
{
    backend *b = c->b;
    dnnl_memory_desc_t any_w;
    dnnl_dims_t wdims = {c->out_c, c->in_c, c->kernel, c->kernel};
    dnnl_memory_desc_init_by_tag(&any_w, 4, wdims, dnnl_f32, dnnl_format_tag_any);
    dnnl_dims_t strides = {c->stride, c->stride}, pad = {c->pad, c->pad};
    dnnl_convolution_desc_t fd, bdd, bwd;
    pd[0] = pd[1] = pd[2] = NULL;
    dnnl_status_t st = dnnl_convolution_forward_desc_init(&fd, dnnl_forward_training, alg, src_md, &any_w, NULL,
                                                          dst_md, strides, pad, pad);
    if (st == dnnl_success)
        st = conv_pd_avoiding(b, &fd, NULL, avoid_forward, c, &pd[0]); /* Winograd has no brgconv */
    if (st != dnnl_success)
        return st;
    /* the backward passes on the layouts the forward chose */
    const dnnl_memory_desc_t *src = dnnl_primitive_desc_query_md(pd[0], dnnl_query_src_md, 0);
    const dnnl_memory_desc_t *dst = dnnl_primitive_desc_query_md(pd[0], dnnl_query_dst_md, 0);
    st = dnnl_convolution_backward_data_desc_init(&bdd, alg, src, &any_w, dst, strides, pad, pad);
    if (st == dnnl_success)
        st = dnnl_primitive_desc_create(&pd[1], &bdd, NULL, b->engine, pd[0]);
    if (st == dnnl_success)
        st = dnnl_convolution_backward_weights_desc_init(&bwd, alg, src, &any_w, NULL, dst, strides, pad, pad);
    if (st == dnnl_success)
        st = conv_pd_avoiding(b, &bwd, pd[0], avoid_backward_weights, c, &pd[2]);
    if (st == dnnl_success &&
        (!dnnl_memory_desc_equal(dnnl_primitive_desc_query_md(pd[1], dnnl_query_diff_src_md, 0), src) ||
         !dnnl_memory_desc_equal(dnnl_primitive_desc_query_md(pd[1], dnnl_query_diff_dst_md, 0), dst) ||
         !dnnl_memory_desc_equal(dnnl_primitive_desc_query_md(pd[2], dnnl_query_src_md, 0), src) ||
         !dnnl_memory_desc_equal(dnnl_primitive_desc_query_md(pd[2], dnnl_query_diff_dst_md, 0), dst)))
        st = dnnl_unimplemented;
    if (st != dnnl_success)
        for (int i = 0; i < 3; i++)
            if (pd[i]) {
                dnnl_primitive_desc_destroy(pd[i]);
                pd[i] = NULL;
            }
    return st;
}

/* Whether a blocked activation layout puts every element where NHWC does: one block of all C
 * channels (nChw16c with C = 16), so the tensor serves as it is, without a copy. */
static int nhwc_bytes(const dnnl_memory_desc_t *md)
{
    const dnnl_blocking_desc_t *bk = &md->format_desc.blocking;
    const dnnl_dim_t *d = md->dims;
    return md->format_kind == dnnl_blocked && md->ndims == 4 && md->offset0 == 0 && bk->inner_nblks == 1 &&
           bk->inner_idxs[0] == 1 && bk->inner_blks[0] == d[1] && md->padded_dims[1] == d[1] &&
           bk->strides[0] == d[1] * d[2] * d[3] && bk->strides[2] == d[1] * d[3] && bk->strides[3] == d[1];
}

/* Build forward, backward-data and backward-weights primitives for input (n, h, w): Winograd for
 * 3x3 stride-1 layers where oneDNN offers it (F(4x4, 3x3): about 2.2x fewer seconds than direct
 * for ResNet-18's 64-512 channel layers here, relative error ~1e-6), direct convolution otherwise. */
static int conv2d_prepare(conv2d *c, int n, int h, int w, moco_error *err)
{
    if (c->n == n && c->h == h && c->w == w)
        return MOCO_OK;
    conv2d_release(c);
    backend *b = c->b;
    use_threads(b);
    int oh = conv2d_out_size(h, c->kernel, c->stride, c->pad), ow = conv2d_out_size(w, c->kernel, c->stride, c->pad);
    if (oh < 1 || ow < 1)
        return moco_fail(err, "convolution %dx%d stride %d: input %dx%d is too small", c->kernel, c->kernel,
                         c->stride, h, w);
    dnnl_memory_desc_t src_md, dst_md, user_w;
    md_nhwc(&src_md, n, c->in_c, h, w);
    md_nhwc(&dst_md, n, c->out_c, oh, ow);
    dnnl_dims_t wdims = {c->out_c, c->in_c, c->kernel, c->kernel};
    dnnl_memory_desc_init_by_tag(&user_w, 4, wdims, dnnl_f32, dnnl_oihw);

    dnnl_primitive_desc_t pd[3] = {NULL, NULL, NULL};
    int rc = MOCO_ERR, wino = 0;
    /* Channels in whole blocks of 16: below that the tiles are mostly padding. */
    if (b->winograd && c->kernel == 3 && c->stride == 1 && c->in_c % 16 == 0 && c->out_c % 16 == 0) {
        dnnl_memory_desc_t any_src, any_dst;
        dnnl_dims_t sd = {n, c->in_c, h, w}, dd = {n, c->out_c, oh, ow};
        dnnl_memory_desc_init_by_tag(&any_src, 4, sd, dnnl_f32, dnnl_format_tag_any);
        dnnl_memory_desc_init_by_tag(&any_dst, 4, dd, dnnl_f32, dnnl_format_tag_any);
        wino = conv_pds(c, dnnl_convolution_winograd, &any_src, &any_dst, pd) == dnnl_success;
    }
    if (!wino && conv_pds(c, dnnl_convolution_direct, &src_md, &dst_md, pd) != dnnl_success) {
        moco_fail(err, "oneDNN: no convolution for %dx%d stride %d, %d->%d channels, input %dx%dx%d",
                  c->kernel, c->kernel, c->stride, c->in_c, c->out_c, n, h, w);
        goto done;
    }
    const dnnl_memory_desc_t *fw = dnnl_primitive_desc_query_md(pd[0], dnnl_query_weights_md, 0);
    const dnnl_memory_desc_t *bw = dnnl_primitive_desc_query_md(pd[1], dnnl_query_weights_md, 0);
    const dnnl_memory_desc_t *dw = dnnl_primitive_desc_query_md(pd[2], dnnl_query_diff_weights_md, 0);
    if (make_primitive(pd[0], &c->fwd, err, "convolution") ||
        make_primitive(pd[1], &c->bwd_data, err, "convolution backward-data") ||
        make_primitive(pd[2], &c->bwd_weights, err, "convolution backward-weights") ||
        make_reorder(b, &user_w, fw, &c->to_fwd_weights, err) || make_reorder(b, &user_w, bw, &c->to_bwd_weights, err) ||
        make_reorder(b, dw, &user_w, &c->from_diff_weights, err) ||
        weights_buffer(fw, &user_w, &c->fwd_weights_buf, err) || weights_buffer(bw, &user_w, &c->bwd_weights_buf, err) ||
        weights_buffer(dw, &user_w, &c->diff_weights_buf, err))
        goto done;
    const dnnl_memory_desc_t *user_md[2] = {&src_md, &dst_md};
    c->winograd = wino;
    for (int i = IN; i <= OUT; i++) {
        conv_side *sd = &c->side[i];
        if (!(sd->user = unbound(b, user_md[i]))) {
            moco_fail(err, "oneDNN: cannot create convolution memories");
            goto done;
        }
        if (!wino)
            continue;
        const dnnl_memory_desc_t *md =
            dnnl_primitive_desc_query_md(pd[0], i == IN ? dnnl_query_src_md : dnnl_query_dst_md, 0);
        if (!nhwc_bytes(md) && (make_reorder(b, user_md[i], md, &sd->to_blocked, err) ||
                                make_reorder(b, md, user_md[i], &sd->from_blocked, err)))
            goto done;
        if (!(sd->blocked = unbound(b, md))) {
            moco_fail(err, "oneDNN: cannot create convolution memories");
            goto done;
        }
        sd->blocked_bytes = dnnl_memory_desc_get_size(md);
    }
    c->user_weights = unbound(b, &user_w);
    c->user_diff_weights = unbound(b, &user_w);
    c->fwd_weights = unbound(b, fw);
    c->bwd_weights_mem = unbound(b, bw);
    c->diff_weights = unbound(b, dw);
    if (!c->user_weights || !c->user_diff_weights || !c->fwd_weights ||
        !c->bwd_weights_mem || !c->diff_weights) {
        moco_fail(err, "oneDNN: cannot create convolution memories");
        goto done;
    }
    c->n = n, c->h = h, c->w = w, c->oh = oh, c->ow = ow;
    rc = MOCO_OK;
done:
    for (int i = 0; i < 3; i++)
        if (pd[i])
            dnnl_primitive_desc_destroy(pd[i]);
    if (rc)
        conv2d_release(c);
    return rc;
}

/* The primitives' view of activation t on side i: the NHWC tensor itself, or (Winograd) its blocked
 * layout, in place or as a copy in the backend's shared buffer i, filled from t first when
 * `copy_in`. NULL on failure. */
static dnnl_memory_t activation(conv2d *c, int i, const float *t, int copy_in, moco_error *err)
{
    conv_side *sd = &c->side[i];
    if (!c->winograd)
        return bind(sd->user, t);
    if (!sd->to_blocked)
        return bind(sd->blocked, t); /* 16 channels: the tensor's own bytes */
    void *buf = blocked_buffer(c->b, i, sd->blocked_bytes, err);
    if (!buf || (copy_in && reorder(c->b, sd->to_blocked, sd->user, t, sd->blocked, buf, err)))
        return NULL;
    return bind(sd->blocked, buf);
}

/* After a primitive wrote side i's blocked copy: back into the NHWC tensor t. */
static int activation_out(conv2d *c, int i, float *t, moco_error *err)
{
    conv_side *sd = &c->side[i];
    if (!sd->from_blocked)
        return MOCO_OK;
    return reorder(c->b, sd->from_blocked, sd->blocked, c->b->blocked[i], sd->user, t, err);
}

const char *conv2d_algorithm(const conv2d *c)
{
    return !c->n ? "none" : c->winograd ? "winograd" : "direct";
}

int conv2d_forward(conv2d *c, const float *x, int n, int h, int w, const float *weight, float *y,
                   moco_error *err)
{
    if (conv2d_prepare(c, n, h, w, err))
        return MOCO_ERR;
    const float *wt = weight;
    if (c->to_fwd_weights) {
        if (reorder(c->b, c->to_fwd_weights, c->user_weights, weight, c->fwd_weights, c->fwd_weights_buf, err))
            return MOCO_ERR;
        wt = c->fwd_weights_buf;
    }
    dnnl_memory_t src = activation(c, IN, x, 1, err), dst = src ? activation(c, OUT, y, 0, err) : NULL;
    if (!dst)
        return MOCO_ERR;
    dnnl_exec_arg_t args[] = {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, bind(c->fwd_weights, wt)}, {DNNL_ARG_DST, dst}};
    if (execute(c->b, c->fwd, 3, args, err, "convolution forward"))
        return MOCO_ERR;
    return activation_out(c, OUT, y, err);
}

int conv2d_backward(conv2d *c, const float *x, const float *weight, const float *dy, float *dx,
                    float *dweight, moco_error *err)
{
    if (!c->n)
        return moco_fail(err, "convolution backward called before its forward");
    dnnl_memory_t diff_dst = activation(c, OUT, dy, 1, err);
    if (!diff_dst)
        return MOCO_ERR;
    if (dx) {
        const float *wt = weight;
        if (c->to_bwd_weights) {
            if (reorder(c->b, c->to_bwd_weights, c->user_weights, weight, c->bwd_weights_mem, c->bwd_weights_buf, err))
                return MOCO_ERR;
            wt = c->bwd_weights_buf;
        }
        dnnl_memory_t diff_src = activation(c, IN, dx, 0, err);
        if (!diff_src)
            return MOCO_ERR;
        dnnl_exec_arg_t args[] = {{DNNL_ARG_DIFF_DST, diff_dst},
                                  {DNNL_ARG_WEIGHTS, bind(c->bwd_weights_mem, wt)},
                                  {DNNL_ARG_DIFF_SRC, diff_src}};
        if (execute(c->b, c->bwd_data, 3, args, err, "convolution backward-data") || activation_out(c, IN, dx, err))
            return MOCO_ERR;
    }
    float *dw = c->from_diff_weights ? c->diff_weights_buf : dweight;
    dnnl_memory_t src = activation(c, IN, x, 1, err);
    if (!src)
        return MOCO_ERR;
    dnnl_exec_arg_t args[] = {{DNNL_ARG_SRC, src},
                              {DNNL_ARG_DIFF_DST, diff_dst},
                              {DNNL_ARG_DIFF_WEIGHTS, bind(c->diff_weights, dw)}};
    if (execute(c->b, c->bwd_weights, 3, args, err, "convolution backward-weights"))
        return MOCO_ERR;
    if (c->from_diff_weights)
        return reorder(c->b, c->from_diff_weights, c->diff_weights, dw, c->user_diff_weights, dweight, err);
    return MOCO_OK;
}

/* ---- batch normalisation ---- */

struct batchnorm {
    backend *b;
    int channels, fuse_relu;
    /* training primitives for (n, h, w); eval primitive for (eval_n, h, w) */
    int n, h, w, eval_n, eval_h, eval_w;
    dnnl_primitive_t fwd, bwd, eval;
    /* data: the input x; out: y forward, dx backward; diff_data: dy */
    dnnl_memory_t data, out, diff_data, stat_mean, stat_var, scale, shift, diff_scale, diff_shift, workspace_mem;
    dnnl_memory_t eval_data, eval_out;
    void *workspace;   /* the fused ReLU's mask: ws_bytes per group, room for ws_groups groups */
    size_t ws_bytes;
    int ws_groups;
    float *mean, *var; /* the last training forward's statistics, groups * channels each */
    int groups, stats_capacity;
    float *group_dweight, *group_dbias; /* one group's scale and shift gradients, summed over groups */
};

batchnorm *batchnorm_create(backend *b, int channels, int fuse_relu, moco_error *err)
{
    batchnorm *bn = calloc(1, sizeof *bn);
    if (!bn) {
        moco_fail(err, "out of memory");
        return NULL;
    }
    bn->b = b, bn->channels = channels, bn->fuse_relu = fuse_relu;
    return bn;
}

static void batchnorm_release_train(batchnorm *bn)
{
    free_primitive(&bn->fwd);
    free_primitive(&bn->bwd);
    dnnl_memory_t *mems[] = {&bn->data, &bn->out, &bn->diff_data, &bn->stat_mean, &bn->stat_var, &bn->scale,
                             &bn->shift, &bn->diff_scale, &bn->diff_shift, &bn->workspace_mem};
    for (size_t i = 0; i < sizeof mems / sizeof *mems; i++)
        free_memory(mems[i]);
    free(bn->workspace);
    bn->workspace = NULL;
    bn->ws_groups = 0;
    bn->n = 0;
}

void batchnorm_destroy(batchnorm *bn)
{
    if (!bn)
        return;
    batchnorm_release_train(bn);
    free_primitive(&bn->eval);
    free_memory(&bn->eval_data);
    free_memory(&bn->eval_out);
    free(bn->mean);
    free(bn->var);
    free(bn->group_dweight);
    free(bn->group_dbias);
    free(bn);
}

static unsigned bn_flags(const batchnorm *bn)
{
    return dnnl_use_scale | dnnl_use_shift | (bn->fuse_relu ? dnnl_fuse_norm_relu : 0);
}

static int batchnorm_prepare_train(batchnorm *bn, int n, int h, int w, moco_error *err)
{
    if (bn->n == n && bn->h == h && bn->w == w)
        return MOCO_OK;
    batchnorm_release_train(bn);
    backend *b = bn->b;
    use_threads(b);
    dnnl_memory_desc_t md, vec;
    md_nhwc(&md, n, bn->channels, h, w);
    md_vector(&vec, bn->channels);
    dnnl_batch_normalization_desc_t fd, bd;
    dnnl_primitive_desc_t fpd = NULL, bpd = NULL;
    int rc = MOCO_ERR;
    if (dnnl_batch_normalization_forward_desc_init(&fd, dnnl_forward_training, &md, 1e-5f, bn_flags(bn)) != dnnl_success ||
        dnnl_primitive_desc_create(&fpd, &fd, NULL, b->engine, NULL) != dnnl_success ||
        dnnl_batch_normalization_backward_desc_init(&bd, dnnl_backward, &md, &md, 1e-5f, bn_flags(bn)) != dnnl_success ||
        dnnl_primitive_desc_create(&bpd, &bd, NULL, b->engine, fpd) != dnnl_success) {
        moco_fail(err, "oneDNN: no batch norm for %d channels, input %dx%dx%d", bn->channels, n, h, w);
        goto done;
    }
    if (make_primitive(fpd, &bn->fwd, err, "batch norm") || make_primitive(bpd, &bn->bwd, err, "batch norm backward"))
        goto done;
    if (bn->fuse_relu) {
        const dnnl_memory_desc_t *ws = dnnl_primitive_desc_query_md(fpd, dnnl_query_workspace_md, 0);
        bn->ws_bytes = (dnnl_memory_desc_get_size(ws) + 63) / 64 * 64;
        bn->workspace_mem = unbound(b, ws);
        if (!bn->workspace_mem) {
            moco_fail(err, "out of memory for the batch norm workspace");
            goto done;
        }
    }
    bn->data = unbound(b, &md);
    bn->out = unbound(b, &md);
    bn->diff_data = unbound(b, &md);
    if (!bn->data || !bn->out || !bn->diff_data) {
        moco_fail(err, "oneDNN: cannot create batch norm memories");
        goto done;
    }
    dnnl_memory_t *vecs[] = {&bn->stat_mean, &bn->stat_var, &bn->scale, &bn->shift, &bn->diff_scale, &bn->diff_shift};
    for (size_t i = 0; i < sizeof vecs / sizeof *vecs; i++)
        if (!(*vecs[i] = unbound(b, &vec))) {
            moco_fail(err, "oneDNN: cannot create batch norm memories");
            goto done;
        }
    bn->n = n, bn->h = h, bn->w = w;
    rc = MOCO_OK;
done:
    if (fpd)
        dnnl_primitive_desc_destroy(fpd);
    if (bpd)
        dnnl_primitive_desc_destroy(bpd);
    if (rc)
        batchnorm_release_train(bn);
    return rc;
}

int batchnorm_forward_train(batchnorm *bn, const float *x, int n, int h, int w, int groups,
                            const float *weight, const float *bias, float *y, float *running_mean,
                            float *running_var, moco_error *err)
{
    if (groups < 1 || n % groups)
        return moco_fail(err, "batch norm: a batch of %d does not split into %d groups", n, groups);
    int per_group = n / groups, c = bn->channels;
    if (per_group * h * w < 2)
        return moco_fail(err, "batch norm: %d value(s) per channel in a group; training needs more than 1", per_group * h * w);
    if (batchnorm_prepare_train(bn, per_group, h, w, err))
        return MOCO_ERR;
    if (bn->stats_capacity < groups * c) {
        free(bn->mean);
        free(bn->var);
        free(bn->group_dweight);
        free(bn->group_dbias);
        bn->mean = malloc(sizeof(float) * groups * c);
        bn->var = malloc(sizeof(float) * groups * c);
        bn->group_dweight = malloc(sizeof(float) * c);
        bn->group_dbias = malloc(sizeof(float) * c);
        if (!bn->mean || !bn->var || !bn->group_dweight || !bn->group_dbias)
            return moco_fail(err, "out of memory");
        bn->stats_capacity = groups * c;
    }
    if (bn->workspace_mem && bn->ws_groups < groups) {
        free(bn->workspace);
        if (!(bn->workspace = aligned_alloc(64, bn->ws_bytes * groups + 64)))
            return moco_fail(err, "out of memory for the batch norm workspace");
        bn->ws_groups = groups;
    }
    bn->groups = groups;
    size_t group_size = (size_t)per_group * h * w * c;
    for (int g = 0; g < groups; g++) {
        dnnl_exec_arg_t args[] = {{DNNL_ARG_SRC, bind(bn->data, x + g * group_size)},
                                  {DNNL_ARG_DST, bind(bn->out, y + g * group_size)},
                                  {DNNL_ARG_MEAN, bind(bn->stat_mean, bn->mean + g * c)},
                                  {DNNL_ARG_VARIANCE, bind(bn->stat_var, bn->var + g * c)},
                                  {DNNL_ARG_SCALE, bind(bn->scale, weight)},
                                  {DNNL_ARG_SHIFT, bind(bn->shift, bias)},
                                  {DNNL_ARG_WORKSPACE, bn->workspace_mem ? bind(bn->workspace_mem, (char *)bn->workspace + g * bn->ws_bytes) : NULL}};
        if (execute(bn->b, bn->fwd, bn->fuse_relu ? 7 : 6, args, err, "batch norm forward"))
            return MOCO_ERR;
    }
    if (running_mean) {
        /* PyTorch: running = (1 - 0.1) running + 0.1 batch, the variance made unbiased (n / (n - 1)).
         * With groups, the first group's statistics, as rank 0's under DDP's buffer broadcast. */
        double count = (double)per_group * h * w;
        float unbias = (float)(count / (count - 1));
        for (int i = 0; i < c; i++) {
            running_mean[i] = 0.9f * running_mean[i] + 0.1f * bn->mean[i];
            running_var[i] = 0.9f * running_var[i] + 0.1f * (bn->var[i] * unbias);
        }
    }
    return MOCO_OK;
}

int batchnorm_forward_eval(batchnorm *bn, const float *x, int n, int h, int w, const float *weight,
                           const float *bias, const float *running_mean, const float *running_var,
                           float *y, moco_error *err)
{
    backend *b = bn->b;
    if (!(bn->eval && bn->eval_n == n && bn->eval_h == h && bn->eval_w == w)) {
        use_threads(b);
        free_primitive(&bn->eval);
        free_memory(&bn->eval_data);
        free_memory(&bn->eval_out);
        dnnl_memory_desc_t md;
        md_nhwc(&md, n, bn->channels, h, w);
        dnnl_batch_normalization_desc_t d;
        dnnl_primitive_desc_t pd = NULL;
        if (dnnl_batch_normalization_forward_desc_init(&d, dnnl_forward_inference, &md, 1e-5f,
                                                       bn_flags(bn) | dnnl_use_global_stats) != dnnl_success ||
            dnnl_primitive_desc_create(&pd, &d, NULL, b->engine, NULL) != dnnl_success)
            return moco_fail(err, "oneDNN: no inference batch norm for %d channels, input %dx%dx%d", bn->channels, n, h, w);
        int rc = make_primitive(pd, &bn->eval, err, "batch norm inference");
        dnnl_primitive_desc_destroy(pd);
        if (rc)
            return rc;
        bn->eval_data = unbound(b, &md);
        bn->eval_out = unbound(b, &md);
        if (!bn->eval_data || !bn->eval_out)
            return moco_fail(err, "oneDNN: cannot create batch norm memories");
        bn->eval_n = n, bn->eval_h = h, bn->eval_w = w;
        if (!bn->scale) { /* vector memories are shared with the training primitives */
            dnnl_memory_desc_t vec;
            md_vector(&vec, bn->channels);
            bn->scale = unbound(b, &vec), bn->shift = unbound(b, &vec);
            bn->stat_mean = unbound(b, &vec), bn->stat_var = unbound(b, &vec);
        }
    }
    dnnl_exec_arg_t args[] = {{DNNL_ARG_SRC, bind(bn->eval_data, x)},
                              {DNNL_ARG_DST, bind(bn->eval_out, y)},
                              {DNNL_ARG_MEAN, bind(bn->stat_mean, running_mean)},
                              {DNNL_ARG_VARIANCE, bind(bn->stat_var, running_var)},
                              {DNNL_ARG_SCALE, bind(bn->scale, weight)},
                              {DNNL_ARG_SHIFT, bind(bn->shift, bias)}};
    return execute(b, bn->eval, 6, args, err, "batch norm inference");
}

int batchnorm_backward(batchnorm *bn, const float *x, const float *dy, const float *weight, const float *bias,
                       float *dx, float *dweight, float *dbias, moco_error *err)
{
    if (!bn->n)
        return moco_fail(err, "batch norm backward needs a training forward first");
    /* one primitive run per group, each with its own statistics; the parameter gradients add up */
    int c = bn->channels;
    size_t group_size = (size_t)bn->n * bn->h * bn->w * c;
    for (int g = 0; g < bn->groups; g++) {
        float *dw = g ? bn->group_dweight : dweight, *db = g ? bn->group_dbias : dbias;
        dnnl_exec_arg_t args[] = {{DNNL_ARG_SRC, bind(bn->data, x + g * group_size)},
                                  {DNNL_ARG_DIFF_DST, bind(bn->diff_data, dy + g * group_size)},
                                  {DNNL_ARG_DIFF_SRC, bind(bn->out, dx + g * group_size)},
                                  {DNNL_ARG_MEAN, bind(bn->stat_mean, bn->mean + g * c)},
                                  {DNNL_ARG_VARIANCE, bind(bn->stat_var, bn->var + g * c)},
                                  {DNNL_ARG_SCALE, bind(bn->scale, weight)},
                                  {DNNL_ARG_SHIFT, bind(bn->shift, bias)},
                                  {DNNL_ARG_DIFF_SCALE, bind(bn->diff_scale, dw)},
                                  {DNNL_ARG_DIFF_SHIFT, bind(bn->diff_shift, db)},
                                  {DNNL_ARG_WORKSPACE, bn->workspace_mem ? bind(bn->workspace_mem, (char *)bn->workspace + g * bn->ws_bytes) : NULL}};
        if (execute(bn->b, bn->bwd, bn->fuse_relu ? 10 : 9, args, err, "batch norm backward"))
            return MOCO_ERR;
        for (int i = 0; g && i < c; i++)
            dweight[i] += dw[i], dbias[i] += db[i];
    }
    return MOCO_OK;
}

/* ---- max-pooling ---- */

struct maxpool {
    backend *b;
    int channels, kernel, stride, pad;
    int n, h, w, training; /* shape of the built primitives */
    dnnl_primitive_t fwd, bwd;
    dnnl_memory_t src, dst, diff_src, diff_dst, workspace_mem;
    void *workspace;
};

maxpool *maxpool_create(backend *b, int channels, int kernel, int stride, int pad, moco_error *err)
{
    maxpool *p = calloc(1, sizeof *p);
    if (!p) {
        moco_fail(err, "out of memory");
        return NULL;
    }
    *p = (maxpool){.b = b, .channels = channels, .kernel = kernel, .stride = stride, .pad = pad};
    return p;
}

static void maxpool_release(maxpool *p)
{
    free_primitive(&p->fwd);
    free_primitive(&p->bwd);
    dnnl_memory_t *mems[] = {&p->src, &p->dst, &p->diff_src, &p->diff_dst, &p->workspace_mem};
    for (size_t i = 0; i < sizeof mems / sizeof *mems; i++)
        free_memory(mems[i]);
    free(p->workspace);
    p->workspace = NULL;
    p->n = 0;
}

void maxpool_destroy(maxpool *p)
{
    if (!p)
        return;
    maxpool_release(p);
    free(p);
}

static int maxpool_prepare(maxpool *p, int n, int h, int w, int training, moco_error *err)
{
    if (p->n == n && p->h == h && p->w == w && p->training == training)
        return MOCO_OK;
    maxpool_release(p);
    use_threads(p->b);
    int oh = conv2d_out_size(h, p->kernel, p->stride, p->pad), ow = conv2d_out_size(w, p->kernel, p->stride, p->pad);
    if (oh < 1 || ow < 1)
        return moco_fail(err, "max-pool: input %dx%d is too small", h, w);
    dnnl_memory_desc_t src_md, dst_md;
    md_nhwc(&src_md, n, p->channels, h, w);
    md_nhwc(&dst_md, n, p->channels, oh, ow);
    dnnl_dims_t strides = {p->stride, p->stride}, kernel = {p->kernel, p->kernel}, pad = {p->pad, p->pad};
    dnnl_pooling_desc_t fd, bd;
    dnnl_primitive_desc_t fpd = NULL, bpd = NULL;
    int rc = MOCO_ERR;
    if (dnnl_pooling_forward_desc_init(&fd, training ? dnnl_forward_training : dnnl_forward_inference, dnnl_pooling_max,
                                       &src_md, &dst_md, strides, kernel, pad, pad) != dnnl_success ||
        dnnl_primitive_desc_create(&fpd, &fd, NULL, p->b->engine, NULL) != dnnl_success ||
        (training && (dnnl_pooling_backward_desc_init(&bd, dnnl_pooling_max, &src_md, &dst_md, strides, kernel, pad, pad) != dnnl_success ||
                      dnnl_primitive_desc_create(&bpd, &bd, NULL, p->b->engine, fpd) != dnnl_success))) {
        moco_fail(err, "oneDNN: no max-pool for input %dx%dx%dx%d", n, h, w, p->channels);
        goto done;
    }
    if (make_primitive(fpd, &p->fwd, err, "max-pool") || (training && make_primitive(bpd, &p->bwd, err, "max-pool backward")))
        goto done;
    p->src = unbound(p->b, &src_md), p->dst = unbound(p->b, &dst_md);
    p->diff_src = unbound(p->b, &src_md), p->diff_dst = unbound(p->b, &dst_md);
    if (training) {
        const dnnl_memory_desc_t *ws = dnnl_primitive_desc_query_md(fpd, dnnl_query_workspace_md, 0);
        size_t bytes = dnnl_memory_desc_get_size(ws);
        p->workspace = aligned_alloc(64, (bytes + 63) / 64 * 64 + 64);
        p->workspace_mem = unbound(p->b, ws);
        if (!p->workspace || !p->workspace_mem) {
            moco_fail(err, "out of memory for the max-pool workspace");
            goto done;
        }
    }
    p->n = n, p->h = h, p->w = w, p->training = training;
    rc = MOCO_OK;
done:
    if (fpd)
        dnnl_primitive_desc_destroy(fpd);
    if (bpd)
        dnnl_primitive_desc_destroy(bpd);
    if (rc)
        maxpool_release(p);
    return rc;
}

int maxpool_forward(maxpool *p, const float *x, int n, int h, int w, float *y, int training, moco_error *err)
{
    if (maxpool_prepare(p, n, h, w, training != 0, err))
        return MOCO_ERR;
    dnnl_exec_arg_t args[] = {{DNNL_ARG_SRC, bind(p->src, x)},
                              {DNNL_ARG_DST, bind(p->dst, y)},
                              {DNNL_ARG_WORKSPACE, p->workspace_mem ? bind(p->workspace_mem, p->workspace) : NULL}};
    return execute(p->b, p->fwd, training ? 3 : 2, args, err, "max-pool forward");
}

int maxpool_backward(maxpool *p, const float *dy, float *dx, moco_error *err)
{
    if (!p->n || !p->training)
        return moco_fail(err, "max-pool backward needs a training forward first");
    dnnl_exec_arg_t args[] = {{DNNL_ARG_DIFF_DST, bind(p->diff_dst, dy)},
                              {DNNL_ARG_DIFF_SRC, bind(p->diff_src, dx)},
                              {DNNL_ARG_WORKSPACE, bind(p->workspace_mem, p->workspace)}};
    return execute(p->b, p->bwd, 3, args, err, "max-pool backward");
}

/* ---- element-wise and small ops ---- */

void relu_forward(float *x, size_t count)
{
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < count; i++)
        x[i] = x[i] > 0 ? x[i] : 0;
}

void relu_backward(const float *y, float *dy, size_t count)
{
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < count; i++)
        dy[i] = y[i] > 0 ? dy[i] : 0;
}

void add_relu_forward(float *y, const float *shortcut, size_t count)
{
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < count; i++) {
        float v = y[i] + shortcut[i];
        y[i] = v > 0 ? v : 0;
    }
}

void add_inplace(float *y, const float *x, size_t count)
{
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < count; i++)
        y[i] += x[i];
}

void avgpool_forward(const float *x, int n, int hw, int c, float *y)
{
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++) {
        float *out = y + (size_t)i * c;
        const float *in = x + (size_t)i * hw * c;
        for (int k = 0; k < c; k++)
            out[k] = 0;
        for (int p = 0; p < hw; p++)
            for (int k = 0; k < c; k++)
                out[k] += in[(size_t)p * c + k];
        for (int k = 0; k < c; k++)
            out[k] /= (float)hw;
    }
}

void avgpool_backward(const float *dy, int n, int hw, int c, float *dx)
{
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++)
        for (int p = 0; p < hw; p++)
            for (int k = 0; k < c; k++)
                dx[((size_t)i * hw + p) * c + k] = dy[(size_t)i * c + k] / (float)hw;
}

/* OpenBLAS runs single-threaded (backend_create): its own thread pool spins between calls and steals
 * the cores from oneDNN's OpenMP threads. The products are split into row blocks across the OpenMP
 * threads instead; rows are independent, so the result does not depend on the thread count. */
static void row_blocks(int rows, int *nblocks, int *per_block)
{
#ifdef _OPENMP
    int t = omp_get_max_threads();
#else
    int t = 1;
#endif
    *per_block = (rows + t - 1) / t;
    *nblocks = (rows + *per_block - 1) / *per_block;
}

void matmul(const float *a, const float *b, float *y, int m, int n, int k, int b_transposed, float alpha)
{
    int nb, per;
    row_blocks(m, &nb, &per);
#pragma omp parallel for schedule(static) if (nb > 1 && (double)m * n * k > 1e6)
    for (int i = 0; i < nb; i++) {
        int r0 = i * per, rows = r0 + per <= m ? per : m - r0;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, b_transposed ? CblasTrans : CblasNoTrans, rows, n, k, alpha,
                    a + (size_t)r0 * k, k, b, b_transposed ? k : n, 0.0f, y + (size_t)r0 * n, n);
    }
}

void linear_forward(const float *x, int n, int in, int out, const float *weight, const float *bias, float *y)
{
    matmul(x, weight, y, n, out, in, 1, 1.0f);
    if (bias)
        for (int i = 0; i < n; i++)
            for (int j = 0; j < out; j++)
                y[(size_t)i * out + j] += bias[j];
}

void linear_backward(const float *x, const float *dy, int n, int in, int out, const float *weight,
                     float *dx, float *dweight, float *dbias)
{
    /* dW (out,in) = dy^T (out,N) x (N,in), in blocks of dW's rows */
    int nb, per;
    row_blocks(out, &nb, &per);
#pragma omp parallel for schedule(static) if (nb > 1 && (double)out * in * n > 1e6)
    for (int i = 0; i < nb; i++) {
        int r0 = i * per, rows = r0 + per <= out ? per : out - r0;
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, rows, in, n, 1.0f, dy + r0, out, x, in, 0.0f,
                    dweight + (size_t)r0 * in, in);
    }
    if (dbias)
        for (int j = 0; j < out; j++) {
            float s = 0;
            for (int i = 0; i < n; i++)
                s += dy[(size_t)i * out + j];
            dbias[j] = s;
        }
    if (dx) /* dx (N,in) = dy (N,out) W (out,in) */
        matmul(dy, weight, dx, n, in, out, 0, 1.0f);
}

void l2norm_forward(const float *x, int n, int d, float *y, float *norms)
{
    for (int i = 0; i < n; i++) {
        const float *row = x + (size_t)i * d;
        double s = 0;
        for (int j = 0; j < d; j++)
            s += (double)row[j] * row[j];
        float norm = (float)sqrt(s);
        if (norm < 1e-12f)
            norm = 1e-12f;
        norms[i] = norm;
        for (int j = 0; j < d; j++)
            y[(size_t)i * d + j] = row[j] / norm;
    }
}

void l2norm_backward(const float *y, const float *norms, const float *dy, int n, int d, float *dx)
{
    for (int i = 0; i < n; i++) {
        const float *yr = y + (size_t)i * d, *g = dy + (size_t)i * d;
        double dot = 0;
        for (int j = 0; j < d; j++)
            dot += (double)yr[j] * g[j];
        for (int j = 0; j < d; j++)
            dx[(size_t)i * d + j] = (float)((g[j] - yr[j] * dot) / norms[i]);
    }
}

double softmax_cross_entropy_row(const float *row, int c, int64_t label, float scale, float *d_row)
{
    float mx = row[0];
    for (int j = 1; j < c; j++)
        mx = row[j] > mx ? row[j] : mx;
    double sum = 0;
    for (int j = 0; j < c; j++)
        sum += exp((double)row[j] - mx);
    double loss = log(sum) + mx - row[label];
    if (d_row)
        for (int j = 0; j < c; j++)
            d_row[j] = (float)((exp((double)row[j] - mx) / sum - (j == label)) * scale);
    return loss;
}

double softmax_cross_entropy(const float *logits, int n, int c, const int64_t *labels, float *dlogits,
                             int *top1, int *top5)
{
    double total = 0;
    int hits1 = 0, hits5 = 0;
#pragma omp parallel for reduction(+ : total, hits1, hits5) schedule(static)
    for (int i = 0; i < n; i++) {
        const float *row = logits + (size_t)i * c;
        int64_t label = labels[i];
        int above = 0; /* logits at least as large as the label's, other than itself */
        for (int j = 0; j < c; j++)
            above += j != label && row[j] >= row[label];
        hits1 += above < 1;
        hits5 += above < 5;
        total += softmax_cross_entropy_row(row, c, label, (float)(1.0 / n),
                                           dlogits ? dlogits + (size_t)i * c : NULL);
    }
    if (top1)
        *top1 = hits1;
    if (top5)
        *top5 = hits5;
    return total / n;
}
