/* check_resnet.c — the GPU ResNet (cuda/resnet.cu) against the CPU one (libcommon/resnet.c): the
 * same host net uploaded, the same input, a training forward in BN groups, the backward from the
 * same output gradient, and an evaluation forward; outputs, every parameter gradient and the
 * running statistics compared. Float32 within 2e-4 (gradients through 20 layers), or within four
 * times the CPU's own spread where that is wider: an untrained ResNet-50 with batch norm over a
 * few values is chaotic in float32 (a 16-thread CPU run and a 1-thread one differ by 7% on some
 * gradients), so the CPU run again with half its inputs moved by one ulp says how close two
 * correct computations come. bf16 reported (check.h's whole_net_tolerance says why). */
#include "check.h"

#include "resnet.h"

/* BN weights, biases and running statistics away from their initial 1/0, as after some training. */
static void randomise_batchnorm(resnet *net, uint64_t seed)
{
    for (int i = 0; i < net->ntensors; i++) {
        const resnet_tensor *t = &net->tensors[i];
        if (t->rank != 1 || !strncmp(t->name, "fc", 2))
            continue;
        float *v = (t->buffer ? net->buffer : net->param) + t->offset;
        int var = strstr(t->name, "running_var") != NULL, weight = strstr(t->name, ".weight") != NULL;
        fill_normal(v, t->count, seed + (uint64_t)i, var || weight ? 1 : 0, 0.2);
        for (size_t j = 0; var && j < t->count; j++)
            v[j] = fabsf(v[j]) + 0.1f;
    }
}

/* The net every comparison starts from: initialised, its batch norms randomised. NULL and err on
 * failure. */
static resnet *reference_net(const resnet_config *cfg, moco_error *err)
{
    resnet *net = resnet_create(be, cfg, 1, err);
    if (net) {
        resnet_init(net, 3);
        randomise_batchnorm(net, 4);
    }
    return net;
}

/* The largest relative error over the parameter gradients and running statistics of a and b;
 * `beyond` (when not NULL) counts the tensors whose error passes `bound`. */
static double worst_tensor_beyond(const resnet *a, const resnet *b, const char **name, double bound, int *beyond)
{
    double worst = 0;
    for (int i = 0; i < a->ntensors; i++) {
        const resnet_tensor *t = &a->tensors[i];
        const float *got = t->buffer ? a->buffer : a->grad, *want = t->buffer ? b->buffer : b->grad;
        double e = rel_error(got + t->offset, want + t->offset, t->count);
        if (e > worst)
            worst = e, *name = t->name;
        if (beyond && e > bound)
            ++*beyond;
    }
    return worst;
}

static double worst_tensor(const resnet *a, const resnet *b, const char **name)
{
    return worst_tensor_beyond(a, b, name, 0, NULL);
}

/* The CPU's own spread on this net: the same training forward and backward, on the same backend,
 * with every other input value moved by one ulp, against `cpu`'s (after its backward). */
static double cpu_spread(const resnet_config *cfg, const resnet *cpu, const float *x, const float *d_out, int n,
                         int size, int groups)
{
    moco_error err = {{0}};
    size_t nx = (size_t)n * size * size * cfg->in_channels;
    float *nudged = malloc(sizeof(float) * nx);
    resnet *twin = nudged ? reference_net(cfg, &err) : NULL;
    double spread = INFINITY;
    const char *name = "";
    if (twin) {
        for (size_t i = 0; i < nx; i++)
            nudged[i] = i % 2 ? x[i] : nextafterf(x[i], INFINITY);
        if (!resnet_forward(twin, nudged, n, size, size, 1, groups, &err) && !resnet_backward(twin, d_out, &err))
            spread = worst_tensor(twin, cpu, &name);
        resnet_destroy(twin);
    }
    free(nudged);
    printf("# resnet-%d, the CPU with its input moved by one ulp: largest relative error %.2g (%s)\n", cfg->depth,
           spread, name);
    return spread;
}

/* Float32: the share of tensors that may pass the bound, and by how much (see check_net). */
#define MOST_FLIPPED 0.25
#define FLIPPED_TENSOR_ERROR 0.2

