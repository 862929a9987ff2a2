/* linear_eval.c — see linear_eval.h. */
#include "linear_eval.h"

#include <cblas.h>
#include <lbfgs.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "rng.h"

/* ---- standardisation ---- */

int standardizer_fit(standardizer *z, const float *x, int64_t n, int dim, moco_error *err)
{
    *z = (standardizer){.dim = dim};
    z->mean = malloc(sizeof(float) * (size_t)dim);
    z->std = malloc(sizeof(float) * (size_t)dim);
    double *sum = calloc((size_t)dim, sizeof(double)), *sq = calloc((size_t)dim, sizeof(double));
    if (!z->mean || !z->std || !sum || !sq) {
        free(sum);
        free(sq);
        standardizer_free(z);
        return moco_fail(err, "out of memory for the statistics of %d features", dim);
    }
    if (n < 1) {
        free(sum);
        free(sq);
        standardizer_free(z);
        return moco_fail(err, "no samples to standardise with");
    }
    /* two passes (mean, then squared deviations): one pass of sums of squares loses digits */
    for (int64_t i = 0; i < n; i++)
        for (int j = 0; j < dim; j++)
            sum[j] += x[(size_t)i * dim + j];
    for (int j = 0; j < dim; j++)
        sum[j] /= (double)n;
    for (int64_t i = 0; i < n; i++)
        for (int j = 0; j < dim; j++) {
            double d = x[(size_t)i * dim + j] - sum[j];
            sq[j] += d * d;
        }
    for (int j = 0; j < dim; j++) {
        double sd = sqrt(sq[j] / (double)n);
        z->mean[j] = (float)sum[j];
        z->std[j] = sd < 1e-6 ? 1.0f : (float)sd;
    }
    free(sum);
    free(sq);
    return MOCO_OK;
}

void standardizer_apply(const standardizer *z, float *x, int64_t n)
{
    int dim = z->dim;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++)
        for (int j = 0; j < dim; j++)
            x[(size_t)i * dim + j] = (x[(size_t)i * dim + j] - z->mean[j]) / z->std[j];
}

void standardizer_free(standardizer *z)
{
    free(z->mean);
    free(z->std);
    z->mean = z->std = NULL;
}

/* ---- SGD ---- */

void linear_eval_init(classifier *c, uint64_t seed)
{
    rng r;
    rng_init(&r, seed, 0, 0, 4);
    float *w = classifier_weight(c), *b = classifier_bias(c);
    for (size_t i = 0; i < (size_t)c->classes * c->in; i++)
        w[i] = (float)(0.01 * rng_normal(&r));
    for (int j = 0; j < c->classes; j++)
        b[j] = 0;
}

