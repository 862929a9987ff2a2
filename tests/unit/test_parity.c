/* test_parity.c — the CPU backend against PyTorch: the fixtures of tests/parity/make_fixtures.py
 * (Debian's python3-torch 1.13), reproduced step by step. Float32: every tensor within a relative
 * error of 1e-4 (|a - b| / |b|, Euclidean norms over the whole tensor). */
#include <math.h>
#include <stdint.h>

#include "backend.h"
#include "classifier.h"
#include "moco.h"
#include "optim.h"
#include "resnet.h"
#include "safetensors.h"
#include "test.h"

#define FIX "tests/fixtures/parity/"
#define TOLERANCE 1e-4

static backend *be;
static char mismatch[512];
static double worst;       /* the largest relative error seen in the current test */
static char worst_name[128];

/* Relative error of got against the fixture tensor `name`, or a big number (and a message) when the
 * tensor is missing or its size differs. */
static double fixture_error(const safetensors *st, const char *name, const float *got, size_t count)
{
    const tensor *t = safetensors_find(st, name);
    if (!t || t->dtype != DTYPE_F32 || (size_t)tensor_numel(t) != count) {
        snprintf(mismatch, sizeof mismatch, "%s: missing or %zu values expected", name, count);
        return INFINITY;
    }
    double diff = 0, ref = 0;
    for (size_t i = 0; i < count; i++) {
        float want;
        memcpy(&want, (const char *)t->data + 4 * i, 4);
        diff += ((double)got[i] - want) * ((double)got[i] - want);
        ref += (double)want * want;
    }
    double e = sqrt(diff) / fmax(sqrt(ref), 1e-30);
    if (e > worst)
        worst = e, snprintf(worst_name, sizeof worst_name, "%s", name);
    if (e > TOLERANCE)
        snprintf(mismatch, sizeof mismatch, "%s: relative error %.3g", name, e);
    return e;
}

#define CHECK_CLOSE(st, name, got, count)                                                          \
    do {                                                                                           \
        if (fixture_error(st, name, got, count) > TOLERANCE) {                                     \
            snprintf(test_fail_where, sizeof test_fail_where, "%s:%d: %s", __FILE__, __LINE__, mismatch); \
            test_failed_flag = 1;                                                                  \
            return;                                                                                \
        }                                                                                          \
    } while (0)

static int load(const safetensors *st, const char *name, float *dst, size_t count)
{
    const tensor *t = safetensors_find(st, name);
    if (!t || t->dtype != DTYPE_F32 || (size_t)tensor_numel(t) != count)
        return -1;
    memcpy(dst, t->data, 4 * count);
    return 0;
}

/* Every state_dict entry of net from the fixture, under prefix ("q0." ...); parameters only when
 * params_only. */
static int load_net(const safetensors *st, resnet *net, const char *prefix, int params_only)
{
    for (int i = 0; i < net->ntensors; i++) {
        const resnet_tensor *t = &net->tensors[i];
        if (params_only && t->buffer)
            continue;
        char key[128];
        snprintf(key, sizeof key, "%s%s", prefix, t->name);
        if (load(st, key, (t->buffer ? net->buffer : net->param) + t->offset, t->count))
            return -1;
    }
    return 0;
}

static const resnet_config tiny = {.depth = 18, .width = 4, .in_channels = 3, .cifar_stem = 1,
                                   .head = RESNET_HEAD_MLP, .out_dim = 16};

