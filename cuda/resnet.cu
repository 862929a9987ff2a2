/* resnet.cu — the GPU twin of libcommon/resnet.c: the same layer list, memory plan, forward and
 * backward, over gpu.h's ops (see gpu.h). Read beside resnet.c: the structure is line for line the
 * same; what differs is where memory lives, that activations have the backend's element type, and
 * that a block's residual add and ReLU are fused into its last batch norm (the block's output is
 * written once, not written, then read and written again).
 *
 * Every convolution is followed by a batch norm: a `unit` is conv + BN, the ReLU fused into the BN
 * except in a block's last unit, whose ReLU comes after the residual add. Parameter offsets come
 * from the host net's tensor table by name, so the two layouts cannot drift apart. */
#include "gpu_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Backward scratch buffers of the largest activation: the gradient of a block's output (both of its
 * branches need it), the one flowing down the main branch, and a convolution's dx. Batch norm's
 * backward runs in place wherever its dy has no later use, so three suffice. */
enum { GRADS = 3 };

/* A forward-only net's activations: a block's input (its shortcut), the unit before's output, and
 * the unit's own (its batch norm in place on the convolution's output). */
enum { ROTATING = 3 };
static_assert((int)ROTATING <= (int)GRADS, "a forward-only net's buffers fit in a trainable one's backward scratch");

typedef struct {
    gpu_conv *conv;
    gpu_bn *bn;
    int relu; /* ReLU fused into the BN */
    int in_c, out_c, kernel, stride, pad;
    size_t weight, bn_weight, bn_bias, running_mean, running_var; /* offsets (host tensor table) */
    int h, w, oh, ow;   /* planned input and output sizes */
    const void *in;     /* the last forward's input */
    void *conv_out, *out;
} unit;

typedef struct {
    unit units[3];
    int nunits, has_down;
    unit down;
    const void *in;
    void *out; /* the last unit's out: ReLU(BN + shortcut), the add done by the block's last BN */
} block;

struct gpu_resnet {
    gpu *g;
    resnet_config cfg;
    int feature_dim, trainable, last_train_groups;
    size_t param_count, buffer_count;
    float *param, *grad, *buffer;
    int64_t num_batches_tracked;
    unit stem;
    int has_pool, pool_h, pool_w;
    void *pool_out;
    block *blocks;
    int nblocks;
    size_t fc0_weight, fc0_bias, fc2_weight, fc2_bias;
    /* the plan for input (n, h, w) */
    int n, h, w, out_h, out_w;
    char *arena; /* trainable: every activation; otherwise ROTATING buffers (NULL when borrowed) */
    gpu_resnet *lender; /* forward only: whose backward scratch may hold the rotating buffers */
    int borrowing;      /* they are there, as the lender's plan number borrowed_plan made them */
    unsigned long plans, borrowed_plan; /* plans made (a lender's count); see plan() */
    void *rotating[ROTATING];
    size_t max_activation; /* elements */
    void *grads[GRADS];    /* backward scratch, max_activation elements each (one allocation) */
    float *pooled, *hidden, *out, *d_pooled, *d_hidden;
    const void *input;
};

/* ---- building the layer list ---- */

/* The offset of the host net's tensor `name` (resnet_find's lookup, done here so the library the
 * tools load needs nothing from libcommon but its error functions). */
static int offset_of(const resnet *host, const char *name, size_t *offset, moco_error *err)
{
    for (int i = 0; i < host->ntensors; i++)
        if (!strcmp(host->tensors[i].name, name)) {
            *offset = host->tensors[i].offset;
            return MOCO_OK;
        }
    return moco_fail(err, "GPU ResNet: no tensor %s in the host net", name);
}

