/* check_train.c — the device side of the tools. moco-pretrain --device cuda (cuda/train.cu: staging, the u8
 * views normalised on the GPU, the MoCo step, SGD with the optimiser's momentum and weight decay,
 * the download into the host mirror) against the CPU loop moco-pretrain runs: batcher.c's
 * normalisation, moco_step, sgd_step. Four steps of the tiny parity model with a schedule of rates;
 * then the host mirrors compared: both encoders, running statistics, queue and pointer, momentum;
 * once with every step queued op by op, once with the steps after the first replayed from a graph,
 * once with each step's views copied during the step before (gpu_trainer_upload_next).
 * moco-extract --device cuda: the frozen features of u8 views. moco-linear --device cuda: the
 * classifier's SGD steps. */
#include "check.h"

#include "classifier.h"
#include "linear_eval.h"
#include "moco.h"
#include "optim.h"

enum { N = 8, S = 16, C = 3, VIEW = S * S * C, STEPS = 4 };

static const resnet_config tiny = {.depth = 18, .width = 4, .in_channels = 3, .cifar_stem = 1,
                                   .head = RESNET_HEAD_MLP, .out_dim = 16};

/* graph: the trainer's steps after the first replayed from one captured CUDA graph, or queued op by
 * op; ahead: each step's views in page-locked memory of their own, handed to the trainer a step
 * early (once the wrong ones: that step must then upload its own) */
