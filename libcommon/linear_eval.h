/* linear_eval.h — the linear-evaluation protocol around classifier.h: what moco-linear computes.
 *
 * Two solvers for a Linear(F, classes) on frozen features:
 *   SGD as the original main_lincls.py: weight ~ N(0, 0.01), bias 0; torch.optim.SGD (optim.h) on
 *       mean softmax cross-entropy per batch; a fresh order of the samples each epoch
 *       (linear_eval_permutation) when they are all in memory.
 *   L-BFGS (liblbfgs) on the full batch, deterministic, from zero weights, minimising
 *       f(W, b) = (1/N) sum_i CE(W x_i + b, y_i) + (l2 / 2) ||W||^2   (the bias is not penalised).
 *       The gradient is computed in chunks of rows with OpenBLAS (backend.h's linear ops), each row's
 *       loss summed in a fixed order, so the same input and thread count give the same result.
 * Both SGD protocols live here: in memory (a fresh order each epoch) and streaming (records in the
 * order they arrive, E epochs of fresh views in one stream). Plus standardisation (per-feature mean
 * and standard deviation of the train set) and the scores of a classifier: top-1, top-5, loss, and
 * the confusion matrix. */
#ifndef MOCO_LINEAR_EVAL_H
#define MOCO_LINEAR_EVAL_H

#include <stdint.h>

#include "classifier.h"
#include "error.h"
#include "feature_source.h"
#include "optim.h"

typedef struct linear_scores linear_scores; /* below */

/* ---- standardisation: x' = (x - mean) / std, per feature ----
 * std is the population standard deviation (ddof 0, as sklearn's StandardScaler); a feature that
 * never changes (std < 1e-6, e.g. a border pixel that is always black) gets std 1. */
typedef struct {
    int dim;
    float *mean, *std; /* dim each, owned */
} standardizer;

int standardizer_fit(standardizer *z, const float *x, int64_t n, int dim, moco_error *err);
void standardizer_apply(const standardizer *z, float *x, int64_t n);
void standardizer_free(standardizer *z);

/* ---- SGD, the original protocol ---- */

/* main_lincls.py's initialisation of the new fc: weight N(0, 0.01), bias 0 (Philox stream of seed). */
void linear_eval_init(classifier *c, uint64_t seed);
/* The order of the samples in epoch `epoch`: a Fisher-Yates shuffle of 0..n-1 drawn from the Philox
 * stream of (seed, epoch), so it depends on nothing else (not the thread count). */
void linear_eval_permutation(uint64_t seed, int epoch, int64_t n, int64_t *perm);
/* One step on a batch: forward, backward, sgd_step at rate lr. The batch's mean loss and top-1/top-5
 * counts come back; a loss that is not finite is an error (the rate is too high). */
int linear_sgd_step(classifier *c, sgd *opt, const float *x, const int64_t *labels, int n, double lr,
                    double *loss, int *top1, int *top5, moco_error *err);

/* Where the SGD steps run when not here: a device holding its own copy of the classifier and of
 * the momentum buffers (moco-linear --device cuda). step runs one step on a batch as
 * linear_sgd_step does; pull copies the device's weights into the classifier (before each
 * on_epoch hook, which may evaluate them, and at the end). */
typedef struct {
    void *ctx;
    int (*step)(void *ctx, const float *x, const int64_t *labels, int n, double lr, double *loss, int *top1,
                int *top5, moco_error *err);
    int (*pull)(void *ctx, classifier *c, moco_error *err);
} linear_device;

/* The SGD protocol's settings and the caller's hooks (ctx is passed back to both). */
typedef struct {
    double momentum, weight_decay;
    int batch, epochs;
    const lr_schedule *schedule; /* evaluated at each epoch index */
    uint64_t seed;               /* the per-epoch order (in memory) */
    /* After each epoch (1-based), with its mean loss, running top-1/top-5 (percent) and rate; a
     * non-zero return stops training with that status (the hook fills err). May be NULL. */
    int (*on_epoch)(void *ctx, int epoch, double loss, double top1, double top5, double lr, moco_error *err);
    /* After each step, with the samples trained on so far. May be NULL. */
    void (*on_step)(void *ctx, int64_t samples_done);
    void *ctx;
    const linear_device *device; /* NULL: the steps run here */
} linear_sgd_options;

