/* test_optim.c — SGD against hand-computed torch.optim.SGD steps, the learning-rate schedules of the
 * original MoCo (cosine and step, per epoch; linear warmup, per step), the milestone parser, and the
 * two small pieces of moco.h that hold no gradient: the key permutation and the momentum update.
 *
 * Expected values are worked out by hand in the comments (PyTorch's formulas, in double); float32
 * results are compared to them within a few ulps. */
#include <math.h>
#include <stdint.h>

#include "moco.h"
#include "optim.h"
#include "rng.h"
#include "test.h"

static backend *be;

/* |got - want| within rel of |want| (or of 1e-30 for a zero want). */
static int near(double got, double want, double rel) { return fabs(got - want) <= rel * fmax(fabs(want), 1e-30); }

/* ---- SGD ---- */

TEST(test_sgd_two_steps_match_pytorch_with_momentum_and_weight_decay)
{
    /* torch.optim.SGD([p], lr, momentum=0.9, weight_decay=0.01), dampening 0, no Nesterov:
     *   d = g + 0.01 p;  buf = 0.9 buf + d (buf = d on the first step);  p -= lr buf
     * step 1, lr 0.1, p = (1, -2, 0.5), g = (0.5, 0.25, -1):
     *   d = (0.51, 0.23, -0.995) = buf;  p = (0.949, -2.023, 0.5995)
     * step 2, lr 0.05 (the rate scales the whole buffer, not just the new gradient), g = (-0.2, 0.1, 0):
     *   d = (-0.19051, 0.07977, 0.005995);  buf = (0.26849, 0.28677, -0.889505)
     *   p = (0.9355755, -2.0373385, 0.64397525) */
    moco_error err = {{0}};
    sgd opt;
    CHECK_OK(sgd_init(&opt, 3, 0.9, 0.01, &err), &err);
    CHECK(opt.buf[0] == 0 && opt.buf[1] == 0 && opt.buf[2] == 0);
    float p[4] = {1, -2, 0.5f, 42}; /* p[3] lies past the count: never touched */
    const float g1[4] = {0.5f, 0.25f, -1, 7}, g2[4] = {-0.2f, 0.1f, 0, 7};
    sgd_step(&opt, p, g1, 0.1);
    const double buf1[3] = {0.51, 0.23, -0.995}, p1[3] = {0.949, -2.023, 0.5995};
    for (int i = 0; i < 3; i++)
        CHECK(near(opt.buf[i], buf1[i], 1e-6) && near(p[i], p1[i], 1e-6));
    sgd_step(&opt, p, g2, 0.05);
    const double buf2[3] = {0.26849, 0.28677, -0.889505}, p2[3] = {0.9355755, -2.0373385, 0.64397525};
    for (int i = 0; i < 3; i++)
        CHECK(near(opt.buf[i], buf2[i], 1e-6) && near(p[i], p2[i], 1e-6));
    CHECK(p[3] == 42);
    sgd_free(&opt);
    CHECK(opt.buf == NULL);
}

TEST(test_sgd_without_momentum_or_decay_is_plain_gradient_descent)
{
    moco_error err = {{0}};
    sgd opt;
    CHECK_OK(sgd_init(&opt, 2, 0, 0, &err), &err);
    float p[2] = {1, -1};
    const float g[2] = {0.5f, -0.25f};
    sgd_step(&opt, p, g, 0.2);
    sgd_step(&opt, p, g, 0.2);
    CHECK(near(p[0], 1 - 2 * 0.2 * 0.5, 1e-6) && near(p[1], -1 + 2 * 0.2 * 0.25, 1e-6));
    sgd_free(&opt);
}

/* ---- schedules ---- */

