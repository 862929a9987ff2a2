/* test_gradcheck.c — every layer's backward, the whole ResNet's and the MoCo step's against central
 * finite differences of their forward.
 *
 * Each case is tiny and random (fixed Philox seeds), with the loss L = sum(output * r) for a fixed
 * random r, summed in double, so the analytic gradient is the op's backward fed dy = r. The finite
 * difference at a coordinate v is (L(v + h) - L(v - h)) / 2h, h the step the float actually took.
 * A coordinate's error is |difference - analytic| divided by the largest |gradient| probed in that
 * tensor: a sign error scores 2, a missing factor 2 scores 0.5, a gradient lost scores 1.
 *
 * Where the loss has kinks (ReLU, max-pool) a step may cross one, and no difference is a derivative
 * there. So every coordinate is differenced at h and at h/2 and keeps the better of the two; a
 * kink-free op must have every coordinate within tolerance, a whole network (thousands of ReLUs,
 * batch norms over a handful of values that make deep activations sensitive) may have one probed
 * coordinate per tensor off. GRADCHECK_VERBOSE=1 prints every measure, GRADCHECK_DUMP=1 every
 * coordinate. */
#include <math.h>
#include <stdint.h>

#include "backend.h"
#include "moco.h"
#include "resnet.h"
#include "rng.h"
#include "test.h"

static backend *be;

static void fill_normal(float *v, size_t count, uint64_t seed, double mean, double std)
{
    rng r;
    rng_init(&r, seed, 0, 0, 0);
    for (size_t i = 0; i < count; i++)
        v[i] = (float)(mean + std * rng_normal(&r));
}

static double dot(const float *a, const float *b, size_t count)
{
    double s = 0;
    for (size_t i = 0; i < count; i++)
        s += (double)a[i] * b[i];
    return s;
}

static void fill(float *v, size_t count, float value)
{
    for (size_t i = 0; i < count; i++)
        v[i] = value;
}

/* ---- the finite-difference machinery ---- */

#define MAX_PROBES 400

typedef struct {
    double (*loss)(void *ctx); /* L at the current values; NAN when the op failed */
    void *ctx;
    double step;
    int count;
    double analytic[MAX_PROBES], fd[MAX_PROBES], fd_half[MAX_PROBES];
} gradcheck;

static double central_difference(gradcheck *g, float *v, size_t i, double h)
{
    float saved = v[i];
    v[i] = (float)(saved + h);
    double up = g->loss(g->ctx), at_up = v[i];
    v[i] = (float)(saved - h);
    double down = g->loss(g->ctx), at_down = v[i];
    v[i] = saved;
    return (up - down) / (at_up - at_down);
}

static void probe(gradcheck *g, float *v, size_t i, double analytic)
{
    if (g->count == MAX_PROBES)
        return;
    g->analytic[g->count] = analytic;
    g->fd[g->count] = central_difference(g, v, i, g->step);
    g->fd_half[g->count] = central_difference(g, v, i, g->step / 2);
    g->count++;
}

/* Every coordinate of v when there are at most `samples`; otherwise the one of the largest
 * analytic gradient (the best signal against float noise) and samples - 1 drawn from `seed`. */
static void probe_some(gradcheck *g, float *v, const float *grad, size_t count, int samples, uint64_t seed)
{
    if ((size_t)samples >= count) {
        for (size_t i = 0; i < count; i++)
            probe(g, v, i, grad[i]);
        return;
    }
    size_t largest = 0;
    for (size_t i = 1; i < count; i++)
        if (fabsf(grad[i]) > fabsf(grad[largest]))
            largest = i;
    probe(g, v, largest, grad[largest]);
    rng r;
    rng_init(&r, seed, 0, 0, 7);
    for (int s = 1; s < samples; s++) {
        size_t i = rng_below(&r, (uint32_t)count);
        probe(g, v, i, grad[i]);
    }
}

typedef struct {
    double worst; /* the largest error of a coordinate */
    int off;      /* coordinates whose error passes the tolerance */
} gradcheck_result;

static gradcheck_result gradcheck_finish(const gradcheck *g, double tol)
{
    gradcheck_result res = {0, 0};
    double scale = 0;
    for (int i = 0; i < g->count; i++) {
        if (!isfinite(g->analytic[i]) || !isfinite(g->fd[i]) || !isfinite(g->fd_half[i]))
            return (gradcheck_result){INFINITY, g->count};
        scale = fmax(scale, fmax(fabs(g->analytic[i]), fabs(g->fd[i])));
    }
    if (scale == 0)
        scale = 1;
    for (int i = 0; i < g->count; i++) {
        double e = fmin(fabs(g->fd[i] - g->analytic[i]), fabs(g->fd_half[i] - g->analytic[i])) / scale;
        res.worst = fmax(res.worst, e);
        res.off += e > tol;
    }
    if (getenv("GRADCHECK_DUMP"))
        for (int i = 0; i < g->count; i++)
            printf("#   analytic %.6g, differences %.6g %.6g\n", g->analytic[i], g->fd[i], g->fd_half[i]);
    return res;
}

/* Fails the test when more than max_off probed coordinates are off by more than tol, or when
 * nothing was probed. */
#define CHECK_GRADIENTS(g, what, tol, max_off)                                                     \
    do {                                                                                           \
        gradcheck_result res_ = gradcheck_finish(g, tol);                                          \
        if (getenv("GRADCHECK_VERBOSE"))                                                           \
            printf("# %s: worst error %.3g, %d of %d coordinates off by more than %g\n", what,     \
                   res_.worst, res_.off, (g)->count, (double)(tol));                               \
        if (res_.off > (max_off) || (g)->count == 0) {                                             \
            snprintf(test_fail_where, sizeof test_fail_where,                                      \
                     "%s:%d: %s: %d of %d coordinates off by more than %g (at most %d), worst %.3g", \
                     __FILE__, __LINE__, what, res_.off, (g)->count, (double)(tol), (int)(max_off), \
                     res_.worst);                                                                  \
            test_failed_flag = 1;                                                                  \
            return;                                                                                \
        }                                                                                          \
    } while (0)