static int add_unit(gpu_resnet *net, const resnet *host, unit *u, const char *conv_name, const char *bn_name,
                    int in_c, int out_c, int kernel, int stride, int relu, moco_error *err)
{
    memset(u, 0, sizeof *u);
    u->relu = relu, u->in_c = in_c, u->out_c = out_c, u->kernel = kernel, u->stride = stride, u->pad = kernel / 2;
    char name[96];
    snprintf(name, sizeof name, "%s.weight", conv_name);
    if (offset_of(host, name, &u->weight, err))
        return MOCO_ERR;
    const char *bn_parts[] = {"weight", "bias", "running_mean", "running_var"};
    size_t *offsets[] = {&u->bn_weight, &u->bn_bias, &u->running_mean, &u->running_var};
    for (int i = 0; i < 4; i++) {
        snprintf(name, sizeof name, "%s.%s", bn_name, bn_parts[i]);
        if (offset_of(host, name, offsets[i], err))
            return MOCO_ERR;
    }
    if (!(u->conv = gpu_conv_create(net->g, in_c, out_c, kernel, stride, kernel / 2, err)) ||
        !(u->bn = gpu_bn_create(net->g, out_c, relu, err)))
        return MOCO_ERR;
    return MOCO_OK;
}

/* The same walk as resnet.c's build(): torchvision's v1.5 ResNets. */
static int build(gpu_resnet *net, const resnet *host, moco_error *err)
{
    const resnet_config *cfg = &net->cfg;
    int width = cfg->width, bottleneck = cfg->depth == 50, expansion = bottleneck ? 4 : 1;
    static const int blocks18[4] = {2, 2, 2, 2}, blocks34[4] = {3, 4, 6, 3};
    const int *counts = cfg->depth == 18 ? blocks18 : blocks34;
    if (add_unit(net, host, &net->stem, "conv1", "bn1", cfg->in_channels, width, cfg->cifar_stem ? 3 : 7,
                 cfg->cifar_stem ? 1 : 2, 1, err))
        return MOCO_ERR;
    net->stem.pad = cfg->cifar_stem ? 1 : 3;
    net->has_pool = !cfg->cifar_stem;
    net->nblocks = counts[0] + counts[1] + counts[2] + counts[3];
    if (!(net->blocks = (block *)calloc(net->nblocks, sizeof *net->blocks)))
        return moco_fail(err, "out of memory");
    int in_c = width, bi = 0;
    for (int layer = 0; layer < 4; layer++) {
        int planes = width << layer;
        for (int i = 0; i < counts[layer]; i++, bi++) {
            block *blk = &net->blocks[bi];
            int stride = layer > 0 && i == 0 ? 2 : 1, out_c = planes * expansion;
            char conv[48], bn[48];
            blk->nunits = bottleneck ? 3 : 2;
            for (int u = 0; u < blk->nunits; u++) {
                snprintf(conv, sizeof conv, "layer%d.%d.conv%d", layer + 1, i, u + 1);
                snprintf(bn, sizeof bn, "layer%d.%d.bn%d", layer + 1, i, u + 1);
                int last = u == blk->nunits - 1;
                int k = bottleneck && u != 1 ? 1 : 3, s = (bottleneck ? u == 1 : u == 0) ? stride : 1;
                int uin = u == 0 ? in_c : planes, uout = last ? out_c : planes;
                if (add_unit(net, host, &blk->units[u], conv, bn, uin, uout, k, s, !last, err))
                    return MOCO_ERR;
            }
            if (stride != 1 || in_c != out_c) {
                blk->has_down = 1;
                snprintf(conv, sizeof conv, "layer%d.%d.downsample.0", layer + 1, i);
                snprintf(bn, sizeof bn, "layer%d.%d.downsample.1", layer + 1, i);
                if (add_unit(net, host, &blk->down, conv, bn, in_c, out_c, 1, stride, 0, err))
                    return MOCO_ERR;
            }
            in_c = out_c;
        }
    }
    net->feature_dim = in_c;
    if (cfg->head == RESNET_HEAD_MLP)
        return offset_of(host, "fc.0.weight", &net->fc0_weight, err) || offset_of(host, "fc.0.bias", &net->fc0_bias, err) ||
               offset_of(host, "fc.2.weight", &net->fc2_weight, err) || offset_of(host, "fc.2.bias", &net->fc2_bias, err);
    if (cfg->head == RESNET_HEAD_LINEAR)
        return offset_of(host, "fc.weight", &net->fc2_weight, err) || offset_of(host, "fc.bias", &net->fc2_bias, err);
    return MOCO_OK;
}