static void check_trainer(int graph, int ahead)
{
    moco_error err = {{0}};
    int bf16 = gpu_get_precision(g) == GPU_BF16;
    double tol = whole_net_tolerance(5e-4), tol_loss = bf16 ? 5e-2 : 5e-4; /* bf16: see check.h */
    const double mean[3] = {0.5, 0.4, 0.3}, stdev[3] = {0.25, 0.2, 0.3};
    moco_config cfg = {.queue_size = 24, .key_momentum = 0.99, .temperature = 0.2, .bn_groups = 4, .query_bn_groups = 1};
    moco *cpu = moco_create(be, &tiny, &cfg, &err), *back = moco_create(be, &tiny, &cfg, &err);
    CHECK_OK(cpu && back ? 0 : -1, &err);
    moco_init(cpu, 21);
    sgd opt, opt_back;
    CHECK_OK(sgd_init(&opt, cpu->q->param_count, 0.9, 5e-4, &err), &err);
    CHECK_OK(sgd_init(&opt_back, cpu->q->param_count, 0.9, 5e-4, &err), &err);
    /* the trainer is made on device 0 in this pass's precision, as moco-pretrain would */
    gpu_trainer *t = gpu_trainer_create(0, gpu_get_precision(g), cpu, &opt, N, S, C, mean, stdev, &err);
    CHECK_OK(t ? 0 : -1, &err);
    gpu_trainer_use_graph(t, graph);
    uint8_t *u8 = malloc(2 * N * VIEW), *pinned = gpu_trainer_host_alloc(t, 2 * N * VIEW);
    float *im = malloc(sizeof(float) * 2 * N * VIEW);
    uint8_t *slots = ahead ? gpu_trainer_host_alloc(t, STEPS * 2 * N * VIEW) : NULL;
    CHECK(u8 && im && pinned && (slots || !ahead));
    for (int step = 0; ahead && step < STEPS; step++)
        random_views(slots + step * 2 * N * VIEW, im, 2 * N * VIEW, C, mean, stdev, 22, (uint64_t)step);
    static const double rates[STEPS] = {0.3, 0.2, 0.1, 0.05};
    for (int step = 0; step < STEPS; step++) {
        random_views(u8, im, 2 * N * VIEW, C, mean, stdev, 22, (uint64_t)step);
        int64_t perm[N];
        moco_permutation(N, 23, step, perm);
        moco_result want, got;
        CHECK_OK(moco_step(cpu, im, im + N * VIEW, N, S, S, perm, NULL, &want, &err), &err);
        sgd_step(&opt, cpu->q->param, cpu->q->grad, rates[step]);
        /* odd steps from page-locked memory (copied directly, as moco-pretrain's batches), even ones staged */
        const uint8_t *views = u8;
        if (ahead) {
            views = slots + step * 2 * N * VIEW;
            int next = step == 1 ? 3 : step + 1;
            const uint8_t *early = slots + next * 2 * N * VIEW;
            if (next < STEPS)
                gpu_trainer_upload_next(t, early, early + N * VIEW, N);
        } else if (step % 2) {
            views = memcpy(pinned, u8, 2 * N * VIEW);
        }
        CHECK_OK(gpu_trainer_step(t, views, views + N * VIEW, N, perm, rates[step], &got, &err), &err);
        printf("# trainer step %d loss: GPU %.6f, CPU %.6f; top1 %d/%d (%s)\n", step, got.loss, want.loss, got.top1,
               want.top1, gpu_trainer_describe(t));
        CHECK(fabs(got.loss - want.loss) <= tol_loss * want.loss);
    }
    CHECK_OK(gpu_trainer_download(t, back, &opt_back, &err), &err);
    CHECK(back->queue_ptr == cpu->queue_ptr);
    CHECK(back->q->num_batches_tracked == cpu->q->num_batches_tracked);
    struct { const char *what; const float *got, *want; size_t count; } parts[] = {
        {"query encoder", back->q->param, cpu->q->param, cpu->q->param_count},
        {"query running statistics", back->q->buffer, cpu->q->buffer, cpu->q->buffer_count},
        {"key encoder", back->k->param, cpu->k->param, cpu->k->param_count},
        {"queue", back->queue, cpu->queue, (size_t)cfg.queue_size * cpu->dim},
        {"momentum buffers", opt_back.buf, opt.buf, cpu->q->param_count},
    };
    for (size_t i = 0; i < sizeof parts / sizeof *parts; i++) {
        double e = rel_error(parts[i].got, parts[i].want, parts[i].count);
        printf("# trainer after %d steps, %s/%s: largest relative error %.2g\n", STEPS, parts[i].what, bf16 ? "bf16" : "f32", e);
        CHECK(e <= tol);
    }
    if (graph) /* the capture must have worked: a failure would fall back silently in moco-pretrain */
        CHECK(strstr(gpu_trainer_describe(t), "each step one CUDA graph") != NULL);
    free(u8), free(im);
    gpu_trainer_host_free(t, pinned);
    if (slots)
        gpu_trainer_host_free(t, slots);
    gpu_trainer_destroy(t);
    sgd_free(&opt), sgd_free(&opt_back);
    moco_destroy(cpu), moco_destroy(back);
}

TEST(test_trainer_steps_match_the_cpu_loop) { check_trainer(0, 0); }

TEST(test_trainer_graph_steps_match_the_cpu_loop) { check_trainer(1, 0); }

TEST(test_trainer_views_copied_ahead_match_the_cpu_loop) { check_trainer(1, 1); }

/* moco-extract --device cuda: features of u8 views through the GPU net in evaluation mode, against
 * the CPU's; a last batch smaller than the planned one too */