/* Backward outputs start as this, so a backward that accumulates instead of writing shows. */
#define STALE 1e3f

/* ---- convolution ---- */

typedef struct {
    conv2d *conv;
    float *x, *weight, *y, *r;
    int n, h, w;
    size_t ny;
} conv_case;

static double conv_loss(void *ctx)
{
    conv_case *c = ctx;
    moco_error err;
    if (conv2d_forward(c->conv, c->x, c->n, c->h, c->w, c->weight, c->y, &err))
        return NAN;
    return dot(c->y, c->r, c->ny);
}

TEST(test_conv2d_backward_matches_finite_differences)
{
    /* every convolution shape of a ResNet: 3x3/1, 3x3/2 (odd input: the last window hangs over the
     * padding), 1x1/2 downsample, 7x7/2 stem, and 3x3/1 with channels enough for Winograd */
    static const struct {
        int in_c, out_c, kernel, stride, pad, n, size;
    } cases[] = {{3, 4, 3, 1, 1, 2, 6}, {4, 5, 3, 2, 1, 2, 7}, {4, 6, 1, 2, 0, 3, 6}, {3, 4, 7, 2, 3, 2, 9},
                 {32, 48, 3, 1, 1, 2, 5}};
    enum { MAX = 16384 };
    static float x[MAX], weight[MAX], y[MAX], r[MAX], dx[MAX], dweight[MAX];
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        moco_error err = {{0}};
        int ic = cases[k].in_c, oc = cases[k].out_c, ks = cases[k].kernel, n = cases[k].n, s = cases[k].size;
        int os = conv2d_out_size(s, ks, cases[k].stride, cases[k].pad);
        size_t nx = (size_t)n * s * s * ic, nw = (size_t)oc * ic * ks * ks, ny = (size_t)n * os * os * oc;
        CHECK(nx <= MAX && nw <= MAX && ny <= MAX);
        conv2d *conv = conv2d_create(be, ic, oc, ks, cases[k].stride, cases[k].pad, &err);
        CHECK_OK(conv ? 0 : -1, &err);
        fill_normal(x, nx, 100 + k, 0, 1);
        fill_normal(weight, nw, 200 + k, 0, 0.3);
        fill_normal(r, ny, 300 + k, 0, 1);
        fill(dx, nx, STALE);
        fill(dweight, nw, STALE);
        CHECK_OK(conv2d_forward(conv, x, n, s, s, weight, y, &err), &err);
        CHECK_OK(conv2d_backward(conv, x, weight, r, dx, dweight, &err), &err);
        conv_case c = {conv, x, weight, y, r, n, s, s, ny};
        gradcheck gx = {.loss = conv_loss, .ctx = &c, .step = 1e-2}, gw = gx;
        probe_some(&gx, x, dx, nx, 60, 400 + k);
        probe_some(&gw, weight, dweight, nw, 60, 500 + k);
        conv2d_destroy(conv);
        char what[64];
        snprintf(what, sizeof what, "conv %dx%d/%d dx", ks, ks, cases[k].stride);
        CHECK_GRADIENTS(&gx, what, 1e-3, 0);
        snprintf(what, sizeof what, "conv %dx%d/%d dweight", ks, ks, cases[k].stride);
        CHECK_GRADIENTS(&gw, what, 1e-3, 0);
    }
}

/* Winograd's F(4x4, 3x3) against direct convolution on the same layers: forward, dx and dweight
 * within 1e-5 (relative to each tensor's largest value); odd and even sizes, one and several tiles,
 * 16-channel sides used in place (their blocked layout is NHWC's) and copied ones. */
TEST(test_conv2d_winograd_matches_direct)
{
    static const struct {
        int in_c, out_c, n, size;
    } cases[] = {{32, 32, 4, 8}, {48, 64, 2, 7}, {64, 32, 3, 13}, {16, 16, 3, 9}, {16, 32, 2, 6}, {32, 16, 2, 6}};
    enum { MAX = 65536 };
    static float x[MAX], weight[MAX], r[MAX], out[2][3][MAX];
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        moco_error err = {{0}};
        int ic = cases[k].in_c, oc = cases[k].out_c, n = cases[k].n, s = cases[k].size;
        size_t nx = (size_t)n * s * s * ic, nw = (size_t)oc * ic * 9, ny = (size_t)n * s * s * oc;
        CHECK(nx <= MAX && nw <= MAX && ny <= MAX);
        fill_normal(x, nx, 600 + k, 0, 1);
        fill_normal(weight, nw, 700 + k, 0, 0.1);
        fill_normal(r, ny, 800 + k, 0, 1);
        const char *algorithm[2];
        for (int wino = 0; wino < 2; wino++) {
            backend_set_winograd(be, wino);
            conv2d *conv = conv2d_create(be, ic, oc, 3, 1, 1, &err);
            CHECK_OK(conv ? 0 : -1, &err);
            CHECK_OK(conv2d_forward(conv, x, n, s, s, weight, out[wino][0], &err), &err);
            CHECK_OK(conv2d_backward(conv, x, weight, r, out[wino][1], out[wino][2], &err), &err);
            algorithm[wino] = conv2d_algorithm(conv);
            conv2d_destroy(conv);
        }
        backend_set_winograd(be, 1);
        CHECK(!strcmp(algorithm[0], "direct"));
        printf("# conv %d->%d %dx%d: %s\n", ic, oc, s, s, algorithm[1]);
        const size_t counts[3] = {ny, nx, nw};
        for (int t = 0; t < 3; t++)
            CHECK(rel_error(out[1][t], out[0][t], counts[t]) <= 1e-5);
    }
}

/* Forward, dx and dweight against a plain double-precision convolution, on backends of 1 to 16
 * threads: oneDNN picks kernels and splits work by the thread count, and one of its kernels (the
 * strided 1x1 backward-weights with under 16 input channels) corrupted the heap at 3, 5, 12 and 16
 * threads; backend.c steers around it. Every ResNet shape, with small and odd channel counts. */