static void unit_destroy(unit *u)
{
    gpu_conv_destroy(u->conv);
    gpu_bn_destroy(u->bn);
}

static void release_plan(gpu_resnet *net)
{
    gpu *g = net->g;
    gpu_free(g, net->arena);
    gpu_free(g, net->grads[0]);
    float *f32[] = {net->pooled, net->hidden, net->out, net->d_pooled, net->d_hidden};
    for (size_t i = 0; i < sizeof f32 / sizeof *f32; i++)
        gpu_free(g, f32[i]);
    net->arena = NULL, net->borrowing = 0;
    memset(net->grads, 0, sizeof net->grads);
    net->pooled = net->hidden = net->out = net->d_pooled = net->d_hidden = NULL;
    net->n = 0;
}

void gpu_resnet_destroy(gpu_resnet *net)
{
    if (!net)
        return;
    release_plan(net);
    unit_destroy(&net->stem);
    for (int i = 0; net->blocks && i < net->nblocks; i++) {
        for (int u = 0; u < net->blocks[i].nunits; u++)
            unit_destroy(&net->blocks[i].units[u]);
        if (net->blocks[i].has_down)
            unit_destroy(&net->blocks[i].down);
    }
    free(net->blocks);
    gpu_free(net->g, net->param);
    gpu_free(net->g, net->grad);
    gpu_free(net->g, net->buffer);
    free(net);
}

gpu_resnet *gpu_resnet_create(gpu *g, const resnet *host, int trainable, moco_error *err)
{
    gpu_resnet *net = (gpu_resnet *)calloc(1, sizeof *net);
    if (!net) {
        moco_fail(err, "out of memory");
        return NULL;
    }
    net->g = g, net->cfg = host->cfg, net->trainable = trainable;
    net->param_count = host->param_count, net->buffer_count = host->buffer_count;
    if (build(net, host, err) || !(net->param = (float *)gpu_alloc(g, sizeof(float) * net->param_count, err)) ||
        !(net->buffer = (float *)gpu_alloc(g, sizeof(float) * net->buffer_count, err)) ||
        (trainable && !(net->grad = (float *)gpu_alloc(g, sizeof(float) * net->param_count, err))) ||
        gpu_resnet_upload(net, host, err)) {
        moco_prefix(err, "GPU ResNet-%d", host->cfg.depth);
        gpu_resnet_destroy(net);
        return NULL;
    }
    return net;
}

void gpu_resnet_borrow_scratch(gpu_resnet *net, gpu_resnet *lender)
{
    if (!net->trainable && lender && lender->trainable && lender->g == net->g)
        net->lender = lender;
}

void gpu_resnet_count_forwards(gpu_resnet *net, int64_t count) { net->num_batches_tracked += count; }
float *gpu_resnet_param(gpu_resnet *net) { return net->param; }
float *gpu_resnet_grad(gpu_resnet *net) { return net->grad; }
float *gpu_resnet_buffer(gpu_resnet *net) { return net->buffer; }
const float *gpu_resnet_output(const gpu_resnet *net) { return net->cfg.head == RESNET_HEAD_NONE ? net->pooled : net->out; }
const float *gpu_resnet_pooled(const gpu_resnet *net) { return net->pooled; }

int gpu_resnet_upload(gpu_resnet *net, const resnet *host, moco_error *err)
{
    if (host->param_count != net->param_count || host->buffer_count != net->buffer_count)
        return moco_fail(err, "GPU ResNet: the host net has another layout");
    net->num_batches_tracked = host->num_batches_tracked;
    if (gpu_upload(net->g, net->param, host->param, sizeof(float) * net->param_count, err) ||
        gpu_upload(net->g, net->buffer, host->buffer, sizeof(float) * net->buffer_count, err))
        return MOCO_ERR;
    return MOCO_OK;
}