TEST(test_schedule_cos_follows_the_original_moco_per_epoch)
{
    /* lr * 0.5 * (1 + cos(pi * epoch / epochs)), the epoch's integer part: the original sets the rate
     * once at the start of each epoch */
    lr_schedule s = {.kind = SCHEDULE_COS, .base_lr = 0.03, .epochs = 200};
    CHECK(near(schedule_lr(&s, 0), 0.03, 1e-12));
    CHECK(near(schedule_lr(&s, 0.999), 0.03, 1e-12));
    CHECK(near(schedule_lr(&s, 50), 0.015 * (1 + sqrt(0.5)), 1e-12)); /* 0.0256066 */
    CHECK(near(schedule_lr(&s, 100), 0.015, 1e-12));
    CHECK(near(schedule_lr(&s, 100.7), 0.015, 1e-12));
    CHECK(near(schedule_lr(&s, 199.5), 0.015 * (1 - cos(M_PI / 200)), 1e-9)); /* 1.85e-6 */
    CHECK(fabs(schedule_lr(&s, 200)) < 1e-15);
    /* never rising over the run */
    for (double e = 0; e < 200; e += 0.25)
        CHECK(schedule_lr(&s, e + 0.25) <= schedule_lr(&s, e));
}

TEST(test_schedule_step_multiplies_by_gamma_at_each_milestone)
{
    lr_schedule s = {.kind = SCHEDULE_STEP, .base_lr = 0.1, .epochs = 200, .milestones = {120, 160},
                     .nmilestones = 2, .gamma = 0.1};
    CHECK(near(schedule_lr(&s, 0), 0.1, 1e-12));
    CHECK(near(schedule_lr(&s, 119.99), 0.1, 1e-12));
    CHECK(near(schedule_lr(&s, 120), 0.01, 1e-12));
    CHECK(near(schedule_lr(&s, 159.5), 0.01, 1e-12));
    CHECK(near(schedule_lr(&s, 160), 0.001, 1e-12));
    CHECK(near(schedule_lr(&s, 199.9), 0.001, 1e-12));
    /* no milestones: a constant rate, as the constant schedule */
    s.nmilestones = 0;
    CHECK(near(schedule_lr(&s, 150), 0.1, 1e-12));
    lr_schedule c = {.kind = SCHEDULE_CONSTANT, .base_lr = 0.5, .epochs = 10};
    CHECK(near(schedule_lr(&c, 0), 0.5, 1e-12) && near(schedule_lr(&c, 9.5), 0.5, 1e-12));
}

TEST(test_schedule_warmup_ramps_linearly_per_step_then_hands_over)
{
    /* over the first warmup_epochs the rate is base * epoch / warmup_epochs, the fraction included */
    lr_schedule s = {.kind = SCHEDULE_COS, .base_lr = 0.1, .epochs = 100, .warmup_epochs = 5};
    CHECK(schedule_lr(&s, 0) == 0);
    CHECK(near(schedule_lr(&s, 1.25), 0.025, 1e-12));
    CHECK(near(schedule_lr(&s, 4.5), 0.09, 1e-12));
    /* from epoch 5 on, the cosine of the whole run: 0.05 (1 + cos(pi 5 / 100)) */
    CHECK(near(schedule_lr(&s, 5), 0.05 * (1 + cos(M_PI * 5 / 100)), 1e-12));
    CHECK(near(schedule_lr(&s, 5.5), 0.05 * (1 + cos(M_PI * 5 / 100)), 1e-12));
    /* a fractional warmup and the step schedule */
    lr_schedule t = {.kind = SCHEDULE_STEP, .base_lr = 0.2, .epochs = 10, .warmup_epochs = 2.5,
                     .milestones = {1}, .nmilestones = 1, .gamma = 0.1};
    CHECK(near(schedule_lr(&t, 1.25), 0.1, 1e-12)); /* the ramp, not yet the milestone's 0.02 */
    CHECK(near(schedule_lr(&t, 2.5), 0.02, 1e-12));
}