static void conv_reference(const float *x, const float *w, const float *dy, int n, int s, int ic, int oc, int k,
                           int stride, int pad, double *y, double *dx, double *dw)
{
    int os = conv2d_out_size(s, k, stride, pad);
    for (int b = 0; b < n; b++)
        for (int oy = 0; oy < os; oy++)
            for (int ox = 0; ox < os; ox++)
                for (int o = 0; o < oc; o++) {
                    size_t yi = (((size_t)b * os + oy) * os + ox) * oc + o;
                    for (int i = 0; i < ic; i++)
                        for (int ky = 0; ky < k; ky++)
                            for (int kx = 0; kx < k; kx++) {
                                int iy = oy * stride - pad + ky, ix = ox * stride - pad + kx;
                                if (iy < 0 || ix < 0 || iy >= s || ix >= s)
                                    continue;
                                size_t xi = (((size_t)b * s + iy) * s + ix) * ic + i, wi = (((size_t)o * ic + i) * k + ky) * k + kx;
                                y[yi] += (double)w[wi] * x[xi];
                                dx[xi] += (double)w[wi] * dy[yi];
                                dw[wi] += (double)dy[yi] * x[xi];
                            }
                }
}

static double worst_against(const float *got, const double *want, size_t count)
{
    double scale = 0, worst = 0;
    for (size_t i = 0; i < count; i++)
        scale = fmax(scale, fabs(want[i]));
    for (size_t i = 0; i < count; i++)
        worst = fmax(worst, fabs(got[i] - want[i]) / scale);
    return isnan(worst) ? INFINITY : worst;
}

TEST(test_conv2d_matches_reference_at_any_thread_count)
{
    static const struct {
        int in_c, out_c, kernel, stride, pad, n, size;
    } cases[] = {{4, 8, 1, 2, 0, 8, 14}, {8, 16, 1, 2, 0, 8, 16}, {12, 24, 1, 2, 0, 4, 16}, {24, 48, 1, 2, 0, 4, 8},
                 {8, 16, 3, 2, 1, 8, 16}, {8, 8, 3, 1, 1, 8, 16},  {3, 8, 7, 2, 3, 4, 20},   {16, 32, 1, 1, 0, 4, 8}};
    static const int threads[] = {1, 2, 3, 5, 12, 16};
    enum { MAX = 32768 };
    static float x[MAX], w[MAX], dy[MAX], y[MAX], dx[MAX], dw[MAX];
    static double ry[MAX], rdx[MAX], rdw[MAX];
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        int ic = cases[k].in_c, oc = cases[k].out_c, ks = cases[k].kernel, n = cases[k].n, s = cases[k].size;
        int os = conv2d_out_size(s, ks, cases[k].stride, cases[k].pad);
        size_t nx = (size_t)n * s * s * ic, nw = (size_t)oc * ic * ks * ks, ny = (size_t)n * os * os * oc;
        CHECK(nx <= MAX && nw <= MAX && ny <= MAX);
        fill_normal(x, nx, 900 + k, 0, 1);
        fill_normal(w, nw, 910 + k, 0, 0.3);
        fill_normal(dy, ny, 920 + k, 0, 1);
        memset(ry, 0, sizeof(double) * ny), memset(rdx, 0, sizeof(double) * nx), memset(rdw, 0, sizeof(double) * nw);
        conv_reference(x, w, dy, n, s, ic, oc, ks, cases[k].stride, cases[k].pad, ry, rdx, rdw);
        double worst = 0;
        for (size_t t = 0; t < sizeof threads / sizeof *threads; t++) {
            moco_error err = {{0}};
            backend *b = backend_create(threads[t], &err);
            CHECK_OK(b ? 0 : -1, &err);
            conv2d *conv = conv2d_create(b, ic, oc, ks, cases[k].stride, cases[k].pad, &err);
            CHECK_OK(conv ? 0 : -1, &err);
            CHECK_OK(conv2d_forward(conv, x, n, s, s, w, y, &err), &err);
            CHECK_OK(conv2d_backward(conv, x, w, dy, dx, dw, &err), &err);
            worst = fmax(worst, fmax(worst_against(y, ry, ny), fmax(worst_against(dx, rdx, nx), worst_against(dw, rdw, nw))));
            conv2d_destroy(conv);
            backend_destroy(b);
        }
        printf("# conv %dx%d/%d %d->%d, 1 to 16 threads: largest relative error %.2g\n", ks, ks, cases[k].stride, ic, oc, worst);
        CHECK(worst <= 1e-5);
    }
}

/* Whole nets on backends of 3, 5 and 16 threads (counts at which oneDNN's kernel above
 * broke), at widths 4, 8 and 12 where channel counts fall short of its 16-wide blocks: the training
 * forward equals the 1-thread one (it is well conditioned: within 1e-4), and the backward runs to
 * finite gradients. The gradients themselves are not compared: an untrained net with batch norm
 * over a few values is chaotic in float32, so another summation order moves some by percents. */
TEST(test_resnets_train_at_any_thread_count)
{
    static const struct {
        int depth, width, cifar_stem, n, size;
    } nets[] = {{18, 4, 1, 4, 16}, {18, 8, 1, 4, 16}, {18, 12, 1, 4, 16}};
    static const int threads[] = {1, 3, 5, 16};
    for (size_t k = 0; k < sizeof nets / sizeof *nets; k++) {
        resnet_config cfg = {.depth = nets[k].depth, .width = nets[k].width, .in_channels = 3,
                             .cifar_stem = nets[k].cifar_stem, .head = RESNET_HEAD_MLP, .out_dim = 8};
        int n = nets[k].n, size = nets[k].size;
        size_t nx = (size_t)n * size * size * 3, nout = (size_t)n * cfg.out_dim;
        float *x = malloc(sizeof(float) * nx), *r = malloc(sizeof(float) * nout), *out1 = malloc(sizeof(float) * nout);
        CHECK(x && r && out1);
        fill_normal(x, nx, 940 + k, 0, 1);
        fill_normal(r, nout, 950 + k, 0, 1);
        double worst = 0;
        for (size_t t = 0; t < sizeof threads / sizeof *threads; t++) {
            moco_error err = {{0}};
            backend *b = backend_create(threads[t], &err);
            CHECK_OK(b ? 0 : -1, &err);
            resnet *net = resnet_create(b, &cfg, 1, &err);
            CHECK_OK(net ? 0 : -1, &err);
            resnet_init(net, 960 + k);
            CHECK_OK(resnet_forward(net, x, n, size, size, 1, 2, &err), &err);
            if (t == 0)
                memcpy(out1, net->output, sizeof(float) * nout);
            else
                worst = fmax(worst, rel_error(net->output, out1, nout));
            CHECK_OK(resnet_backward(net, r, &err), &err);
            for (size_t i = 0; i < net->param_count; i++)
                CHECK(isfinite(net->grad[i]));
            resnet_destroy(net);
            backend_destroy(b);
        }
        printf("# resnet-%d width %d, 3 to 16 threads: outputs within %.2g of 1 thread's\n", cfg.depth, cfg.width, worst);
        CHECK(worst <= 1e-4);
        free(x), free(r), free(out1);
    }
}

