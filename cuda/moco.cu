/* moco.cu — the GPU twin of libcommon/moco.c's step (see gpu.h and moco.h): query forward, key
 * momentum update, this rank's share of all ranks' permuted key images laid out group by group,
 * the keys gathered back and un-permuted, InfoNCE, the backward pass, the enqueue of all ranks'
 * keys. Everything stays on the device; the host only uploads the step's row indices (from the
 * permutation) and reads nothing back. With ranks, the images and keys travel by NCCL.
 *
 * The negatives are written by one product straight into the logits beside their positive column
 * (ldy = K + 1), so there is no copy of the (N, K) block on the way in; on the way back the
 * negatives' gradient is one strided copy into a contiguous block for the product with the queue. */
#include "gpu_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct gpu_moco {
    gpu *g;
    moco_config cfg;
    int dim, channels;
    size_t param_count;
    gpu_resnet *q, *k;
    float *queue;      /* (K, dim) */
    int64_t *queue_ptr; /* device: where the next keys go */
    /* step scratch for `capacity` pairs on this rank, `capacity_all` on all ranks */
    int capacity, capacity_all;
    size_t view_capacity, view_capacity_all;
    float *q_norm, *q_len, *k_slots, *k_len, *k_local, *logits, *d_logits, *d_negatives, *d_q, *d_z;
    float *k_gathered, *k_all; /* all ranks' keys as gathered (rank by rank), and un-permuted */
    void *im_k_grouped, *im_k_all;
    /* row indices, n + n + R n: slot -> gathered image, local position -> slot, gathered key -> pair */
    int64_t *index, *host_index;
};

void gpu_moco_destroy(gpu_moco *m)
{
    if (!m)
        return;
    gpu *g = m->g;
    gpu_resnet_destroy(m->q);
    gpu_resnet_destroy(m->k);
    void *bufs[] = {m->queue, m->queue_ptr, m->q_norm, m->q_len, m->k_slots, m->k_len, m->k_local, m->logits,
                    m->d_logits, m->d_negatives, m->d_q, m->d_z, m->k_gathered, m->k_all, m->im_k_grouped, m->im_k_all,
                    m->index};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
        gpu_free(g, bufs[i]);
    gpu_host_free(g, m->host_index);
    free(m);
}

gpu_moco *gpu_moco_create(gpu *g, const moco *host, moco_error *err)
{
    gpu_moco *m = (gpu_moco *)calloc(1, sizeof *m);
    if (!m) {
        moco_fail(err, "out of memory");
        return NULL;
    }
    m->g = g, m->cfg = host->cfg, m->dim = host->dim, m->channels = host->q->cfg.in_channels;
    m->param_count = host->q->param_count;
    size_t queue_bytes = sizeof(float) * (size_t)host->cfg.queue_size * host->dim;
    if (!(m->q = gpu_resnet_create(g, host->q, 1, err)) || !(m->k = gpu_resnet_create(g, host->k, 0, err)) ||
        !(m->queue = (float *)gpu_alloc(g, queue_bytes, err)) ||
        !(m->queue_ptr = (int64_t *)gpu_alloc(g, sizeof(int64_t), err)) || gpu_moco_upload(m, host, err)) {
        gpu_moco_destroy(m);
        return NULL;
    }
    /* the key forward runs between the query's forward and backward: its activations fit in the
     * query's backward scratch, idle then (1.2 GB for ResNet-50 at batch 256 in bf16) */
    gpu_resnet_borrow_scratch(m->k, m->q);
    return m;
}

gpu_resnet *gpu_moco_query(gpu_moco *m) { return m->q; }
gpu_resnet *gpu_moco_key(gpu_moco *m) { return m->k; }
const float *gpu_moco_logits(const gpu_moco *m) { return m->logits; }

int gpu_moco_upload(gpu_moco *m, const moco *host, moco_error *err)
{
    if (host->cfg.queue_size != m->cfg.queue_size || host->dim != m->dim)
        return moco_fail(err, "GPU MoCo: the host's queue is (%d, %d), not (%d, %d)", host->cfg.queue_size, host->dim,
                         m->cfg.queue_size, m->dim);
    size_t queue_bytes = sizeof(float) * (size_t)m->cfg.queue_size * m->dim;
    if (gpu_resnet_upload(m->q, host->q, err) || gpu_resnet_upload(m->k, host->k, err) ||
        gpu_upload(m->g, m->queue, host->queue, queue_bytes, err) ||
        gpu_upload(m->g, m->queue_ptr, &host->queue_ptr, sizeof(int64_t), err))
        return MOCO_ERR;
    return MOCO_OK;
}

int gpu_moco_download(gpu_moco *m, moco *host, moco_error *err)
{
    size_t queue_bytes = sizeof(float) * (size_t)m->cfg.queue_size * m->dim;
    if (gpu_resnet_download(m->q, host->q, err) || gpu_resnet_download(m->k, host->k, err) ||
        gpu_download(m->g, host->queue, m->queue, queue_bytes, err) ||
        gpu_download(m->g, &host->queue_ptr, m->queue_ptr, sizeof(int64_t), err))
        return MOCO_ERR;
    return MOCO_OK;
}

