/* check_math.c — cuda/math.cu's ops against their CPU twins (backend.c, moco.c, optim.c, batcher.c's
 * normalisation), on random data, in both precisions. Float32-only ops are held to float32
 * tolerances in the bf16 pass too; only activation outputs get tolerance(). Buffers are registered
 * as they are made and released after each test, so a failed CHECK leaks nothing. */
#include "check.h"

#include "optim.h"

/* element-wise products and sums of float32 are expected to match to rounding; longer reductions a
 * little less (the GPU sums in another order) */
#define TOL_ELEMENTWISE 1e-5
#define TOL_PRODUCT 1e-4

enum { MAX_OWNED = 64 };
static void *host_owned[MAX_OWNED], *dev_owned[MAX_OWNED];
static int host_count, dev_count;

static void *host_keep(void *p)
{
    if (p && host_count < MAX_OWNED)
        return host_owned[host_count++] = p;
    free(p);
    return NULL;
}
static void *dev_keep(void *p)
{
    if (p && dev_count < MAX_OWNED)
        return dev_owned[dev_count++] = p;
    gpu_free(g, p);
    return NULL;
}
static float *host_floats(size_t count) { return host_keep(calloc(count ? count : 1, sizeof(float))); }
static float *host_normal(size_t count, uint64_t seed)
{
    float *v = host_floats(count);
    if (v)
        fill_normal(v, count, seed, 0, 1);
    return v;
}
static float *keep_f32(const float *host, size_t count) { return dev_keep(dev_f32(host, count)); }
static void *keep_act(const float *host, size_t count) { return dev_keep(dev_act(host, count)); }
static void *keep_bytes(const void *host, size_t bytes)
{
    moco_error err;
    void *d = dev_keep(gpu_alloc(g, bytes, &err));
    if (d && host && gpu_upload(g, d, host, bytes, &err))
        return NULL; /* freed with the rest */
    return d;
}
static void release(void)
{
    while (host_count)
        free(host_owned[--host_count]);
    while (dev_count)
        gpu_free(g, dev_owned[--dev_count]);
}

/* Rows of `cols` values out of a device matrix of row stride ld, into host (rows, cols); the gaps
 * between must still hold `fill`. Returns 0 when the download worked and the gaps are intact. */
static int download_rows(const float *dev, int rows, int cols, int ld, float fill, float *host, moco_error *err)
{
    float *all = malloc(sizeof(float) * rows * ld);
    if (!all)
        return moco_fail(err, "out of memory");
    int rc = gpu_download(g, all, dev, sizeof(float) * rows * ld, err);
    for (int i = 0; !rc && i < rows; i++) {
        memcpy(host + (size_t)i * cols, all + (size_t)i * ld, sizeof(float) * cols);
        for (int j = cols; j < ld; j++)
            if (all[(size_t)i * ld + j] != fill)
                rc = moco_fail(err, "row %d column %d outside the product was written", i, j);
    }
    free(all);
    return rc;
}

enum { COUNT = 10007 }; /* odd, so no launch divides it evenly */

/* ---- element-wise on activations ---- */

TEST(test_relu_backward_zeroes_where_output_not_positive)
{
    moco_error err;
    float *y = host_normal(COUNT, 1), *dy = host_normal(COUNT, 2);
    CHECK(y && dy);
    y[0] = y[7] = 0; /* y = 0 blocks the gradient too */
    as_activations(y, COUNT);
    as_activations(dy, COUNT);
    void *d_y = keep_act(y, COUNT), *d_dy = keep_act(dy, COUNT);
    CHECK(d_y && d_dy);
    CHECK_OK(gpu_relu_backward(g, d_y, d_dy, COUNT, &err), &err);
    relu_backward(y, dy, COUNT);
    CHECK_DEVICE(d_dy, 1, dy, COUNT, tolerance(), "relu_backward");
}