void linear_eval_permutation(uint64_t seed, int epoch, int64_t n, int64_t *perm)
{
    rng r;
    rng_init(&r, seed, (uint32_t)epoch, 0, 5);
    for (int64_t i = 0; i < n; i++)
        perm[i] = i;
    for (int64_t i = n - 1; i > 0; i--) {
        /* two draws for indices beyond 32 bits, one otherwise */
        uint64_t j = i < (int64_t)UINT32_MAX ? rng_below(&r, (uint32_t)(i + 1))
                                              : (((uint64_t)rng_u32(&r) << 32) | rng_u32(&r)) % (uint64_t)(i + 1);
        int64_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
}

int linear_sgd_step(classifier *c, sgd *opt, const float *x, const int64_t *labels, int n, double lr,
                    double *loss, int *top1, int *top5, moco_error *err)
{
    if (classifier_train_step(c, x, labels, n, loss, top1, top5, err))
        return MOCO_ERR;
    if (!isfinite(*loss))
        return moco_fail(err, "the loss is %s (try a lower --lr, or --standardize)", isnan(*loss) ? "NaN" : "infinite");
    sgd_step(opt, c->param, c->grad, lr);
    return MOCO_OK;
}

/* A step here or on the options' device; the device's loss is checked as linear_sgd_step checks it. */
static int train_step(classifier *c, sgd *opt, const linear_sgd_options *o, const float *x, const int64_t *labels,
                      int n, double lr, double *loss, int *top1, int *top5, moco_error *err)
{
    if (!o->device)
        return linear_sgd_step(c, opt, x, labels, n, lr, loss, top1, top5, err);
    if (o->device->step(o->device->ctx, x, labels, n, lr, loss, top1, top5, err))
        return MOCO_ERR;
    if (!isfinite(*loss))
        return moco_fail(err, "the loss is %s (try a lower --lr, or --standardize)", isnan(*loss) ? "NaN" : "infinite");
    return MOCO_OK;
}

/* The epoch hook, with the device's weights brought back first. */
static int end_epoch(classifier *c, const linear_sgd_options *o, int epoch, double loss, double top1, double top5,
                     double lr, moco_error *err)
{
    if (o->device && o->device->pull(o->device->ctx, c, err))
        return MOCO_ERR;
    return o->on_epoch ? o->on_epoch(o->ctx, epoch, loss, top1, top5, lr, err) : MOCO_OK;
}

int linear_sgd_train(classifier *c, const feature_set *d, const linear_sgd_options *o, moco_error *err)
{
    int dim = d->dim, b = o->batch;
    sgd opt = {0};
    int64_t *perm = malloc(sizeof(int64_t) * (size_t)(d->n ? d->n : 1)), *by = malloc(sizeof(int64_t) * (size_t)b);
    float *bx = malloc(sizeof(float) * (size_t)b * dim);
    int rc = perm && by && bx ? sgd_init(&opt, c->param_count, o->momentum, o->weight_decay, err)
                              : moco_fail(err, "out of memory for batches of %d x %d", b, dim);
    if (!rc && d->n < 1)
        rc = moco_fail(err, "no samples to train on");
    for (int epoch = 0; epoch < o->epochs && !rc; epoch++) {
        double lr = schedule_lr(o->schedule, epoch), loss_sum = 0, loss;
        int64_t hits1 = 0, hits5 = 0;
        linear_eval_permutation(o->seed, epoch, d->n, perm);
        for (int64_t start = 0; start < d->n && !rc; start += b) {
            int m = (int)(d->n - start < b ? d->n - start : b), top1, top5;
            for (int i = 0; i < m; i++) {
                memcpy(bx + (size_t)i * dim, d->x + (size_t)perm[start + i] * dim, sizeof(float) * (size_t)dim);
                by[i] = d->labels[perm[start + i]];
            }
            if ((rc = train_step(c, &opt, o, bx, by, m, lr, &loss, &top1, &top5, err)))
                moco_prefix(err, "epoch %d, step %lld", epoch + 1, (long long)(start / b + 1));
            loss_sum += loss * m, hits1 += top1, hits5 += top5;
            if (o->on_step)
                o->on_step(o->ctx, epoch * d->n + start + m);
        }
        if (!rc)
            rc = end_epoch(c, o, epoch + 1, loss_sum / d->n, 100.0 * hits1 / d->n, 100.0 * hits5 / d->n, lr, err);
    }
    sgd_free(&opt);
    free(perm);
    free(by);
    free(bx);
    return rc;
}

int linear_sgd_stream(classifier *c, feature_source *src, int64_t samples, const linear_sgd_options *o,
                      linear_scores *last_epoch, moco_error *err)
{
    int dim = feature_source_dim(src), b = o->batch;
    sgd opt = {0};
    int64_t *by = malloc(sizeof(int64_t) * (size_t)b);
    float *bx = malloc(sizeof(float) * (size_t)b * (dim ? dim : 1));
    int rc = by && bx ? sgd_init(&opt, c->param_count, o->momentum, o->weight_decay, err)
                      : moco_fail(err, "out of memory for batches of %d x %d", b, dim);
    if (!rc && samples < 1)
        rc = moco_fail(err, "%s: no samples per epoch", feature_source_name(src));
    int64_t in_epoch = 0, hits1 = 0, hits5 = 0;
    int epoch = 0, m = 0;
    double loss_sum = 0;
    char where[1200];
    while (!rc && epoch < o->epochs) {
        const float *x;
        int64_t label;
        int got = feature_source_next(src, &x, &label, NULL, err);
        if (got < 0) {
            rc = MOCO_ERR;
            break;
        }
        if (got == 0) {
            rc = moco_fail(err, "%s ended in epoch %d of %d, after %lld records (%lld samples per epoch)",
                           feature_source_name(src), epoch + 1, o->epochs, (long long)feature_source_count(src),
                           (long long)samples);
            break;
        }
        if (label >= c->classes) {
            rc = moco_fail(err, "%s: label %lld is outside the %d classes", feature_source_where(src, where, sizeof where),
                           (long long)label, c->classes);
            break;
        }
        memcpy(bx + (size_t)m * dim, x, sizeof(float) * (size_t)dim);
        by[m++] = label;
        in_epoch++;
        if (m < b && in_epoch < samples)
            continue;
        double lr = schedule_lr(o->schedule, epoch), loss;
        int top1, top5;
        if ((rc = train_step(c, &opt, o, bx, by, m, lr, &loss, &top1, &top5, err))) {
            moco_prefix(err, "%s: epoch %d", feature_source_where(src, where, sizeof where), epoch + 1);
            break;
        }
        loss_sum += loss * m, hits1 += top1, hits5 += top5;
        m = 0;
        if (o->on_step)
            o->on_step(o->ctx, epoch * samples + in_epoch);
        if (in_epoch == samples) {
            rc = end_epoch(c, o, epoch + 1, loss_sum / samples, 100.0 * hits1 / samples, 100.0 * hits5 / samples, lr,
                           err);
            if (epoch + 1 == o->epochs && last_epoch) {
                last_epoch->n = samples, last_epoch->top1 = hits1, last_epoch->top5 = hits5;
                last_epoch->loss_sum = loss_sum;
            }
            epoch++, in_epoch = 0, hits1 = hits5 = 0, loss_sum = 0;
        }
    }
    sgd_free(&opt);
    free(by);
    free(bx);
    return rc;
}

/* ---- scores ---- */

int linear_scores_init(linear_scores *s, int classes, moco_error *err)
{
    *s = (linear_scores){.classes = classes};
    if (!(s->confusion = calloc((size_t)classes * classes, sizeof(int64_t))))
        return moco_fail(err, "out of memory for a %d-class confusion matrix", classes);
    return MOCO_OK;
}

void linear_scores_add(linear_scores *s, const float *logits, const int64_t *labels, int n)
{
    int c = s->classes;
    for (int i = 0; i < n; i++) {
        const float *row = logits + (size_t)i * c;
        int64_t label = labels[i];
        float mx = row[0];
        int arg = 0;
        for (int j = 1; j < c; j++)
            if (row[j] > mx)
                mx = row[j], arg = j;
        double sum = 0;
        for (int j = 0; j < c; j++)
            sum += exp((double)row[j] - mx);
        s->loss_sum += log(sum) + mx - row[label];
        int above = 0;
        for (int j = 0; j < c; j++)
            above += j != label && row[j] >= row[label];
        if (above == 0)
            arg = (int)label;
        else if (arg == label) /* tied with another: the prediction is that other */
            for (int j = 0; j < c; j++)
                if (j != label && row[j] >= row[label]) {
                    arg = j;
                    break;
                }
        s->top1 += above < 1;
        s->top5 += above < 5;
        s->confusion[(size_t)label * c + arg]++;
        s->n++;
    }
}

void linear_scores_free(linear_scores *s)
{
    free(s->confusion);
    s->confusion = NULL;
}

enum { SCORE_ROWS = 1024 };

int linear_scores_add_set(linear_scores *s, classifier *c, const feature_set *d, moco_error *err)
{
    for (int64_t start = 0; start < d->n; start += SCORE_ROWS) {
        int m = (int)(d->n - start < SCORE_ROWS ? d->n - start : SCORE_ROWS);
        for (int i = 0; i < m; i++)
            if (d->labels[start + i] < 0 || d->labels[start + i] >= c->classes)
                return moco_fail(err, "sample %lld: label %lld is outside the %d classes", (long long)(start + i + 1),
                                 (long long)d->labels[start + i], c->classes);
        if (classifier_forward(c, d->x + (size_t)start * d->dim, m, err))
            return MOCO_ERR;
        linear_scores_add(s, c->logits, d->labels + start, m);
    }
    return MOCO_OK;
}

int linear_scores_add_source(linear_scores *s, classifier *c, feature_source *src, const standardizer *z,
                             moco_error *err)
{
    int dim = feature_source_dim(src), m = 0, got;
    float *bx = malloc(sizeof(float) * SCORE_ROWS * (size_t)(dim ? dim : 1));
    int64_t by[SCORE_ROWS], label;
    const float *x;
    char where[1200];
    if (!bx)
        return moco_fail(err, "out of memory");
    if (dim && dim != c->in) {
        free(bx);
        return moco_fail(err, "%s: %d features per sample, the classifier takes %d", feature_source_name(src), dim, c->in);
    }
    while ((got = feature_source_next(src, &x, &label, NULL, err)) >= 0) {
        if (got == 1 && label >= c->classes) {
            free(bx);
            return moco_fail(err, "%s: label %lld is outside the %d classes", feature_source_where(src, where, sizeof where),
                             (long long)label, c->classes);
        }
        if (got == 1) {
            memcpy(bx + (size_t)m * dim, x, sizeof(float) * (size_t)dim);
            by[m++] = label;
        }
        if (m == SCORE_ROWS || (got == 0 && m)) {
            if (z)
                standardizer_apply(z, bx, m);
            if (classifier_forward(c, bx, m, err)) {
                got = MOCO_ERR;
                break;
            }
            linear_scores_add(s, c->logits, by, m);
            m = 0;
        }
        if (got == 0)
            break;
    }
    free(bx);
    return got < 0 ? MOCO_ERR : MOCO_OK;
}

/* ---- the L-BFGS objective ---- */

/* Rows per product (bounded memory whatever N is), and chunks per wave: the chunks of a wave run on
 * the threads at once, each into its own buffers, and are then added up in chunk order, so the sums
 * are the same whatever the thread count (and as one chunk after another would make them). */
enum { CHUNK = 1024, WAVE = 8 };

typedef struct {
    const classifier *c;
    const float *x;
    const int64_t *labels;
    int64_t n;
    double l2;
    float *w;            /* parameters as float, [weight | bias] */
    float *logits;       /* WAVE x (CHUNK, classes), then their gradient */
    float *dweight;      /* WAVE x (classes, in): each chunk's */
    float *dbias;        /* WAVE x classes */
    double *chunk_loss;  /* WAVE: each chunk's summed loss */
    const linear_lbfgs_options *o;
    int evaluations, iterations;
} objective_ws;

static int ws_init(objective_ws *ws, const classifier *c, const float *x, const int64_t *labels, int64_t n,
                   double l2, moco_error *err)
{
    *ws = (objective_ws){.c = c, .x = x, .labels = labels, .n = n, .l2 = l2};
    ws->w = malloc(sizeof(float) * c->param_count);
    ws->logits = malloc(sizeof(float) * WAVE * (size_t)CHUNK * c->classes);
    ws->dweight = malloc(sizeof(float) * WAVE * (size_t)c->classes * c->in);
    ws->dbias = malloc(sizeof(float) * WAVE * (size_t)c->classes);
    ws->chunk_loss = malloc(sizeof(double) * WAVE);
    if (!ws->w || !ws->logits || !ws->dweight || !ws->dbias || !ws->chunk_loss)
        return moco_fail(err, "out of memory for the L-BFGS objective (%d x %d)", c->classes, c->in);
    if (n < 1)
        return moco_fail(err, "no samples to fit");
    for (int64_t i = 0; i < n; i++)
        if (labels[i] < 0 || labels[i] >= c->classes)
            return moco_fail(err, "label %lld of sample %lld is outside the %d classes", (long long)labels[i],
                             (long long)i, c->classes);
    return MOCO_OK;
}

static void ws_free(objective_ws *ws)
{
    free(ws->w);
    free(ws->logits);
    free(ws->dweight);
    free(ws->dbias);
    free(ws->chunk_loss);
}

/* f and its gradient at ws->w (float parameters); grad (double, param_count) may be NULL. */
static double evaluate(objective_ws *ws, double *grad)
{
    const classifier *c = ws->c;
    int in = c->in, k = c->classes;
    const float *weight = ws->w, *bias = ws->w + (size_t)k * in;
    size_t nw = (size_t)k * in;
    if (grad)
        memset(grad, 0, sizeof(double) * c->param_count);
    double total = 0;
    float scale = (float)(1.0 / (double)ws->n);
    int64_t chunks = (ws->n + CHUNK - 1) / CHUNK;
    for (int64_t first = 0; first < chunks; first += WAVE) {
        int wave = (int)(chunks - first < WAVE ? chunks - first : WAVE);
#pragma omp parallel for schedule(dynamic, 1)
        for (int j = 0; j < wave; j++) {
            int64_t start = (first + j) * CHUNK;
            int m = (int)(ws->n - start < CHUNK ? ws->n - start : CHUNK);
            const float *x = ws->x + (size_t)start * in;
            const int64_t *labels = ws->labels + start;
            float *logits = ws->logits + (size_t)j * CHUNK * k; /* becomes d f / d logits */
            /* whole-chunk products, one sgemm each: the same blocking (and bits) on any thread */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, k, in, 1.0f, x, in, weight, in, 0.0f, logits, k);
            for (int i = 0; i < m; i++)
                for (int c2 = 0; c2 < k; c2++)
                    logits[(size_t)i * k + c2] += bias[c2];
            double loss = 0;
            for (int i = 0; i < m; i++)
                loss += softmax_cross_entropy_row(logits + (size_t)i * k, k, labels[i], scale, logits + (size_t)i * k);
            ws->chunk_loss[j] = loss;
            if (grad) {
                float *dw = ws->dweight + (size_t)j * nw, *db = ws->dbias + (size_t)j * k;
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, k, in, m, 1.0f, logits, k, x, in, 0.0f, dw, in);
                for (int c2 = 0; c2 < k; c2++) {
                    float sum = 0;
                    for (int i = 0; i < m; i++)
                        sum += logits[(size_t)i * k + c2];
                    db[c2] = sum;
                }
            }
        }
        for (int j = 0; j < wave; j++) { /* in chunk order */
            total += ws->chunk_loss[j];
            if (grad) {
                const float *dw = ws->dweight + (size_t)j * nw, *db = ws->dbias + (size_t)j * k;
                for (size_t i = 0; i < nw; i++)
                    grad[i] += dw[i];
                for (int c2 = 0; c2 < k; c2++)
                    grad[nw + c2] += db[c2];
            }
        }
    }
    double f = total / (double)ws->n, sq = 0;
    for (size_t i = 0; i < nw; i++) {
        sq += (double)weight[i] * weight[i];
        if (grad)
            grad[i] += ws->l2 * weight[i];
    }
    ws->evaluations++;
    return f + 0.5 * ws->l2 * sq;
}

