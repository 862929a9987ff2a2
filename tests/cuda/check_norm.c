/* check_norm.c — batch norm (plain and fused with ReLU, one and several groups), max-pool and the
 * global average pool on the GPU against backend.c's (see check.h). Inputs get per-channel offsets
 * and spreads, so each channel has its own statistics and a large mean next to a small variance
 * tests the variance for cancellation. */
#include "check.h"

/* Standard normal values, then channel k of each (.., C) row scaled by a spread around `spread` and
 * moved by an offset drawn with standard deviation `offset`. Returns 0 when out of memory. */
static int fill_channels(float *v, size_t count, int c, uint64_t seed, double offset, double spread)
{
    float *shape = malloc(sizeof(float) * 2 * c);
    if (!shape)
        return 0;
    fill_normal(v, count, seed, 0, 1);
    fill_normal(shape, 2 * (size_t)c, seed + 1, 0, 1);
    for (size_t i = 0; i < count; i++) {
        size_t k = i % c;
        v[i] = (float)(offset * shape[k] + spread * exp(0.5 * shape[c + k]) * v[i]);
    }
    free(shape);
    return 1;
}

/* ---- batch norm, training: forward against the CPU, then backward ---- */

enum { NO_SHORTCUT, SHORTCUT, SHORTCUT_IN_PLACE }; /* a residual block's end: y = ReLU(BN(x) + s) */

typedef struct {
    int n, h, w, c, groups, fuse, in_place, shortcut;
    /* spreads of the channels' means of x and dy, in units of their typical deviation */
    double x_offset, dy_offset;
    size_t count;
    float *x, *y, *dy, *dx, *s, *weight, *bias, *running_mean, *running_var, *dweight, *dbias; /* host; CPU results */
    batchnorm *cpu;
    gpu_bn *dev;
    void *d_x, *d_y, *d_dy, *d_dx, *d_s;
    float *d_weight, *d_bias, *d_running_mean, *d_running_var, *d_dweight, *d_dbias;
} bn_case;

static void bn_train_compare(bn_case *t, const char *name)
{
    moco_error err;
    char what[96];
    int c = t->c;
    size_t count = t->count;
    CHECK(fill_channels(t->x, count, c, 11, t->x_offset, 1.0));
    as_activations(t->x, count);
    fill_normal(t->weight, c, 12, 1.0, 0.3);
    fill_normal(t->bias, c, 13, 0.0, 0.5);
    fill_normal(t->running_mean, c, 14, 0.0, 1.0);
    fill_normal(t->running_var, c, 15, 0.0, 1.0);
    for (int k = 0; k < c; k++)
        t->running_var[k] = 0.5f + fabsf(t->running_var[k]);
    CHECK(t->d_x = dev_act(t->x, count));
    CHECK(t->d_y = dev_act(NULL, count));
    if (t->shortcut) {
        CHECK(fill_channels(t->s, count, c, 17, 1.0, 1.0));
        as_activations(t->s, count);
        CHECK(t->d_s = dev_act(t->s, count));
    }
    void *d_y = t->shortcut == SHORTCUT_IN_PLACE ? t->d_s : t->d_y;
    CHECK(t->d_weight = dev_f32(t->weight, c));
    CHECK(t->d_bias = dev_f32(t->bias, c));
    CHECK(t->d_running_mean = dev_f32(t->running_mean, c));
    CHECK(t->d_running_var = dev_f32(t->running_var, c));
    CHECK(t->d_dweight = dev_f32(NULL, c));
    CHECK(t->d_dbias = dev_f32(NULL, c));
    CHECK(t->cpu = batchnorm_create(be, c, t->fuse, &err));
    CHECK(t->dev = gpu_bn_create(g, c, t->fuse, &err));

    CHECK_OK(batchnorm_forward_train(t->cpu, t->x, t->n, t->h, t->w, t->groups, t->weight, t->bias, t->y,
                                     t->running_mean, t->running_var, &err), &err);
    if (t->shortcut)
        add_relu_forward(t->y, t->s, count);
    CHECK_OK(gpu_bn_forward_train(t->dev, t->d_x, t->n, t->h, t->w, t->groups, t->d_weight, t->d_bias, t->d_s, d_y,
                                  t->d_running_mean, t->d_running_var, &err), &err);
    snprintf(what, sizeof what, "%s: y", name);
    CHECK_DEVICE(d_y, 1, t->y, count, tolerance(), what);
    snprintf(what, sizeof what, "%s: running_mean", name);
    CHECK_DEVICE(t->d_running_mean, 0, t->running_mean, (size_t)c, tolerance(), what);
    snprintf(what, sizeof what, "%s: running_var", name);
    CHECK_DEVICE(t->d_running_var, 0, t->running_var, (size_t)c, tolerance(), what);

    CHECK(fill_channels(t->dy, count, c, 16, t->dy_offset, 1.0));
    /* Where y is within a rounding of 0 the two backends may see opposite signs, and the ReLU masks
     * would disagree on an element carrying a whole gradient; no gradient there keeps the check about
     * batch norm, not about which side of zero a tie falls. */
    for (size_t i = 0; t->fuse && i < count; i++)
        if (fabsf(t->y[i]) < 1e-3f)
            t->dy[i] = 0;
    as_activations(t->dy, count);
    CHECK(t->d_dy = dev_act(t->dy, count));
    CHECK(t->d_dx = dev_act(NULL, count));
    CHECK_OK(batchnorm_backward(t->cpu, t->x, t->dy, t->weight, t->bias, t->dx, t->dweight, t->dbias, &err), &err);
    void *d_out = t->in_place ? t->d_dy : t->d_dx;
    CHECK_OK(gpu_bn_backward(t->dev, t->d_x, d_y, t->d_dy, t->d_weight, d_out, t->d_dweight, t->d_dbias, &err),
             &err);
    snprintf(what, sizeof what, "%s: dx", name);
    CHECK_DEVICE(d_out, 1, t->dx, count, tolerance(), what);
    snprintf(what, sizeof what, "%s: dweight", name);
    CHECK_DEVICE(t->d_dweight, 0, t->dweight, (size_t)c, tolerance(), what);
    snprintf(what, sizeof what, "%s: dbias", name);
    CHECK_DEVICE(t->d_dbias, 0, t->dbias, (size_t)c, tolerance(), what);
}