TEST(test_add_inplace_matches_cpu)
{
    moco_error err;
    float *y = host_normal(COUNT, 5), *x = host_normal(COUNT, 6);
    CHECK(y && x);
    as_activations(y, COUNT);
    as_activations(x, COUNT);
    void *d_y = keep_act(y, COUNT), *d_x = keep_act(x, COUNT);
    CHECK(d_y && d_x);
    /* in two calls: the kernels move 16 bytes at a time where the pointers allow, and the second
     * call's pointers (5 values in) do not, so both ways and the short tail are covered */
    size_t head = 5, act = gpu_act_size(g);
    CHECK_OK(gpu_add_inplace(g, d_y, d_x, head, &err), &err);
    CHECK_OK(gpu_add_inplace(g, (char *)d_y + head * act, (char *)d_x + head * act, COUNT - head, &err), &err);
    add_inplace(y, x, COUNT);
    CHECK_DEVICE(d_y, 1, y, COUNT, tolerance(), "add_inplace");
}

/* ---- float32 products and the head ---- */

enum { LIN_N = 37, LIN_IN = 129, LIN_OUT = 65 };

TEST(test_linear_forward_with_and_without_bias)
{
    moco_error err;
    float *x = host_normal(LIN_N * LIN_IN, 7), *w = host_normal(LIN_OUT * LIN_IN, 8), *b = host_normal(LIN_OUT, 9);
    float *y = host_floats(LIN_N * LIN_OUT);
    CHECK(x && w && b && y);
    float *d_x = keep_f32(x, LIN_N * LIN_IN), *d_w = keep_f32(w, LIN_OUT * LIN_IN), *d_b = keep_f32(b, LIN_OUT);
    float *d_y = keep_f32(NULL, LIN_N * LIN_OUT);
    CHECK(d_x && d_w && d_b && d_y);
    CHECK_OK(gpu_linear_forward(g, d_x, LIN_N, LIN_IN, LIN_OUT, d_w, d_b, d_y, &err), &err);
    linear_forward(x, LIN_N, LIN_IN, LIN_OUT, w, b, y);
    CHECK_DEVICE(d_y, 0, y, LIN_N * LIN_OUT, TOL_PRODUCT, "linear_forward bias");
    CHECK_OK(gpu_linear_forward(g, d_x, LIN_N, LIN_IN, LIN_OUT, d_w, NULL, d_y, &err), &err);
    linear_forward(x, LIN_N, LIN_IN, LIN_OUT, w, NULL, y);
    CHECK_DEVICE(d_y, 0, y, LIN_N * LIN_OUT, TOL_PRODUCT, "linear_forward no bias");
}

TEST(test_linear_backward_with_and_without_bias_and_dx)
{
    moco_error err;
    float *x = host_normal(LIN_N * LIN_IN, 10), *w = host_normal(LIN_OUT * LIN_IN, 11);
    float *dy = host_normal(LIN_N * LIN_OUT, 12);
    float *dx = host_floats(LIN_N * LIN_IN), *dw = host_floats(LIN_OUT * LIN_IN), *db = host_floats(LIN_OUT);
    CHECK(x && w && dy && dx && dw && db);
    float *d_x = keep_f32(x, LIN_N * LIN_IN), *d_w = keep_f32(w, LIN_OUT * LIN_IN), *d_dy = keep_f32(dy, LIN_N * LIN_OUT);
    float *d_dx = keep_f32(NULL, LIN_N * LIN_IN), *d_dw = keep_f32(NULL, LIN_OUT * LIN_IN), *d_db = keep_f32(NULL, LIN_OUT);
    CHECK(d_x && d_w && d_dy && d_dx && d_dw && d_db);
    CHECK_OK(gpu_linear_backward(g, d_x, d_dy, LIN_N, LIN_IN, LIN_OUT, d_w, d_dx, d_dw, d_db, &err), &err);
    linear_backward(x, dy, LIN_N, LIN_IN, LIN_OUT, w, dx, dw, db);
    CHECK_DEVICE(d_dw, 0, dw, LIN_OUT * LIN_IN, TOL_PRODUCT, "linear_backward dW");
    CHECK_DEVICE(d_db, 0, db, LIN_OUT, TOL_PRODUCT, "linear_backward db");
    CHECK_DEVICE(d_dx, 0, dx, LIN_N * LIN_IN, TOL_PRODUCT, "linear_backward dx");
    /* without db and dx: dW alone, from a fresh gradient */
    fill_normal(dy, LIN_N * LIN_OUT, 13, 0, 1);
    CHECK_OK(gpu_upload(g, d_dy, dy, sizeof(float) * LIN_N * LIN_OUT, &err), &err);
    CHECK_OK(gpu_linear_backward(g, d_x, d_dy, LIN_N, LIN_IN, LIN_OUT, d_w, NULL, d_dw, NULL, &err), &err);
    linear_backward(x, dy, LIN_N, LIN_IN, LIN_OUT, w, NULL, dw, NULL);
    CHECK_DEVICE(d_dw, 0, dw, LIN_OUT * LIN_IN, TOL_PRODUCT, "linear_backward dW only");
}