/* ---- batch normalisation ---- */

typedef struct {
    batchnorm *bn;
    float *x, *weight, *bias, *y, *r;
    int n, h, w, groups;
    size_t count;
} bn_case;

static double bn_loss(void *ctx)
{
    bn_case *c = ctx;
    moco_error err;
    if (batchnorm_forward_train(c->bn, c->x, c->n, c->h, c->w, c->groups, c->weight, c->bias, c->y, NULL, NULL, &err))
        return NAN;
    return dot(c->y, c->r, c->count);
}

/* Training-mode BN (batch statistics, so every output depends on every input of its channel and
 * group), with or without the fused ReLU, in one or two groups, against differences in x, weight
 * and bias. */
static void check_batchnorm(int fuse_relu, int groups)
{
    enum { N = 4, H = 5, W = 5, C = 5, COUNT = N * H * W * C };
    static float x[COUNT], y[COUNT], r[COUNT], dx[COUNT];
    float weight[C], bias[C], dweight[C], dbias[C];
    moco_error err = {{0}};
    batchnorm *bn = batchnorm_create(be, C, fuse_relu, &err);
    CHECK_OK(bn ? 0 : -1, &err);
    fill_normal(x, COUNT, 10, 0.4, 1.5);
    for (int i = 0; i < COUNT; i++) /* channels with their own mean and spread */
        x[i] = x[i] * (1 + 0.3f * (i % C)) - 0.2f * (i % C);
    fill_normal(weight, C, 11, 1, 0.3);
    fill_normal(bias, C, 12, 0, 0.3);
    fill_normal(r, COUNT, 13, 0, 1);
    fill(dx, COUNT, STALE);
    fill(dweight, C, STALE);
    fill(dbias, C, STALE);
    CHECK_OK(batchnorm_forward_train(bn, x, N, H, W, groups, weight, bias, y, NULL, NULL, &err), &err);
    CHECK_OK(batchnorm_backward(bn, x, r, weight, bias, dx, dweight, dbias, &err), &err);
    bn_case c = {bn, x, weight, bias, y, r, N, H, W, groups, COUNT};
    /* a step of a weight or bias moves its whole channel: smaller, so a kink inside it is rare */
    gradcheck gx = {.loss = bn_loss, .ctx = &c, .step = 1e-2}, gw = {.loss = bn_loss, .ctx = &c, .step = 1e-3}, gb = gw;
    probe_some(&gx, x, dx, COUNT, 60, 14);
    probe_some(&gw, weight, dweight, C, C, 0);
    probe_some(&gb, bias, dbias, C, C, 0);
    batchnorm_destroy(bn);
    char what[64];
    const char *name = fuse_relu ? "batchnorm+relu" : "batchnorm";
    snprintf(what, sizeof what, "%s/%d dx", name, groups);
    CHECK_GRADIENTS(&gx, what, 2e-3, 0);
    snprintf(what, sizeof what, "%s/%d dweight", name, groups);
    CHECK_GRADIENTS(&gw, what, 2e-3, 0);
    snprintf(what, sizeof what, "%s/%d dbias", name, groups);
    CHECK_GRADIENTS(&gb, what, 2e-3, fuse_relu && groups > 1); /* a bias step moves a whole group past ReLU kinks */
}

TEST(test_batchnorm_backward_matches_finite_differences) { check_batchnorm(0, 1); }

TEST(test_batchnorm_relu_backward_matches_finite_differences) { check_batchnorm(1, 1); }

/* in groups (the query encoder standing for data-parallel ranks): each group's own statistics */
TEST(test_batchnorm_groups_backward_matches_finite_differences)
{
    check_batchnorm(0, 2);
    check_batchnorm(1, 2);
}