/* Allocate a case, compare, free everything whether or not the comparison passed. */
static void bn_case_run(int n, int h, int w, int c, int groups, int fuse, int in_place, int shortcut,
                        double x_offset, double dy_offset, const char *name)
{
    bn_case t = {.n = n, .h = h, .w = w, .c = c, .groups = groups, .fuse = fuse, .in_place = in_place,
                 .shortcut = shortcut, .x_offset = x_offset, .dy_offset = dy_offset, .count = (size_t)n * h * w * c};
    float **host[] = {&t.x, &t.y, &t.dy, &t.dx, &t.s};
    float **vec[] = {&t.weight, &t.bias, &t.running_mean, &t.running_var, &t.dweight, &t.dbias};
    int ok = 1;
    for (size_t i = 0; i < sizeof host / sizeof *host; i++)
        ok &= (*host[i] = malloc(sizeof(float) * t.count)) != NULL;
    for (size_t i = 0; i < sizeof vec / sizeof *vec; i++)
        ok &= (*vec[i] = malloc(sizeof(float) * c)) != NULL;
    if (ok)
        bn_train_compare(&t, name);
    else
        snprintf(test_fail_where, sizeof test_fail_where, "%s: out of memory", name), test_failed_flag = 1;
    for (size_t i = 0; i < sizeof host / sizeof *host; i++)
        free(*host[i]);
    for (size_t i = 0; i < sizeof vec / sizeof *vec; i++)
        free(*vec[i]);
    void *dev[] = {t.d_x, t.d_y, t.d_dy, t.d_dx, t.d_s, t.d_weight, t.d_bias, t.d_running_mean, t.d_running_var,
                   t.d_dweight, t.d_dbias};
    for (size_t i = 0; i < sizeof dev / sizeof *dev; i++)
        gpu_free(g, dev[i]);
    batchnorm_destroy(t.cpu);
    gpu_bn_destroy(t.dev);
}

static void bn_train_case(int n, int h, int w, int c, int groups, int fuse, int in_place, double x_offset,
                          double dy_offset, const char *name)
{
    bn_case_run(n, h, w, c, groups, fuse, in_place, NO_SHORTCUT, x_offset, dy_offset, name);
}