TEST(test_relu_f32_and_its_backward)
{
    moco_error err;
    float *x = host_normal(COUNT, 14), *dy = host_normal(COUNT, 15);
    CHECK(x && dy);
    x[3] = 0;
    float *d_x = keep_f32(x, COUNT), *d_dy = keep_f32(dy, COUNT);
    CHECK(d_x && d_dy);
    CHECK_OK(gpu_relu_f32(g, d_x, COUNT, &err), &err);
    relu_forward(x, COUNT);
    CHECK_DEVICE(d_x, 0, x, COUNT, TOL_ELEMENTWISE, "relu_f32");
    CHECK_OK(gpu_relu_backward_f32(g, d_x, d_dy, COUNT, &err), &err);
    relu_backward(x, dy, COUNT);
    CHECK_DEVICE(d_dy, 0, dy, COUNT, TOL_ELEMENTWISE, "relu_backward_f32");
}

/* One product y (M,N) = alpha A B or A B^T, written into rows of stride ldy pre-filled with 7. */
static void matmul_case(int b_transposed, int ldy_extra, const char *what)
{
    enum { M = 33, K = 65, N = 47 };
    moco_error err;
    int ldy = N + ldy_extra;
    float alpha = 0.5f;
    float *a = host_normal(M * K, 16), *b = host_normal(K * N, 17), *want = host_floats(M * N), *got = host_floats(M * N);
    float *fill = host_floats((size_t)M * ldy);
    CHECK(a && b && want && got && fill);
    for (int i = 0; i < M * ldy; i++)
        fill[i] = 7.0f;
    float *d_a = keep_f32(a, M * K), *d_b = keep_f32(b, K * N), *d_y = keep_f32(fill, (size_t)M * ldy);
    CHECK(d_a && d_b && d_y);
    CHECK_OK(gpu_matmul(g, d_a, d_b, d_y, M, N, K, b_transposed, alpha, ldy, &err), &err);
    matmul(a, b, want, M, N, K, b_transposed, alpha);
    CHECK_OK(download_rows(d_y, M, N, ldy, 7.0f, got, &err), &err);
    double r = rel_error(got, want, M * N);
    printf("# %s/%s: largest relative error %.2g\n", what, gpu_get_precision(g) == GPU_BF16 ? "bf16" : "f32", r);
    CHECK(r <= TOL_PRODUCT);
}

TEST(test_matmul_both_transpositions_and_wider_rows)
{
    matmul_case(0, 0, "matmul A B");
    if (test_failed_flag)
        return;
    matmul_case(1, 0, "matmul A B^T");
    if (test_failed_flag)
        return;
    matmul_case(0, 5, "matmul A B, ldy N+5");
    if (test_failed_flag)
        return;
    matmul_case(1, 1, "matmul A B^T, ldy N+1");
}

enum { NORM_N = 19, NORM_D = 128 };

TEST(test_l2norm_forward_clamps_zero_rows)
{
    moco_error err;
    float *x = host_normal(NORM_N * NORM_D, 18), *y = host_floats(NORM_N * NORM_D), *norms = host_floats(NORM_N);
    CHECK(x && y && norms);
    memset(x + 3 * NORM_D, 0, sizeof(float) * NORM_D); /* its norm is the 1e-12 floor, its output zero */
    float *d_x = keep_f32(x, NORM_N * NORM_D), *d_y = keep_f32(NULL, NORM_N * NORM_D), *d_norms = keep_f32(NULL, NORM_N);
    CHECK(d_x && d_y && d_norms);
    CHECK_OK(gpu_l2norm_forward(g, d_x, NORM_N, NORM_D, d_y, d_norms, &err), &err);
    l2norm_forward(x, NORM_N, NORM_D, y, norms);
    CHECK_DEVICE(d_y, 0, y, NORM_N * NORM_D, TOL_ELEMENTWISE, "l2norm_forward");
    CHECK_DEVICE(d_norms, 0, norms, NORM_N, TOL_ELEMENTWISE, "l2norm_forward norms");
    float zero_norm;
    CHECK_OK(gpu_download(g, &zero_norm, d_norms + 3, sizeof zero_norm, &err), &err);
    CHECK(zero_norm == 1e-12f);
}

