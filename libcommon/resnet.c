/* resnet.c — the ResNet of resnet.h: building the layer list, planning activation memory, forward
 * and backward over backend.h's ops.
 *
 * Every convolution is followed by a batch norm, so the building brick is a `unit`: conv + BN, the
 * ReLU fused into the BN except for the last unit of a block, whose ReLU comes after the residual
 * add. A block is 2 (basic) or 3 (bottleneck) units plus an optional downsample unit. */
#include "resnet.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"

/* Backward scratch buffers of the largest activation: the gradient of a block's output (both of its
 * branches need it), the one flowing down the main branch, and a convolution's dx. Batch norm's
 * backward runs in place wherever its dy has no later use, so three suffice. */
enum { GRADS = 3 };

/* A forward-only net's activations: a block's input (its shortcut), the unit before's output, and
 * the unit's own (its batch norm in place on the convolution's output). */
enum { ROTATING = 3 };
_Static_assert((int)ROTATING <= (int)GRADS, "a forward-only net's buffers fit in a trainable one's backward scratch");

typedef struct {
    conv2d *conv;
    batchnorm *bn;
    int relu; /* ReLU fused into the BN */
    int in_c, out_c, kernel, stride, pad;
    size_t weight, bn_weight, bn_bias; /* offsets into param / grad */
    size_t running_mean, running_var; /* offsets into buffer */
    int h, w, oh, ow;                 /* planned input and output sizes */
    const float *in;                  /* the last forward's input */
    float *conv_out, *out;            /* planned activation buffers */
} unit;

typedef struct {
    unit units[3];
    int nunits, has_down;
    unit down;
    const float *in;
    float *out; /* = the last unit's out: BN, then += shortcut and ReLU in place */
} block;

struct resnet_layers {
    backend *b;
    unit stem;
    maxpool *pool;
    float *pool_out;
    int pool_h, pool_w;
    block *blocks;
    int nblocks;
    size_t fc0_weight, fc0_bias, fc2_weight, fc2_bias; /* MLP head (fc.0, fc.2), or fc in fc2_* */
    /* the plan: shapes and activation buffers for input (n, h, w) */
    int n, h, w, trainable, last_train_groups;
    int out_h, out_w; /* layer4's output size */
    float *arena;     /* trainable: every activation; otherwise ROTATING buffers (NULL when borrowed) */
    float *rotating[ROTATING];
    resnet *lender;   /* forward only: whose backward scratch may hold the rotating buffers */
    int borrowing;    /* they are there, as the lender's plan number borrowed_plan made them */
    unsigned long plans, borrowed_plan; /* plans made (a lender's count); see plan() */
    size_t max_activation;
    float *grads[GRADS]; /* backward scratch, max_activation floats each */
    float *pooled, *hidden, *out, *d_pooled, *d_hidden;
    const float *input;
};

int resnet_depth_from_name(const char *name)
{
    if (!strcmp(name, "resnet18"))
        return 18;
    if (!strcmp(name, "resnet34"))
        return 34;
    if (!strcmp(name, "resnet50"))
        return 50;
    return 0;
}

int resnet_config_check(const resnet_config *cfg, moco_error *err)
{
    if (cfg->depth != 18 && cfg->depth != 34 && cfg->depth != 50)
        return moco_fail(err, "ResNet depth %d: only 18, 34 and 50 are built", cfg->depth);
    if (cfg->width < 1 || cfg->width > 1024)
        return moco_fail(err, "ResNet base width %d: expected 1 to 1024", cfg->width);
    if (cfg->in_channels < 1 || cfg->in_channels > 64)
        return moco_fail(err, "ResNet input channels %d: expected 1 to 64", cfg->in_channels);
    if (cfg->head != RESNET_HEAD_NONE && (cfg->out_dim < 1 || cfg->out_dim > 1 << 20))
        return moco_fail(err, "head output size %d: expected 1 to 2^20", cfg->out_dim);
    return MOCO_OK;
}

/* ---- the tensor table ---- */

