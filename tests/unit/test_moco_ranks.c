/* test_moco_ranks.c — the data-parallel MoCo step (moco.h's peers) without MPI: two ranks on two
 * threads, their all-gathers done through shared memory, against one process with the batch of both
 * and two query and key BN groups. The two must train alike step by step (the MPI run of
 * moco-pretrain is tested against the same emulation in tests/tools/t0610-pretrain-ranks.sh). */
#include <math.h>
#include <pthread.h>
#include <stdint.h>

#include "backend.h"
#include "moco.h"
#include "optim.h"
#include "rng.h"
#include "test.h"

enum { RANKS = 2, N = 4, S = 16, VIEW = S * S * 3, STEPS = 3, SEED = 5 };

static const resnet_config tiny = {.depth = 18, .width = 4, .in_channels = 3, .cifar_stem = 1,
                                   .head = RESNET_HEAD_MLP, .out_dim = 8};

/* ---- an all-gather between threads ---- */

typedef struct {
    pthread_barrier_t barrier;
    const float *send[RANKS];
} exchange;

typedef struct {
    exchange *x;
    int rank;
} thread_peer;

static int thread_allgather(void *ctx, const float *send, size_t count, float *recv, const char *what, moco_error *err)
{
    (void)what, (void)err;
    thread_peer *p = ctx;
    p->x->send[p->rank] = send;
    pthread_barrier_wait(&p->x->barrier); /* every rank's data is there */
    for (int r = 0; r < RANKS; r++)
        memcpy(recv + r * count, p->x->send[r], sizeof(float) * count);
    pthread_barrier_wait(&p->x->barrier); /* and nobody reuses its buffer before all have copied */
    return MOCO_OK;
}

/* ---- one rank's run ---- */

typedef struct {
    moco *m;
    moco_peers peers;
    thread_peer self;
    const float *im_q, *im_k; /* all steps' pairs of all ranks, STEPS * RANKS * N */
    int64_t step;
    const int64_t *perm;
    moco_result result;
    int rc;
    moco_error err;
} rank_run;

static void *rank_step(void *arg)
{
    rank_run *r = arg;
    size_t at = ((size_t)r->step * RANKS + r->self.rank) * N * VIEW;
    r->rc = moco_step(r->m, r->im_q + at, r->im_k + at, N, S, S, r->perm, &r->peers, &r->result, &r->err);
    return NULL;
}