TEST(test_l2norm_backward_matches_cpu)
{
    moco_error err;
    float *x = host_normal(NORM_N * NORM_D, 19), *y = host_floats(NORM_N * NORM_D), *norms = host_floats(NORM_N);
    float *dy = host_normal(NORM_N * NORM_D, 20), *dx = host_floats(NORM_N * NORM_D);
    CHECK(x && y && norms && dy && dx);
    l2norm_forward(x, NORM_N, NORM_D, y, norms);
    float *d_y = keep_f32(y, NORM_N * NORM_D), *d_norms = keep_f32(norms, NORM_N), *d_dy = keep_f32(dy, NORM_N * NORM_D);
    float *d_dx = keep_f32(NULL, NORM_N * NORM_D);
    CHECK(d_y && d_norms && d_dy && d_dx);
    CHECK_OK(gpu_l2norm_backward(g, d_y, d_norms, d_dy, NORM_N, NORM_D, d_dx, &err), &err);
    l2norm_backward(y, norms, dy, NORM_N, NORM_D, dx);
    CHECK_DEVICE(d_dx, 0, dx, NORM_N * NORM_D, TOL_ELEMENTWISE, "l2norm_backward");
}

/* ---- softmax cross-entropy ---- */

enum { XENT_N = 20, XENT_C = 4097 };

/* Logits whose rows, by i mod 5, leave the label where chance puts it, make it the single largest,
 * tie it with the largest other logit, or make it the largest tied with 4 or 5 others: ties count
 * against the label, so those are top-5 but not top-1, top-5, and neither. */
static void xent_logits(float *logits, const int64_t *labels, uint64_t seed)
{
    fill_normal(logits, (size_t)XENT_N * XENT_C, seed, 0, 2);
    for (int i = 0; i < XENT_N; i++) {
        float *row = logits + (size_t)i * XENT_C;
        int label = (int)labels[i];
        float mx = -INFINITY;
        for (int j = 0; j < XENT_C; j++)
            if (j != label && row[j] > mx)
                mx = row[j];
        int mode = i % 5, ties = mode == 3 ? 4 : mode == 4 ? 5 : 0;
        if (mode == 1 || mode >= 3)
            row[label] = mx + 1;
        else if (mode == 2)
            row[label] = mx;
        for (int t = 0; t < ties; t++)
            row[(label + 1 + t) % XENT_C] = row[label];
    }
}

TEST(test_softmax_cross_entropy_loss_gradient_and_ties)
{
    moco_error err;
    size_t count = (size_t)XENT_N * XENT_C;
    int64_t labels[XENT_N];
    rng r;
    rng_init(&r, 21, 0, 0, 0);
    for (int i = 0; i < XENT_N; i++)
        labels[i] = i == 0 ? XENT_C - 1 : rng_below(&r, XENT_C); /* the last column too */
    float *logits = host_floats(count), *dlogits = host_floats(count);
    CHECK(logits && dlogits);
    xent_logits(logits, labels, 22);
    float *d_logits = keep_f32(logits, count), *d_dlogits = keep_f32(NULL, count), *d_result = keep_f32(NULL, 3);
    int64_t *d_labels = keep_bytes(labels, sizeof labels);
    CHECK(d_logits && d_dlogits && d_result && d_labels);
    CHECK_OK(gpu_softmax_cross_entropy(g, d_logits, XENT_N, XENT_C, d_labels, d_dlogits, d_result, &err), &err);
    int top1, top5;
    double loss = softmax_cross_entropy(logits, XENT_N, XENT_C, labels, dlogits, &top1, &top5);
    CHECK(top1 >= XENT_N / 5 && top5 >= 3 * XENT_N / 5 && top5 < XENT_N); /* the modes above took effect */
    float result[3];
    CHECK_OK(gpu_download(g, result, d_result, sizeof result, &err), &err);
    printf("# softmax_cross_entropy loss/%s: %.9g against %.9g, top1 %g/%d, top5 %g/%d\n",
           gpu_get_precision(g) == GPU_BF16 ? "bf16" : "f32", result[0], loss, result[1], top1, result[2], top5);
    CHECK(fabs(result[0] - loss) <= TOL_ELEMENTWISE * fabs(loss));
    CHECK(result[1] == (float)top1 && result[2] == (float)top5);
    CHECK_DEVICE(d_dlogits, 0, dlogits, count, TOL_PRODUCT, "softmax_cross_entropy dlogits");
    /* the result is zeroed by each call, not accumulated */
    CHECK_OK(gpu_softmax_cross_entropy(g, d_logits, XENT_N, XENT_C, d_labels, NULL, d_result, &err), &err);
    CHECK_OK(gpu_download(g, result, d_result, sizeof result, &err), &err);
    CHECK(fabs(result[0] - loss) <= TOL_ELEMENTWISE * fabs(loss));
    CHECK(result[1] == (float)top1 && result[2] == (float)top5);
}