TEST(test_batchnorm_groups_normalise_each_slice_alone)
{
    enum { N = 6, G = 3, H = 4, W = 4, C = 3, COUNT = N * H * W * C, SLICE = COUNT / G };
    static float x[COUNT], grouped[COUNT], sliced[COUNT], whole[COUNT], dy[COUNT], dx_grouped[COUNT], dx_sliced[COUNT];
    float weight[C], bias[C];
    fill_normal(x, COUNT, 20, 0, 1);
    for (int i = 0; i < COUNT; i++) /* each sample its own offset, so the groups' statistics differ */
        x[i] += 0.5f * (i / (H * W * C));
    fill_normal(weight, C, 21, 1, 0.3);
    fill_normal(bias, C, 22, 0, 0.3);
    fill_normal(dy, COUNT, 23, 0, 1);
    for (int fuse = 0; fuse <= 1; fuse++) {
        moco_error err = {{0}};
        batchnorm *all = batchnorm_create(be, C, fuse, &err), *one = batchnorm_create(be, C, fuse, &err);
        CHECK_OK(all && one ? 0 : -1, &err);
        /* running statistics: the first group's, as rank 0 keeps under DDP */
        float mean_all[C], var_all[C], mean_one[C], var_one[C];
        fill(mean_all, C, 0.5f), fill(var_all, C, 2), fill(mean_one, C, 0.5f), fill(var_one, C, 2);
        float dw_all[C], db_all[C], dw_sum[C] = {0}, db_sum[C] = {0}, dw[C], db[C];
        CHECK_OK(batchnorm_forward_train(all, x, N, H, W, G, weight, bias, grouped, mean_all, var_all, &err), &err);
        CHECK_OK(batchnorm_backward(all, x, dy, weight, bias, dx_grouped, dw_all, db_all, &err), &err);
        /* each slice alone, forward and backward: the grouped gradients are these, summed for the parameters */
        for (int g = 0; g < G; g++) {
            CHECK_OK(batchnorm_forward_train(one, x + g * SLICE, N / G, H, W, 1, weight, bias, sliced + g * SLICE,
                                             g ? NULL : mean_one, g ? NULL : var_one, &err),
                     &err);
            CHECK_OK(batchnorm_backward(one, x + g * SLICE, dy + g * SLICE, weight, bias, dx_sliced + g * SLICE, dw, db, &err),
                     &err);
            for (int i = 0; i < C; i++)
                dw_sum[i] += dw[i], db_sum[i] += db[i];
        }
        for (int i = 0; i < C; i++) {
            CHECK(mean_all[i] == mean_one[i] && var_all[i] == var_one[i] && mean_one[i] != 0.5f);
            CHECK(fabsf(dw_all[i] - dw_sum[i]) <= 1e-5f * (1 + fabsf(dw_sum[i])));
            CHECK(fabsf(db_all[i] - db_sum[i]) <= 1e-5f * (1 + fabsf(db_sum[i])));
        }
        CHECK_OK(batchnorm_forward_train(one, x, N, H, W, 1, weight, bias, whole, NULL, NULL, &err), &err);
        batchnorm_destroy(all);
        batchnorm_destroy(one);
        double same = 0, apart = 0, dx_apart = 0;
        for (int i = 0; i < COUNT; i++) {
            same = fmax(same, fabs(grouped[i] - sliced[i]));
            apart = fmax(apart, fabs(grouped[i] - whole[i]));
            dx_apart = fmax(dx_apart, fabs(dx_grouped[i] - dx_sliced[i]));
        }
        CHECK(same <= 1e-6);
        CHECK(dx_apart <= 1e-5);
        CHECK(apart > 0.1); /* and the groups really are not one batch */
    }
}

/* ---- max-pooling ---- */

typedef struct {
    maxpool *pool;
    float *x, *y, *r;
    int n, h, w;
    size_t ny;
} pool_case;

static double pool_loss(void *ctx)
{
    pool_case *c = ctx;
    moco_error err;
    if (maxpool_forward(c->pool, c->x, c->n, c->h, c->w, c->y, 1, &err))
        return NAN;
    return dot(c->y, c->r, c->ny);
}

TEST(test_maxpool_backward_matches_finite_differences)
{
    enum { N = 2, C = 3, MAX = N * 8 * 8 * C };
    static float x[MAX], y[MAX], r[MAX], dx[MAX];
    for (int size = 7; size <= 8; size++) {
        moco_error err = {{0}};
        int os = conv2d_out_size(size, 3, 2, 1);
        size_t nx = (size_t)N * size * size * C, ny = (size_t)N * os * os * C;
        /* distinct values 0.05 apart, shuffled: no step of 1e-2 changes a window's argmax */
        rng g;
        rng_init(&g, 30 + size, 0, 0, 0);
        for (size_t i = 0; i < nx; i++)
            x[i] = 0.05f * ((float)i - (float)(nx / 2));
        for (size_t i = nx - 1; i > 0; i--) {
            size_t j = rng_below(&g, (uint32_t)i + 1);
            float t = x[i];
            x[i] = x[j], x[j] = t;
        }
        fill_normal(r, ny, 31, 0, 1);
        fill(dx, nx, STALE);
        maxpool *pool = maxpool_create(be, C, 3, 2, 1, &err);
        CHECK_OK(pool ? 0 : -1, &err);
        CHECK_OK(maxpool_forward(pool, x, N, size, size, y, 1, &err), &err);
        CHECK_OK(maxpool_backward(pool, r, dx, &err), &err);
        /* the forward itself: the largest value of each window, padding never winning (half the
         * inputs are negative, so a zero pad would show) */
        int same = 1;
        for (int i = 0; i < N; i++)
            for (int oy = 0; oy < os; oy++)
                for (int ox = 0; ox < os; ox++)
                    for (int ch = 0; ch < C; ch++) {
                        float best = -INFINITY;
                        for (int ky = 2 * oy - 1; ky <= 2 * oy + 1; ky++)
                            for (int kx = 2 * ox - 1; kx <= 2 * ox + 1; kx++)
                                if (ky >= 0 && ky < size && kx >= 0 && kx < size)
                                    best = fmaxf(best, x[((size_t)(i * size + ky) * size + kx) * C + ch]);
                        same &= y[((size_t)(i * os + oy) * os + ox) * C + ch] == best;
                    }
        CHECK(same);
        pool_case c = {pool, x, y, r, N, size, size, ny};
        gradcheck gx = {.loss = pool_loss, .ctx = &c, .step = 1e-2};
        probe_some(&gx, x, dx, nx, MAX_PROBES, 0);
        maxpool_destroy(pool);
        CHECK_GRADIENTS(&gx, "maxpool dx", 1e-3, 0);
    }
}

/* ---- the small ops ---- */

typedef struct {
    float *x, *weight, *bias, *y, *norms, *r;
    int n, d, out;
    const int64_t *labels;
} small_case;

static double avgpool_loss(void *ctx)
{
    small_case *c = ctx;
    avgpool_forward(c->x, c->n, c->d, c->out, c->y);
    return dot(c->y, c->r, (size_t)c->n * c->out);
}

TEST(test_avgpool_backward_matches_finite_differences)
{
    enum { N = 2, HW = 9, C = 5 };
    float x[N * HW * C], y[N * C], r[N * C], dx[N * HW * C];
    fill_normal(x, N * HW * C, 40, 0, 1);
    fill_normal(r, N * C, 41, 0, 1);
    fill(dx, N * HW * C, STALE);
    avgpool_forward(x, N, HW, C, y);
    avgpool_backward(r, N, HW, C, dx);
    small_case c = {.x = x, .y = y, .r = r, .n = N, .d = HW, .out = C};
    gradcheck gx = {.loss = avgpool_loss, .ctx = &c, .step = 1e-2};
    probe_some(&gx, x, dx, N * HW * C, MAX_PROBES, 0);
    CHECK_GRADIENTS(&gx, "avgpool dx", 1e-3, 0);
}