/* Free *p and allocate `bytes` for it. */
static int regrow(gpu *g, void **p, size_t bytes, moco_error *err)
{
    gpu_free(g, *p);
    *p = gpu_alloc(g, bytes, err);
    return *p ? MOCO_OK : MOCO_ERR;
}

/* Scratch for n pairs of `view` activations on this rank and all = R n on all; grown, never shrunk. */
static int reserve(gpu_moco *m, int n, int all, size_t view, moco_error *err)
{
    gpu *g = m->g;
    size_t K = m->cfg.queue_size, d = m->dim, f = sizeof(float), a = gpu_act_size(g);
    if (n > m->capacity) {
        float **bufs[] = {&m->q_norm, &m->q_len, &m->k_slots, &m->k_len, &m->k_local, &m->logits, &m->d_logits,
                          &m->d_negatives, &m->d_q, &m->d_z};
        size_t sizes[] = {n * d, (size_t)n, n * d, (size_t)n, n * d, n * (K + 1), n * (K + 1), n * K, n * d, n * d};
        for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
            if (regrow(g, (void **)bufs[i], f * sizes[i], err))
                return moco_prefix(err, "a MoCo step of %d pairs", n);
        m->capacity = n;
    }
    if (all > m->capacity_all || n > m->capacity) {
        size_t count = (size_t)2 * n + all;
        gpu_host_free(g, m->host_index); /* page-locked: a captured copy may read it (train.cu) */
        if (!(m->host_index = (int64_t *)gpu_host_alloc(g, sizeof(int64_t) * count, err)) ||
            regrow(g, (void **)&m->index, sizeof(int64_t) * count, err) ||
            regrow(g, (void **)&m->k_gathered, f * all * d, err) || regrow(g, (void **)&m->k_all, f * all * d, err))
            return moco_fail(err, "out of memory for a MoCo step of %d pairs on all ranks", all);
        m->capacity_all = all;
    }
    if ((size_t)n * view > m->view_capacity) {
        if (regrow(g, &m->im_k_grouped, (size_t)n * view * a, err))
            return moco_prefix(err, "the key batch of a MoCo step of %d pairs", n);
        m->view_capacity = (size_t)n * view;
    }
    if (all > n && (size_t)all * view > m->view_capacity_all) { /* gathered images: with ranks only */
        if (regrow(g, &m->im_k_all, (size_t)all * view * a, err))
            return moco_prefix(err, "the key images of all ranks (%d pairs)", all);
        m->view_capacity_all = (size_t)all * view;
    }
    return MOCO_OK;
}

/* The step's sizes checked and its buffers reserved. */
static int step_shape(gpu_moco *m, int n, int h, int w, gpu_ranks *ranks, moco_error *err)
{
    int G = m->cfg.bn_groups, Gq = m->cfg.query_bn_groups < 1 ? 1 : m->cfg.query_bn_groups;
    int R = ranks ? gpu_ranks_size(ranks) : 1;
    if (n % G)
        return moco_fail(err, "a batch of %d pairs does not split into %d key BN groups", n, G);
    if (n % Gq)
        return moco_fail(err, "a batch of %d pairs does not split into %d query BN groups", n, Gq);
    return reserve(m, n, R * n, (size_t)h * w * m->channels, err);
}

int gpu_moco_stage(gpu_moco *m, int n, int h, int w, const int64_t *host_perm, gpu_ranks *ranks, moco_error *err)
{
    if (step_shape(m, n, h, w, ranks, err))
        return MOCO_ERR;
    int G = m->cfg.bn_groups, R = ranks ? gpu_ranks_size(ranks) : 1, rank = ranks ? gpu_ranks_rank(ranks) : 0;
    /* the step's rows, as moco.c lays them out: this rank encodes the permuted positions j R + rank,
     * position j in slot (j mod G) n/G + j/G of its key batch */
    int64_t *slot_source = m->host_index, *local_order = slot_source + n, *unpermute = local_order + n;
    int per_group = n / G;
    for (int j = 0; j < n; j++) {
        int slot = (j % G) * per_group + j / G;
        slot_source[slot] = host_perm[(size_t)j * R + rank];
        local_order[j] = slot;
    }
    for (int r = 0; r < R; r++)
        for (int j = 0; j < n; j++)
            unpermute[(size_t)r * n + j] = host_perm[(size_t)j * R + r];
    CUDA_CHECK(cudaMemcpyAsync(m->index, m->host_index, sizeof(int64_t) * (2 * (size_t)n + R * n), cudaMemcpyHostToDevice,
                               m->g->stream),
               err, "uploading the key permutation");
    return MOCO_OK;
}

