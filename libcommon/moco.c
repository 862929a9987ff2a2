/* moco.c — the MoCo v2 step (see moco.h). */
#include "moco.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"

void moco_destroy(moco *m)
{
    if (!m)
        return;
    resnet_destroy(m->q);
    resnet_destroy(m->k);
    float *bufs[] = {m->queue, m->q_norm, m->q_len, m->k_len, m->k_slots, m->k_local, m->im_k_grouped, m->negatives,
                     m->logits, m->d_logits, m->d_q, m->d_z, m->im_k_all, m->k_gathered, m->k_all};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
        free(bufs[i]);
    free(m->zero_labels);
    free(m);
}

moco *moco_create(backend *b, const resnet_config *encoder, const moco_config *cfg, moco_error *err)
{
    if (encoder->head == RESNET_HEAD_NONE) {
        moco_fail(err, "MoCo needs an encoder with a head (fc or MLP) giving the key dimension");
        return NULL;
    }
    if (cfg->queue_size < 1 || cfg->bn_groups < 1 || cfg->query_bn_groups < 0 || !(cfg->temperature > 0) || !(cfg->key_momentum >= 0) ||
        !(cfg->key_momentum <= 1)) {
        moco_fail(err, "MoCo settings out of range: queue %d, BN groups %d, temperature %g, key momentum %g",
                  cfg->queue_size, cfg->bn_groups, cfg->temperature, cfg->key_momentum);
        return NULL;
    }
    moco *m = calloc(1, sizeof *m);
    if (!m) {
        moco_fail(err, "out of memory");
        return NULL;
    }
    m->cfg = *cfg;
    if (m->cfg.query_bn_groups < 1)
        m->cfg.query_bn_groups = 1;
    m->dim = encoder->out_dim;
    if (!(m->q = resnet_create(b, encoder, 1, err)) || !(m->k = resnet_create(b, encoder, 0, err))) {
        moco_destroy(m);
        return NULL;
    }
    /* the key forward runs between the query's forward and backward: its activations fit in the
     * query's backward scratch, idle then */
    resnet_borrow_scratch(m->k, m->q);
    if (!(m->queue = malloc(sizeof(float) * cfg->queue_size * m->dim))) {
        moco_fail(err, "out of memory for a queue of %d keys", cfg->queue_size);
        moco_destroy(m);
        return NULL;
    }
    moco_init(m, 0);
    return m;
}

void moco_init(moco *m, uint64_t seed)
{
    resnet_init(m->q, seed);
    resnet_copy(m->k, m->q);
    for (int j = 0; j < m->cfg.queue_size; j++) {
        rng r;
        rng_init(&r, seed, 1, (uint64_t)j, 1); /* epoch 1, view 1: apart from resnet_init's streams */
        float *key = m->queue + (size_t)j * m->dim;
        double s = 0;
        for (int i = 0; i < m->dim; i++) {
            key[i] = (float)rng_normal(&r);
            s += (double)key[i] * key[i];
        }
        float len = (float)fmax(sqrt(s), 1e-12);
        for (int i = 0; i < m->dim; i++)
            key[i] /= len;
    }
    m->queue_ptr = 0;
}

void moco_permutation(int n, uint64_t seed, int64_t step, int64_t *perm)
{
    rng r;
    rng_init(&r, seed, 0xFFFFFFFFu, (uint64_t)step, 2); /* a stream of its own, keyed by the step */
    for (int i = 0; i < n; i++)
        perm[i] = i;
    for (int i = n - 1; i > 0; i--) {
        int j = (int)rng_below(&r, (uint32_t)i + 1);
        int64_t t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
}

void moco_momentum_update(moco *m)
{
    /* as torch._foreach_mul_(k, m) then _foreach_add_(k, q, alpha=1-m), scalars in float */
    float mf = (float)m->cfg.key_momentum, af = (float)(1.0 - m->cfg.key_momentum);
    float *k = m->k->param;
    const float *q = m->q->param;
    size_t count = m->q->param_count;
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < count; i++)
        k[i] = k[i] * mf + af * q[i];
}

/* (Re)allocate buffers to hold `*have` items of the given sizes each when `need` exceed it. */
static int reserve_some(float **const bufs[], const size_t sizes[], int count, int need, int *have, moco_error *err)
{
    if (need <= *have)
        return MOCO_OK;
    for (int i = 0; i < count; i++) {
        free(*bufs[i]);
        if (!(*bufs[i] = malloc(sizeof(float) * sizes[i] * need)))
            return moco_fail(err, "out of memory for a MoCo step of %d pairs", need);
    }
    *have = need;
    return MOCO_OK;
}

static int reserve(moco *m, int n, int all, int h, int w, int c, moco_error *err)
{
    size_t K = m->cfg.queue_size, d = m->dim, view = (size_t)h * w * c;
    float **const local[] = {&m->q_norm, &m->k_slots, &m->k_local, &m->d_q, &m->d_z, &m->q_len, &m->k_len,
                             &m->im_k_grouped, &m->negatives, &m->logits, &m->d_logits};
    const size_t local_sizes[] = {d, d, d, d, d, 1, 1, view, K, K + 1, K + 1};
    float **const keys[] = {&m->k_gathered, &m->k_all}, **const images[] = {&m->im_k_all};
    const size_t key_sizes[] = {d, d}, image_sizes[] = {view};
    int had = m->capacity;
    if (reserve_some(local, local_sizes, sizeof local / sizeof *local, n, &m->capacity, err) ||
        reserve_some(keys, key_sizes, 2, all, &m->capacity_all, err) ||
        reserve_some(images, image_sizes, 1, all > n ? all : 0, &m->capacity_images, err)) /* gathered with ranks only */
        return MOCO_ERR;
    if (m->capacity != had) {
        free(m->zero_labels);
        if (!(m->zero_labels = calloc(n, sizeof(int64_t))))
            return moco_fail(err, "out of memory");
    }
    return MOCO_OK;
}