/* 80 channels: in f32 20 packs of 4, in bf16 10 packs of 8, so rows of 20 or 10 threads. */
TEST(test_bn_train_matches_cpu) { bn_train_case(16, 10, 10, 80, 1, 0, 0, 3.0, 0.5, "bn"); }
TEST(test_bn_train_relu_matches_cpu) { bn_train_case(16, 10, 10, 80, 1, 1, 0, 3.0, 0.5, "bn+relu"); }
TEST(test_bn_train_groups_matches_cpu) { bn_train_case(16, 9, 7, 96, 4, 0, 0, 3.0, 0.5, "bn 4 groups"); }
/* dx written over dy, as resnet.cu does for the stem */
TEST(test_bn_train_groups_relu_in_place_matches_cpu)
{
    bn_train_case(16, 9, 7, 96, 4, 1, 1, 3.0, 0.5, "bn+relu 4 groups");
}
/* Many chunks per channel (50176 values each) and means ten deviations from zero: the variance must
 * not cancel. dy is centred here: with both offset, dweight = sum dy (x - mean) / std is itself
 * ill-conditioned (a rounding of the mean, times sum dy), and oneDNN's float result strays 3e-4 from
 * the exact one (this backend's, run in emulation: 2e-5), which would test the reference. */
TEST(test_bn_train_large_batch_matches_cpu)
{
    bn_train_case(64, 28, 28, 64, 1, 1, 0, 10.0, 0.0, "bn+relu 64x28x28x64");
}
TEST(test_bn_train_large_batch_groups_matches_cpu)
{
    bn_train_case(64, 28, 28, 64, 4, 0, 0, 10.0, 0.0, "bn 64x28x28x64 4 groups");
}

/* 30 channels come in no packs: a thread per channel, the last tile of 32 partly used. */
TEST(test_bn_train_unpacked_channels_matches_cpu) { bn_train_case(8, 6, 5, 30, 2, 1, 0, 3.0, 0.5, "bn+relu 30 ch"); }
/* A residual block's end, y = ReLU(BN(x) + s): into its own buffer, and over the shortcut. */
TEST(test_bn_train_shortcut_matches_cpu)
{
    bn_case_run(16, 10, 10, 64, 1, 0, 0, SHORTCUT, 3.0, 0.5, "bn+shortcut");
}
TEST(test_bn_train_shortcut_in_place_matches_cpu)
{
    bn_case_run(16, 9, 7, 96, 4, 0, 1, SHORTCUT_IN_PLACE, 3.0, 0.5, "bn+shortcut in place, 4 groups");
}

TEST(test_bn_rejects_uneven_groups)
{
    moco_error err;
    gpu_bn *bn = gpu_bn_create(g, 8, 0, &err);
    CHECK(bn);
    int rc = gpu_bn_forward_train(bn, NULL, 6, 4, 4, 4, NULL, NULL, NULL, NULL, NULL, NULL, &err);
    gpu_bn_destroy(bn);
    CHECK(rc != 0);
    CHECK(strstr(err.msg, "6x4x4"));
}

TEST(test_bn_backward_needs_forward)
{
    moco_error err;
    gpu_bn *bn = gpu_bn_create(g, 8, 1, &err);
    CHECK(bn);
    int rc = gpu_bn_backward(bn, NULL, NULL, NULL, NULL, NULL, NULL, NULL, &err);
    gpu_bn_destroy(bn);
    CHECK(rc != 0);
}

/* ---- batch norm, evaluation ---- */

static void bn_eval_compare(int fuse, float *s, float *x, float *y, float *params, size_t count, int n, int h, int w,
                            int c, void **d_x, void **d_y, void **d_s, float **d_params, batchnorm **cpu, gpu_bn **dev)
{
    moco_error err;
    float *weight = params, *bias = params + c, *rmean = params + 2 * c, *rvar = params + 3 * c;
    CHECK(fill_channels(x, count, c, 21, 2.0, 1.0));
    as_activations(x, count);
    fill_normal(weight, c, 22, 1.0, 0.3);
    fill_normal(bias, c, 23, 0.0, 0.5);
    fill_normal(rmean, c, 24, 0.0, 2.0);
    fill_normal(rvar, c, 25, 0.0, 1.0);
    for (int k = 0; k < c; k++)
        rvar[k] = 0.5f + fabsf(rvar[k]);
    CHECK(*d_x = dev_act(x, count));
    CHECK(*d_y = dev_act(NULL, count));
    if (s) {
        CHECK(fill_channels(s, count, c, 26, 1.0, 1.0));
        as_activations(s, count);
        CHECK(*d_s = dev_act(s, count));
    }
    CHECK(*d_params = dev_f32(params, 4 * (size_t)c));
    CHECK(*cpu = batchnorm_create(be, c, fuse, &err));
    CHECK(*dev = gpu_bn_create(g, c, fuse, &err));
    CHECK_OK(batchnorm_forward_eval(*cpu, x, n, h, w, weight, bias, rmean, rvar, y, &err), &err);
    if (s)
        add_relu_forward(y, s, count);
    float *dp = *d_params;
    CHECK_OK(gpu_bn_forward_eval(*dev, *d_x, n, h, w, dp, dp + c, dp + 2 * c, dp + 3 * c, *d_s, *d_y, &err), &err);
    CHECK_DEVICE(*d_y, 1, y, count, tolerance(), s ? "bn+shortcut eval: y" : fuse ? "bn+relu eval: y" : "bn eval: y");
}