static void check_net(const resnet_config *cfg, int n, int size, int groups)
{
    moco_error err = {{0}};
    double tol = whole_net_tolerance(2e-4);
    resnet *cpu = reference_net(cfg, &err), *back = resnet_create(be, cfg, 1, &err);
    CHECK_OK(cpu && back ? 0 : -1, &err);
    gpu_resnet *dev = gpu_resnet_create(g, cpu, 1, &err);
    CHECK_OK(dev ? 0 : -1, &err);
    size_t nx = (size_t)n * size * size * cfg->in_channels, nout = (size_t)n * cfg->out_dim;
    float *x = malloc(sizeof(float) * nx), *d_out = malloc(sizeof(float) * nout);
    CHECK(x && d_out);
    fill_normal(x, nx, 5, 0, 1);
    as_activations(x, nx);
    fill_normal(d_out, nout, 6, 0, 1.0 / n);
    void *dx = dev_act(x, nx);
    float *dd_out = dev_f32(d_out, nout);
    CHECK(dx && dd_out);

    /* training forward and backward */
    CHECK_OK(resnet_forward(cpu, x, n, size, size, 1, groups, &err), &err);
    CHECK_OK(gpu_resnet_forward(dev, dx, n, size, size, 1, groups, &err), &err);
    CHECK_DEVICE(gpu_resnet_output(dev), 0, cpu->output, nout, tol, "resnet train output");
    CHECK_OK(resnet_backward(cpu, d_out, &err), &err);
    CHECK_OK(gpu_resnet_backward(dev, dd_out, &err), &err);
    CHECK_OK(gpu_sync(g, &err), &err);
    CHECK_OK(gpu_resnet_download(dev, back, &err), &err);
    /* The spread is measured only where there is a bound to widen (float32). Some tensors may
     * stray beyond it by more: the order of a sum decides the sign of a pre-ReLU value within a
     * rounding of zero, and such a flip moves one element's whole gradient, and with it every
     * gradient upstream. When only the order of the GPU's batch-norm sums changed, one flip in
     * layer1.2 of this width-8 ResNet-50 moved layer1.2.bn3.bias by 7% of its largest value and
     * the 32 tensors before it by 0.1-5%. A wrong buffer or a lost term moves most tensors, or
     * moves them by more. */
    double bound = isinf(tol) ? tol : fmax(tol, 4 * cpu_spread(cfg, cpu, x, d_out, n, size, groups));
    const char *worst_name = "";
    int beyond = 0;
    double worst = worst_tensor_beyond(back, cpu, &worst_name, bound, &beyond);
    printf("# resnet-%d gradients and running statistics/%s: largest relative error %.2g (%s), %d tensor(s) beyond "
           "%.2g\n", cfg->depth, gpu_get_precision(g) == GPU_BF16 ? "bf16" : "f32", worst, worst_name, beyond, bound);
    CHECK(isinf(tol) || (beyond <= back->ntensors * MOST_FLIPPED && worst <= FLIPPED_TENSOR_ERROR));
    CHECK(back->num_batches_tracked == cpu->num_batches_tracked);

    /* evaluation forward with the running statistics */
    CHECK_OK(resnet_forward(cpu, x, n, size, size, 0, 1, &err), &err);
    CHECK_OK(gpu_resnet_forward(dev, dx, n, size, size, 0, 1, &err), &err);
    CHECK_DEVICE(gpu_resnet_output(dev), 0, cpu->output, nout, tol, "resnet eval output");

    gpu_free(g, dx);
    gpu_free(g, dd_out);
    free(x), free(d_out);
    gpu_resnet_destroy(dev);
    resnet_destroy(cpu);
    resnet_destroy(back);
}

/* MoCo's key encoder keeps its activations in the query's backward scratch (gpu_resnet_borrow_scratch):
 * it allocates no activations of its own, its output is the CPU's, and the query's backward after
 * it still is too. */