int gpu_resnet_download(gpu_resnet *net, resnet *host, moco_error *err)
{
    if (host->param_count != net->param_count || host->buffer_count != net->buffer_count)
        return moco_fail(err, "GPU ResNet: the host net has another layout");
    host->num_batches_tracked = net->num_batches_tracked;
    if (gpu_download(net->g, host->param, net->param, sizeof(float) * net->param_count, err) ||
        gpu_download(net->g, host->buffer, net->buffer, sizeof(float) * net->buffer_count, err))
        return MOCO_ERR;
    if (net->grad && host->grad && gpu_download(net->g, host->grad, net->grad, sizeof(float) * net->param_count, err))
        return MOCO_ERR;
    return MOCO_OK;
}

/* ---- memory plan: resnet.c's planner, in activation elements ---- */

typedef struct {
    gpu_resnet *net;
    size_t used, max, elem;
    int assign;
} planner;

static void *take(planner *p, size_t count, int busy, int *index)
{
    if (count > p->max)
        p->max = count;
    if (p->net->trainable) {
        void *at = p->assign ? p->net->arena + p->used * p->elem : NULL;
        p->used += (count + 127) / 128 * 128; /* 256-byte aligned slices in either type */
        *index = -1;
        return at;
    }
    for (int i = 0; i < ROTATING; i++)
        if (!(busy & 1 << i)) {
            *index = i;
            return p->assign ? p->net->rotating[i] : NULL;
        }
    *index = -1; /* unreachable: at most two buffers are busy when one is taken */
    return NULL;
}

static int bit(int index) { return index < 0 ? 0 : 1 << index; }

static int out_size(int in, int kernel, int stride, int pad) { return (in + 2 * pad - kernel) / stride + 1; }

/* As resnet.c's: `passing` marks a trainable net's downsample, whose output is never stored here
 * (its batch norm adds into the block's output; resnet.c keeps it in backward scratch). */
