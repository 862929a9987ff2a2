/* test_linear_eval.c — the pieces of moco-linear's protocol: the per-epoch order, main_lincls's
 * initialisation, standardisation, scores with ties, the L-BFGS objective's gradient, the solver's
 * minimum and its independence from the thread count. (SGD against PyTorch: tests/tools/t0700.) */
#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "backend.h"
#include "linear_eval.h"
#include "rng.h"
#include "test.h"

/* n samples of `in` features in k Gaussian clusters (centres N(0, sep^2)), labels i mod k. */
static void make_data(int n, int in, int k, double sep, uint64_t seed, float *x, int64_t *y)
{
    rng r;
    rng_init(&r, seed, 0, 0, 0);
    float *centre = malloc(sizeof(float) * (size_t)k * in);
    for (int i = 0; i < k * in; i++)
        centre[i] = (float)(sep * rng_normal(&r));
    for (int i = 0; i < n; i++) {
        y[i] = i % k;
        for (int j = 0; j < in; j++)
            x[(size_t)i * in + j] = centre[y[i] * in + j] + (float)rng_normal(&r);
    }
    free(centre);
}

TEST(test_permutation_is_fixed_by_seed_and_epoch)
{
    enum { N = 1000 };
    static int64_t a[N], b[N], c[N];
    static int seen[N];
    linear_eval_permutation(7, 3, N, a);
    linear_eval_permutation(7, 3, N, b);
    linear_eval_permutation(7, 4, N, c);
    int differs = 0;
    for (int i = 0; i < N; i++) {
        CHECK(a[i] >= 0 && a[i] < N && !seen[a[i]]);
        seen[a[i]] = 1;
        CHECK(a[i] == b[i]);
        differs += a[i] != c[i];
    }
    CHECK(differs > N / 2);
}

TEST(test_init_is_main_lincls_normal_001_zero_bias)
{
    classifier c;
    moco_error err;
    CHECK_OK(classifier_init(&c, 200, 50, 1, &err), &err);
    linear_eval_init(&c, 1);
    double s = 0, sq = 0;
    size_t nw = (size_t)c.classes * c.in;
    for (size_t i = 0; i < nw; i++)
        s += c.param[i], sq += (double)c.param[i] * c.param[i];
    double mean = s / nw, sd = sqrt(sq / nw - mean * mean);
    for (int j = 0; j < c.classes; j++)
        CHECK(classifier_bias(&c)[j] == 0);
    classifier_free(&c);
    CHECK(fabs(mean) < 3e-4 && fabs(sd - 0.01) < 3e-4);
}

TEST(test_standardizer_gives_zero_mean_unit_std_and_keeps_constant_features)
{
    enum { N = 500, D = 3 };
    static float x[N * D];
    rng r;
    rng_init(&r, 2, 0, 0, 0);
    for (int i = 0; i < N; i++) {
        x[i * D + 0] = (float)(5 + 3 * rng_normal(&r));
        x[i * D + 1] = (float)(-2 + 0.1 * rng_normal(&r));
        x[i * D + 2] = 4; /* never changes: a border pixel */
    }
    standardizer z;
    moco_error err;
    CHECK_OK(standardizer_fit(&z, x, N, D, &err), &err);
    CHECK(z.std[2] == 1 && z.mean[2] == 4);
    standardizer_apply(&z, x, N);
    standardizer_free(&z);
    for (int j = 0; j < D; j++) {
        double s = 0, sq = 0;
        for (int i = 0; i < N; i++)
            s += x[i * D + j], sq += (double)x[i * D + j] * x[i * D + j];
        CHECK(fabs(s / N) < 1e-5);
        CHECK(j == 2 ? sq == 0 : fabs(sq / N - 1) < 1e-4);
    }
}

