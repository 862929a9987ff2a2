/* check_moco.c — the GPU MoCo step (cuda/moco.cu) with the GPU SGD step against libcommon's
 * moco_step and sgd_step: the same host model uploaded, the same u8 views normalised on each side,
 * the same permutations, three steps. Compared: the logits and loss of every step, the query
 * gradients of the first, and at the end the query and key encoders, the momentum buffers, the
 * queue and its pointer. The tiny ResNet of the parity fixtures (width 4, CIFAR stem, 16 px), with
 * a queue that wraps. Float32 within 1e-4 per op, 5e-4 after three steps; bf16: the loss within
 * 2e-2, the rest reported (check.h's whole_net_tolerance). */
#include "check.h"

#include "moco.h"
#include "optim.h"

enum { N = 8, S = 16, C = 3, VIEW = S * S * C, STEPS = 3, QUEUE = 20 };

static const resnet_config tiny = {.depth = 18, .width = 4, .in_channels = 3, .cifar_stem = 1,
                                   .head = RESNET_HEAD_MLP, .out_dim = 16};
static const double mean[3] = {0.485, 0.456, 0.406}, stdev[3] = {0.229, 0.224, 0.225};

TEST(test_moco_steps_match_cpu)
{
    moco_error err = {{0}};
    int bf16 = gpu_get_precision(g) == GPU_BF16;
    double tol_step = whole_net_tolerance(1e-4), tol_end = whole_net_tolerance(5e-4);
    double tol_loss = bf16 ? 2e-2 : 1e-4; /* the bound on the loss in bf16 */
    moco_config cfg = {.queue_size = QUEUE, .key_momentum = 0.99, .temperature = 0.2, .bn_groups = 2, .query_bn_groups = 1};
    moco *cpu = moco_create(be, &tiny, &cfg, &err), *back = moco_create(be, &tiny, &cfg, &err);
    CHECK_OK(cpu && back ? 0 : -1, &err);
    moco_init(cpu, 11);
    gpu_moco *dev = gpu_moco_create(g, cpu, &err);
    CHECK_OK(dev ? 0 : -1, &err);
    size_t np = cpu->q->param_count, nl = (size_t)N * (QUEUE + 1);
    sgd opt;
    CHECK_OK(sgd_init(&opt, np, 0.9, 1e-4, &err), &err);
    float *d_buf = dev_f32(NULL, np), *d_lr = dev_f32(NULL, 1), *d_result = dev_f32(NULL, 3);
    uint8_t *u8 = malloc(2 * N * VIEW);
    float *im = malloc(sizeof(float) * 2 * N * VIEW);
    moco_error e2;
    uint8_t *d_u8 = gpu_alloc(g, 2 * N * VIEW, &e2);
    void *d_im = dev_act(NULL, 2 * N * VIEW);
    CHECK(d_buf && d_lr && d_result && u8 && im && d_u8 && d_im);
    CHECK_OK(gpu_zero(g, d_buf, sizeof(float) * np, &err), &err);
    for (int step = 0; step < STEPS; step++) {
        random_views(u8, im, 2 * N * VIEW, C, mean, stdev, 12, (uint64_t)step);
        int64_t perm[N];
        moco_permutation(N, 13, step, perm);
        moco_result res;
        CHECK_OK(moco_step(cpu, im, im + N * VIEW, N, S, S, perm, NULL, &res, &err), &err);
        CHECK_OK(gpu_upload(g, d_u8, u8, 2 * N * VIEW, &err), &err);
        CHECK_OK(gpu_normalise_u8(g, d_u8, (size_t)2 * N * S * S, C, mean, stdev, d_im, &err), &err);
        char *im_k = (char *)d_im + (size_t)N * VIEW * gpu_act_size(g);
        CHECK_OK(gpu_moco_step(dev, d_im, im_k, N, S, S, perm, NULL, d_result, &err), &err);
        CHECK_DEVICE(gpu_moco_logits(dev), 0, cpu->logits, nl, tol_step, "moco logits");
        float result[3], want = (float)res.loss;
        CHECK_OK(gpu_download(g, result, d_result, sizeof result, &err), &err);
        printf("# moco step %d loss: GPU %.6f, CPU %.6f; top1 %g/%d\n", step, result[0], res.loss, result[1], res.top1);
        CHECK(rel_error(result, &want, 1) <= tol_loss);
        if (step == 0)
            CHECK_DEVICE(gpu_resnet_grad(gpu_moco_query(dev)), 0, cpu->q->grad, np, whole_net_tolerance(2e-4),
                         "moco query gradients");
        float lr = 0.5f;
        sgd_step(&opt, cpu->q->param, cpu->q->grad, lr);
        CHECK_OK(gpu_upload(g, d_lr, &lr, sizeof lr, &err), &err);
        CHECK_OK(gpu_sgd_step(g, gpu_resnet_param(gpu_moco_query(dev)), gpu_resnet_grad(gpu_moco_query(dev)), d_buf, np,
                              d_lr, 0.9f, 1e-4f, &err),
                 &err);
    }
    CHECK_OK(gpu_sync(g, &err), &err);
    CHECK_OK(gpu_moco_download(dev, back, &err), &err);
    CHECK(back->queue_ptr == cpu->queue_ptr);
    struct { const char *what; const float *got, *want; size_t count; } parts[] = {
        {"query encoder", back->q->param, cpu->q->param, np},
        {"query running statistics", back->q->buffer, cpu->q->buffer, cpu->q->buffer_count},
        {"key encoder", back->k->param, cpu->k->param, np},
        {"queue", back->queue, cpu->queue, (size_t)QUEUE * cpu->dim},
    };
    for (size_t i = 0; i < sizeof parts / sizeof *parts; i++) {
        double e = rel_error(parts[i].got, parts[i].want, parts[i].count);
        printf("# moco after %d steps, %s/%s: largest relative error %.2g\n", STEPS, parts[i].what, bf16 ? "bf16" : "f32", e);
        CHECK(e <= tol_end);
    }
    CHECK_DEVICE(d_buf, 0, opt.buf, np, tol_end, "moco momentum buffers");
    gpu_free(g, d_buf), gpu_free(g, d_lr), gpu_free(g, d_result), gpu_free(g, d_u8), gpu_free(g, d_im);
    free(u8), free(im);
    sgd_free(&opt);
    gpu_moco_destroy(dev);
    moco_destroy(cpu);
    moco_destroy(back);
}

static void run_all(void) { RUN(test_moco_steps_match_cpu); }

CHECK_MAIN(run_all)
