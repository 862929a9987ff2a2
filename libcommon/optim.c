/* optim.c — SGD and learning-rate schedules (see optim.h). */
#include "optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int sgd_init(sgd *opt, size_t count, double momentum, double weight_decay, moco_error *err)
{
    *opt = (sgd){.momentum = momentum, .weight_decay = weight_decay, .count = count};
    if (!(opt->buf = calloc(count ? count : 1, sizeof(float))))
        return moco_fail(err, "out of memory for %zu momentum values", count);
    return MOCO_OK;
}

void sgd_free(sgd *opt)
{
    free(opt->buf);
    opt->buf = NULL;
}

void sgd_step(sgd *opt, float *param, const float *grad, double lr)
{
    /* PyTorch turns each scalar into the tensor's dtype before the element-wise ops */
    float wd = (float)opt->weight_decay, m = (float)opt->momentum, step = (float)-lr;
    float *buf = opt->buf;
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < opt->count; i++) {
        float d = grad[i] + wd * param[i];
        buf[i] = buf[i] * m + d;
        param[i] += step * buf[i];
    }
}

double schedule_lr(const lr_schedule *s, double epoch)
{
    double lr = s->base_lr;
    if (s->warmup_epochs > 0 && epoch < s->warmup_epochs)
        return lr * epoch / s->warmup_epochs;
    int e = (int)epoch; /* the original changes the rate once per epoch */
    if (s->kind == SCHEDULE_COS)
        lr *= 0.5 * (1.0 + cos(M_PI * e / s->epochs));
    else if (s->kind == SCHEDULE_STEP)
        for (int i = 0; i < s->nmilestones; i++)
            lr *= e >= s->milestones[i] ? s->gamma : 1.0;
    return lr;
}

int schedule_kind_from_name(const char *name)
{
    if (!strcmp(name, "cos"))
        return SCHEDULE_COS;
    if (!strcmp(name, "step"))
        return SCHEDULE_STEP;
    if (!strcmp(name, "constant"))
        return SCHEDULE_CONSTANT;
    return -1;
}

int schedule_parse_milestones(lr_schedule *s, const char *text, moco_error *err)
{
    /* plain digits separated by single commas; nothing is changed unless all of it parses */
    int values[8], n = 0;
    const char *p = text;
    while (*p) {
        long v = 0;
        const char *start = p;
        while (*p >= '0' && *p <= '9' && v <= 1000000)
            v = v * 10 + (*p++ - '0');
        if (p == start || v > 1000000 || (*p && *p != ',') || (*p == ',' && !p[1]))
            return moco_fail(err, "milestones \"%s\": expected epochs separated by commas, e.g. 120,160", text);
        if (n == 8)
            return moco_fail(err, "milestones \"%s\": at most 8", text);
        values[n++] = (int)v;
        p += *p == ',';
    }
    memcpy(s->milestones, values, sizeof(int) * n);
    s->nmilestones = n;
    return MOCO_OK;
}