TEST(test_softmax_cross_entropy_without_labels_takes_label_zero)
{
    moco_error err;
    size_t count = (size_t)XENT_N * XENT_C;
    int64_t zeros[XENT_N] = {0};
    float *logits = host_floats(count), *dlogits = host_floats(count);
    CHECK(logits && dlogits);
    xent_logits(logits, zeros, 23);
    float *d_logits = keep_f32(logits, count), *d_dlogits = keep_f32(NULL, count), *d_result = keep_f32(NULL, 3);
    CHECK(d_logits && d_dlogits && d_result);
    CHECK_OK(gpu_softmax_cross_entropy(g, d_logits, XENT_N, XENT_C, NULL, d_dlogits, d_result, &err), &err);
    int top1, top5;
    double loss = softmax_cross_entropy(logits, XENT_N, XENT_C, zeros, dlogits, &top1, &top5);
    float result[3];
    CHECK_OK(gpu_download(g, result, d_result, sizeof result, &err), &err);
    CHECK(fabs(result[0] - loss) <= TOL_ELEMENTWISE * fabs(loss));
    CHECK(result[1] == (float)top1 && result[2] == (float)top5);
    CHECK_DEVICE(d_dlogits, 0, dlogits, count, TOL_PRODUCT, "softmax_cross_entropy no labels dlogits");
}

/* ---- the MoCo step's own kernels ---- */

TEST(test_normalise_u8_matches_batcher_formula)
{
    enum { PIXELS = 1001, C = 3 };
    moco_error err;
    const double mean[3] = {0.485, 0.456, 0.406}, std[3] = {0.229, 0.224, 0.225}; /* as the header gives them */
    uint8_t x[PIXELS * C];
    float *want = host_floats(PIXELS * C);
    CHECK(want);
    rng r;
    rng_init(&r, 24, 0, 0, 0);
    for (int i = 0; i < PIXELS * C; i++) {
        x[i] = (uint8_t)(i < 256 ? (uint32_t)i : rng_below(&r, 256)); /* every value once */
        want[i] = (float)((x[i] / 255.0 - mean[i % C]) / std[i % C]);
    }
    uint8_t *d_x = keep_bytes(x, sizeof x);
    void *d_y = keep_act(NULL, PIXELS * C);
    CHECK(d_x && d_y);
    CHECK_OK(gpu_normalise_u8(g, d_x, PIXELS, C, mean, std, d_y, &err), &err);
    CHECK_DEVICE(d_y, 1, want, PIXELS * C, tolerance(), "normalise_u8");
    /* one pixel in: neither pointer is 16-byte aligned, so the values go one by one */
    void *d_y1 = keep_act(NULL, PIXELS * C);
    CHECK(d_y1);
    char *from = (char *)d_y1 + C * gpu_act_size(g);
    CHECK_OK(gpu_normalise_u8(g, d_x + C, PIXELS - 1, C, mean, std, from, &err), &err);
    CHECK_DEVICE(from, 1, want + C, (PIXELS - 1) * C, tolerance(), "normalise_u8 from an unaligned pixel");
}

/* Gather and scatter n of ROWS rows of row_bytes bytes, the source `offset` bytes into its buffer
 * (an odd offset forces byte copies, a row size not a multiple of 16 narrower words). */
