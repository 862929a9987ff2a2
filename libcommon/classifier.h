/* classifier.h — the supervised linear classifier of the linear-evaluation protocol (moco-linear):
 * Linear(in, classes) on frozen features, softmax cross-entropy, trained with optim.h's SGD.
 *
 * Weight (classes, in) and bias (classes) are stored one after the other in `param` (and their
 * gradients in `grad`), so one sgd_step updates both, as torch.optim.SGD over fc.parameters(). */
#ifndef MOCO_CLASSIFIER_H
#define MOCO_CLASSIFIER_H
#include <stddef.h>
#include <stdint.h>
#include "error.h"

typedef struct {
    int in, classes;
    size_t param_count;   /* classes * in + classes */
    float *param, *grad;  /* [weight | bias] */
    float *logits, *d_logits;
    int capacity;         /* rows the logit buffers hold */
} classifier;

/* nn.Linear's initialisation (weight and bias uniform in +-1/sqrt(in)) from the Philox stream of seed. */
int classifier_init(classifier *c, int in, int classes, uint64_t seed, moco_error *err);
void classifier_free(classifier *c);
static inline float *classifier_weight(classifier *c) { return c->param; }
static inline float *classifier_bias(classifier *c) { return c->param + (size_t)c->classes * c->in; }
/* Forward on features x (N, in): logits in c->logits (N, classes). */
int classifier_forward(classifier *c, const float *x, int n, moco_error *err);
/* Forward and backward against labels: gradients in c->grad; returns the mean loss; top1/top5 count
 * correct rows. */
int classifier_train_step(classifier *c, const float *x, const int64_t *labels, int n, double *loss, int *top1,
                          int *top5, moco_error *err);

#endif
