/* checkpoint.c — save and load MoCo training state (see checkpoint.h). */
#include "checkpoint.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"

static const char *head_name(resnet_head h)
{
    return h == RESNET_HEAD_MLP ? "mlp" : h == RESNET_HEAD_LINEAR ? "linear" : "none";
}

void checkpoint_describe(stream_header *h, const moco *m)
{
    const resnet_config *c = &m->q->cfg;
    char arch[16];
    snprintf(arch, sizeof arch, "resnet%d", c->depth);
    stream_header_set_str(h, "arch", arch);
    stream_header_set_int(h, "width", c->width);
    stream_header_set_int(h, "in_channels", c->in_channels);
    stream_header_set_int(h, "cifar_stem", c->cifar_stem);
    stream_header_set_str(h, "head", head_name(c->head));
    stream_header_set_int(h, "dim", c->out_dim);
    stream_header_set_int(h, "queue_size", m->cfg.queue_size);
    stream_header_set_real(h, "key_momentum", m->cfg.key_momentum);
    stream_header_set_real(h, "temperature", m->cfg.temperature);
    stream_header_set_int(h, "bn_groups", m->cfg.bn_groups);
    stream_header_set_int(h, "query_bn_groups", m->cfg.query_bn_groups);
    stream_header_set_int(h, "queue_ptr", m->queue_ptr);
}

int checkpoint_config(const stream_header *h, resnet_config *enc, moco_config *cfg, moco_error *err)
{
    if (strcmp(stream_header_kind(h), "checkpoint"))
        return moco_fail(err, "a \"%s\" stream, not a checkpoint", stream_header_kind(h));
    const char *head = stream_header_get_str(h, "head", "mlp");
    *enc = (resnet_config){
        .depth = resnet_depth_from_name(stream_header_get_str(h, "arch", "")),
        .width = (int)stream_header_get_int(h, "width", 64),
        .in_channels = (int)stream_header_get_int(h, "in_channels", 3),
        .cifar_stem = (int)stream_header_get_int(h, "cifar_stem", 0),
        .head = !strcmp(head, "mlp") ? RESNET_HEAD_MLP : !strcmp(head, "linear") ? RESNET_HEAD_LINEAR : RESNET_HEAD_NONE,
        .out_dim = (int)stream_header_get_int(h, "dim", 128),
    };
    *cfg = (moco_config){
        .queue_size = (int)stream_header_get_int(h, "queue_size", 65536),
        .key_momentum = stream_header_get_real(h, "key_momentum", 0.999),
        .temperature = stream_header_get_real(h, "temperature", 0.2),
        .bn_groups = (int)stream_header_get_int(h, "bn_groups", 1),
        .query_bn_groups = (int)stream_header_get_int(h, "query_bn_groups", 1),
    };
    if (resnet_config_check(enc, err))
        return moco_prefix(err, "checkpoint header");
    return MOCO_OK;
}

static int write_tensor(stream_writer *w, const char *prefix, const char *name, tensor_dtype dtype, int rank,
                        const int64_t *dims, const void *data, moco_error *err)
{
    char key[TENSOR_MAX_NAME + 1];
    snprintf(key, sizeof key, "%s%s", prefix, name);
    stream_record rec;
    stream_record_init(&rec, -1, -1);
    if (stream_record_add(&rec, key, dtype, rank, dims, data, err))
        return MOCO_ERR;
    return stream_write(w, &rec, err);
}

static int write_net(stream_writer *w, const char *prefix, const resnet *net, moco_error *err)
{
    for (int i = 0; i < net->ntensors; i++) {
        const resnet_tensor *t = &net->tensors[i];
        if (write_tensor(w, prefix, t->name, DTYPE_F32, t->rank, t->dims,
                         (t->buffer ? net->buffer : net->param) + t->offset, err))
            return MOCO_ERR;
        size_t len = strlen(t->name);
        if (len > 12 && !strcmp(t->name + len - 12, ".running_var")) { /* torchvision's per-BN counter */
            char name[80];
            snprintf(name, sizeof name, "%.*s.num_batches_tracked", (int)(len - 12), t->name);
            if (write_tensor(w, prefix, name, DTYPE_I64, 0, NULL, &net->num_batches_tracked, err))
                return MOCO_ERR;
        }
    }
    return MOCO_OK;
}