static void rows_case(size_t row_bytes, size_t offset)
{
    enum { ROWS = 31, N = 23 };
    moco_error err;
    size_t bytes = ROWS * row_bytes + offset;
    uint8_t *src = host_keep(malloc(bytes)), *want = host_keep(malloc(bytes)), *got = host_keep(malloc(bytes));
    CHECK(src && want && got);
    rng r;
    rng_init(&r, 25, 0, row_bytes, (uint32_t)offset);
    for (size_t i = 0; i < bytes; i++)
        src[i] = (uint8_t)rng_u32(&r);
    int64_t perm[ROWS], index[N]; /* distinct rows: the first N of a permutation */
    for (int i = 0; i < ROWS; i++)
        perm[i] = i;
    for (int i = ROWS - 1; i > 0; i--) {
        int j = (int)rng_below(&r, (uint32_t)i + 1);
        int64_t t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
    memcpy(index, perm, sizeof index);
    uint8_t *d_src = keep_bytes(src, bytes), *d_dst = keep_bytes(NULL, bytes);
    int64_t *d_index = keep_bytes(index, sizeof index);
    CHECK(d_src && d_dst && d_index);
    /* gather: dst row i = src row index[i] */
    CHECK_OK(gpu_gather_rows(g, d_src + offset, d_index, N, row_bytes, d_dst, &err), &err);
    for (int i = 0; i < N; i++)
        memcpy(want + i * row_bytes, src + offset + index[i] * row_bytes, row_bytes);
    CHECK_OK(gpu_download(g, got, d_dst, N * row_bytes, &err), &err);
    CHECK(memcmp(got, want, N * row_bytes) == 0);
    /* scatter into a copy of the source: rows not named keep their bytes */
    CHECK_OK(gpu_copy(g, d_dst, d_src, bytes, &err), &err);
    memcpy(want, src, bytes);
    for (int i = 0; i < N; i++)
        memcpy(want + offset + index[i] * row_bytes, src + offset + (i + 5) * row_bytes, row_bytes);
    CHECK_OK(gpu_scatter_rows(g, d_src + offset + 5 * row_bytes, d_index, N, row_bytes, d_dst + offset, &err), &err);
    CHECK_OK(gpu_download(g, got, d_dst, bytes, &err), &err);
    CHECK(memcmp(got, want, bytes) == 0);
}

TEST(test_gather_and_scatter_rows_of_any_even_size)
{
    const size_t sizes[][2] = {{512, 0}, {12, 0}, {6, 0}, {64, 2}, {64, 1}};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        rows_case(sizes[i][0], sizes[i][1]);
        if (test_failed_flag)
            return;
    }
}

enum { MOCO_N = 17, MOCO_D = 128, MOCO_K = 1000 };

/* The logits as moco.c assembles them: q.k_i / tau, then q queue^T / tau, rows of K+1. */
TEST(test_positive_logits_and_negatives_assemble_the_logits)
{
    moco_error err;
    const float tau = 0.2f;
    const int ld = MOCO_K + 1;
    float *q = host_normal(MOCO_N * MOCO_D, 27), *k = host_normal(MOCO_N * MOCO_D, 28);
    float *queue = host_normal((size_t)MOCO_K * MOCO_D, 29), *norms = host_floats(MOCO_N);
    float *neg = host_floats((size_t)MOCO_N * MOCO_K), *want = host_floats((size_t)MOCO_N * ld);
    float *got = host_floats((size_t)MOCO_N * ld), *fill = host_floats((size_t)MOCO_N * ld);
    float *queue_norms = host_floats(MOCO_K);
    CHECK(q && k && queue && norms && neg && want && got && fill && queue_norms);
    l2norm_forward(q, MOCO_N, MOCO_D, q, norms); /* unit vectors, as MoCo's */
    l2norm_forward(k, MOCO_N, MOCO_D, k, norms);
    l2norm_forward(queue, MOCO_K, MOCO_D, queue, queue_norms);
    matmul(q, queue, neg, MOCO_N, MOCO_K, MOCO_D, 1, 1.0f);
    for (int i = 0; i < MOCO_N; i++) {
        float p = 0;
        for (int j = 0; j < MOCO_D; j++)
            p += q[i * MOCO_D + j] * k[i * MOCO_D + j];
        want[(size_t)i * ld] = p / tau;
        for (int j = 0; j < MOCO_K; j++)
            want[(size_t)i * ld + 1 + j] = neg[(size_t)i * MOCO_K + j] / tau;
    }
    for (int i = 0; i < MOCO_N * ld; i++)
        fill[i] = 7.0f;
    float *d_q = keep_f32(q, MOCO_N * MOCO_D), *d_k = keep_f32(k, MOCO_N * MOCO_D);
    float *d_queue = keep_f32(queue, (size_t)MOCO_K * MOCO_D), *d_logits = keep_f32(fill, (size_t)MOCO_N * ld);
    CHECK(d_q && d_k && d_queue && d_logits);
    /* the negatives land beside column 0, which the product leaves alone */
    CHECK_OK(gpu_matmul(g, d_q, d_queue, d_logits + 1, MOCO_N, MOCO_K, MOCO_D, 1, 1.0f / tau, ld, &err), &err);
    CHECK_OK(gpu_download(g, got, d_logits, sizeof(float) * MOCO_N * ld, &err), &err);
    for (int i = 0; i < MOCO_N; i++)
        CHECK(got[(size_t)i * ld] == 7.0f);
    /* and the positives fill column 0 */
    CHECK_OK(gpu_positive_logits(g, d_q, d_k, MOCO_N, MOCO_D, tau, d_logits, ld, &err), &err);
    CHECK_OK(gpu_download(g, got, d_logits, sizeof(float) * MOCO_N * ld, &err), &err);
    double r = rel_error(got, want, (size_t)MOCO_N * ld);
    printf("# positive_logits+matmul/%s: largest relative error %.2g\n",
           gpu_get_precision(g) == GPU_BF16 ? "bf16" : "f32", r);
    CHECK(r <= TOL_PRODUCT);
}