TEST(test_parity_moco_two_steps_match_pytorch)
{
    moco_error err = {{0}};
    safetensors *st = safetensors_open(FIX "moco_step.safetensors", &err);
    CHECK_OK(st ? 0 : -1, &err);
    moco_config cfg = {.queue_size = 64, .key_momentum = 0.99, .temperature = 0.2, .bn_groups = 2};
    moco *m = moco_create(be, &tiny, &cfg, &err);
    CHECK_OK(m ? 0 : -1, &err);
    CHECK(load_net(st, m->q, "q0.", 0) == 0);
    CHECK(load_net(st, m->k, "k0.", 1) == 0);
    CHECK(load(st, "queue0", m->queue, 64 * 16) == 0);
    sgd opt;
    CHECK_OK(sgd_init(&opt, m->q->param_count, 0.9, 5e-4, &err), &err);
    const int n = 8, s = 16;
    float im_q[8 * 16 * 16 * 3], im_k[8 * 16 * 16 * 3];
    for (int step = 1; step <= 2; step++) {
        char key[64];
        snprintf(key, sizeof key, "step%d.im_q", step);
        CHECK(load(st, key, im_q, sizeof im_q / 4) == 0);
        snprintf(key, sizeof key, "step%d.im_k", step);
        CHECK(load(st, key, im_k, sizeof im_k / 4) == 0);
        snprintf(key, sizeof key, "step%d.perm", step);
        const tensor *perm = safetensors_find(st, key);
        CHECK(perm && perm->dtype == DTYPE_I64 && tensor_numel(perm) == n);
        int64_t p[8];
        memcpy(p, perm->data, sizeof p);
        moco_result r;
        CHECK_OK(moco_step(m, im_q, im_k, n, s, s, p, NULL, &r, &err), &err);
        snprintf(key, sizeof key, "step%d.logits", step);
        CHECK_CLOSE(st, key, m->logits, (size_t)n * 65);
        float loss = (float)r.loss;
        snprintf(key, sizeof key, "step%d.loss", step);
        CHECK_CLOSE(st, key, &loss, 1);
        if (step == 1)
            for (int i = 0; i < m->q->ntensors; i++) {
                const resnet_tensor *t = &m->q->tensors[i];
                if (t->buffer)
                    continue;
                snprintf(key, sizeof key, "step1.grad.%s", t->name);
                CHECK_CLOSE(st, key, m->q->grad + t->offset, t->count);
            }
        sgd_step(&opt, m->q->param, m->q->grad, 0.06);
    }
    for (int i = 0; i < m->q->ntensors; i++) {
        const resnet_tensor *t = &m->q->tensors[i];
        char key[128];
        snprintf(key, sizeof key, "final.q.%s", t->name);
        CHECK_CLOSE(st, key, (t->buffer ? m->q->buffer : m->q->param) + t->offset, t->count);
        if (t->buffer)
            continue;
        snprintf(key, sizeof key, "final.k.%s", t->name);
        CHECK_CLOSE(st, key, m->k->param + t->offset, t->count);
        snprintf(key, sizeof key, "final.mom.%s", t->name);
        CHECK_CLOSE(st, key, opt.buf + t->offset, t->count);
    }
    CHECK_CLOSE(st, "final.queue", m->queue, 64 * 16);
    CHECK(m->queue_ptr == 16);
    CHECK(m->q->num_batches_tracked == 2);
    sgd_free(&opt);
    moco_destroy(m);
    safetensors_close(st);
}

TEST(test_parity_linear_classifier_two_steps_match_pytorch)
{
    moco_error err = {{0}};
    safetensors *st = safetensors_open(FIX "linear_step.safetensors", &err);
    CHECK_OK(st ? 0 : -1, &err);
    classifier c;
    CHECK_OK(classifier_init(&c, 16, 5, 0, &err), &err);
    CHECK(load(st, "weight0", classifier_weight(&c), 80) == 0);
    CHECK(load(st, "bias0", classifier_bias(&c), 5) == 0);
    float x[8 * 16];
    CHECK(load(st, "features", x, 128) == 0);
    const tensor *lt = safetensors_find(st, "labels");
    CHECK(lt && lt->dtype == DTYPE_I64);
    int64_t labels[8];
    memcpy(labels, lt->data, sizeof labels);
    sgd opt;
    CHECK_OK(sgd_init(&opt, c.param_count, 0.9, 1e-4, &err), &err);
    for (int step = 1; step <= 2; step++) {
        double loss;
        int top1, top5;
        CHECK_OK(classifier_train_step(&c, x, labels, 8, &loss, &top1, &top5, &err), &err);
        char key[32];
        snprintf(key, sizeof key, "step%d.logits", step);
        CHECK_CLOSE(st, key, c.logits, 40);
        float l = (float)loss;
        snprintf(key, sizeof key, "step%d.loss", step);
        CHECK_CLOSE(st, key, &l, 1);
        sgd_step(&opt, c.param, c.grad, 0.5);
    }
    CHECK_CLOSE(st, "weight", classifier_weight(&c), 80);
    CHECK_CLOSE(st, "bias", classifier_bias(&c), 5);
    sgd_free(&opt);
    classifier_free(&c);
    safetensors_close(st);
}