TEST(test_scores_count_ties_against_the_label)
{
    linear_scores s;
    moco_error err;
    CHECK_OK(linear_scores_init(&s, 6, &err), &err);
    const float logits[] = {
        5, 1, 1, 1, 1, 1, /* label 0: top-1 */
        3, 3, 0, 0, 0, 0, /* label 1, tied with 0: not top-1, predicted 0 */
        6, 5, 4, 3, 2, 1, /* label 5: sixth, not even top-5, predicted 0 */
        1, 2, 3, 4, 5, 0, /* label 0: fifth: top-5 */
    };
    const int64_t labels[] = {0, 1, 5, 0};
    linear_scores_add(&s, logits, labels, 4);
    CHECK(s.n == 4 && s.top1 == 1 && s.top5 == 3);
    CHECK(s.confusion[0 * 6 + 0] == 1 && s.confusion[1 * 6 + 0] == 1 && s.confusion[5 * 6 + 0] == 1);
    CHECK(s.confusion[0 * 6 + 4] == 1);
    double want = 0;
    for (int i = 0; i < 4; i++) {
        double sum = 0;
        for (int j = 0; j < 6; j++)
            sum += exp(logits[i * 6 + j]);
        want += log(sum) - logits[i * 6 + labels[i]];
    }
    CHECK(fabs(s.loss_sum - want) < 1e-9);
    linear_scores_free(&s);
}

TEST(test_objective_gradient_matches_finite_differences)
{
    enum { N = 60, IN = 5, K = 3 };
    float x[N * IN];
    int64_t y[N];
    make_data(N, IN, K, 1.0, 3, x, y);
    classifier c;
    moco_error err;
    CHECK_OK(classifier_init(&c, IN, K, 4, &err), &err);
    double l2 = 0.1, f, grad[IN * K + K];
    CHECK_OK(linear_objective(&c, x, y, N, l2, &f, grad, &err), &err);
    for (size_t p = 0; p < c.param_count; p++) {
        float keep = c.param[p], h = 1e-2f;
        double fp, fm;
        c.param[p] = keep + h;
        CHECK_OK(linear_objective(&c, x, y, N, l2, &fp, NULL, &err), &err);
        c.param[p] = keep - h;
        CHECK_OK(linear_objective(&c, x, y, N, l2, &fm, NULL, &err), &err);
        c.param[p] = keep;
        double fd = (fp - fm) / (2.0 * h);
        CHECK(fabs(fd - grad[p]) < 2e-4 + 1e-3 * fabs(grad[p]));
    }
    classifier_free(&c);
}

TEST(test_lbfgs_reaches_the_minimum_bias_unpenalised)
{
    enum { N = 300, IN = 6, K = 4 };
    float x[N * IN];
    int64_t y[N];
    make_data(N, IN, K, 0.7, 5, x, y);
    classifier c;
    moco_error err;
    CHECK_OK(classifier_init(&c, IN, K, 0, &err), &err);
    memset(c.param, 0, sizeof(float) * c.param_count);
    double f0, f, grad[IN * K + K];
    CHECK_OK(linear_objective(&c, x, y, N, 1e-2, &f0, NULL, &err), &err);
    linear_lbfgs_options o = {.l2 = 1e-2, .max_iter = 500, .epsilon = 1e-6, .memory = 10};
    linear_lbfgs_result res;
    CHECK_OK(linear_lbfgs(&c, x, y, N, &o, &res, &err), &err);
    CHECK_OK(linear_objective(&c, x, y, N, 1e-2, &f, grad, &err), &err);
    CHECK(fabs(f - res.objective) < 1e-12 && f < f0 && res.iterations > 0);
    double gn = 0;
    for (size_t p = 0; p < c.param_count; p++)
        gn += grad[p] * grad[p];
    CHECK(sqrt(gn) < 1e-4);
    /* at the minimum the bias gradient is zero: the mean softmax equals the class frequencies, which
     * holds only if the bias carries no penalty */
    double *gb = grad + IN * K;
    for (int j = 0; j < K; j++)
        CHECK(fabs(gb[j]) < 1e-5);
    classifier_free(&c);
}

TEST(test_lbfgs_same_bytes_any_thread_count)
{
    enum { N = 12000, IN = 8, K = 3 }; /* more rows than one wave of the objective's chunks (8 x 1024) */
    float *x = malloc(sizeof(float) * N * IN);
    int64_t *y = malloc(sizeof(int64_t) * N);
    make_data(N, IN, K, 0.5, 6, x, y);
    classifier a, b;
    moco_error err;
    CHECK_OK(classifier_init(&a, IN, K, 0, &err), &err);
    CHECK_OK(classifier_init(&b, IN, K, 0, &err), &err);
    memset(a.param, 0, sizeof(float) * a.param_count);
    memset(b.param, 0, sizeof(float) * b.param_count);
    linear_lbfgs_options o = {.l2 = 1e-3, .max_iter = 50, .epsilon = 1e-6, .memory = 10};
    linear_lbfgs_result ra, rb;
#ifdef _OPENMP
    omp_set_num_threads(1);
#endif
    CHECK_OK(linear_lbfgs(&a, x, y, N, &o, &ra, &err), &err);
#ifdef _OPENMP
    omp_set_num_threads(2);
#endif
    CHECK_OK(linear_lbfgs(&b, x, y, N, &o, &rb, &err), &err);
    CHECK(memcmp(a.param, b.param, sizeof(float) * a.param_count) == 0 && ra.iterations == rb.iterations);
    classifier_free(&a);
    classifier_free(&b);
    free(x);
    free(y);
}