static double linear_loss(void *ctx)
{
    small_case *c = ctx;
    linear_forward(c->x, c->n, c->d, c->out, c->weight, c->bias, c->y);
    return dot(c->y, c->r, (size_t)c->n * c->out);
}

TEST(test_linear_backward_matches_finite_differences)
{
    enum { N = 3, IN = 6, OUT = 4 };
    float x[N * IN], weight[OUT * IN], bias[OUT], y[N * OUT], r[N * OUT];
    float dx[N * IN], dweight[OUT * IN], dbias[OUT];
    fill_normal(x, N * IN, 50, 0, 1);
    fill_normal(weight, OUT * IN, 51, 0, 0.5);
    fill_normal(bias, OUT, 52, 0, 0.5);
    fill_normal(r, N * OUT, 53, 0, 1);
    fill(dx, N * IN, STALE);
    fill(dweight, OUT * IN, STALE);
    fill(dbias, OUT, STALE);
    linear_forward(x, N, IN, OUT, weight, bias, y);
    linear_backward(x, r, N, IN, OUT, weight, dx, dweight, dbias);
    small_case c = {.x = x, .weight = weight, .bias = bias, .y = y, .r = r, .n = N, .d = IN, .out = OUT};
    gradcheck gx = {.loss = linear_loss, .ctx = &c, .step = 1e-2}, gw = gx, gb = gx;
    probe_some(&gx, x, dx, N * IN, MAX_PROBES, 0);
    probe_some(&gw, weight, dweight, OUT * IN, MAX_PROBES, 0);
    probe_some(&gb, bias, dbias, OUT, MAX_PROBES, 0);
    CHECK_GRADIENTS(&gx, "linear dx", 1e-3, 0);
    CHECK_GRADIENTS(&gw, "linear dweight", 1e-3, 0);
    CHECK_GRADIENTS(&gb, "linear dbias", 1e-3, 0);
}

static double l2norm_loss(void *ctx)
{
    small_case *c = ctx;
    l2norm_forward(c->x, c->n, c->d, c->y, c->norms);
    return dot(c->y, c->r, (size_t)c->n * c->d);
}

TEST(test_l2norm_backward_matches_finite_differences)
{
    enum { N = 3, D = 8 };
    float x[N * D], y[N * D], norms[N], r[N * D], dx[N * D];
    fill_normal(x, N * D, 60, 0, 1);
    x[0] = 3; /* one row far from the others' length */
    fill_normal(r, N * D, 61, 0, 1);
    fill(dx, N * D, STALE);
    l2norm_forward(x, N, D, y, norms);
    l2norm_backward(y, norms, r, N, D, dx);
    small_case c = {.x = x, .y = y, .norms = norms, .r = r, .n = N, .d = D};
    gradcheck gx = {.loss = l2norm_loss, .ctx = &c, .step = 1e-2};
    probe_some(&gx, x, dx, N * D, MAX_PROBES, 0);
    CHECK_GRADIENTS(&gx, "l2norm dx", 1e-3, 0);
}

static double cross_entropy_loss(void *ctx)
{
    small_case *c = ctx;
    return softmax_cross_entropy(c->x, c->n, c->out, c->labels, NULL, NULL, NULL);
}

TEST(test_softmax_cross_entropy_gradient_matches_finite_differences_of_mean_loss)
{
    enum { N = 4, C = 7 };
    float logits[N * C], dlogits[N * C];
    const int64_t labels[N] = {0, 3, 6, 2};
    fill_normal(logits, N * C, 70, 0, 2);
    fill(dlogits, N * C, STALE);
    double loss = softmax_cross_entropy(logits, N, C, labels, dlogits, NULL, NULL);
    CHECK(isfinite(loss) && loss > 0);
    small_case c = {.x = logits, .n = N, .out = C, .labels = labels};
    gradcheck gx = {.loss = cross_entropy_loss, .ctx = &c, .step = 1e-2};
    probe_some(&gx, logits, dlogits, N * C, MAX_PROBES, 0);
    CHECK_GRADIENTS(&gx, "softmax cross-entropy dlogits", 1e-3, 0);
}

TEST(test_softmax_cross_entropy_counts_top1_and_top5)
{
    enum { C = 8 };
    const float logits[][C] = {
        {5, 1, 2, 3, 0, 0, 0, 0},       /* label 0 the largest: top-1 */
        {1, 2, 3, 4, 5, 6, 7, 8},       /* label 3: four above it, top-5 only */
        {1, 2, 3, 4, 5, 6, 7, 8},       /* label 2: five above it, neither */
        {9, 1, 9, 0, 0, 0, 0, 0},       /* label 2 ties the largest: ties count against it */
        {-1, -1, -1, -1, -2, -2, -2, 0}, /* label 0 ties three others, one above: top-5 only */
        {0, 0, 0, 0, 0, 0, 0, 0},       /* all equal: seven ties, neither */
    };
    const int64_t labels[] = {0, 3, 2, 2, 0, 5};
    int n = sizeof labels / sizeof *labels, top1 = -1, top5 = -1;
    softmax_cross_entropy(&logits[0][0], n, C, labels, NULL, &top1, &top5);
    CHECK(top1 == 1);
    CHECK(top5 == 4);
    /* and one row at a time */
    const int want1[] = {1, 0, 0, 0, 0, 0}, want5[] = {1, 1, 0, 1, 1, 0};
    for (int i = 0; i < n; i++) {
        softmax_cross_entropy(logits[i], 1, C, &labels[i], NULL, &top1, &top5);
        CHECK(top1 == want1[i] && top5 == want5[i]);
    }
}

/* ---- the whole ResNet ---- */

typedef struct {
    resnet *net;
    const float *x, *r;
    int n, h, w;
} net_case;