int linear_objective(const classifier *c, const float *x, const int64_t *labels, int64_t n, double l2,
                     double *objective, double *grad, moco_error *err)
{
    objective_ws ws;
    int rc = ws_init(&ws, c, x, labels, n, l2, err);
    if (!rc) {
        memcpy(ws.w, c->param, sizeof(float) * c->param_count);
        *objective = evaluate(&ws, grad);
    }
    ws_free(&ws);
    return rc;
}

static lbfgsfloatval_t lbfgs_evaluate(void *instance, const lbfgsfloatval_t *x, lbfgsfloatval_t *g, const int n,
                                      const lbfgsfloatval_t step)
{
    (void)step;
    objective_ws *ws = instance;
    for (int i = 0; i < n; i++)
        ws->w[i] = (float)x[i];
    return evaluate(ws, g);
}

static int lbfgs_progress(void *instance, const lbfgsfloatval_t *x, const lbfgsfloatval_t *g,
                          const lbfgsfloatval_t fx, const lbfgsfloatval_t xnorm, const lbfgsfloatval_t gnorm,
                          const lbfgsfloatval_t step, int n, int k, int ls)
{
    (void)x, (void)g, (void)xnorm, (void)step, (void)n, (void)ls;
    objective_ws *ws = instance;
    ws->iterations = k;
    return ws->o->progress ? ws->o->progress(ws->o->ctx, k, fx, gnorm) : 0;
}

