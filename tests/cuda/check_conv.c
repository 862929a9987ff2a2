/* check_conv.c — cuda/conv.cu against backend.h's conv2d: forward (y) and backward (dx, dweight) on
 * random data, for each convolution shape a ResNet has (3x3 stride 1 and 2, the 1x1 projections,
 * the 7x7 RGB stem) and the odd ones (one input channel), with algorithm re-choice on a new batch
 * size and the first layer's backward without dx. Needs a GPU; see check.h. */
#include "check.h"

typedef struct {
    int in_c, out_c, kernel, stride, pad;
} conv_shape;

/* Host and device buffers of one comparison; all zero = nothing allocated. */
typedef struct {
    float *x, *weight, *dy, *y, *dx, *dweight; /* host: inputs and the CPU's results */
    void *x_dev, *dy_dev, *y_dev, *dx_dev;     /* device activations */
    float *weight_dev, *dweight_dev;           /* device float32 */
} conv_data;

static void conv_data_free(conv_data *d)
{
    free(d->x), free(d->weight), free(d->dy), free(d->y), free(d->dx), free(d->dweight);
    gpu_free(g, d->x_dev), gpu_free(g, d->dy_dev), gpu_free(g, d->y_dev), gpu_free(g, d->dx_dev);
    gpu_free(g, d->weight_dev), gpu_free(g, d->dweight_dev);
}

/* One forward and backward at input (n, h, w) on both backends, compared. The caller frees d
 * whatever happens (a failed CHECK returns early). */
static void compare(conv2d *cpu, gpu_conv *gc, conv_shape s, int n, int h, int w, int with_dx, uint64_t seed,
                    conv_data *d)
{
    moco_error err;
    int oh = conv2d_out_size(h, s.kernel, s.stride, s.pad), ow = conv2d_out_size(w, s.kernel, s.stride, s.pad);
    size_t xc = (size_t)n * h * w * s.in_c, yc = (size_t)n * oh * ow * s.out_c,
           wc = (size_t)s.out_c * s.in_c * s.kernel * s.kernel;
    d->x = malloc(xc * sizeof(float)), d->dx = malloc(xc * sizeof(float));
    d->y = malloc(yc * sizeof(float)), d->dy = malloc(yc * sizeof(float));
    d->weight = malloc(wc * sizeof(float)), d->dweight = malloc(wc * sizeof(float));
    CHECK(d->x && d->dx && d->y && d->dy && d->weight && d->dweight);
    fill_normal(d->x, xc, seed, 0, 1);
    fill_normal(d->weight, wc, seed + 1, 0, 1);
    fill_normal(d->dy, yc, seed + 2, 0, 1);
    /* The GPU holds x and dy as activations and converts the weight to the activation type for
     * cuDNN: in bf16 the CPU starts from the same rounded values, so only the arithmetic differs. */
    as_activations(d->x, xc);
    as_activations(d->dy, yc);
    as_activations(d->weight, wc);

    CHECK_OK(conv2d_forward(cpu, d->x, n, h, w, d->weight, d->y, &err), &err);
    CHECK_OK(conv2d_backward(cpu, d->x, d->weight, d->dy, with_dx ? d->dx : NULL, d->dweight, &err), &err);

    d->x_dev = dev_act(d->x, xc);
    d->dy_dev = dev_act(d->dy, yc);
    d->y_dev = dev_act(NULL, yc);
    d->weight_dev = dev_f32(d->weight, wc);
    /* dx and dweight start as garbage (x and the weight): a backward that accumulated would show */
    d->dx_dev = with_dx ? dev_act(d->x, xc) : NULL;
    d->dweight_dev = dev_f32(d->weight, wc);
    CHECK(d->x_dev && d->dy_dev && d->y_dev && d->weight_dev && d->dweight_dev && (d->dx_dev || !with_dx));

    CHECK_OK(gpu_conv_forward(gc, d->x_dev, n, h, w, d->weight_dev, d->y_dev, &err), &err);
    CHECK_OK(gpu_conv_backward(gc, d->x_dev, d->weight_dev, d->dy_dev, d->dx_dev, d->dweight_dev, &err), &err);
    CHECK_OK(gpu_sync(g, &err), &err);

    char what[160];
    snprintf(what, sizeof what, "conv %dx%d/%d pad %d %d->%d on %dx%dx%d", s.kernel, s.kernel, s.stride, s.pad,
             s.in_c, s.out_c, n, h, w);
    char name[192];
    snprintf(name, sizeof name, "%s y", what);
    CHECK_DEVICE(d->y_dev, 1, d->y, yc, tolerance(), name);
    if (with_dx) {
        snprintf(name, sizeof name, "%s dx", what);
        CHECK_DEVICE(d->dx_dev, 1, d->dx, xc, tolerance(), name);
    }
    /* dweight is float32 but passes through cuDNN's bf16 filter gradient in bf16 mode: a rounding
     * of 2^-9 per element at most, well inside tolerance() since the inputs are the same values */
    snprintf(name, sizeof name, "%s dweight", what);
    CHECK_DEVICE(d->dweight_dev, 0, d->dweight, wc, tolerance(), name);
}