/* The fast protocol: every sample of d in memory; epoch e takes them in linear_eval_permutation(seed,
 * e) order, batches of `batch`, the last one short. */
int linear_sgd_train(classifier *c, const feature_set *d, const linear_sgd_options *o, moco_error *err);
/* The exact protocol: records of src in stream order, `samples` per epoch; a batch ends early only
 * at an epoch's end. Stops after o->epochs epochs (reading no further); a stream that ends before is
 * an error naming the epoch. last_epoch (may be NULL) gets the last epoch's running n, top1, top5
 * and loss_sum (no confusion). */
int linear_sgd_stream(classifier *c, feature_source *src, int64_t samples, const linear_sgd_options *o,
                      linear_scores *last_epoch, moco_error *err);

/* ---- scores of a classifier ---- */
struct linear_scores {
    int classes;
    int64_t n, top1, top5;
    double loss_sum;     /* sum of the rows' cross-entropy */
    int64_t *confusion;  /* (classes, classes): [true][predicted], owned */
};

int linear_scores_init(linear_scores *s, int classes, moco_error *err);
/* Add rows of logits (n, classes) with their labels (each in 0..classes-1). A row counts in top-k
 * when fewer than k other logits are >= its label's (ties count against the label, as
 * softmax_cross_entropy does); its prediction is the label when top-1, else the first largest. */
void linear_scores_add(linear_scores *s, const float *logits, const int64_t *labels, int n);
void linear_scores_free(linear_scores *s);
/* Score every sample of a set, or of a source read to its end (standardised with z when z is not
 * NULL; a label outside the classes is an error naming the file and record). */
int linear_scores_add_set(linear_scores *s, classifier *c, const feature_set *d, moco_error *err);
int linear_scores_add_source(linear_scores *s, classifier *c, feature_source *src, const standardizer *z,
                             moco_error *err);

/* ---- L-BFGS ---- */
typedef struct {
    double l2;        /* lambda of the objective above */
    int max_iter;     /* iterations at most (0: until converged) */
    double epsilon;   /* stop when ||grad|| < epsilon * max(1, ||params||) (liblbfgs's test) */
    int memory;       /* corrections kept (liblbfgs's m) */
    /* Called after each iteration (may be NULL); non-zero stops. */
    int (*progress)(void *ctx, int iteration, double objective, double grad_norm);
    void *ctx;
} linear_lbfgs_options;

typedef struct {
    int iterations, evaluations;
    double objective, grad_norm;
    const char *stop; /* why it stopped: "converged", "max-iter", "line search ended (float precision)", ... */
} linear_lbfgs_result;

/* Minimise the objective from c's current parameters (set them to zero for the documented solver);
 * the solution is left in c. */
int linear_lbfgs(classifier *c, const float *x, const int64_t *labels, int64_t n, const linear_lbfgs_options *o,
                 linear_lbfgs_result *res, moco_error *err);
/* Choose lambda among l2[0..count-1] on held-out samples: a permutation seeded by `seed` sets aside
 * round(holdout * n) samples of d (0 < holdout < 1), L-BFGS fits each lambda from zero on the rest (o
 * gives the other options), and the best top-1 on the held-out samples wins (a tie: the larger
 * lambda). holdout_top1[k] gets each score (percent), *best the winner's index; c is left with the
 * last fit (refit on all of d with the winner). */
int linear_lbfgs_select_l2(classifier *c, const feature_set *d, const double *l2, int count, double holdout,
                           uint64_t seed, const linear_lbfgs_options *o, double *holdout_top1, int *best,
                           moco_error *err);
/* The objective at c's parameters; grad (may be NULL) gets its gradient, [weight | bias] as c->param. */
int linear_objective(const classifier *c, const float *x, const int64_t *labels, int64_t n, double l2,
                     double *objective, double *grad, moco_error *err);

#endif
