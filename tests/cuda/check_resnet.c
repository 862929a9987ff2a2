/* check_resnet.c — the GPU ResNet (cuda/resnet.cu) against the CPU one (libcommon/resnet.c): the
 * same host net uploaded, the same input, a training forward in BN groups, the backward from the
 * same output gradient, and an evaluation forward; outputs, every parameter gradient and the
 * running statistics compared. Float32 within 2e-4 (gradients through 20 layers); bf16 reported
 * (check.h's whole_net_tolerance says why). */
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

static void check_net(const resnet_config *cfg, int n, int size, int groups)
{
    moco_error err = {{0}};
    double tol = whole_net_tolerance(2e-4);
    resnet *cpu = resnet_create(be, cfg, 1, &err), *back = resnet_create(be, cfg, 1, &err);
    CHECK_OK(cpu && back ? 0 : -1, &err);
    resnet_init(cpu, 3);
    randomise_batchnorm(cpu, 4);
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
    double worst = 0;
    const char *worst_name = "";
    for (int i = 0; i < cpu->ntensors; i++) {
        const resnet_tensor *t = &cpu->tensors[i];
        const float *got = t->buffer ? back->buffer : back->grad, *want = t->buffer ? cpu->buffer : cpu->grad;
        double e = rel_error(got + t->offset, want + t->offset, t->count);
        if (e > worst)
            worst = e, worst_name = t->name;
    }
    printf("# resnet-%d gradients and running statistics/%s: largest relative error %.2g (%s)\n", cfg->depth,
           gpu_get_precision(g) == GPU_BF16 ? "bf16" : "f32", worst, worst_name);
    CHECK(worst <= tol);
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
    RUN(test_resnet50_imagenet_stem_matches_cpu);
    RUN(test_resnet18_grey_linear_head_matches_cpu);
}

CHECK_MAIN(run_all)