/* Held-out selection: a lambda so large that it flattens the classifier loses to a small one on
 * separable data; the scores are percentages of the held-out tenth; the same on any thread count. */
TEST(test_select_l2_picks_the_best_held_out_score)
{
    enum { N = 3000, IN = 6, K = 4 };
    float *x = malloc(sizeof(float) * N * IN);
    int64_t *y = malloc(sizeof(int64_t) * N);
    make_data(N, IN, K, 1.5, 8, x, y);
    feature_set d = {.n = N, .dim = IN, .x = x, .labels = y, .max_label = K - 1};
    classifier c;
    moco_error err = {{0}};
    CHECK_OK(classifier_init(&c, IN, K, 0, &err), &err);
    const double l2[3] = {1e3, 1e-4, 1e-2};
    double top1[2][3];
    int best[2];
    linear_lbfgs_options o = {.max_iter = 100, .epsilon = 1e-6, .memory = 10};
    for (int t = 0; t < 2; t++) {
#ifdef _OPENMP
        omp_set_num_threads(t + 1);
#endif
        CHECK_OK(linear_lbfgs_select_l2(&c, &d, l2, 3, 0.1, 5, &o, top1[t], &best[t], &err), &err);
    }
    CHECK(best[0] == best[1] && memcmp(top1[0], top1[1], sizeof top1[0]) == 0);
    printf("# held-out top-1: %g %g %g, best %d\n", top1[0][0], top1[0][1], top1[0][2], best[0]);
    CHECK(best[0] != 0 && top1[0][best[0]] > top1[0][0] + 5);
    for (int k = 0; k < 3; k++) /* 300 held-out samples: whole multiples of 1/3 percent */
        CHECK(top1[0][k] >= 0 && top1[0][k] <= 100 && fabs(top1[0][k] * 3 - round(top1[0][k] * 3)) < 1e-9);
    /* a share that leaves nothing on one side is refused */
    CHECK(linear_lbfgs_select_l2(&c, &d, l2, 3, 0.0001, 5, &o, top1[0], &best[0], &err) == MOCO_ERR);
    CHECK(strstr(err.msg, "held-out share") != NULL);
    classifier_free(&c);
    free(x);
    free(y);
}

TEST(test_lbfgs_refuses_labels_outside_the_classes)
{
    float x[4] = {1, 2, 3, 4};
    int64_t y[4] = {0, 1, 2, 1};
    classifier c;
    moco_error err;
    CHECK_OK(classifier_init(&c, 1, 2, 0, &err), &err);
    linear_lbfgs_options o = {.l2 = 1e-3, .max_iter = 10, .epsilon = 1e-6};
    linear_lbfgs_result res;
    CHECK(linear_lbfgs(&c, x, y, 4, &o, &res, &err) == MOCO_ERR);
    CHECK(strstr(err.msg, "label 2 of sample 2 is outside the 2 classes") != NULL);
    classifier_free(&c);
}

int main(void)
{
    moco_error err;
    backend *b = backend_create(2, &err); /* thread settings as the tool has them */
    RUN(test_permutation_is_fixed_by_seed_and_epoch);
    RUN(test_init_is_main_lincls_normal_001_zero_bias);
    RUN(test_standardizer_gives_zero_mean_unit_std_and_keeps_constant_features);
    RUN(test_scores_count_ties_against_the_label);
    RUN(test_objective_gradient_matches_finite_differences);
    RUN(test_lbfgs_reaches_the_minimum_bias_unpenalised);
    RUN(test_lbfgs_same_bytes_any_thread_count);
    RUN(test_select_l2_picks_the_best_held_out_score);
    RUN(test_lbfgs_refuses_labels_outside_the_classes);
    backend_destroy(b);
    TEST_EXIT();
}