/* u in [0, 1) from an integer hash: the formula of make_fixtures.py, exact in both languages. */
static double formula(uint32_t tensor_index, uint32_t i)
{
    uint32_t h = i * 2654435761u + tensor_index * 40503u;
    h ^= h >> 13;
    h *= 2246822519u;
    return h / 4294967296.0;
}

static int contains(const char *s, const char *part) { return strstr(s, part) != NULL; }

static void fill_formula(resnet *net)
{
    for (int t = 0; t < net->ntensors; t++) {
        const resnet_tensor *e = &net->tensors[t];
        float *v = (e->buffer ? net->buffer : net->param) + e->offset;
        const char *name = e->name;
        size_t len = strlen(name);
        int is_weight = len > 7 && !strcmp(name + len - 7, ".weight");
        for (size_t i = 0; i < e->count; i++) {
            double u = formula((uint32_t)t, (uint32_t)i), x;
            if (contains(name, "running_mean"))
                x = 0.1 * (2 * u - 1);
            else if (contains(name, "running_var"))
                x = 0.5 + u;
            else if (contains(name, ".bn") || !strncmp(name, "bn", 2) || contains(name, ".downsample.1."))
                x = is_weight ? 0.8 + 0.4 * u : 0.2 * (2 * u - 1);
            else if (!is_weight)
                x = 0.1 * (2 * u - 1);
            else {
                double fan_in = (double)e->count / e->dims[0];
                x = (2 * u - 1) * sqrt(6.0 / fan_in);
            }
            v[i] = (float)x;
        }
    }
}

TEST(test_parity_resnet50_forward_matches_pytorch)
{
    moco_error err = {{0}};
    safetensors *st = safetensors_open(FIX "resnet50_forward.safetensors", &err);
    CHECK_OK(st ? 0 : -1, &err);
    resnet_config cfg = {.depth = 50, .width = 64, .in_channels = 3, .head = RESNET_HEAD_LINEAR, .out_dim = 1000};
    resnet *net = resnet_create(be, &cfg, 0, &err);
    CHECK_OK(net ? 0 : -1, &err);
    CHECK(net->param_count == 25557032); /* torchvision's resnet50: 25,557,032 parameters */
    fill_formula(net);
    float *x = malloc(sizeof(float) * 224 * 224 * 3);
    CHECK(x);
    for (uint32_t i = 0; i < 224 * 224 * 3; i++)
        x[i] = (float)((2 * formula(999, i) - 1) * 2);
    CHECK_OK(resnet_forward(net, x, 1, 224, 224, 0, 1, &err), &err);
    CHECK_CLOSE(st, "pooled", net->pooled, 2048);
    CHECK_CLOSE(st, "logits", net->output, 1000);
    free(x);
    resnet_destroy(net);
    safetensors_close(st);
}

/* RUN, then say how close the closest call was. */
#define RUN_PARITY(name)                                                                           \
    do {                                                                                           \
        worst = 0, worst_name[0] = 0;                                                              \
        RUN(name);                                                                                 \
        printf("# %s: largest relative error %.2g (%s)\n", #name, worst, worst_name);             \
    } while (0)

int main(void)
{
    moco_error err;
    if (!(be = backend_create(2, &err))) {
        printf("FAIL backend_create: %s\n", err.msg);
        return 1;
    }
    RUN_PARITY(test_parity_moco_two_steps_match_pytorch);
    RUN_PARITY(test_parity_linear_classifier_two_steps_match_pytorch);
    RUN_PARITY(test_parity_resnet50_forward_matches_pytorch);
    backend_destroy(be);
    TEST_EXIT();
}