TEST(test_positive_backward_adds_the_positive_share)
{
    enum { K = 50 };
    moco_error err;
    const float tau = 0.2f;
    const int ld = K + 1;
    float *dlogits = host_normal(MOCO_N * ld, 30), *k = host_normal(MOCO_N * MOCO_D, 31);
    float *d_q = host_normal(MOCO_N * MOCO_D, 32);
    CHECK(dlogits && k && d_q);
    float *dev_dlogits = keep_f32(dlogits, MOCO_N * ld), *dev_k = keep_f32(k, MOCO_N * MOCO_D);
    float *dev_dq = keep_f32(d_q, MOCO_N * MOCO_D);
    CHECK(dev_dlogits && dev_k && dev_dq);
    CHECK_OK(gpu_positive_backward(g, dev_dlogits, ld, dev_k, MOCO_N, MOCO_D, tau, dev_dq, &err), &err);
    for (int i = 0; i < MOCO_N; i++) { /* as moco.c */
        float dpos = dlogits[i * ld] / tau;
        for (int j = 0; j < MOCO_D; j++)
            d_q[i * MOCO_D + j] += dpos * k[i * MOCO_D + j];
    }
    CHECK_DEVICE(dev_dq, 0, d_q, MOCO_N * MOCO_D, TOL_ELEMENTWISE, "positive_backward");
}

TEST(test_momentum_update_matches_moco)
{
    moco_error err;
    const double key_momentum = 0.999;
    float *k = host_normal(COUNT, 33), *q = host_normal(COUNT, 34);
    CHECK(k && q);
    float *d_k = keep_f32(k, COUNT), *d_q = keep_f32(q, COUNT);
    CHECK(d_k && d_q);
    CHECK_OK(gpu_momentum_update(g, d_k, d_q, COUNT, key_momentum, &err), &err);
    float mf = (float)key_momentum, af = (float)(1.0 - key_momentum); /* as moco_momentum_update */
    for (size_t i = 0; i < COUNT; i++)
        k[i] = k[i] * mf + af * q[i];
    CHECK_DEVICE(d_k, 0, k, COUNT, TOL_ELEMENTWISE, "momentum_update");
}