static void bn_eval_case(int fuse, int shortcut)
{
    int n = 8, h = 7, w = 9, c = 72;
    size_t count = (size_t)n * h * w * c;
    float *x = malloc(sizeof(float) * count), *y = malloc(sizeof(float) * count), *params = malloc(sizeof(float) * 4 * c);
    float *s = shortcut ? malloc(sizeof(float) * count) : NULL;
    void *d_x = NULL, *d_y = NULL, *d_s = NULL;
    float *d_params = NULL;
    batchnorm *cpu = NULL;
    gpu_bn *dev = NULL;
    if (x && y && params && (s || !shortcut))
        bn_eval_compare(fuse, s, x, y, params, count, n, h, w, c, &d_x, &d_y, &d_s, &d_params, &cpu, &dev);
    else
        snprintf(test_fail_where, sizeof test_fail_where, "bn eval: out of memory"), test_failed_flag = 1;
    free(x), free(y), free(s), free(params);
    gpu_free(g, d_x), gpu_free(g, d_y), gpu_free(g, d_s), gpu_free(g, d_params);
    batchnorm_destroy(cpu);
    gpu_bn_destroy(dev);
}

TEST(test_bn_eval_matches_cpu) { bn_eval_case(0, 0); }
TEST(test_bn_eval_relu_matches_cpu) { bn_eval_case(1, 0); }
TEST(test_bn_eval_shortcut_matches_cpu) { bn_eval_case(0, 1); }

/* ---- max-pool 3x3 stride 2 pad 1 ---- */

typedef struct {
    int n, h, w, c, oh, ow;
    size_t in_count, out_count;
    float *x, *y, *dy, *dx; /* host; CPU results */
    maxpool *cpu;
    void *d_x, *d_y, *d_dy, *d_dx;
} pool_case;

static void maxpool_compare(pool_case *t, const char *name)
{
    moco_error err;
    char what[96];
    CHECK(fill_channels(t->x, t->in_count, t->c, 31, 1.0, 1.0));
    as_activations(t->x, t->in_count);
    CHECK(fill_channels(t->dy, t->out_count, t->c, 32, 0.5, 1.0));
    as_activations(t->dy, t->out_count);
    CHECK(t->d_x = dev_act(t->x, t->in_count));
    CHECK(t->d_y = dev_act(NULL, t->out_count));
    CHECK(t->d_dy = dev_act(t->dy, t->out_count));
    CHECK(t->d_dx = dev_act(NULL, t->in_count));
    CHECK(t->cpu = maxpool_create(be, t->c, 3, 2, 1, &err));
    /* training = 1: the CPU keeps its argmax for maxpool_backward */
    CHECK_OK(maxpool_forward(t->cpu, t->x, t->n, t->h, t->w, t->y, 1, &err), &err);
    CHECK_OK(gpu_maxpool_forward(g, t->d_x, t->n, t->h, t->w, t->c, t->d_y, &err), &err);
    snprintf(what, sizeof what, "%s: y", name);
    CHECK_DEVICE(t->d_y, 1, t->y, t->out_count, tolerance(), what);
    CHECK_OK(maxpool_backward(t->cpu, t->dy, t->dx, &err), &err);
    CHECK_OK(gpu_maxpool_backward(g, t->d_x, t->d_dy, t->n, t->h, t->w, t->c, t->d_dx, &err), &err);
    snprintf(what, sizeof what, "%s: dx", name);
    CHECK_DEVICE(t->d_dx, 1, t->dx, t->in_count, tolerance(), what);
}

static void maxpool_case(int n, int h, int w, int c, const char *name)
{
    pool_case t = {.n = n, .h = h, .w = w, .c = c, .oh = conv2d_out_size(h, 3, 2, 1), .ow = conv2d_out_size(w, 3, 2, 1)};
    t.in_count = (size_t)n * h * w * c, t.out_count = (size_t)n * t.oh * t.ow * c;
    t.x = malloc(sizeof(float) * t.in_count), t.dx = malloc(sizeof(float) * t.in_count);
    t.y = malloc(sizeof(float) * t.out_count), t.dy = malloc(sizeof(float) * t.out_count);
    if (t.x && t.dx && t.y && t.dy)
        maxpool_compare(&t, name);
    else
        snprintf(test_fail_where, sizeof test_fail_where, "%s: out of memory", name), test_failed_flag = 1;
    free(t.x), free(t.y), free(t.dy), free(t.dx);
    gpu_free(g, t.d_x), gpu_free(g, t.d_y), gpu_free(g, t.d_dy), gpu_free(g, t.d_dx);
    maxpool_destroy(t.cpu);
}