static double net_loss(void *ctx)
{
    net_case *c = ctx;
    moco_error err;
    if (resnet_forward(c->net, c->x, c->n, c->h, c->w, 1, 1, &err))
        return NAN;
    return dot(c->net->output, c->r, (size_t)c->n * c->net->cfg.out_dim);
}

/* BN weights and biases away from torchvision's 1 and 0, so their gradients are not a special case. */
static void randomise_batchnorm(resnet *net, uint64_t seed)
{
    rng r;
    rng_init(&r, seed, 0, 0, 0);
    for (int i = 0; i < net->ntensors; i++) {
        const resnet_tensor *t = &net->tensors[i];
        if (t->buffer || t->rank != 1 || !strncmp(t->name, "fc", 2))
            continue;
        int weight = strstr(t->name, ".weight") != NULL;
        for (size_t j = 0; j < t->count; j++)
            net->param[t->offset + j] = (float)((weight ? 1 : 0) + 0.3 * rng_normal(&r));
    }
}

/* Checked tensor by tensor, each against its own largest gradient, so a mistake in a tensor of small
 * gradients is not hidden by the head's large ones. */
static const char *const probed_tensors[] = {
    "conv1.weight", "bn1.weight", "bn1.bias", "layer1.0.conv1.weight", "layer1.1.bn2.bias",
    "layer2.0.conv2.weight", "layer2.0.downsample.0.weight", "layer2.0.downsample.1.weight",
    "layer3.0.bn1.weight", "layer3.1.conv1.weight", "layer4.0.downsample.1.bias", "layer4.1.conv2.weight",
    "layer4.1.bn2.weight", "fc.0.weight", "fc.0.bias", "fc.2.weight", "fc.2.bias"};

/* Inputs of 16x16 (CIFAR stem) and 64x64 (ImageNet stem, through the max-pool) leave layer4 maps of
 * 2x2, so its batch norms see 16 values a channel; at 1x1 (8x8 or 32x32 inputs) they see 4, and the
 * deep activations are so sensitive that steps cross kinks at any usable size. Steps of 1e-4: float
 * noise in L (about 1e-6) stays near 1% of the stem's gradients, kinks are rarely crossed. */
static void check_resnet(int cifar_stem, int n, int size)
{
    resnet_config cfg = {.depth = 18, .width = 4, .in_channels = 3, .cifar_stem = cifar_stem,
                         .head = RESNET_HEAD_MLP, .out_dim = 8};
    moco_error err = {{0}};
    resnet *net = resnet_create(be, &cfg, 1, &err);
    CHECK_OK(net ? 0 : -1, &err);
    resnet_init(net, 80 + cifar_stem);
    randomise_batchnorm(net, 81);
    size_t nx = (size_t)n * size * size * 3, nr = (size_t)n * cfg.out_dim;
    float *x = malloc(sizeof(float) * nx), *r = malloc(sizeof(float) * nr);
    float *grad = malloc(sizeof(float) * net->param_count);
    CHECK(x && r && grad);
    fill_normal(x, nx, 82, 0, 1);
    fill_normal(r, nr, 83, 0, 1);
    fill(net->grad, net->param_count, STALE);
    CHECK_OK(resnet_forward(net, x, n, size, size, 1, 1, &err), &err);
    CHECK_OK(resnet_backward(net, r, &err), &err);
    memcpy(grad, net->grad, sizeof(float) * net->param_count);
    for (size_t i = 0; i < net->param_count; i++)
        CHECK(grad[i] != STALE); /* every gradient written */
    net_case c = {net, x, r, n, size, size};
    int ntensors = sizeof probed_tensors / sizeof *probed_tensors;
    for (int k = 0; k < ntensors; k++) {
        const resnet_tensor *t = resnet_find(net, probed_tensors[k]);
        CHECK(t && !t->buffer);
        gradcheck g = {.loss = net_loss, .ctx = &c, .step = 1e-4};
        probe_some(&g, net->param + t->offset, grad + t->offset, t->count, 5, 84 + k);
        CHECK_GRADIENTS(&g, probed_tensors[k], 5e-2, 1);
    }
    free(x), free(r), free(grad);
    resnet_destroy(net);
}

TEST(test_resnet18_cifar_stem_backward_matches_finite_differences) { check_resnet(1, 4, 16); }

TEST(test_resnet18_imagenet_stem_backward_matches_finite_differences) { check_resnet(0, 4, 64); }

/* MoCo's key encoder keeps its activations in the query's backward scratch (resnet_borrow_scratch):
 * its outputs are those of a net with buffers of its own, the query's backward after it is
 * unchanged, and when the query plans another batch size the key net follows. */
TEST(test_forward_only_net_in_borrowed_scratch_matches_its_own)
{
    resnet_config cfg = {.depth = 18, .width = 4, .in_channels = 3, .cifar_stem = 1, .head = RESNET_HEAD_MLP, .out_dim = 8};
    moco_error err = {{0}};
    resnet *q = resnet_create(be, &cfg, 1, &err), *q_ref = resnet_create(be, &cfg, 1, &err);
    resnet *k = resnet_create(be, &cfg, 0, &err), *k_ref = resnet_create(be, &cfg, 0, &err);
    CHECK_OK(q && q_ref && k && k_ref ? 0 : -1, &err);
    resnet_init(q, 90);
    resnet_copy(q_ref, q), resnet_copy(k, q), resnet_copy(k_ref, q);
    resnet_borrow_scratch(k, q);
    enum { N = 4, S = 16 };
    float x[N * S * S * 3], xk[N * S * S * 3], r[N * 8];
    for (int n = N; n >= 2; n -= 2) { /* the second pass: a smaller batch, planned again */
        fill_normal(x, (size_t)n * S * S * 3, 91 + n, 0, 1);
        fill_normal(xk, (size_t)n * S * S * 3, 92 + n, 0, 1);
        fill_normal(r, (size_t)n * 8, 93 + n, 0, 1);
        CHECK_OK(resnet_forward(q, x, n, S, S, 1, 2, &err), &err);
        CHECK_OK(resnet_forward(q_ref, x, n, S, S, 1, 2, &err), &err);
        CHECK_OK(resnet_forward(k, xk, n, S, S, 1, 2, &err), &err);
        CHECK_OK(resnet_forward(k_ref, xk, n, S, S, 1, 2, &err), &err);
        CHECK(!memcmp(k->output, k_ref->output, sizeof(float) * n * 8));
        CHECK_OK(resnet_backward(q, r, &err), &err);
        CHECK_OK(resnet_backward(q_ref, r, &err), &err);
        CHECK(!memcmp(q->grad, q_ref->grad, sizeof(float) * q->param_count));
    }
    resnet_destroy(k), resnet_destroy(k_ref), resnet_destroy(q), resnet_destroy(q_ref);
}