TEST(test_sgd_step_matches_optim_over_two_steps)
{
    moco_error err;
    const double rates[2] = {0.03, 0.024};
    float *param = host_normal(COUNT, 35), *grad = host_normal(COUNT, 36);
    CHECK(param && grad);
    sgd opt;
    CHECK_OK(sgd_init(&opt, COUNT, 0.9, 1e-4, &err), &err);
    host_keep(opt.buf); /* freed with the rest */
    float *d_param = keep_f32(param, COUNT), *d_grad = keep_f32(grad, COUNT), *d_buf = keep_f32(NULL, COUNT);
    float *d_lr = keep_f32(NULL, 1);
    CHECK(d_param && d_grad && d_buf && d_lr);
    CHECK_OK(gpu_zero(g, d_buf, sizeof(float) * COUNT, &err), &err);
    for (int step = 0; step < 2; step++) {
        if (step) { /* a new gradient, so the momentum buffer carries the first */
            fill_normal(grad, COUNT, 37, 0, 1);
            CHECK_OK(gpu_upload(g, d_grad, grad, sizeof(float) * COUNT, &err), &err);
        }
        float lr = (float)rates[step];
        CHECK_OK(gpu_upload(g, d_lr, &lr, sizeof lr, &err), &err);
        CHECK_OK(gpu_sgd_step(g, d_param, d_grad, d_buf, COUNT, d_lr, (float)opt.momentum, (float)opt.weight_decay, &err),
                 &err);
        sgd_step(&opt, param, grad, rates[step]);
    }
    CHECK_DEVICE(d_param, 0, param, COUNT, TOL_ELEMENTWISE, "sgd_step param");
    CHECK_DEVICE(d_buf, 0, opt.buf, COUNT, TOL_ELEMENTWISE, "sgd_step momentum buffer");
}

TEST(test_enqueue_wraps_around_and_advances_the_pointer)
{
    enum { K = 10, D = 7, MAX_KEYS = 13 };
    moco_error err;
    float *queue = host_normal(K * D, 38), *keys = host_normal(MAX_KEYS * D, 39);
    CHECK(queue && keys);
    float *d_queue = keep_f32(queue, K * D), *d_keys = keep_f32(keys, MAX_KEYS * D);
    int64_t ptr = 8, got_ptr;
    int64_t *d_ptr = keep_bytes(&ptr, sizeof ptr);
    CHECK(d_queue && d_keys && d_ptr);
    const int batches[] = {4, 4, MAX_KEYS}; /* rows 8 9 0 1; then 2..5; then more keys than rows */
    for (int b = 0; b < 3; b++) {
        CHECK_OK(gpu_enqueue(g, d_queue, K, D, d_keys, batches[b], d_ptr, &err), &err);
        for (int i = 0; i < batches[b]; i++) { /* as moco.c */
            memcpy(queue + ptr * D, keys + i * D, sizeof(float) * D);
            ptr = (ptr + 1) % K;
        }
        CHECK_OK(gpu_download(g, &got_ptr, d_ptr, sizeof got_ptr, &err), &err);
        CHECK(got_ptr == ptr);
        CHECK_DEVICE(d_queue, 0, queue, K * D, 0.0, "enqueue");
    }
}

#define RUN_RELEASED(name)                                                                         \
    do {                                                                                           \
        RUN(name);                                                                                 \
        release();                                                                                 \
    } while (0)

static void run_all(void)
{
    RUN_RELEASED(test_relu_backward_zeroes_where_output_not_positive);
    RUN_RELEASED(test_add_inplace_matches_cpu);
    RUN_RELEASED(test_linear_forward_with_and_without_bias);
    RUN_RELEASED(test_linear_backward_with_and_without_bias_and_dx);
    RUN_RELEASED(test_relu_f32_and_its_backward);
    RUN_RELEASED(test_matmul_both_transpositions_and_wider_rows);
    RUN_RELEASED(test_l2norm_forward_clamps_zero_rows);
    RUN_RELEASED(test_l2norm_backward_matches_cpu);
    RUN_RELEASED(test_softmax_cross_entropy_loss_gradient_and_ties);
    RUN_RELEASED(test_softmax_cross_entropy_without_labels_takes_label_zero);
    RUN_RELEASED(test_normalise_u8_matches_batcher_formula);
    RUN_RELEASED(test_gather_and_scatter_rows_of_any_even_size);
    RUN_RELEASED(test_positive_logits_and_negatives_assemble_the_logits);
    RUN_RELEASED(test_positive_backward_adds_the_positive_share);
    RUN_RELEASED(test_momentum_update_matches_moco);
    RUN_RELEASED(test_sgd_step_matches_optim_over_two_steps);
    RUN_RELEASED(test_enqueue_wraps_around_and_advances_the_pointer);
}

CHECK_MAIN(run_all)