TEST(test_maxpool_even_matches_cpu) { maxpool_case(4, 16, 12, 64, "maxpool 16x12"); }
/* odd sizes: the last window row and column hang over the padding, the last patch is cut */
TEST(test_maxpool_odd_matches_cpu) { maxpool_case(3, 15, 9, 40, "maxpool 15x9"); }
/* 6 channels come in no 16-byte packs: a thread per channel */
TEST(test_maxpool_unpacked_channels_matches_cpu) { maxpool_case(2, 11, 10, 6, "maxpool 11x10, 6 channels"); }

/* ---- global average pool ---- */

static void avgpool_compare(int n, int hw, int c, float *x, float *y, float *dy, float *dx, void **d_x, float **d_y,
                            float **d_dy, void **d_dx)
{
    moco_error err;
    size_t in_count = (size_t)n * hw * c, out_count = (size_t)n * c;
    CHECK(fill_channels(x, in_count, c, 41, 1.0, 1.0));
    as_activations(x, in_count);
    /* the pooled features and their gradient are float32 in both precisions */
    CHECK(fill_channels(dy, out_count, c, 42, 0.5, 1.0));
    CHECK(*d_x = dev_act(x, in_count));
    CHECK(*d_y = dev_f32(NULL, out_count));
    CHECK(*d_dy = dev_f32(dy, out_count));
    CHECK(*d_dx = dev_act(NULL, in_count));
    avgpool_forward(x, n, hw, c, y);
    CHECK_OK(gpu_avgpool_forward(g, *d_x, n, hw, c, *d_y, &err), &err);
    CHECK_DEVICE(*d_y, 0, y, out_count, tolerance(), "avgpool: y");
    avgpool_backward(dy, n, hw, c, dx);
    CHECK_OK(gpu_avgpool_backward(g, *d_dy, n, hw, c, *d_dx, &err), &err);
    CHECK_DEVICE(*d_dx, 1, dx, in_count, tolerance(), "avgpool: dx");
}

TEST(test_avgpool_matches_cpu)
{
    int n = 8, hw = 49, c = 72;
    size_t in_count = (size_t)n * hw * c, out_count = (size_t)n * c;
    float *x = malloc(sizeof(float) * in_count), *dx = malloc(sizeof(float) * in_count);
    float *y = malloc(sizeof(float) * out_count), *dy = malloc(sizeof(float) * out_count);
    void *d_x = NULL, *d_dx = NULL;
    float *d_y = NULL, *d_dy = NULL;
    if (x && dx && y && dy)
        avgpool_compare(n, hw, c, x, y, dy, dx, &d_x, &d_y, &d_dy, &d_dx);
    else
        snprintf(test_fail_where, sizeof test_fail_where, "avgpool: out of memory"), test_failed_flag = 1;
    free(x), free(dx), free(y), free(dy);
    gpu_free(g, d_x), gpu_free(g, d_y), gpu_free(g, d_dy), gpu_free(g, d_dx);
}

static void run_all(void)
{
    RUN(test_bn_train_matches_cpu);
    RUN(test_bn_train_relu_matches_cpu);
    RUN(test_bn_train_groups_matches_cpu);
    RUN(test_bn_train_groups_relu_in_place_matches_cpu);
    RUN(test_bn_train_large_batch_matches_cpu);
    RUN(test_bn_train_large_batch_groups_matches_cpu);
    RUN(test_bn_train_unpacked_channels_matches_cpu);
    RUN(test_bn_train_shortcut_matches_cpu);
    RUN(test_bn_train_shortcut_in_place_matches_cpu);
    RUN(test_bn_rejects_uneven_groups);
    RUN(test_bn_backward_needs_forward);
    RUN(test_bn_eval_matches_cpu);
    RUN(test_bn_eval_relu_matches_cpu);
    RUN(test_bn_eval_shortcut_matches_cpu);
    RUN(test_maxpool_even_matches_cpu);
    RUN(test_maxpool_odd_matches_cpu);
    RUN(test_maxpool_unpacked_channels_matches_cpu);
    RUN(test_avgpool_matches_cpu);
}

CHECK_MAIN(run_all)
