/* classifier.c — the linear classifier of classifier.h. */
#include "classifier.h"

#include <math.h>
#include <stdlib.h>

#include "backend.h"
#include "rng.h"

int classifier_init(classifier *c, int in, int classes, uint64_t seed, moco_error *err)
{
    *c = (classifier){.in = in, .classes = classes};
    if (in < 1 || classes < 2)
        return moco_fail(err, "linear classifier of %d features into %d classes: need at least 1 and 2", in, classes);
    c->param_count = (size_t)classes * in + classes;
    c->param = malloc(sizeof(float) * c->param_count);
    c->grad = calloc(c->param_count, sizeof(float));
    if (!c->param || !c->grad) {
        classifier_free(c);
        return moco_fail(err, "out of memory for a %d x %d classifier", classes, in);
    }
    rng r;
    rng_init(&r, seed, 0, 0, 3);
    double bound = 1.0 / sqrt((double)in);
    for (size_t i = 0; i < c->param_count; i++)
        c->param[i] = (float)rng_range(&r, -bound, bound);
    return MOCO_OK;
}

void classifier_free(classifier *c)
{
    free(c->param);
    free(c->grad);
    free(c->logits);
    free(c->d_logits);
    c->param = c->grad = c->logits = c->d_logits = NULL;
}

int classifier_forward(classifier *c, const float *x, int n, moco_error *err)
{
    if (n > c->capacity) {
        free(c->logits);
        free(c->d_logits);
        c->logits = malloc(sizeof(float) * n * c->classes);
        c->d_logits = malloc(sizeof(float) * n * c->classes);
        if (!c->logits || !c->d_logits) {
            c->capacity = 0;
            return moco_fail(err, "out of memory for logits of %d rows", n);
        }
        c->capacity = n;
    }
    linear_forward(x, n, c->in, c->classes, classifier_weight(c), classifier_bias(c), c->logits);
    return MOCO_OK;
}

int classifier_train_step(classifier *c, const float *x, const int64_t *labels, int n, double *loss, int *top1,
                          int *top5, moco_error *err)
{
    for (int i = 0; i < n; i++)
        if (labels[i] < 0 || labels[i] >= c->classes)
            return moco_fail(err, "label %lld of row %d is outside the %d classes", (long long)labels[i], i, c->classes);
    if (classifier_forward(c, x, n, err))
        return MOCO_ERR;
    *loss = softmax_cross_entropy(c->logits, n, c->classes, labels, c->d_logits, top1, top5);
    linear_backward(x, c->d_logits, n, c->in, c->classes, classifier_weight(c), NULL, c->grad,
                    c->grad + (size_t)c->classes * c->in);
    return MOCO_OK;
}