static int plan_unit(planner *p, unit *u, int n, int h, int w, int busy, int passing)
{
    u->h = h, u->w = w;
    u->oh = out_size(h, u->kernel, u->stride, u->pad);
    u->ow = out_size(w, u->kernel, u->stride, u->pad);
    size_t count = (size_t)n * u->oh * u->ow * u->out_c;
    int ci, oi;
    u->conv_out = take(p, count, busy, &ci);
    if (!p->net->trainable) { /* forward only: the batch norm runs in place */
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
    gpu_resnet *net = p->net;
    int cur = plan_unit(p, &net->stem, n, h, w, 0, 0);
    h = net->stem.oh, w = net->stem.ow;
    if (net->has_pool) {
        net->pool_h = out_size(h, 3, 2, 1), net->pool_w = out_size(w, 3, 2, 1);
        net->pool_out = take(p, (size_t)n * net->pool_h * net->pool_w * net->stem.out_c, bit(cur), &cur);
        h = net->pool_h, w = net->pool_w;
    }
    for (int i = 0; i < net->nblocks; i++) {
        block *blk = &net->blocks[i];
        int x = cur, in = cur;
        for (int u = 0; u < blk->nunits; u++) {
            in = plan_unit(p, &blk->units[u], n, h, w, bit(x) | bit(in), 0);
            h = blk->units[u].oh, w = blk->units[u].ow;
        }
        if (blk->has_down)
            plan_unit(p, &blk->down, n, blk->units[0].h, blk->units[0].w, bit(x) | bit(in), 1);
        blk->out = blk->units[blk->nunits - 1].out;
        if (blk->has_down) /* its batch norm adds into the block's output (gpu_resnet_forward) */
            blk->down.out = blk->out;
        cur = in;
    }
    if (h < 1 || w < 1)
        return moco_fail(err, "input too small for this ResNet");
    net->out_h = h, net->out_w = w;
    return MOCO_OK;
}

static int plan(gpu_resnet *net, int n, int h, int w, moco_error *err)
{
    if (net->n == n && net->h == h && net->w == w && (!net->borrowing || net->borrowed_plan == net->lender->plans))
        return MOCO_OK;
    release_plan(net);
    net->plans++;
    gpu *g = net->g;
    int min_size = net->cfg.cifar_stem ? 8 : 32;
    if (h < min_size || w < min_size)
        return moco_fail(err, "views of %dx%d are too small for a ResNet with the %s stem (at least %dx%d)", h, w,
                         net->cfg.cifar_stem ? "CIFAR" : "ImageNet", min_size, min_size);
    planner p = {net, 0, 0, gpu_act_size(g), 0};
    if (plan_pass(&p, n, h, w, err))
        return MOCO_ERR;
    size_t slot = (p.max + 127) / 128 * 128, total = net->trainable ? p.used : ROTATING * slot;
    gpu_resnet *lender = net->lender;
    if (!net->trainable && lender && lender->grads[0] && lender->max_activation >= p.max) {
        /* in the lender's backward scratch, its slots as large as ours or larger */
        size_t lender_slot = (lender->max_activation + 127) / 128 * 128;
        net->borrowing = 1, net->borrowed_plan = lender->plans;
        for (int i = 0; i < ROTATING; i++)
            net->rotating[i] = (char *)lender->grads[0] + i * lender_slot * p.elem;
    } else {
        if (!(net->arena = (char *)gpu_alloc(g, total * p.elem, err)))
            return moco_prefix(err, "activations of a batch of %d %dx%d views", n, h, w);
        for (int i = 0; i < ROTATING && !net->trainable; i++)
            net->rotating[i] = net->arena + i * slot * p.elem;
    }
    net->max_activation = p.max;
    p = (planner){net, 0, 0, gpu_act_size(g), 1};
    plan_pass(&p, n, h, w, err);
    int f = net->feature_dim, d = net->cfg.out_dim;
    size_t fl = sizeof(float);
    int ok = (net->pooled = (float *)gpu_alloc(g, fl * n * f, err)) && (net->hidden = (float *)gpu_alloc(g, fl * n * f, err)) &&
             (net->out = (float *)gpu_alloc(g, fl * n * (d > f ? d : f), err));
    if (ok && net->trainable) {
        ok = (net->d_pooled = (float *)gpu_alloc(g, fl * n * f, err)) && (net->d_hidden = (float *)gpu_alloc(g, fl * n * f, err)) &&
             (net->grads[0] = gpu_alloc(g, GRADS * slot * p.elem, err));
        for (int i = 1; ok && i < GRADS; i++)
            net->grads[i] = (char *)net->grads[0] + i * slot * p.elem;
    }
    if (!ok) {
        release_plan(net);
        return moco_prefix(err, "a batch of %d views", n);
    }
    net->n = n, net->h = h, net->w = w;
    return MOCO_OK;
}

/* ---- forward ---- */

/* conv, then BN into u->out; with a shortcut, the block's end: ReLU(BN + shortcut) (see gpu.h). */
static int unit_forward(gpu_resnet *net, unit *u, const void *x, const void *shortcut, int train, int groups,
                        moco_error *err)
{
    float *P = net->param, *B = net->buffer;
    u->in = x;
    if (gpu_conv_forward(u->conv, x, net->n, u->h, u->w, P + u->weight, u->conv_out, err))
        return moco_prefix(err, "%dx%d conv %d->%d", u->kernel, u->kernel, u->in_c, u->out_c);
    int rc = train ? gpu_bn_forward_train(u->bn, u->conv_out, net->n, u->oh, u->ow, groups, P + u->bn_weight,
                                          P + u->bn_bias, shortcut, u->out, B + u->running_mean, B + u->running_var,
                                          err)
                   : gpu_bn_forward_eval(u->bn, u->conv_out, net->n, u->oh, u->ow, P + u->bn_weight, P + u->bn_bias,
                                         B + u->running_mean, B + u->running_var, shortcut, u->out, err);
    return rc ? moco_prefix(err, "batch norm of %d channels", u->out_c) : MOCO_OK;
}

int gpu_resnet_forward(gpu_resnet *net, const void *x, int n, int h, int w, int train, int bn_groups, moco_error *err)
{
    if (n < 1)
        return moco_fail(err, "empty batch");
    if (plan(net, n, h, w, err))
        return MOCO_ERR;
    net->input = x;
    net->last_train_groups = train ? bn_groups : 0;
    if (unit_forward(net, &net->stem, x, NULL, train, bn_groups, err))
        return MOCO_ERR;
    const void *cur = net->stem.out;
    if (net->has_pool) {
        if (gpu_maxpool_forward(net->g, cur, n, net->stem.oh, net->stem.ow, net->stem.out_c, net->pool_out, err))
            return MOCO_ERR;
        cur = net->pool_out;
    }
    for (int i = 0; i < net->nblocks; i++) {
        block *blk = &net->blocks[i];
        blk->in = cur;
        /* The residual add and its ReLU ride on the block's last batch norm: the last unit's, with
         * the block's input as shortcut, or the downsample's, whose output is then never stored:
         * it adds to the last unit's output in place (blk->down.out is blk->out). */
        for (int u = 0; u < blk->nunits; u++) {
            const void *shortcut = u == blk->nunits - 1 && !blk->has_down ? blk->in : NULL;
            if (unit_forward(net, &blk->units[u], cur, shortcut, train, bn_groups, err))
                return moco_prefix(err, "block %d", i);
            cur = blk->units[u].out;
        }
        if (blk->has_down && unit_forward(net, &blk->down, blk->in, blk->out, train, bn_groups, err))
            return moco_prefix(err, "block %d downsample", i);
    }
    if (train)
        net->num_batches_tracked++;
    int f = net->feature_dim, d = net->cfg.out_dim;
    float *P = net->param;
    if (gpu_avgpool_forward(net->g, cur, n, net->out_h * net->out_w, f, net->pooled, err))
        return MOCO_ERR;
    switch (net->cfg.head) {
    case RESNET_HEAD_MLP:
        if (gpu_linear_forward(net->g, net->pooled, n, f, f, P + net->fc0_weight, P + net->fc0_bias, net->hidden, err) ||
            gpu_relu_f32(net->g, net->hidden, (size_t)n * f, err) ||
            gpu_linear_forward(net->g, net->hidden, n, f, d, P + net->fc2_weight, P + net->fc2_bias, net->out, err))
            return moco_prefix(err, "MLP head");
        break;
    case RESNET_HEAD_LINEAR:
        if (gpu_linear_forward(net->g, net->pooled, n, f, d, P + net->fc2_weight, P + net->fc2_bias, net->out, err))
            return moco_prefix(err, "fc head");
        break;
    case RESNET_HEAD_NONE:
        break;
    }
    return MOCO_OK;
}

/* ---- backward ---- */

/* dy is the gradient of u->out; the BN's input gradient goes to bn_dx (may equal dy), the conv's
 * input gradient to dx (NULL for the first layer). */
static int unit_backward(gpu_resnet *net, unit *u, void *dy, void *bn_dx, void *dx, moco_error *err)
{
    float *P = net->param, *G = net->grad;
    if (gpu_bn_backward(u->bn, u->conv_out, u->out, dy, P + u->bn_weight, bn_dx, G + u->bn_weight, G + u->bn_bias, err))
        return moco_prefix(err, "batch norm of %d channels, backward", u->out_c);
    if (gpu_conv_backward(u->conv, u->in, P + u->weight, bn_dx, dx, G + u->weight, err))
        return moco_prefix(err, "%dx%d conv %d->%d, backward", u->kernel, u->kernel, u->in_c, u->out_c);
    return MOCO_OK;
}

static int free_grad(int busy)
{
    for (int i = 0; i < GRADS; i++)
        if (!(busy & 1 << i))
            return i;
    return -1;
}

int gpu_resnet_backward(gpu_resnet *net, const float *d_output, moco_error *err)
{
    if (!net->trainable || net->last_train_groups < 1)
        return moco_fail(err, "backward needs a training forward on a trainable net");
    gpu *g = net->g;
    int n = net->n, f = net->feature_dim, d = net->cfg.out_dim;
    float *P = net->param, *G = net->grad;
    const float *d_pooled = d_output;
    if (net->cfg.head == RESNET_HEAD_MLP) {
        if (gpu_linear_backward(g, net->hidden, d_output, n, f, d, P + net->fc2_weight, net->d_hidden, G + net->fc2_weight,
                                G + net->fc2_bias, err) ||
            gpu_relu_backward_f32(g, net->hidden, net->d_hidden, (size_t)n * f, err) ||
            gpu_linear_backward(g, net->pooled, net->d_hidden, n, f, f, P + net->fc0_weight, net->d_pooled,
                                G + net->fc0_weight, G + net->fc0_bias, err))
            return moco_prefix(err, "MLP head, backward");
        d_pooled = net->d_pooled;
    } else if (net->cfg.head == RESNET_HEAD_LINEAR) {
        if (gpu_linear_backward(g, net->pooled, d_output, n, f, d, P + net->fc2_weight, net->d_pooled, G + net->fc2_weight,
                                G + net->fc2_bias, err))
            return moco_prefix(err, "fc head, backward");
        d_pooled = net->d_pooled;
    }
    int cur = 0; /* the gradient buffer holding the gradient of the current block's output */
    if (gpu_avgpool_backward(g, d_pooled, n, net->out_h * net->out_w, f, net->grads[cur], err))
        return MOCO_ERR;
    for (int i = net->nblocks - 1; i >= 0; i--) {
        block *blk = &net->blocks[i];
        unit *last = &blk->units[blk->nunits - 1];
        int out = cur; /* gradient of the sum (after the ReLU mask), needed by both branches */
        if (gpu_relu_backward(g, blk->out, net->grads[out], (size_t)n * last->oh * last->ow * last->out_c, err))
            return MOCO_ERR;
        int gi = out;
        for (int u = blk->nunits - 1; u >= 0; u--) {
            int bn_dx = gi == out ? free_grad(bit(out)) : gi; /* in place, except on the shared gradient */
            int dx = free_grad(bit(out) | bit(bn_dx));
            if (unit_backward(net, &blk->units[u], net->grads[gi], net->grads[bn_dx], net->grads[dx], err))
                return moco_prefix(err, "block %d", i);
            gi = dx;
        }
        if (blk->has_down) {
            /* the shortcut's gradient is not needed after its own BN, which runs in place on it */
            int dx = free_grad(bit(out) | bit(gi));
            if (unit_backward(net, &blk->down, net->grads[out], net->grads[out], net->grads[dx], err))
                return moco_prefix(err, "block %d downsample", i);
            if (gpu_add_inplace(g, net->grads[gi], net->grads[dx], (size_t)n * blk->down.h * blk->down.w * blk->down.in_c, err))
                return MOCO_ERR;
        } else if (gpu_add_inplace(g, net->grads[gi], net->grads[out], (size_t)n * last->oh * last->ow * last->out_c, err)) {
            return MOCO_ERR;
        }
        cur = gi;
    }
    if (net->has_pool) {
        int dx = free_grad(bit(cur));
        if (gpu_maxpool_backward(g, net->stem.out, net->grads[cur], n, net->stem.oh, net->stem.ow, net->stem.out_c,
                                 net->grads[dx], err))
            return MOCO_ERR;
        cur = dx;
    }
    return unit_backward(net, &net->stem, net->grads[cur], net->grads[cur], NULL, err);
}