int linear_lbfgs(classifier *c, const float *x, const int64_t *labels, int64_t n, const linear_lbfgs_options *o,
                 linear_lbfgs_result *res, moco_error *err)
{
    *res = (linear_lbfgs_result){0};
    if ((size_t)c->param_count > (size_t)INT32_MAX)
        return moco_fail(err, "%zu parameters: more than liblbfgs takes", c->param_count);
    objective_ws ws;
    if (ws_init(&ws, c, x, labels, n, o->l2, err)) {
        ws_free(&ws);
        return MOCO_ERR;
    }
    ws.o = o;
    int np = (int)c->param_count;
    lbfgsfloatval_t *p = lbfgs_malloc(np), fx = 0;
    if (!p) {
        ws_free(&ws);
        return moco_fail(err, "out of memory for %d L-BFGS variables", np);
    }
    for (int i = 0; i < np; i++)
        p[i] = c->param[i];
    lbfgs_parameter_t param;
    lbfgs_parameter_init(&param);
    param.max_iterations = o->max_iter;
    param.epsilon = o->epsilon;
    param.m = o->memory > 0 ? o->memory : 10;
    int status = lbfgs(np, p, &fx, lbfgs_evaluate, lbfgs_progress, &ws, &param);
    int rc = MOCO_OK;
    switch (status) {
    case LBFGS_SUCCESS: res->stop = "converged"; break;
    case LBFGS_ALREADY_MINIMIZED: res->stop = "converged (at the start)"; break;
    case LBFGS_STOP: res->stop = "stopped"; break;
    case LBFGSERR_CANCELED: res->stop = "cancelled"; break;
    case LBFGSERR_MAXIMUMITERATION: res->stop = "max-iter"; break;
    /* The line search cannot improve on the point it has: the objective's float32 products leave no
     * decrease to find. liblbfgs has kept the last good point, which is as close as we get. */
    case LBFGSERR_ROUNDING_ERROR:
    case LBFGSERR_MINIMUMSTEP:
    case LBFGSERR_MAXIMUMSTEP:
    case LBFGSERR_MAXIMUMLINESEARCH:
    case LBFGSERR_WIDTHTOOSMALL:
    case LBFGSERR_INCREASEGRADIENT:
    case LBFGSERR_OUTOFINTERVAL:
    case LBFGSERR_INCORRECT_TMINMAX:
        res->stop = "line search ended (float precision)";
        break;
    default:
        rc = moco_fail(err, "L-BFGS failed (liblbfgs status %d)", status);
    }
    if (!rc) {
        for (int i = 0; i < np; i++)
            c->param[i] = (float)p[i];
        /* the objective and gradient norm at the point returned */
        double *g = malloc(sizeof(double) * (size_t)np);
        memcpy(ws.w, c->param, sizeof(float) * (size_t)np);
        res->objective = evaluate(&ws, g);
        double gn = 0;
        for (int i = 0; g && i < np; i++)
            gn += g[i] * g[i];
        res->grad_norm = g ? sqrt(gn) : NAN;
        free(g);
        res->evaluations = ws.evaluations;
        res->iterations = ws.iterations;
    }
    lbfgs_free(p);
    ws_free(&ws);
    return rc;
}

