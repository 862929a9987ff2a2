/* optim.h — SGD exactly as torch.optim.SGD computes it, and the learning-rate schedules of MoCo.
 *
 * SGD (dampening 0, no Nesterov): d = g + weight_decay * p; buf = momentum * buf + d (buf starts at
 * zero, which equals PyTorch's first-step copy of d); p -= lr * buf. One loop over a flat parameter
 * array, as resnet.h stores them. The momentum buffer is owned by the sgd struct.
 *
 * Schedules (DESIGN §4), evaluated per epoch as the original MoCo's adjust_learning_rate is:
 * cosine lr * 0.5 * (1 + cos(pi * epoch / epochs)); step lr * gamma^(milestones passed). An optional
 * linear warmup ramps the rate over the first warmup_epochs, per step (epoch given with its fraction). */
#ifndef MOCO_OPTIM_H
#define MOCO_OPTIM_H
#include <stddef.h>
#include "error.h"

typedef struct {
    double momentum, weight_decay;
    size_t count;
    float *buf; /* momentum buffer, count floats */
} sgd;

int sgd_init(sgd *opt, size_t count, double momentum, double weight_decay, moco_error *err);
void sgd_free(sgd *opt);
void sgd_step(sgd *opt, float *param, const float *grad, double lr);

typedef enum { SCHEDULE_COS = 0, SCHEDULE_STEP = 1, SCHEDULE_CONSTANT = 2 } schedule_kind;

typedef struct {
    schedule_kind kind;
    double base_lr;
    int epochs;
    double warmup_epochs;
    int milestones[8], nmilestones; /* step schedule: epochs where the rate is multiplied by gamma */
    double gamma;
} lr_schedule;

/* The learning rate at `epoch` (epoch index plus the fraction of it done). */
double schedule_lr(const lr_schedule *s, double epoch);
/* "cos", "step", "constant" -> kind; -1 when unknown. */
int schedule_kind_from_name(const char *name);
/* "120,160" -> milestones; fails on bad or more than 8 numbers. */
int schedule_parse_milestones(lr_schedule *s, const char *text, moco_error *err);

#endif
