/* moco.cu — the GPU twin of libcommon/moco.c's step (see gpu.h and moco.h), one process: query
 * forward, key momentum update, the key batch permuted and laid out group by group for the shuffle-BN
 * emulation, InfoNCE, the backward pass, the enqueue. Everything stays on the device; the host
 * only uploads the step's gather index (from the permutation) and reads nothing back.
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
    /* step scratch for `capacity` pairs */
    int capacity;
    size_t view_capacity;
    float *q_norm, *q_len, *k_slots, *k_len, *k_norm, *logits, *d_logits, *d_negatives, *d_q, *d_z;
    void *im_k_grouped;
    int64_t *slot_source, *host_slot_source; /* slot -> row of the unpermuted batch */
};

void gpu_moco_destroy(gpu_moco *m)
{
    if (!m)
        return;
    gpu *g = m->g;
    gpu_resnet_destroy(m->q);
    gpu_resnet_destroy(m->k);
    void *bufs[] = {m->queue, m->queue_ptr, m->q_norm, m->q_len, m->k_slots, m->k_len, m->k_norm, m->logits,
                    m->d_logits, m->d_negatives, m->d_q, m->d_z, m->im_k_grouped, m->slot_source};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
        gpu_free(g, bufs[i]);
    free(m->host_slot_source);
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

/* Scratch for n pairs of views of `view` activations each; grown, never shrunk. */
static int reserve(gpu_moco *m, int n, size_t view, moco_error *err)
{
    gpu *g = m->g;
    if (n > m->capacity) {
        size_t K = m->cfg.queue_size, d = m->dim, f = sizeof(float);
        float **bufs[] = {&m->q_norm, &m->q_len, &m->k_slots, &m->k_len, &m->k_norm, &m->logits, &m->d_logits,
                          &m->d_negatives, &m->d_q, &m->d_z};
        size_t sizes[] = {n * d, (size_t)n, n * d, (size_t)n, n * d, n * (K + 1), n * (K + 1), n * K, n * d, n * d};
        for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) {
            gpu_free(g, *bufs[i]);
            if (!(*bufs[i] = (float *)gpu_alloc(g, f * sizes[i], err)))
                return moco_prefix(err, "a MoCo step of %d pairs", n);
        }
        gpu_free(g, m->slot_source);
        free(m->host_slot_source);
        m->host_slot_source = (int64_t *)malloc(sizeof(int64_t) * n);
        if (!m->host_slot_source || !(m->slot_source = (int64_t *)gpu_alloc(g, sizeof(int64_t) * n, err)))
            return moco_fail(err, "out of memory for a MoCo step of %d pairs", n);
        m->capacity = n;
    }
    if ((size_t)n * view > m->view_capacity) {
        gpu_free(g, m->im_k_grouped);
        if (!(m->im_k_grouped = gpu_alloc(g, (size_t)n * view * gpu_act_size(g), err)))
            return moco_prefix(err, "the key batch of a MoCo step of %d pairs", n);
        m->view_capacity = (size_t)n * view;
    }
    return MOCO_OK;
}

int gpu_moco_step(gpu_moco *m, const void *im_q, const void *im_k, int n, int h, int w, const int64_t *host_perm,
                  float *result, moco_error *err)
{
    gpu *g = m->g;
    int G = m->cfg.bn_groups, Gq = m->cfg.query_bn_groups < 1 ? 1 : m->cfg.query_bn_groups, d = m->dim,
        K = m->cfg.queue_size;
    if (n % G)
        return moco_fail(err, "a batch of %d pairs does not split into %d key BN groups", n, G);
    if (n % Gq)
        return moco_fail(err, "a batch of %d pairs does not split into %d query BN groups", n, Gq);
    size_t view = (size_t)h * w * m->channels;
    if (reserve(m, n, view, err))
        return MOCO_ERR;
    float tau = (float)m->cfg.temperature;
    /* query */
    if (gpu_resnet_forward(m->q, im_q, n, h, w, 1, Gq, err))
        return moco_prefix(err, "query encoder");
    if (gpu_l2norm_forward(g, gpu_resnet_output(m->q), n, d, m->q_norm, m->q_len, err))
        return MOCO_ERR;
    /* key: momentum update, then the permuted batch laid out group by group (slot (j mod G) n/G + j/G
     * holds permuted position j, as moco.c) */
    if (gpu_momentum_update(g, gpu_resnet_param(m->k), gpu_resnet_param(m->q), m->param_count,
                            m->cfg.key_momentum, err))
        return MOCO_ERR;
    int per_group = n / G;
    for (int j = 0; j < n; j++)
        m->host_slot_source[(j % G) * per_group + j / G] = host_perm[j];
    CUDA_CHECK(cudaMemcpyAsync(m->slot_source, m->host_slot_source, sizeof(int64_t) * n, cudaMemcpyHostToDevice, g->stream),
               err, "uploading the key permutation");
    if (gpu_gather_rows(g, im_k, m->slot_source, n, view * gpu_act_size(g), m->im_k_grouped, err))
        return MOCO_ERR;
    if (gpu_resnet_forward(m->k, m->im_k_grouped, n, h, w, 1, G, err))
        return moco_prefix(err, "key encoder");
    if (gpu_l2norm_forward(g, gpu_resnet_output(m->k), n, d, m->k_slots, m->k_len, err) ||
        gpu_scatter_rows(g, m->k_slots, m->slot_source, n, sizeof(float) * d, m->k_norm, err))
        return MOCO_ERR;
    /* logits: [q.k, q queue^T] / tau, the negatives written beside the positive */
    if (gpu_matmul(g, m->q_norm, m->queue, m->logits + 1, n, K, d, 1, 1.0f / tau, K + 1, err) ||
        gpu_positive_logits(g, m->q_norm, m->k_norm, n, d, tau, m->logits, K + 1, err) ||
        gpu_softmax_cross_entropy(g, m->logits, n, K + 1, NULL, m->d_logits, result, err))
        return MOCO_ERR;
    /* d q = (d l_neg queue + d l_pos k) / tau, then through the normalisation into the encoder */
    CUDA_CHECK(cudaMemcpy2DAsync(m->d_negatives, sizeof(float) * K, m->d_logits + 1, sizeof(float) * (K + 1),
                                 sizeof(float) * K, n, cudaMemcpyDeviceToDevice, g->stream),
               err, "the negatives' gradient");
    if (gpu_matmul(g, m->d_negatives, m->queue, m->d_q, n, d, K, 0, 1.0f / tau, d, err) ||
        gpu_positive_backward(g, m->d_logits, K + 1, m->k_norm, n, d, tau, m->d_q, err) ||
        gpu_l2norm_backward(g, m->q_norm, m->q_len, m->d_q, n, d, m->d_z, err))
        return MOCO_ERR;
    if (gpu_resnet_backward(m->q, m->d_z, err))
        return moco_prefix(err, "query encoder backward");
    /* enqueue the keys (wrapping when K is not a multiple of the batch) */
    return gpu_enqueue(g, m->queue, K, d, m->k_norm, n, m->queue_ptr, err);
}