int gpu_moco_run(gpu_moco *m, const void *im_q, const void *im_k, int n, int h, int w, gpu_ranks *ranks, float *result,
                 moco_error *err)
{
    gpu *g = m->g;
    if (step_shape(m, n, h, w, ranks, err))
        return MOCO_ERR;
    int G = m->cfg.bn_groups, Gq = m->cfg.query_bn_groups < 1 ? 1 : m->cfg.query_bn_groups, d = m->dim,
        K = m->cfg.queue_size;
    int R = ranks ? gpu_ranks_size(ranks) : 1, rank = ranks ? gpu_ranks_rank(ranks) : 0, all = R * n;
    size_t view = (size_t)h * w * m->channels, view_bytes = view * gpu_act_size(g), key_bytes = sizeof(float) * d;
    float tau = (float)m->cfg.temperature;
    /* query */
    if (gpu_resnet_forward(m->q, im_q, n, h, w, 1, Gq, err))
        return moco_prefix(err, "query encoder");
    if (gpu_l2norm_forward(g, gpu_resnet_output(m->q), n, d, m->q_norm, m->q_len, err))
        return MOCO_ERR;
    /* key: momentum update, then this rank's share of all ranks' images (rows: gpu_moco_stage's) */
    if (gpu_momentum_update(g, gpu_resnet_param(m->k), gpu_resnet_param(m->q), m->param_count, m->cfg.key_momentum, err))
        return MOCO_ERR;
    const void *images = im_k;
    if (R > 1) {
        if (gpu_ranks_allgather(ranks, im_k, n * view_bytes, m->im_k_all, err))
            return moco_prefix(err, "key images");
        images = m->im_k_all;
    }
    if (gpu_gather_rows(g, images, m->index, n, view_bytes, m->im_k_grouped, err))
        return MOCO_ERR;
    if (gpu_resnet_forward(m->k, m->im_k_grouped, n, h, w, 1, G, err))
        return moco_prefix(err, "key encoder");
    /* the keys in position order, every rank's, un-permuted: k_all holds all R n pairs' keys */
    if (gpu_l2norm_forward(g, gpu_resnet_output(m->k), n, d, m->k_slots, m->k_len, err) ||
        gpu_gather_rows(g, m->k_slots, m->index + n, n, key_bytes, m->k_local, err))
        return MOCO_ERR;
    const float *gathered = m->k_local;
    if (R > 1) {
        if (gpu_ranks_allgather(ranks, m->k_local, n * key_bytes, m->k_gathered, err))
            return moco_prefix(err, "keys");
        gathered = m->k_gathered;
    }
    if (gpu_scatter_rows(g, gathered, m->index + 2 * n, all, key_bytes, m->k_all, err))
        return MOCO_ERR;
    const float *k_pos = m->k_all + (size_t)rank * n * d; /* this rank's pairs' keys */
    /* logits: [q.k, q queue^T] / tau, the negatives written beside the positive */
    if (gpu_matmul(g, m->q_norm, m->queue, m->logits + 1, n, K, d, 1, 1.0f / tau, K + 1, err) ||
        gpu_positive_logits(g, m->q_norm, k_pos, n, d, tau, m->logits, K + 1, err) ||
        gpu_softmax_cross_entropy(g, m->logits, n, K + 1, NULL, m->d_logits, result, err))
        return MOCO_ERR;
    /* d q = (d l_neg queue + d l_pos k) / tau, then through the normalisation into the encoder */
    CUDA_CHECK(cudaMemcpy2DAsync(m->d_negatives, sizeof(float) * K, m->d_logits + 1, sizeof(float) * (K + 1),
                                 sizeof(float) * K, n, cudaMemcpyDeviceToDevice, g->stream),
               err, "the negatives' gradient");
    if (gpu_matmul(g, m->d_negatives, m->queue, m->d_q, n, d, K, 0, 1.0f / tau, d, err) ||
        gpu_positive_backward(g, m->d_logits, K + 1, k_pos, n, d, tau, m->d_q, err) ||
        gpu_l2norm_backward(g, m->q_norm, m->q_len, m->d_q, n, d, m->d_z, err))
        return MOCO_ERR;
    if (gpu_resnet_backward(m->q, m->d_z, err))
        return moco_prefix(err, "query encoder backward");
    /* enqueue all ranks' keys (wrapping when K is not a multiple of the batch) */
    return gpu_enqueue(g, m->queue, K, d, m->k_all, all, m->queue_ptr, err);
}

int gpu_moco_step(gpu_moco *m, const void *im_q, const void *im_k, int n, int h, int w, const int64_t *host_perm,
                  gpu_ranks *ranks, float *result, moco_error *err)
{
    if (gpu_moco_stage(m, n, h, w, host_perm, ranks, err))
        return MOCO_ERR;
    return gpu_moco_run(m, im_q, im_k, n, h, w, ranks, result, err);
}

void gpu_moco_count_forwards(gpu_moco *m, int64_t count)
{
    gpu_resnet_count_forwards(m->q, count);
    gpu_resnet_count_forwards(m->k, count);
}