TEST(test_extractor_features_match_the_cpu)
{
    moco_error err = {{0}};
    const double mean[3] = {0.5, 0.4, 0.3}, stdev[3] = {0.25, 0.2, 0.3};
    resnet *net = resnet_create(be, &tiny, 0, &err);
    CHECK_OK(net ? 0 : -1, &err);
    resnet_init(net, 31);
    for (int i = 0; i < net->ntensors; i++) { /* running statistics away from 0 and 1, activations kept alive */
        const resnet_tensor *ts = &net->tensors[i];
        if (!ts->buffer)
            continue;
        int var = strstr(ts->name, "running_var") != NULL;
        for (size_t j = 0; j < ts->count; j++)
            net->buffer[ts->offset + j] = var ? 0.5f + 0.25f * (float)(j % 7) : 0.1f * (float)((int)(j % 7) - 3);
    }
    gpu_extractor *x = gpu_extractor_create(0, gpu_get_precision(g), net, N, S, C, mean, stdev, &err);
    CHECK_OK(x ? 0 : -1, &err);
    uint8_t u8[N * VIEW];
    float im[N * VIEW], got[N * 32];
    random_views(u8, im, N * VIEW, C, mean, stdev, 32, 0);
    CHECK(net->feature_dim <= 32);
    for (int n = N; n >= N - 3; n -= 3) {
        CHECK_OK(resnet_forward(net, im, n, S, S, 0, 1, &err), &err);
        double largest = 0;
        for (size_t i = 0; i < (size_t)n * net->feature_dim; i++)
            largest = fmax(largest, fabs(net->pooled[i]));
        CHECK(largest > 1e-3); /* features that are not all zero, or the comparison says nothing */
        CHECK_OK(gpu_extractor_run(x, u8, n, got, &err), &err);
        double e = rel_error(got, net->pooled, (size_t)n * net->feature_dim);
        printf("# extractor features of %d views/%s: largest relative error %.2g\n", n,
               gpu_get_precision(g) == GPU_BF16 ? "bf16" : "f32", e);
        CHECK(e <= whole_net_tolerance(2e-4));
    }
    gpu_extractor_destroy(x);
    resnet_destroy(net);
}

/* moco-linear --device cuda: SGD steps of the linear classifier against linear_sgd_step, with a
 * short last batch; losses, counts and the weights pulled back */
TEST(test_linear_steps_match_the_cpu)
{
    enum { F = 48, K = 10, B = 32, STEPS_L = 5 };
    moco_error err = {{0}};
    classifier cpu;
    CHECK_OK(classifier_init(&cpu, F, K, 51, &err), &err);
    linear_eval_init(&cpu, 52);
    classifier back;
    CHECK_OK(classifier_init(&back, F, K, 51, &err), &err);
    sgd opt;
    CHECK_OK(sgd_init(&opt, cpu.param_count, 0.9, 1e-4, &err), &err);
    gpu_linear *l = gpu_linear_create(0, &cpu, 0.9, 1e-4, B, &err);
    CHECK_OK(l ? 0 : -1, &err);
    float x[B * F];
    int64_t labels[B];
    for (int step = 0; step < STEPS_L; step++) {
        int n = step == STEPS_L - 1 ? B - 7 : B;
        fill_normal(x, (size_t)n * F, 53 + step, 0, 1);
        for (int i = 0; i < n; i++)
            labels[i] = (i * 7 + step) % K;
        double want_loss, got_loss;
        int want1, want5, got1, got5;
        CHECK_OK(linear_sgd_step(&cpu, &opt, x, labels, n, 0.5, &want_loss, &want1, &want5, &err), &err);
        CHECK_OK(gpu_linear_step(l, x, labels, n, 0.5, &got_loss, &got1, &got5, &err), &err);
        CHECK(fabs(got_loss - want_loss) <= 1e-5 * (1 + want_loss) && got1 == want1 && got5 == want5);
    }
    CHECK_OK(gpu_linear_pull(l, &back, &err), &err);
    double e = rel_error(back.param, cpu.param, cpu.param_count);
    printf("# linear classifier after %d steps/%s: largest relative error %.2g\n", STEPS_L,
           gpu_get_precision(g) == GPU_BF16 ? "bf16" : "f32", e);
    CHECK(e <= 1e-4); /* float32 in both passes: the classifier has no bf16 mode */
    gpu_linear_destroy(l);
    sgd_free(&opt);
    classifier_free(&cpu), classifier_free(&back);
}

static void run_all(void)
{
    RUN(test_trainer_steps_match_the_cpu_loop);
    RUN(test_trainer_views_copied_ahead_match_the_cpu_loop);
    RUN(test_trainer_graph_steps_match_the_cpu_loop);
    RUN(test_extractor_features_match_the_cpu);
    RUN(test_linear_steps_match_the_cpu);
}

CHECK_MAIN(run_all)
