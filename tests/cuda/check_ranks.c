/* check_ranks.c — NCCL on one GPU (cuda/ranks.cu): a communicator of one rank, its all-reduces and
 * all-gather (identities with one rank, but through NCCL's kernels on the stream), the wait with a
 * deadline, and a MoCo step through the ranks' path equal to the one-process step. Several ranks
 * need several GPUs: the CPU ranks' test (tests/tools/t0610-pretrain-ranks.sh) checks the logic. */
#include "check.h"

#include "moco.h"

enum { COUNT = 1000, N = 8, S = 16, C = 3, VIEW = S * S * C };

TEST(test_one_rank_collectives_are_identities)
{
    moco_error err = {{0}};
    unsigned char id[GPU_RANKS_ID_BYTES];
    CHECK_OK(gpu_ranks_id(id, &err), &err);
    gpu_ranks *r = gpu_ranks_join(g, id, 0, 1, 30, &err);
    CHECK_OK(r ? 0 : -1, &err);
    CHECK(gpu_ranks_rank(r) == 0 && gpu_ranks_size(r) == 1);
    float *x = malloc(sizeof(float) * COUNT);
    CHECK(x);
    fill_normal(x, COUNT, 41, 0, 1);
    float *a = dev_f32(x, COUNT), *b = dev_f32(x, COUNT), *c = dev_f32(NULL, COUNT);
    CHECK(a && b && c);
    CHECK_OK(gpu_ranks_mean(r, a, COUNT, &err), &err);
    CHECK_OK(gpu_ranks_sum(r, b, COUNT, &err), &err);
    CHECK_OK(gpu_ranks_allgather(r, a, sizeof(float) * COUNT, c, &err), &err);
    CHECK_OK(gpu_ranks_wait(r, &err), &err);
    CHECK_DEVICE(a, 0, x, COUNT, 0, "nccl mean of one");
    CHECK_DEVICE(b, 0, x, COUNT, 0, "nccl sum of one");
    CHECK_DEVICE(c, 0, x, COUNT, 0, "nccl all-gather of one");
    gpu_free(g, a), gpu_free(g, b), gpu_free(g, c);
    free(x);
    gpu_ranks_leave(r);
}

TEST(test_moco_step_through_one_rank_equals_one_process)
{
    moco_error err = {{0}};
    static const resnet_config tiny = {.depth = 18, .width = 4, .in_channels = 3, .cifar_stem = 1,
                                       .head = RESNET_HEAD_MLP, .out_dim = 16};
    moco_config cfg = {.queue_size = 20, .key_momentum = 0.99, .temperature = 0.2, .bn_groups = 2, .query_bn_groups = 1};
    moco *host = moco_create(be, &tiny, &cfg, &err), *back1 = moco_create(be, &tiny, &cfg, &err),
         *back2 = moco_create(be, &tiny, &cfg, &err);
    CHECK_OK(host && back1 && back2 ? 0 : -1, &err);
    moco_init(host, 42);
    gpu_moco *alone = gpu_moco_create(g, host, &err), *ranked = gpu_moco_create(g, host, &err);
    CHECK_OK(alone && ranked ? 0 : -1, &err);
    unsigned char id[GPU_RANKS_ID_BYTES];
    CHECK_OK(gpu_ranks_id(id, &err), &err);
    gpu_ranks *r = gpu_ranks_join(g, id, 0, 1, 30, &err);
    CHECK_OK(r ? 0 : -1, &err);
    float *im = malloc(sizeof(float) * 2 * N * VIEW);
    CHECK(im);
    fill_normal(im, 2 * N * VIEW, 43, 0, 1);
    void *d_im = dev_act(im, 2 * N * VIEW);
    float *res1 = dev_f32(NULL, 3), *res2 = dev_f32(NULL, 3);
    CHECK(d_im && res1 && res2);
    char *im_k = (char *)d_im + (size_t)N * VIEW * gpu_act_size(g);
    int64_t perm[N];
    moco_permutation(N, 44, 0, perm);
    CHECK_OK(gpu_moco_step(alone, d_im, im_k, N, S, S, perm, NULL, res1, &err), &err);
    CHECK_OK(gpu_moco_step(ranked, d_im, im_k, N, S, S, perm, r, res2, &err), &err);
    CHECK_OK(gpu_ranks_wait(r, &err), &err);
    CHECK_OK(gpu_moco_download(alone, back1, &err), &err);
    CHECK_OK(gpu_moco_download(ranked, back2, &err), &err);
    CHECK(back1->queue_ptr == back2->queue_ptr);
    /* the two nets chose their cuDNN algorithms apart, so equal to rounding, not bit for bit */
    CHECK(rel_error(back2->queue, back1->queue, (size_t)cfg.queue_size * host->dim) <= tolerance());
    CHECK(rel_error(back2->q->grad, back1->q->grad, host->q->param_count) <= 10 * tolerance());
    gpu_free(g, d_im), gpu_free(g, res1), gpu_free(g, res2);
    free(im);
    gpu_ranks_leave(r);
    gpu_moco_destroy(alone), gpu_moco_destroy(ranked);
    moco_destroy(host), moco_destroy(back1), moco_destroy(back2);
}

static void run_all(void)
{
    RUN(test_one_rank_collectives_are_identities);
    RUN(test_moco_step_through_one_rank_equals_one_process);
}

CHECK_MAIN(run_all)