int checkpoint_save(const char *path, stream_header *h, const moco *m, const sgd *opt, moco_error *err)
{
    checkpoint_describe(h, m);
    stream_options o = STREAM_OPTIONS_DEFAULT;
    o.level = 1;
    o.allow_terminal = 0;
    stream_writer *w = stream_writer_open(path, &o, h, err);
    if (!w)
        return MOCO_ERR;
    int64_t qdims[2] = {m->cfg.queue_size, m->dim};
    int rc = write_net(w, "encoder_q.", m->q, err) || write_net(w, "encoder_k.", m->k, err) ||
             write_tensor(w, "", "queue", DTYPE_F32, 2, qdims, m->queue, err);
    for (int i = 0; !rc && opt && i < m->q->ntensors; i++) {
        const resnet_tensor *t = &m->q->tensors[i];
        if (!t->buffer)
            rc = write_tensor(w, "momentum_buffer.", t->name, DTYPE_F32, t->rank, t->dims, opt->buf + t->offset, err);
    }
    if (rc) {
        stream_writer_abort(w);
        return moco_prefix(err, "saving %s", path);
    }
    return stream_writer_close(w, err) ? moco_prefix(err, "saving %s", path) : MOCO_OK;
}

stream_header *checkpoint_read_header(const char *path, moco_error *err)
{
    stream_reader *r = stream_reader_open(path, NULL, err);
    if (!r)
        return NULL;
    stream_header *h = stream_header_copy(stream_reader_header(r));
    stream_reader_close(r);
    if (!h)
        moco_fail(err, "out of memory");
    return h;
}

/* Copy a record's tensor into the net entry named `name`; 1 when used, 0 when no such entry,
 * MOCO_ERR on a shape or type mismatch. */
static int load_into_net(resnet *net, const char *name, const tensor *t, float *dest_params, moco_error *err)
{
    size_t len = strlen(name);
    if (len > 20 && !strcmp(name + len - 20, ".num_batches_tracked")) {
        if (t->dtype != DTYPE_I64 || tensor_numel(t) != 1)
            return moco_fail(err, "%s: expected one i64", name);
        memcpy(&net->num_batches_tracked, t->data, sizeof(int64_t));
        return 1;
    }
    const resnet_tensor *e = resnet_find(net, name);
    if (!e)
        return 0;
    if (t->dtype != DTYPE_F32 || t->rank != e->rank || memcmp(t->dims, e->dims, sizeof(int64_t) * e->rank)) {
        char got[96];
        return moco_fail(err, "%s: %s in the checkpoint, the model wants f32 with %lld values", name,
                         tensor_describe(t, got, sizeof got), (long long)e->count);
    }
    float *dest = dest_params ? dest_params : e->buffer ? net->buffer : net->param;
    if (dest_params && e->buffer)
        return 0;
    memcpy(dest + e->offset, t->data, sizeof(float) * e->count);
    return 1;
}

/* Count the entries a load must find: parameters (and buffers unless params_only), minus the head. */
static int expected(const resnet *net, int params_only, int skip_head)
{
    int n = 0;
    for (int i = 0; i < net->ntensors; i++)
        n += !(params_only && net->tensors[i].buffer) && !(skip_head && !strncmp(net->tensors[i].name, "fc", 2));
    return n;
}