static int add_tensor(resnet *net, const char *name, int buffer, int rank, const int64_t *dims, size_t *offset,
                      moco_error *err)
{
    resnet_tensor *t = realloc(net->tensors, sizeof *t * (net->ntensors + 1));
    if (!t)
        return moco_fail(err, "out of memory");
    net->tensors = t;
    t = &net->tensors[net->ntensors++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->buffer = buffer, t->rank = rank;
    t->count = 1;
    for (int i = 0; i < rank; i++)
        t->dims[i] = dims[i], t->count *= (size_t)dims[i];
    size_t *total = buffer ? &net->buffer_count : &net->param_count;
    t->offset = *offset = *total;
    *total += t->count;
    return MOCO_OK;
}

static int add_unit(resnet *net, unit *u, const char *conv_name, const char *bn_name, int in_c, int out_c,
                    int kernel, int stride, int relu, moco_error *err)
{
    *u = (unit){.relu = relu, .in_c = in_c, .out_c = out_c, .kernel = kernel, .stride = stride, .pad = kernel / 2};
    char name[64];
    int64_t wdims[4] = {out_c, in_c, kernel, kernel}, c = out_c;
    snprintf(name, sizeof name, "%s.weight", conv_name);
    if (add_tensor(net, name, 0, 4, wdims, &u->weight, err))
        return MOCO_ERR;
    const char *bn_parts[] = {"weight", "bias", "running_mean", "running_var"};
    size_t *offsets[] = {&u->bn_weight, &u->bn_bias, &u->running_mean, &u->running_var};
    for (int i = 0; i < 4; i++) {
        snprintf(name, sizeof name, "%s.%s", bn_name, bn_parts[i]);
        if (add_tensor(net, name, i >= 2, 1, &c, offsets[i], err))
            return MOCO_ERR;
    }
    backend *b = net->layers->b;
    if (!(u->conv = conv2d_create(b, in_c, out_c, kernel, stride, kernel / 2, err)) ||
        !(u->bn = batchnorm_create(b, out_c, relu, err)))
        return MOCO_ERR;
    return MOCO_OK;
}

static int add_linear(resnet *net, const char *name, int in, int out, size_t *weight, size_t *bias, moco_error *err)
{
    char key[64];
    int64_t wdims[2] = {out, in}, bdims[1] = {out};
    snprintf(key, sizeof key, "%s.weight", name);
    if (add_tensor(net, key, 0, 2, wdims, weight, err))
        return MOCO_ERR;
    snprintf(key, sizeof key, "%s.bias", name);
    return add_tensor(net, key, 0, 1, bdims, bias, err);
}

static int build(resnet *net, moco_error *err)
{
    resnet_layers *L = net->layers;
    const resnet_config *cfg = &net->cfg;
    int width = cfg->width, bottleneck = cfg->depth == 50, expansion = bottleneck ? 4 : 1;
    static const int blocks18[4] = {2, 2, 2, 2}, blocks34[4] = {3, 4, 6, 3};
    const int *counts = cfg->depth == 18 ? blocks18 : blocks34;
    if (add_unit(net, &L->stem, "conv1", "bn1", cfg->in_channels, width, cfg->cifar_stem ? 3 : 7,
                 cfg->cifar_stem ? 1 : 2, 1, err))
        return MOCO_ERR;
    L->stem.pad = cfg->cifar_stem ? 1 : 3;
    if (!cfg->cifar_stem && !(L->pool = maxpool_create(L->b, width, 3, 2, 1, err)))
        return MOCO_ERR;
    L->nblocks = counts[0] + counts[1] + counts[2] + counts[3];
    if (!(L->blocks = calloc(L->nblocks, sizeof *L->blocks)))
        return moco_fail(err, "out of memory");
    int in_c = width, bi = 0;
    for (int layer = 0; layer < 4; layer++) {
        int planes = width << layer;
        for (int i = 0; i < counts[layer]; i++, bi++) {
            block *blk = &L->blocks[bi];
            int stride = layer > 0 && i == 0 ? 2 : 1, out_c = planes * expansion;
            char conv[48], bn[48];
            blk->nunits = bottleneck ? 3 : 2;
            for (int u = 0; u < blk->nunits; u++) {
                snprintf(conv, sizeof conv, "layer%d.%d.conv%d", layer + 1, i, u + 1);
                snprintf(bn, sizeof bn, "layer%d.%d.bn%d", layer + 1, i, u + 1);
                int last = u == blk->nunits - 1;
                /* torchvision v1.5: a bottleneck strides on its 3x3 conv, a basic block on its first */
                int k = bottleneck && u != 1 ? 1 : 3, s = (bottleneck ? u == 1 : u == 0) ? stride : 1;
                int uin = u == 0 ? in_c : planes, uout = last ? out_c : planes;
                if (add_unit(net, &blk->units[u], conv, bn, uin, uout, k, s, !last, err))
                    return MOCO_ERR;
            }
            if (stride != 1 || in_c != out_c) {
                blk->has_down = 1;
                snprintf(conv, sizeof conv, "layer%d.%d.downsample.0", layer + 1, i);
                snprintf(bn, sizeof bn, "layer%d.%d.downsample.1", layer + 1, i);
                if (add_unit(net, &blk->down, conv, bn, in_c, out_c, 1, stride, 0, err))
                    return MOCO_ERR;
            }
            in_c = out_c;
        }
    }
    net->feature_dim = in_c;
    if (cfg->head == RESNET_HEAD_MLP)
        return add_linear(net, "fc.0", in_c, in_c, &L->fc0_weight, &L->fc0_bias, err) ||
               add_linear(net, "fc.2", in_c, cfg->out_dim, &L->fc2_weight, &L->fc2_bias, err);
    if (cfg->head == RESNET_HEAD_LINEAR)
        return add_linear(net, "fc", in_c, cfg->out_dim, &L->fc2_weight, &L->fc2_bias, err);
    return MOCO_OK;
}

static void unit_destroy(unit *u)
{
    conv2d_destroy(u->conv);
    batchnorm_destroy(u->bn);
}

static void release_plan(resnet_layers *L)
{
    free(L->arena);
    for (int i = 0; i < GRADS; i++)
        free(L->grads[i]), L->grads[i] = NULL;
    free(L->pooled), free(L->hidden), free(L->out), free(L->d_pooled), free(L->d_hidden);
    L->arena = L->pooled = L->hidden = L->out = L->d_pooled = L->d_hidden = NULL;
    L->borrowing = 0;
    L->n = 0;
}

void resnet_borrow_scratch(resnet *net, resnet *lender)
{
    if (!net->layers->trainable && lender && lender->layers->trainable)
        net->layers->lender = lender;
}

void resnet_destroy(resnet *net)
{
    if (!net)
        return;
    resnet_layers *L = net->layers;
    if (L) {
        release_plan(L);
        unit_destroy(&L->stem);
        maxpool_destroy(L->pool);
        for (int i = 0; L->blocks && i < L->nblocks; i++) {
            for (int u = 0; u < L->blocks[i].nunits; u++)
                unit_destroy(&L->blocks[i].units[u]);
            if (L->blocks[i].has_down)
                unit_destroy(&L->blocks[i].down);
        }
        free(L->blocks);
        free(L);
    }
    free(net->tensors);
    free(net->param);
    free(net->grad);
    free(net->buffer);
    free(net);
}

resnet *resnet_create(backend *b, const resnet_config *cfg, int trainable, moco_error *err)
{
    if (resnet_config_check(cfg, err))
        return NULL;
    resnet *net = calloc(1, sizeof *net);
    if (!net || !(net->layers = calloc(1, sizeof *net->layers))) {
        free(net);
        moco_fail(err, "out of memory");
        return NULL;
    }
    net->cfg = *cfg;
    net->layers->b = b;
    net->layers->trainable = trainable;
    if (build(net, err)) {
        resnet_destroy(net);
        return NULL;
    }
    net->param = calloc(net->param_count, sizeof(float));
    net->buffer = calloc(net->buffer_count, sizeof(float));
    if (trainable)
        net->grad = calloc(net->param_count, sizeof(float));
    if (!net->param || !net->buffer || (trainable && !net->grad)) {
        moco_fail(err, "out of memory for %zu parameters", net->param_count);
        resnet_destroy(net);
        return NULL;
    }
    resnet_init(net, 0);
    return net;
}

const resnet_tensor *resnet_find(const resnet *net, const char *name)
{
    for (int i = 0; i < net->ntensors; i++)
        if (!strcmp(net->tensors[i].name, name))
            return &net->tensors[i];
    return NULL;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

void resnet_init(resnet *net, uint64_t seed)
{
    for (int i = 0; i < net->ntensors; i++) {
        const resnet_tensor *t = &net->tensors[i];
        float *v = (t->buffer ? net->buffer : net->param) + t->offset;
        rng r;
        rng_init(&r, seed, 0, (uint64_t)i, 0);
        if (t->rank == 4) { /* conv: kaiming_normal_(mode="fan_out", nonlinearity="relu") */
            double std = sqrt(2.0 / (double)(t->dims[0] * t->dims[2] * t->dims[3]));
            for (size_t j = 0; j < t->count; j++)
                v[j] = (float)(rng_normal(&r) * std);
        } else if (!strncmp(t->name, "fc", 2)) { /* nn.Linear: U(-1/sqrt(in), 1/sqrt(in)) for both */
            const resnet_tensor *wt = t->rank == 2 ? t : t - 1;
            double bound = 1.0 / sqrt((double)wt->dims[1]);
            for (size_t j = 0; j < t->count; j++)
                v[j] = (float)rng_range(&r, -bound, bound);
        } else {
            float value = ends_with(t->name, ".weight") || ends_with(t->name, "running_var") ? 1.0f : 0.0f;
            for (size_t j = 0; j < t->count; j++)
                v[j] = value;
        }
    }
    net->num_batches_tracked = 0;
}

void resnet_copy(resnet *dst, const resnet *src)
{
    memcpy(dst->param, src->param, sizeof(float) * src->param_count);
    memcpy(dst->buffer, src->buffer, sizeof(float) * src->buffer_count);
    dst->num_batches_tracked = src->num_batches_tracked;
}

/* ---- memory plan ---- */

/* Hands out activation buffers. Measuring pass (base == NULL): counts the arena (trainable) or the
 * largest activation. Assigning pass: trainable nets get disjoint slices of the arena; forward-only
 * nets get one of ROTATING buffers, never one in `busy` (a bit mask of buffers still needed). */
typedef struct {
    resnet_layers *L;
    size_t used, max;
    int assign;
} planner;

static float *take(planner *p, size_t count, int busy, int *index)
{
    if (count > p->max)
        p->max = count;
    if (p->L->trainable) {
        float *at = p->assign ? p->L->arena + p->used : NULL;
        p->used += (count + 15) / 16 * 16; /* 64-byte aligned slices */
        *index = -1;
        return at;
    }
    for (int i = 0; i < ROTATING; i++)
        if (!(busy & 1 << i)) {
            *index = i;
            return p->assign ? p->L->rotating[i] : NULL;
        }
    *index = -1; /* unreachable: at most two buffers are busy when one is taken */
    return NULL;
}

static int bit(int index) { return index < 0 ? 0 : 1 << index; }

/* Shapes of a unit for input (h, w); its two buffers avoid `busy`; returns the out buffer's index.
 * `passing`: in a trainable net, an output used only until the next op (a downsample's, consumed
 * by the residual add, and not by its BN's backward); plan points it at backward scratch. */
static int plan_unit(planner *p, unit *u, int n, int h, int w, int busy, int passing)
{
    u->h = h, u->w = w;
    u->oh = conv2d_out_size(h, u->kernel, u->stride, u->pad);
    u->ow = conv2d_out_size(w, u->kernel, u->stride, u->pad);
    size_t count = (size_t)n * u->oh * u->ow * u->out_c;
    int ci, oi;
    u->conv_out = take(p, count, busy, &ci);
    if (!p->L->trainable) { /* forward only: the batch norm runs in place */
        u->out = u->conv_out;
        return ci;
    }
    if (passing) {
        u->out = NULL;
        return -1;
    }
    u->out = take(p, count, busy | bit(ci), &oi);
    return oi;
}

static int plan_pass(planner *p, int n, int h, int w, moco_error *err)
{
    resnet_layers *L = p->L;
    int cur = plan_unit(p, &L->stem, n, h, w, 0, 0);
    h = L->stem.oh, w = L->stem.ow;
    if (L->pool) {
        L->pool_h = conv2d_out_size(h, 3, 2, 1), L->pool_w = conv2d_out_size(w, 3, 2, 1);
        L->pool_out = take(p, (size_t)n * L->pool_h * L->pool_w * L->stem.out_c, bit(cur), &cur);
        h = L->pool_h, w = L->pool_w;
    }
    for (int i = 0; i < L->nblocks; i++) {
        block *blk = &L->blocks[i];
        int x = cur, in = cur;
        for (int u = 0; u < blk->nunits; u++) {
            in = plan_unit(p, &blk->units[u], n, h, w, bit(x) | bit(in), 0);
            h = blk->units[u].oh, w = blk->units[u].ow;
        }
        if (blk->has_down)
            plan_unit(p, &blk->down, n, blk->units[0].h, blk->units[0].w, bit(x) | bit(in), 1);
        blk->out = blk->units[blk->nunits - 1].out;
        cur = in;
    }
    if (h < 1 || w < 1)
        return moco_fail(err, "input too small for this ResNet");
    L->out_h = h, L->out_w = w;
    return MOCO_OK;
}

static int plan(resnet *net, int n, int h, int w, moco_error *err)
{
    resnet_layers *L = net->layers;
    if (L->n == n && L->h == h && L->w == w && (!L->borrowing || L->borrowed_plan == L->lender->layers->plans))
        return MOCO_OK;
    release_plan(L);
    L->plans++;
    int min_size = net->cfg.cifar_stem ? 8 : 32; /* below this, a stride-2 stage gets an empty map */
    if (h < min_size || w < min_size)
        return moco_fail(err, "views of %dx%d are too small for a ResNet with the %s stem (at least %dx%d)", h, w,
                         net->cfg.cifar_stem ? "CIFAR" : "ImageNet", min_size, min_size);
    planner p = {.L = L};
    if (plan_pass(&p, n, h, w, err))
        return MOCO_ERR;
    size_t total = L->trainable ? p.used : ROTATING * ((p.max + 15) / 16 * 16);
    resnet_layers *lender = L->lender ? L->lender->layers : NULL;
    if (!L->trainable && lender && lender->grads[0] && lender->max_activation >= p.max) {
        L->borrowing = 1, L->borrowed_plan = lender->plans; /* its buffers: as large as ours or larger */
        for (int i = 0; i < ROTATING; i++)
            L->rotating[i] = lender->grads[i];
    } else {
        if (!(L->arena = aligned_alloc(64, sizeof(float) * total)))
            return moco_fail(err, "out of memory for activations of a batch of %d %dx%d views (%zu MiB)", n, h, w,
                             total * sizeof(float) >> 20);
        for (int i = 0; i < ROTATING && !L->trainable; i++)
            L->rotating[i] = L->arena + i * ((p.max + 15) / 16 * 16);
    }
    L->max_activation = p.max;
    p = (planner){.L = L, .assign = 1};
    plan_pass(&p, n, h, w, err);
    int f = net->feature_dim, d = net->cfg.out_dim;
    L->pooled = malloc(sizeof(float) * n * f);
    L->hidden = malloc(sizeof(float) * n * f);
    L->out = malloc(sizeof(float) * n * (d > f ? d : f));
    int ok = L->pooled && L->hidden && L->out;
    if (L->trainable) {
        L->d_pooled = malloc(sizeof(float) * n * f);
        L->d_hidden = malloc(sizeof(float) * n * f);
        ok = ok && L->d_pooled && L->d_hidden;
        for (int i = 0; i < GRADS; i++)
            ok = ok && (L->grads[i] = aligned_alloc(64, sizeof(float) * ((p.max + 15) / 16 * 16)));
        /* downsample outputs live from their BN to the residual add: in backward scratch, idle then */
        for (int i = 0; ok && i < L->nblocks; i++)
            if (L->blocks[i].has_down)
                L->blocks[i].down.out = L->grads[0];
    }
    if (!ok) {
        release_plan(L);
        return moco_fail(err, "out of memory for a batch of %d views", n);
    }
    L->n = n, L->h = h, L->w = w;
    return MOCO_OK;
}

/* ---- forward ---- */

static int unit_forward(resnet *net, unit *u, const float *x, int train, int groups, moco_error *err)
{
    resnet_layers *L = net->layers;
    float *P = net->param, *B = net->buffer;
    u->in = x;
    if (conv2d_forward(u->conv, x, L->n, u->h, u->w, P + u->weight, u->conv_out, err))
        return moco_prefix(err, "%dx%d conv %d->%d", u->kernel, u->kernel, u->in_c, u->out_c);
    int rc = train ? batchnorm_forward_train(u->bn, u->conv_out, L->n, u->oh, u->ow, groups, P + u->bn_weight,
                                             P + u->bn_bias, u->out, B + u->running_mean, B + u->running_var, err)
                   : batchnorm_forward_eval(u->bn, u->conv_out, L->n, u->oh, u->ow, P + u->bn_weight, P + u->bn_bias,
                                            B + u->running_mean, B + u->running_var, u->out, err);
    return rc ? moco_prefix(err, "batch norm of %d channels", u->out_c) : MOCO_OK;
}

int resnet_forward(resnet *net, const float *x, int n, int h, int w, int train, int bn_groups, moco_error *err)
{
    resnet_layers *L = net->layers;
    if (n < 1)
        return moco_fail(err, "empty batch");
    if (plan(net, n, h, w, err))
        return MOCO_ERR;
    L->input = x;
    L->last_train_groups = train ? bn_groups : 0;
    if (unit_forward(net, &L->stem, x, train, bn_groups, err))
        return MOCO_ERR;
    const float *cur = L->stem.out;
    if (L->pool) {
        if (maxpool_forward(L->pool, cur, n, L->stem.oh, L->stem.ow, L->pool_out, train && L->trainable, err))
            return MOCO_ERR;
        cur = L->pool_out;
    }
    for (int i = 0; i < L->nblocks; i++) {
        block *blk = &L->blocks[i];
        blk->in = cur;
        for (int u = 0; u < blk->nunits; u++) {
            if (unit_forward(net, &blk->units[u], cur, train, bn_groups, err))
                return moco_prefix(err, "block %d", i);
            cur = blk->units[u].out;
        }
        const float *shortcut = blk->in;
        if (blk->has_down) {
            if (unit_forward(net, &blk->down, blk->in, train, bn_groups, err))
                return moco_prefix(err, "block %d downsample", i);
            shortcut = blk->down.out;
        }
        unit *last = &blk->units[blk->nunits - 1];
        add_relu_forward(blk->out, shortcut, (size_t)n * last->oh * last->ow * last->out_c);
    }
    if (train)
        net->num_batches_tracked++;
    int f = net->feature_dim, d = net->cfg.out_dim;
    float *P = net->param;
    avgpool_forward(cur, n, L->out_h * L->out_w, f, L->pooled);
    net->pooled = L->pooled;
    switch (net->cfg.head) {
    case RESNET_HEAD_MLP:
        linear_forward(L->pooled, n, f, f, P + L->fc0_weight, P + L->fc0_bias, L->hidden);
        relu_forward(L->hidden, (size_t)n * f);
        linear_forward(L->hidden, n, f, d, P + L->fc2_weight, P + L->fc2_bias, L->out);
        net->output = L->out;
        break;
    case RESNET_HEAD_LINEAR:
        linear_forward(L->pooled, n, f, d, P + L->fc2_weight, P + L->fc2_bias, L->out);
        net->output = L->out;
        break;
    case RESNET_HEAD_NONE:
        net->output = L->pooled;
        break;
    }
    return MOCO_OK;
}

/* ---- backward ---- */

/* dy is the gradient of u->out; the BN's input gradient goes to bn_dx (may equal dy), the conv's
 * input gradient to dx (NULL for the first layer). */
static int unit_backward(resnet *net, unit *u, float *dy, float *bn_dx, float *dx, moco_error *err)
{
    float *P = net->param, *G = net->grad;
    if (batchnorm_backward(u->bn, u->conv_out, dy, P + u->bn_weight, P + u->bn_bias, bn_dx, G + u->bn_weight, G + u->bn_bias, err))
        return moco_prefix(err, "batch norm of %d channels, backward", u->out_c);
    if (conv2d_backward(u->conv, u->in, P + u->weight, bn_dx, dx, G + u->weight, err))
        return moco_prefix(err, "%dx%d conv %d->%d, backward", u->kernel, u->kernel, u->in_c, u->out_c);
    return MOCO_OK;
}

/* The first of the gradient buffers not in `busy`. */
static int free_grad(int busy)
{
    for (int i = 0; i < GRADS; i++)
        if (!(busy & 1 << i))
            return i;
    return -1;
}

int resnet_backward(resnet *net, const float *d_output, moco_error *err)
{
    resnet_layers *L = net->layers;
    if (!L->trainable || L->last_train_groups < 1)
        return moco_fail(err, "backward needs a training forward on a trainable net");
    int n = L->n, f = net->feature_dim, d = net->cfg.out_dim;
    float *P = net->param, *G = net->grad;
    const float *d_pooled = d_output;
    if (net->cfg.head == RESNET_HEAD_MLP) {
        linear_backward(L->hidden, d_output, n, f, d, P + L->fc2_weight, L->d_hidden, G + L->fc2_weight, G + L->fc2_bias);
        relu_backward(L->hidden, L->d_hidden, (size_t)n * f);
        linear_backward(L->pooled, L->d_hidden, n, f, f, P + L->fc0_weight, L->d_pooled, G + L->fc0_weight,
                        G + L->fc0_bias);
        d_pooled = L->d_pooled;
    } else if (net->cfg.head == RESNET_HEAD_LINEAR) {
        linear_backward(L->pooled, d_output, n, f, d, P + L->fc2_weight, L->d_pooled, G + L->fc2_weight, G + L->fc2_bias);
        d_pooled = L->d_pooled;
    }
    int cur = 0; /* index of the gradient buffer holding the gradient of the current block's output */
    avgpool_backward(d_pooled, n, L->out_h * L->out_w, f, L->grads[cur]);
    for (int i = L->nblocks - 1; i >= 0; i--) {
        block *blk = &L->blocks[i];
        unit *last = &blk->units[blk->nunits - 1];
        int out = cur; /* gradient of the sum (after the ReLU mask), needed by both branches */
        relu_backward(blk->out, L->grads[out], (size_t)n * last->oh * last->ow * last->out_c);
        int g = out;
        for (int u = blk->nunits - 1; u >= 0; u--) {
            int bn_dx = g == out ? free_grad(bit(out)) : g; /* in place, except on the shared gradient */
            int dx = free_grad(bit(out) | bit(bn_dx));
            if (unit_backward(net, &blk->units[u], L->grads[g], L->grads[bn_dx], L->grads[dx], err))
                return moco_prefix(err, "block %d", i);
            g = dx;
        }
        if (blk->has_down) {
            /* the shortcut's gradient is not needed after its own BN, which runs in place on it */
            int dx = free_grad(bit(out) | bit(g));
            if (unit_backward(net, &blk->down, L->grads[out], L->grads[out], L->grads[dx], err))
                return moco_prefix(err, "block %d downsample", i);
            add_inplace(L->grads[g], L->grads[dx], (size_t)n * blk->down.h * blk->down.w * blk->down.in_c);
        } else {
            add_inplace(L->grads[g], L->grads[out], (size_t)n * last->oh * last->ow * last->out_c);
        }
        cur = g;
    }
    if (L->pool) {
        int dx = free_grad(bit(cur));
        if (maxpool_backward(L->pool, L->grads[cur], L->grads[dx], err))
            return MOCO_ERR;
        cur = dx;
    }
    return unit_backward(net, &L->stem, L->grads[cur], L->grads[cur], NULL, err);
}