/* ---- the MoCo loss ---- */

typedef struct {
    moco *m;
    const float *im_q, *im_k, *k_param, *queue;
    const int64_t *perm;
    int64_t queue_ptr;
    int n, h, w;
} moco_case;

/* The loss of a step with the query encoder as it is now, the key encoder and queue as the analytic
 * step saw them. */
static double moco_loss(void *ctx)
{
    moco_case *c = ctx;
    moco *m = c->m;
    memcpy(m->k->param, c->k_param, sizeof(float) * m->k->param_count);
    memcpy(m->queue, c->queue, sizeof(float) * m->cfg.queue_size * m->dim);
    m->queue_ptr = c->queue_ptr;
    moco_result res;
    moco_error err;
    if (moco_step(m, c->im_q, c->im_k, c->n, c->h, c->w, c->perm, NULL, &res, &err))
        return NAN;
    return res.loss;
}

TEST(test_moco_query_gradient_matches_finite_differences_of_loss)
{
    enum { N = 4, S = 16, VIEW = S * S * 3 };
    resnet_config enc = {.depth = 18, .width = 4, .in_channels = 3, .cifar_stem = 1, .head = RESNET_HEAD_MLP,
                         .out_dim = 8};
    moco_config cfg = {.queue_size = 16, .key_momentum = 0.99, .temperature = 0.2, .bn_groups = 2};
    moco_error err = {{0}};
    moco *m = moco_create(be, &enc, &cfg, &err);
    CHECK_OK(m ? 0 : -1, &err);
    moco_init(m, 90);
    randomise_batchnorm(m->q, 91);
    /* a key encoder a little apart from the query's, as after some steps */
    for (size_t i = 0; i < m->k->param_count; i++)
        m->k->param[i] = m->q->param[i] * 0.9f;
    static float im_q[N * VIEW], im_k[N * VIEW];
    fill_normal(im_q, N * VIEW, 92, 0, 1);
    fill_normal(im_k, N * VIEW, 93, 0, 1);
    int64_t perm[N];
    moco_permutation(N, 94, 0, perm);
    size_t nq = (size_t)cfg.queue_size * m->dim, np = m->q->param_count;
    float *queue = malloc(sizeof(float) * nq), *k_param = malloc(sizeof(float) * np);
    float *grad = malloc(sizeof(float) * np);
    CHECK(queue && k_param && grad);
    memcpy(queue, m->queue, sizeof(float) * nq);
    int64_t queue_ptr = m->queue_ptr;
    moco_result res;
    CHECK_OK(moco_step(m, im_q, im_k, N, S, S, perm, NULL, &res, &err), &err);
    CHECK(m->queue_ptr == (queue_ptr + N) % cfg.queue_size);
    memcpy(grad, m->q->grad, sizeof(float) * np);
    /* The keys are constants of the loss (the original computes them under no_grad): hold the key
     * encoder at the value this step's momentum update gave it, and stop later steps moving it. */
    memcpy(k_param, m->k->param, sizeof(float) * np);
    m->cfg.key_momentum = 1;
    moco_case c = {m, im_q, im_k, k_param, queue, perm, queue_ptr, N, S, S};
    CHECK(fabs(moco_loss(&c) - res.loss) <= 1e-6 * res.loss); /* the restored state gives the same loss */
    int ntensors = sizeof probed_tensors / sizeof *probed_tensors;
    for (int k = 0; k < ntensors; k++) {
        const resnet_tensor *t = resnet_find(m->q, probed_tensors[k]);
        CHECK(t && !t->buffer);
        gradcheck g = {.loss = moco_loss, .ctx = &c, .step = 1e-4};
        probe_some(&g, m->q->param + t->offset, grad + t->offset, t->count, 5, 95 + k);
        char what[96];
        snprintf(what, sizeof what, "moco %s", probed_tensors[k]);
        CHECK_GRADIENTS(&g, what, 5e-2, 1);
    }
    free(queue), free(k_param), free(grad);
    moco_destroy(m);
}

int main(void)
{
    moco_error err;
    if (!(be = backend_create(2, &err))) {
        printf("FAIL backend_create: %s\n", err.msg);
        return 1;
    }
    RUN(test_conv2d_backward_matches_finite_differences);
    RUN(test_conv2d_winograd_matches_direct);
    RUN(test_batchnorm_backward_matches_finite_differences);
    RUN(test_batchnorm_relu_backward_matches_finite_differences);
    RUN(test_batchnorm_groups_normalise_each_slice_alone);
    RUN(test_batchnorm_groups_backward_matches_finite_differences);
    RUN(test_maxpool_backward_matches_finite_differences);
    RUN(test_avgpool_backward_matches_finite_differences);
    RUN(test_linear_backward_matches_finite_differences);
    RUN(test_l2norm_backward_matches_finite_differences);
    RUN(test_softmax_cross_entropy_gradient_matches_finite_differences_of_mean_loss);
    RUN(test_softmax_cross_entropy_counts_top1_and_top5);
    RUN(test_resnet18_cifar_stem_backward_matches_finite_differences);
    RUN(test_resnet18_imagenet_stem_backward_matches_finite_differences);
    RUN(test_forward_only_net_in_borrowed_scratch_matches_its_own);
    RUN(test_moco_query_gradient_matches_finite_differences_of_loss);
    RUN(test_conv2d_matches_reference_at_any_thread_count); /* these two make backends of their own */
    RUN(test_resnets_train_at_any_thread_count);
    backend_destroy(be);
    TEST_EXIT();
}