TEST(test_schedule_kind_names)
{
    CHECK(schedule_kind_from_name("cos") == SCHEDULE_COS);
    CHECK(schedule_kind_from_name("step") == SCHEDULE_STEP);
    CHECK(schedule_kind_from_name("constant") == SCHEDULE_CONSTANT);
    CHECK(schedule_kind_from_name("cosine") == -1);
    CHECK(schedule_kind_from_name("") == -1);
}

TEST(test_schedule_parse_milestones_accepts_epoch_lists)
{
    lr_schedule s = {0};
    moco_error err = {{0}};
    CHECK_OK(schedule_parse_milestones(&s, "120,160", &err), &err);
    CHECK(s.nmilestones == 2 && s.milestones[0] == 120 && s.milestones[1] == 160);
    CHECK_OK(schedule_parse_milestones(&s, "30", &err), &err);
    CHECK(s.nmilestones == 1 && s.milestones[0] == 30);
    CHECK_OK(schedule_parse_milestones(&s, "1,2,3,4,5,6,7,8", &err), &err);
    CHECK(s.nmilestones == 8 && s.milestones[7] == 8);
    /* an empty list is no milestones: the step schedule then keeps its base rate */
    CHECK_OK(schedule_parse_milestones(&s, "", &err), &err);
    CHECK(s.nmilestones == 0);
}

TEST(test_schedule_parse_milestones_rejects_malformed_lists)
{
    static const char *const bad[] = {"a", "1,,2", ",120", "-1", "12a", "120;160", "120 160", "120,160 ",
                                      "1000001", "99999999999", "1,2,3,4,5,6,7,8,9"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        lr_schedule s = {0};
        moco_error err = {{0}};
        CHECK(schedule_parse_milestones(&s, bad[i], &err) == MOCO_ERR);
        CHECK(strstr(err.msg, bad[i]) != NULL); /* the message quotes what it was given */
    }
}

/* ---- the key permutation ---- */

static int is_permutation(const int64_t *perm, int n)
{
    int seen[64] = {0};
    for (int i = 0; i < n; i++) {
        if (perm[i] < 0 || perm[i] >= n || seen[perm[i]])
            return 0;
        seen[perm[i]] = 1;
    }
    return 1;
}

TEST(test_moco_permutation_is_a_permutation_fixed_by_seed_and_step)
{
    enum { N = 32 };
    int64_t a[N], b[N], c[N], d[N];
    moco_permutation(N, 7, 3, a);
    moco_permutation(N, 7, 3, b);
    moco_permutation(N, 7, 4, c);
    moco_permutation(N, 8, 3, d);
    CHECK(is_permutation(a, N) && is_permutation(c, N) && is_permutation(d, N));
    CHECK(memcmp(a, b, sizeof a) == 0);
    CHECK(memcmp(a, c, sizeof a) != 0);
    CHECK(memcmp(a, d, sizeof a) != 0);
    int moved = 0;
    for (int i = 0; i < N; i++)
        moved += a[i] != i;
    CHECK(moved > N / 2); /* really shuffled */
    int64_t one[1] = {5};
    moco_permutation(1, 7, 0, one);
    CHECK(one[0] == 0);
    /* every step of a long run is a permutation, and they differ from step to step */
    int64_t prev[N];
    memcpy(prev, a, sizeof a);
    for (int64_t step = 1; step < 200; step++) {
        moco_permutation(N, 7, step, c);
        CHECK(is_permutation(c, N));
        CHECK(memcmp(c, prev, sizeof c) != 0);
        memcpy(prev, c, sizeof c);
    }
}

TEST(test_moco_permutation_is_uniform_over_three_samples)
{
    /* 6000 shuffles of 3: each of the 6 orders about 1000 times (sd 29); a Fisher-Yates off by one
     * (j drawn below i instead of i + 1) never gives the identity and skews the rest */
    int count[6] = {0};
    for (int64_t step = 0; step < 6000; step++) {
        int64_t p[3];
        moco_permutation(3, 11, step, p);
        CHECK(is_permutation(p, 3));
        count[p[0] * 2 + (p[1] > p[2])]++;
    }
    for (int i = 0; i < 6; i++)
        CHECK(count[i] > 850 && count[i] < 1150);
}