static int load(const char *path, moco *m, sgd *opt, const char *prefix, resnet *net, int skip_head, moco_error *err)
{
    stream_reader *r = stream_reader_open(path, NULL, err);
    if (!r)
        return MOCO_ERR;
    if (strcmp(stream_header_kind(stream_reader_header(r)), "checkpoint")) {
        moco_fail(err, "%s: a \"%s\" stream, not a checkpoint", path, stream_header_kind(stream_reader_header(r)));
        stream_reader_close(r);
        return MOCO_ERR;
    }
    int found_q = 0, found_k = 0, found_mom = 0, found_queue = 0, rc;
    size_t plen = prefix ? strlen(prefix) : 0;
    stream_record rec;
    while ((rc = stream_read(r, &rec, err)) == 1) {
        if (rec.ntensors != 1)
            continue;
        const tensor *t = &rec.tensors[0];
        const char *name = t->name;
        int used = 0;
        if (net) {
            if (!strncmp(name, prefix, plen) && !(skip_head && !strncmp(name + plen, "fc", 2)))
                found_q += used = load_into_net(net, name + plen, t, NULL, err);
        } else if (!strncmp(name, "encoder_q.", 10)) {
            found_q += used = load_into_net(m->q, name + 10, t, NULL, err);
        } else if (!strncmp(name, "encoder_k.", 10)) {
            found_k += used = load_into_net(m->k, name + 10, t, NULL, err);
        } else if (!strncmp(name, "momentum_buffer.", 16) && opt) {
            found_mom += used = load_into_net(m->q, name + 16, t, opt->buf, err);
        } else if (!strcmp(name, "queue")) {
            if (t->dtype != DTYPE_F32 || t->rank != 2 || t->dims[0] != m->cfg.queue_size || t->dims[1] != m->dim) {
                used = moco_fail(err, "queue: the model wants f32 (%d, %d)", m->cfg.queue_size, m->dim);
            } else {
                memcpy(m->queue, t->data, sizeof(float) * m->cfg.queue_size * m->dim);
                found_queue = used = 1;
            }
        }
        if (used < 0) { /* stream errors name the file already; ours do not */
            rc = moco_prefix(err, "%s", path);
            break;
        }
    }
    stream_reader_close(r);
    if (rc < 0)
        return MOCO_ERR;
    /* num_batches_tracked records are counted too: one per BN, so compare with the entries plus them */
    resnet *qnet = net ? net : m->q;
    int bns = 0;
    for (int i = 0; i < qnet->ntensors; i++)
        bns += strstr(qnet->tensors[i].name, "running_var") != NULL;
    if (found_q < expected(qnet, 0, skip_head) + bns)
        return moco_fail(err, "%s: %s tensors missing (%d of %d found)", path, net ? prefix : "encoder_q.", found_q,
                         expected(qnet, 0, skip_head) + bns);
    if (!net) {
        if (found_k < expected(m->k, 0, 0) + bns)
            return moco_fail(err, "%s: encoder_k. tensors missing (%d of %d found)", path, found_k,
                             expected(m->k, 0, 0) + bns);
        if (!found_queue)
            return moco_fail(err, "%s: no queue", path);
        if (opt && found_mom < expected(m->q, 1, 0))
            return moco_fail(err, "%s: momentum buffers missing (%d of %d found)", path, found_mom, expected(m->q, 1, 0));
        m->queue_ptr = -1; /* the caller sets it from the header */
    }
    return MOCO_OK;
}

int checkpoint_load(const char *path, moco *m, sgd *opt, moco_error *err)
{
    stream_header *h = checkpoint_read_header(path, err);
    if (!h)
        return MOCO_ERR;
    int64_t ptr = stream_header_get_int(h, "queue_ptr", -1);
    stream_header_free(h);
    if (ptr < 0 || ptr >= m->cfg.queue_size)
        return moco_fail(err, "%s: queue_ptr missing or out of range", path);
    if (load(path, m, opt, NULL, NULL, 0, err))
        return MOCO_ERR;
    m->queue_ptr = ptr;
    return MOCO_OK;
}