/* ---- choosing lambda on held-out samples ---- */

int linear_lbfgs_select_l2(classifier *c, const feature_set *d, const double *l2, int count, double holdout,
                           uint64_t seed, const linear_lbfgs_options *o, double *holdout_top1, int *best,
                           moco_error *err)
{
    int64_t n_hold = (int64_t)llround(holdout * (double)d->n);
    if (count < 1)
        return moco_fail(err, "no l2 values to choose from");
    if (!(holdout > 0 && holdout < 1) || n_hold < 1 || n_hold >= d->n)
        return moco_fail(err, "a held-out share of %g leaves no samples on one side of %lld", holdout,
                         (long long)d->n);
    size_t dim = (size_t)d->dim;
    feature_set fit = {.n = d->n - n_hold, .dim = d->dim}, held = {.n = n_hold, .dim = d->dim};
    int64_t *perm = malloc(sizeof *perm * (size_t)d->n);
    fit.x = malloc(sizeof(float) * dim * (size_t)fit.n);
    held.x = malloc(sizeof(float) * dim * (size_t)held.n);
    fit.labels = malloc(sizeof(int64_t) * (size_t)fit.n);
    held.labels = malloc(sizeof(int64_t) * (size_t)held.n);
    linear_scores sc = {0};
    int rc = MOCO_ERR;
    if (!perm || !fit.x || !held.x || !fit.labels || !held.labels) {
        moco_fail(err, "out of memory for a held-out split of %lld samples", (long long)d->n);
        goto done;
    }
    /* a seeded permutation (the stream "epoch" -1, apart from SGD's epochs): its first n_hold are held out */
    linear_eval_permutation(seed, -1, d->n, perm);
    for (int64_t i = 0; i < d->n; i++) {
        feature_set *to = i < n_hold ? &held : &fit;
        int64_t at = i < n_hold ? i : i - n_hold;
        memcpy(to->x + (size_t)at * dim, d->x + (size_t)perm[i] * dim, sizeof(float) * dim);
        to->labels[at] = d->labels[perm[i]];
    }
    *best = 0;
    for (int k = 0; k < count; k++) {
        linear_lbfgs_options ok = *o;
        ok.l2 = l2[k];
        linear_lbfgs_result res;
        memset(c->param, 0, sizeof(float) * c->param_count);
        if (linear_lbfgs(c, fit.x, fit.labels, fit.n, &ok, &res, err) || linear_scores_init(&sc, c->classes, err) ||
            linear_scores_add_set(&sc, c, &held, err)) {
            moco_prefix(err, "l2 %g on the held-out split", l2[k]);
            goto done;
        }
        holdout_top1[k] = 100.0 * (double)sc.top1 / (double)sc.n;
        linear_scores_free(&sc);
        /* the best score; on a tie the larger lambda, the smoother model */
        if (holdout_top1[k] > holdout_top1[*best] || (holdout_top1[k] == holdout_top1[*best] && l2[k] > l2[*best]))
            *best = k;
    }
    rc = MOCO_OK;
done:
    linear_scores_free(&sc);
    free(perm), free(fit.x), free(held.x), free(fit.labels), free(held.labels);
    return rc;
}