/* Compare the backends at each input shape (n, h, w) in turn, with one conv object per backend
 * throughout, so later inputs exercise the shape change. */
static void check_conv(conv_shape s, const int inputs[][3], int count, int with_dx)
{
    moco_error err;
    conv2d *cpu = conv2d_create(be, s.in_c, s.out_c, s.kernel, s.stride, s.pad, &err);
    CHECK_OK(cpu ? MOCO_OK : MOCO_ERR, &err);
    gpu_conv *gc = gpu_conv_create(g, s.in_c, s.out_c, s.kernel, s.stride, s.pad, &err);
    if (!gc)
        conv2d_destroy(cpu);
    CHECK_OK(gc ? MOCO_OK : MOCO_ERR, &err);
    for (int i = 0; i < count && !test_failed_flag; i++) {
        conv_data d;
        memset(&d, 0, sizeof d);
        compare(cpu, gc, s, inputs[i][0], inputs[i][1], inputs[i][2], with_dx, 1000 + 10 * (uint64_t)i, &d);
        conv_data_free(&d);
    }
    gpu_conv_destroy(gc);
    conv2d_destroy(cpu);
}

TEST(test_conv_3x3_stride1_pad1)
{
    static const int inputs[][3] = {{4, 8, 8}};
    check_conv((conv_shape){16, 32, 3, 1, 1}, inputs, 1, 1);
}

TEST(test_conv_3x3_stride2_pad1_odd_size)
{
    static const int inputs[][3] = {{2, 9, 9}};
    check_conv((conv_shape){16, 32, 3, 2, 1}, inputs, 1, 1);
}

TEST(test_conv_1x1_stride1)
{
    static const int inputs[][3] = {{8, 5, 5}};
    check_conv((conv_shape){32, 16, 1, 1, 0}, inputs, 1, 1);
}

/* ResNet's downsampling shortcut */
TEST(test_conv_1x1_stride2)
{
    static const int inputs[][3] = {{4, 8, 8}};
    check_conv((conv_shape){16, 32, 1, 2, 0}, inputs, 1, 1);
}

/* ResNet's stem on RGB */
TEST(test_conv_7x7_stride2_pad3_three_channels)
{
    static const int inputs[][3] = {{2, 16, 16}};
    check_conv((conv_shape){3, 16, 7, 2, 3}, inputs, 1, 1);
}

TEST(test_conv_3x3_one_input_channel)
{
    static const int inputs[][3] = {{3, 7, 7}};
    check_conv((conv_shape){1, 8, 3, 1, 1}, inputs, 1, 1);
}

/* A new batch size, then a new image size too: the algorithms are re-chosen and the results stay right. */
TEST(test_conv_new_shape_rechooses_algorithms)
{
    static const int inputs[][3] = {{4, 8, 8}, {2, 8, 8}, {6, 6, 10}};
    check_conv((conv_shape){8, 16, 3, 1, 1}, inputs, 3, 1);
}

/* The first layer needs no input gradient. */
TEST(test_conv_backward_without_dx)
{
    static const int inputs[][3] = {{4, 8, 8}};
    check_conv((conv_shape){16, 16, 3, 1, 1}, inputs, 1, 0);
}

TEST(test_conv_backward_before_forward_fails)
{
    moco_error err;
    gpu_conv *gc = gpu_conv_create(g, 8, 8, 3, 1, 1, &err);
    CHECK_OK(gc ? MOCO_OK : MOCO_ERR, &err);
    int rc = gpu_conv_backward(gc, NULL, NULL, NULL, NULL, NULL, &err);
    gpu_conv_destroy(gc);
    CHECK(rc != MOCO_OK);
    CHECK(strstr(err.msg, "forward") != NULL);
}

static void run_all(void)
{
    RUN(test_conv_3x3_stride1_pad1);
    RUN(test_conv_3x3_stride2_pad1_odd_size);
    RUN(test_conv_1x1_stride1);
    RUN(test_conv_1x1_stride2);
    RUN(test_conv_7x7_stride2_pad3_three_channels);
    RUN(test_conv_3x3_one_input_channel);
    RUN(test_conv_new_shape_rechooses_algorithms);
    RUN(test_conv_backward_without_dx);
    RUN(test_conv_backward_before_forward_fails);
}

CHECK_MAIN(run_all)