int checkpoint_load_encoder(const char *path, const char *prefix, resnet *net, int skip_head, moco_error *err)
{
    return load(path, NULL, NULL, prefix, net, skip_head, err);
}

static const tensor *find_prefixed(const safetensors *st, const char *prefix, const char *name)
{
    char key[256];
    snprintf(key, sizeof key, "%s%s", prefix, name);
    return safetensors_find(st, key);
}

int checkpoint_infer_config(const safetensors *st, const char *prefix, resnet_config *cfg, moco_error *err)
{
    const tensor *conv1 = find_prefixed(st, prefix, "conv1.weight");
    if (!conv1 || conv1->rank != 4)
        return moco_fail(err, "no %sconv1.weight of rank 4: not a torchvision ResNet", prefix);
    int blocks[4] = {0};
    for (int layer = 0; layer < 4; layer++) {
        char name[64];
        for (;;) {
            snprintf(name, sizeof name, "layer%d.%d.conv1.weight", layer + 1, blocks[layer]);
            if (!find_prefixed(st, prefix, name))
                break;
            blocks[layer]++;
        }
    }
    int bottleneck = find_prefixed(st, prefix, "layer1.0.conv3.weight") != NULL;
    int depth = 0;
    if (!bottleneck && blocks[0] == 2 && blocks[1] == 2 && blocks[2] == 2 && blocks[3] == 2)
        depth = 18;
    else if (blocks[0] == 3 && blocks[1] == 4 && blocks[2] == 6 && blocks[3] == 3)
        depth = bottleneck ? 50 : 34;
    if (!depth)
        return moco_fail(err, "blocks per stage %d,%d,%d,%d%s: not ResNet-18, 34 or 50", blocks[0], blocks[1],
                         blocks[2], blocks[3], bottleneck ? " (bottleneck)" : "");
    const tensor *fc0 = find_prefixed(st, prefix, "fc.0.weight"), *fc2 = find_prefixed(st, prefix, "fc.2.weight"),
                 *fc = find_prefixed(st, prefix, "fc.weight");
    *cfg = (resnet_config){.depth = depth, .width = (int)conv1->dims[0], .in_channels = (int)conv1->dims[1],
                           .cifar_stem = conv1->dims[2] == 3, .head = RESNET_HEAD_NONE};
    if (fc0 && fc2 && fc2->rank == 2)
        cfg->head = RESNET_HEAD_MLP, cfg->out_dim = (int)fc2->dims[0];
    else if (fc && fc->rank == 2)
        cfg->head = RESNET_HEAD_LINEAR, cfg->out_dim = (int)fc->dims[0];
    return resnet_config_check(cfg, err);
}

int checkpoint_load_safetensors(const safetensors *st, const char *prefix, resnet *net, int skip_head, moco_error *err)
{
    for (int i = 0; i < net->ntensors; i++) {
        const resnet_tensor *e = &net->tensors[i];
        if (skip_head && !strncmp(e->name, "fc", 2))
            continue;
        const tensor *t = find_prefixed(st, prefix, e->name);
        if (!t)
            return moco_fail(err, "%s%s is missing", prefix, e->name);
        int same = t->rank == e->rank;
        for (int d = 0; same && d < e->rank; d++)
            same = t->dims[d] == e->dims[d];
        if (!same || (t->dtype != DTYPE_F32 && t->dtype != DTYPE_F16 && t->dtype != DTYPE_BF16)) {
            char got[96];
            return moco_fail(err, "%s%s: %s, the model wants f32 with %zu values", prefix, e->name,
                             tensor_describe(t, got, sizeof got), e->count);
        }
        float *dest = (e->buffer ? net->buffer : net->param) + e->offset;
        for (size_t j = 0; j < e->count; j++) /* any alignment, any float dtype */
            dest[j] = (float)tensor_get(t, (int64_t)j);
    }
    return MOCO_OK;
}