int moco_step(moco *m, const float *im_q, const float *im_k, int n, int h, int w, const int64_t *perm,
              const moco_peers *peers, moco_result *result, moco_error *err)
{
    int G = m->cfg.bn_groups, d = m->dim, K = m->cfg.queue_size, c = m->q->cfg.in_channels;
    int R = peers ? peers->ranks : 1, rank = peers ? peers->rank : 0, all = R * n;
    if (n % G)
        return moco_fail(err, "a batch of %d pairs does not split into %d key BN groups", n, G);
    if (n % m->cfg.query_bn_groups)
        return moco_fail(err, "a batch of %d pairs does not split into %d query BN groups", n, m->cfg.query_bn_groups);
    if (reserve(m, n, all, h, w, c, err))
        return MOCO_ERR;
    /* query */
    if (resnet_forward(m->q, im_q, n, h, w, 1, m->cfg.query_bn_groups, err))
        return moco_prefix(err, "query encoder");
    l2norm_forward(m->q->output, n, d, m->q_norm, m->q_len);
    /* key: momentum update, then this rank's share of all ranks' permuted images, laid out group by group */
    moco_momentum_update(m);
    size_t view = (size_t)h * w * c;
    const float *im_k_all = im_k;
    if (R > 1) {
        if (peers->allgather(peers->ctx, im_k, n * view, m->im_k_all, "key images", err))
            return MOCO_ERR;
        im_k_all = m->im_k_all;
    }
    int per_group = n / G;
    for (int j = 0; j < n; j++) { /* permuted position j R + rank, key BN group j mod G */
        int slot = (j % G) * per_group + j / G;
        memcpy(m->im_k_grouped + slot * view, im_k_all + perm[(size_t)j * R + rank] * view, sizeof(float) * view);
    }
    if (resnet_forward(m->k, m->im_k_grouped, n, h, w, 1, G, err))
        return moco_prefix(err, "key encoder");
    l2norm_forward(m->k->output, n, d, m->k_slots, m->k_len);
    for (int j = 0; j < n; j++) {
        int slot = (j % G) * per_group + j / G;
        memcpy(m->k_local + (size_t)j * d, m->k_slots + (size_t)slot * d, sizeof(float) * d);
    }
    /* every rank's keys, un-permuted: k_all holds the keys of all R n pairs in rank order */
    const float *gathered = m->k_local;
    if (R > 1) {
        if (peers->allgather(peers->ctx, m->k_local, (size_t)n * d, m->k_gathered, "keys", err))
            return MOCO_ERR;
        gathered = m->k_gathered;
    }
    for (int r = 0; r < R; r++)
        for (int j = 0; j < n; j++)
            memcpy(m->k_all + perm[(size_t)j * R + r] * d, gathered + ((size_t)r * n + j) * d, sizeof(float) * d);
    const float *k_pos = m->k_all + (size_t)rank * n * d; /* this rank's pairs' keys */
    /* logits: [q.k, q queue^T] / tau */
    matmul(m->q_norm, m->queue, m->negatives, n, K, d, 1, 1.0f);
    float tau = (float)m->cfg.temperature;
    for (int i = 0; i < n; i++) {
        float *row = m->logits + (size_t)i * (K + 1);
        float pos = 0;
        for (int j = 0; j < d; j++)
            pos += m->q_norm[i * d + j] * k_pos[i * d + j];
        row[0] = pos / tau;
        const float *neg = m->negatives + (size_t)i * K;
        for (int j = 0; j < K; j++)
            row[j + 1] = neg[j] / tau;
    }
    result->loss = softmax_cross_entropy(m->logits, n, K + 1, m->zero_labels, m->d_logits, &result->top1, &result->top5);
    /* d q = (d l_pos k + d l_neg queue) / tau, then through the normalisation into the encoder */
    for (int i = 0; i < n; i++) {
        const float *row = m->d_logits + (size_t)i * (K + 1);
        memcpy(m->negatives + (size_t)i * K, row + 1, sizeof(float) * K);
    }
    matmul(m->negatives, m->queue, m->d_q, n, d, K, 0, 1.0f / tau);
    for (int i = 0; i < n; i++) {
        float dpos = m->d_logits[(size_t)i * (K + 1)] / tau;
        for (int j = 0; j < d; j++)
            m->d_q[i * d + j] += dpos * k_pos[i * d + j];
    }
    l2norm_backward(m->q_norm, m->q_len, m->d_q, n, d, m->d_z);
    if (resnet_backward(m->q, m->d_z, err))
        return moco_prefix(err, "query encoder backward");
    /* enqueue all ranks' keys (the queue wraps around when K is not a multiple of the batch) */
    for (int i = 0; i < all; i++) {
        memcpy(m->queue + (size_t)m->queue_ptr * d, m->k_all + (size_t)i * d, sizeof(float) * d);
        m->queue_ptr = (m->queue_ptr + 1) % K;
    }
    return MOCO_OK;
}