TEST(test_forward_only_net_in_borrowed_scratch_matches_cpu)
{
    moco_error err = {{0}};
    resnet_config cfg = {.depth = 18, .width = 8, .in_channels = 3, .cifar_stem = 1, .head = RESNET_HEAD_MLP, .out_dim = 16};
    enum { N = 8, SIZE = 16, GROUPS = 2 };
    double tol = whole_net_tolerance(2e-4);
    resnet *cpu = reference_net(&cfg, &err), *cpu_k = reference_net(&cfg, &err), *back = resnet_create(be, &cfg, 1, &err);
    CHECK_OK(cpu && cpu_k && back ? 0 : -1, &err);
    gpu_resnet *q = gpu_resnet_create(g, cpu, 1, &err), *k = gpu_resnet_create(g, cpu, 0, &err);
    CHECK_OK(q && k ? 0 : -1, &err);
    gpu_resnet_borrow_scratch(k, q);
    size_t nx = (size_t)N * SIZE * SIZE * 3, nout = (size_t)N * cfg.out_dim;
    float *x = malloc(sizeof(float) * nx), *xk = malloc(sizeof(float) * nx), *d_out = malloc(sizeof(float) * nout);
    CHECK(x && xk && d_out);
    fill_normal(x, nx, 7, 0, 1);
    fill_normal(xk, nx, 8, 0, 1);
    as_activations(x, nx);
    as_activations(xk, nx);
    fill_normal(d_out, nout, 9, 0, 1.0 / N);
    void *dx = dev_act(x, nx), *dxk = dev_act(xk, nx);
    float *dd_out = dev_f32(d_out, nout);
    CHECK(dx && dxk && dd_out);

    CHECK_OK(resnet_forward(cpu, x, N, SIZE, SIZE, 1, GROUPS, &err), &err);
    CHECK_OK(gpu_resnet_forward(q, dx, N, SIZE, SIZE, 1, GROUPS, &err), &err);
    CHECK_OK(gpu_sync(g, &err), &err);
    size_t before = gpu_peak_bytes(g), slot = (size_t)N * SIZE * SIZE * cfg.width * gpu_act_size(g);
    CHECK_OK(resnet_forward(cpu_k, xk, N, SIZE, SIZE, 1, GROUPS, &err), &err);
    CHECK_OK(gpu_resnet_forward(k, dxk, N, SIZE, SIZE, 1, GROUPS, &err), &err);
    CHECK_OK(gpu_sync(g, &err), &err);
    size_t borrowing = gpu_peak_bytes(g) - before;
    CHECK_DEVICE(gpu_resnet_output(k), 0, cpu_k->output, nout, tol, "forward in borrowed scratch: output");
    /* the same net without a lender, for its memory: three activation buffers more */
    gpu_resnet *own = gpu_resnet_create(g, cpu, 0, &err);
    CHECK_OK(own ? 0 : -1, &err);
    before = gpu_peak_bytes(g);
    int rc = gpu_resnet_forward(own, dxk, N, SIZE, SIZE, 1, GROUPS, &err) || gpu_sync(g, &err);
    size_t owning = gpu_peak_bytes(g) - before;
    gpu_resnet_destroy(own);
    CHECK_OK(rc, &err);
    printf("# a forward-only net's first forward allocated %zu bytes in borrowed scratch, %zu on its own (an "
           "activation buffer: %zu)\n", borrowing, owning, slot);
    CHECK(borrowing + 3 * slot <= owning);

    CHECK_OK(resnet_backward(cpu, d_out, &err), &err);
    CHECK_OK(gpu_resnet_backward(q, dd_out, &err), &err);
    CHECK_OK(gpu_sync(g, &err), &err);
    CHECK_OK(gpu_resnet_download(q, back, &err), &err);
    const char *name = "";
    double worst = worst_tensor(back, cpu, &name);
    printf("# the lender's gradients after it/%s: largest relative error %.2g (%s)\n",
           gpu_get_precision(g) == GPU_BF16 ? "bf16" : "f32", worst, name);
    CHECK(worst <= tol);

    gpu_free(g, dx), gpu_free(g, dxk), gpu_free(g, dd_out);
    free(x), free(xk), free(d_out);
    gpu_resnet_destroy(k), gpu_resnet_destroy(q);
    resnet_destroy(cpu), resnet_destroy(cpu_k), resnet_destroy(back);
}

TEST(test_resnet18_cifar_stem_matches_cpu)
{
    resnet_config cfg = {.depth = 18, .width = 8, .in_channels = 3, .cifar_stem = 1, .head = RESNET_HEAD_MLP, .out_dim = 16};
    check_net(&cfg, 8, 16, 2);
}

TEST(test_resnet50_imagenet_stem_matches_cpu)
{
    resnet_config cfg = {.depth = 50, .width = 8, .in_channels = 3, .cifar_stem = 0, .head = RESNET_HEAD_MLP, .out_dim = 16};
    check_net(&cfg, 4, 64, 1);
}

TEST(test_resnet18_grey_linear_head_matches_cpu)
{
    resnet_config cfg = {.depth = 18, .width = 4, .in_channels = 1, .cifar_stem = 1, .head = RESNET_HEAD_LINEAR, .out_dim = 10};
    check_net(&cfg, 8, 28, 4);
}

static void run_all(void)
{
    RUN(test_resnet18_cifar_stem_matches_cpu);
    RUN(test_forward_only_net_in_borrowed_scratch_matches_cpu);
    RUN(test_resnet50_imagenet_stem_matches_cpu);
    RUN(test_resnet18_grey_linear_head_matches_cpu);
}

CHECK_MAIN(run_all)