TEST(test_two_ranks_train_as_one_process_with_two_bn_groups)
{
    moco_error err = {{0}};
    backend *be = backend_create(1, &err);
    CHECK_OK(be ? 0 : -1, &err);
    /* Direct convolution: Winograd rounds by tiles that depend on the batch, and this compares a
     * batch of 2n against two of n (with it, the BN bias gradients differ by up to ~2e-4). */
    backend_set_winograd(be, 0);
    moco_config one_cfg = {.queue_size = 40, .key_momentum = 0.99, .temperature = 0.2, .bn_groups = RANKS,
                           .query_bn_groups = RANKS};
    moco_config rank_cfg = {.queue_size = 40, .key_momentum = 0.99, .temperature = 0.2, .bn_groups = 1};
    moco *one = moco_create(be, &tiny, &one_cfg, &err);
    CHECK_OK(one ? 0 : -1, &err);
    moco_init(one, SEED);
    static float im_q[STEPS * RANKS * N * VIEW], im_k[STEPS * RANKS * N * VIEW];
    rng g;
    rng_init(&g, 7, 0, 0, 0);
    for (size_t i = 0; i < sizeof im_q / sizeof *im_q; i++)
        im_q[i] = (float)rng_normal(&g), im_k[i] = (float)rng_normal(&g);
    exchange x;
    pthread_barrier_init(&x.barrier, NULL, RANKS);
    rank_run runs[RANKS];
    sgd opt_one, opt[RANKS];
    CHECK_OK(sgd_init(&opt_one, one->q->param_count, 0.9, 1e-4, &err), &err);
    for (int r = 0; r < RANKS; r++) {
        runs[r] = (rank_run){.im_q = im_q, .im_k = im_k, .self = {&x, r}};
        runs[r].m = moco_create(be, &tiny, &rank_cfg, &err);
        CHECK_OK(runs[r].m ? 0 : -1, &err);
        moco_init(runs[r].m, SEED);
        runs[r].peers = (moco_peers){.rank = r, .ranks = RANKS, .ctx = &runs[r].self, .allgather = thread_allgather};
        CHECK_OK(sgd_init(&opt[r], one->q->param_count, 0.9, 1e-4, &err), &err);
    }
    size_t np = one->q->param_count, nq = (size_t)one_cfg.queue_size * one->dim;
    float *mean_grad = malloc(sizeof(float) * np);
    CHECK(mean_grad);
    for (int64_t step = 0; step < STEPS; step++) {
        int64_t perm[RANKS * N];
        moco_permutation(RANKS * N, SEED, step, perm);
        moco_result res;
        CHECK_OK(moco_step(one, im_q + step * RANKS * N * VIEW, im_k + step * RANKS * N * VIEW, RANKS * N, S, S, perm,
                           NULL, &res, &err),
                 &err);
        pthread_t threads[RANKS];
        for (int r = 0; r < RANKS; r++) {
            runs[r].step = step, runs[r].perm = perm;
            CHECK(pthread_create(&threads[r], NULL, rank_step, &runs[r]) == 0);
        }
        for (int r = 0; r < RANKS; r++)
            pthread_join(threads[r], NULL);
        for (int r = 0; r < RANKS; r++)
            CHECK_OK(runs[r].rc, &runs[r].err);
        /* the loss of the whole batch is the ranks' mean, the gradient too (what the all-reduce gives) */
        double loss = (runs[0].result.loss + runs[1].result.loss) / 2;
        CHECK(fabs(loss - res.loss) <= 1e-5 * res.loss);
        CHECK(runs[0].result.top1 + runs[1].result.top1 == res.top1);
        for (size_t i = 0; i < np; i++)
            mean_grad[i] = (runs[0].m->q->grad[i] + runs[1].m->q->grad[i]) / 2;
        CHECK(rel_error(mean_grad, one->q->grad, np) <= 1e-4);
        sgd_step(&opt_one, one->q->param, one->q->grad, 0.5);
        for (int r = 0; r < RANKS; r++)
            sgd_step(&opt[r], runs[r].m->q->param, mean_grad, 0.5);
        /* the ranks hold the same queue, bit for bit, and it is the one process's */
        CHECK(runs[0].m->queue_ptr == one->queue_ptr && runs[1].m->queue_ptr == one->queue_ptr);
        CHECK(memcmp(runs[0].m->queue, runs[1].m->queue, sizeof(float) * nq) == 0);
        CHECK(rel_error(runs[0].m->queue, one->queue, nq) <= 1e-4);
    }
    /* parameters, key encoder, and rank 0's running statistics (the first group's) */
    CHECK(rel_error(runs[0].m->q->param, one->q->param, np) <= 1e-4);
    CHECK(memcmp(runs[0].m->q->param, runs[1].m->q->param, sizeof(float) * np) == 0);
    CHECK(rel_error(runs[0].m->k->param, one->k->param, np) <= 1e-4);
    CHECK(rel_error(runs[0].m->q->buffer, one->q->buffer, one->q->buffer_count) <= 1e-4);
    CHECK(rel_error(runs[1].m->q->buffer, one->q->buffer, one->q->buffer_count) > 1e-3); /* rank 1 saw other samples */
    free(mean_grad);
    for (int r = 0; r < RANKS; r++) {
        moco_destroy(runs[r].m);
        sgd_free(&opt[r]);
    }
    sgd_free(&opt_one);
    moco_destroy(one);
    pthread_barrier_destroy(&x.barrier);
    backend_destroy(be);
}

int main(void)
{
    RUN(test_two_ranks_train_as_one_process_with_two_bn_groups);
    TEST_EXIT();
}