/* ---- the key encoder's momentum update ---- */

TEST(test_moco_momentum_update_moves_key_parameters_toward_query)
{
    resnet_config enc = {.depth = 18, .width = 2, .in_channels = 3, .cifar_stem = 1, .head = RESNET_HEAD_MLP,
                         .out_dim = 8};
    moco_config cfg = {.queue_size = 16, .key_momentum = 0.9, .temperature = 0.2, .bn_groups = 1};
    moco_error err = {{0}};
    moco *m = moco_create(be, &enc, &cfg, &err);
    CHECK_OK(m ? 0 : -1, &err);
    size_t np = m->q->param_count, nb = m->q->buffer_count;
    CHECK(m->k->param_count == np && m->k->buffer_count == nb);
    float *q0 = malloc(sizeof(float) * np), *k0 = malloc(sizeof(float) * np), *kb0 = malloc(sizeof(float) * nb);
    CHECK(q0 && k0 && kb0);
    rng r;
    rng_init(&r, 5, 0, 0, 0);
    for (size_t i = 0; i < np; i++)
        m->q->param[i] = (float)rng_normal(&r), m->k->param[i] = (float)rng_normal(&r);
    for (size_t i = 0; i < nb; i++) /* running statistics apart: the update must leave them be */
        m->q->buffer[i] = (float)rng_normal(&r), m->k->buffer[i] = (float)rng_normal(&r);
    memcpy(q0, m->q->param, sizeof(float) * np);
    memcpy(k0, m->k->param, sizeof(float) * np);
    memcpy(kb0, m->k->buffer, sizeof(float) * nb);
    moco_momentum_update(m);
    int close = 1;
    for (size_t i = 0; i < np; i++) /* k = m k + (1 - m) q */
        close &= fabs(m->k->param[i] - (0.9 * k0[i] + 0.1 * q0[i])) <= 1e-6 * (fabs(k0[i]) + fabs(q0[i]));
    CHECK(close);
    CHECK(memcmp(m->q->param, q0, sizeof(float) * np) == 0);
    CHECK(memcmp(m->k->buffer, kb0, sizeof(float) * nb) == 0);
    /* the ends: m = 1 keeps the key encoder, m = 0 copies the query's */
    memcpy(m->k->param, k0, sizeof(float) * np);
    m->cfg.key_momentum = 1;
    moco_momentum_update(m);
    CHECK(memcmp(m->k->param, k0, sizeof(float) * np) == 0);
    m->cfg.key_momentum = 0;
    moco_momentum_update(m);
    CHECK(memcmp(m->k->param, q0, sizeof(float) * np) == 0);
    free(q0), free(k0), free(kb0);
    moco_destroy(m);
}

int main(void)
{
    moco_error err;
    if (!(be = backend_create(2, &err))) {
        printf("FAIL backend_create: %s\n", err.msg);
        return 1;
    }
    RUN(test_sgd_two_steps_match_pytorch_with_momentum_and_weight_decay);
    RUN(test_sgd_without_momentum_or_decay_is_plain_gradient_descent);
    RUN(test_schedule_cos_follows_the_original_moco_per_epoch);
    RUN(test_schedule_step_multiplies_by_gamma_at_each_milestone);
    RUN(test_schedule_warmup_ramps_linearly_per_step_then_hands_over);
    RUN(test_schedule_kind_names);
    RUN(test_schedule_parse_milestones_accepts_epoch_lists);
    RUN(test_schedule_parse_milestones_rejects_malformed_lists);
    RUN(test_moco_permutation_is_a_permutation_fixed_by_seed_and_step);
    RUN(test_moco_permutation_is_uniform_over_three_samples);
    RUN(test_moco_momentum_update_moves_key_parameters_toward_query);
    backend_destroy(be);
    TEST_EXIT();
}
