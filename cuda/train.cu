/* train.cu — the device side of the tools (see gpu.h): for moco-pretrain --device cuda, staging,
 * normalisation, the MoCo step and SGD on the GPU, with ranks (ranks.cu) the gradients averaged and
 * the figures summed before the SGD step; for moco-extract --device cuda, frozen features; for
 * moco-linear --device cuda, the classifier's SGD steps.
 *
 * A step's device work has fixed addresses once the first step has sized every buffer, chosen every
 * algorithm and grown every workspace: so from the second step on it is captured once as a CUDA
 * graph and replayed, a few hundred launches becoming one. What changes per step comes in by copies
 * queued before the replay, outside the graph: the views, the rate, the permutation's rows. The
 * views of the following step, when the caller has them already (gpu_trainer_upload_next), go up
 * during this one on a copy stream into a second buffer, and the next step starts with a
 * device-to-device copy (77 MB: about 0.05 ms on an H200, against 1.5 ms across PCIe). */
#include "gpu_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct gpu_trainer {
    gpu *g;
    gpu_moco *m;
    gpu_ranks *ranks; /* NULL: one process */
    size_t param_count, view;
    int batch, size;
    double mean[3], std[3]; /* as given: the table is built from them as batcher.c builds its own */
    float momentum_factor, weight_decay; /* the SGD settings of the host optimiser */
    uint8_t *staging;     /* page-locked: both views of a batch */
    uint8_t *raw;         /* device: the same bytes */
    /* the views uploaded ahead: `ahead` holds the batch at (ahead_q, ahead_k, ahead_n) once the
     * copies stream reaches ahead_ready; ahead_free is recorded where the step has read it */
    cudaStream_t copies;
    cudaEvent_t ahead_ready, ahead_free;
    uint8_t *ahead;
    const uint8_t *ahead_q, *ahead_k, *next_q, *next_k;
    int ahead_n, next_n;
    void *images;         /* device activations: query views, then key views */
    float *momentum, *lr, *result;
    float *host_lr;       /* page-locked: the rate of the next step */
    int use_graph, graph_failed, graph_n;
    int64_t steps;        /* steps run, the first one eagerly */
    cudaGraphExec_t graph; /* the device work of a step of graph_n pairs, once captured */
    char description[320];
    moco_error graph_error; /* why the capture failed */
};

void gpu_trainer_destroy(gpu_trainer *t)
{
    if (!t)
        return;
    if (t->g) {
        if (t->copies) { /* a copy ahead may still be reading the caller's memory */
            cudaStreamSynchronize(t->copies);
            cudaStreamDestroy(t->copies);
        }
        if (t->ahead_ready)
            cudaEventDestroy(t->ahead_ready);
        if (t->ahead_free)
            cudaEventDestroy(t->ahead_free);
        if (t->graph)
            cudaGraphExecDestroy(t->graph);
        gpu_ranks_leave(t->ranks);
        gpu_moco_destroy(t->m);
        gpu_host_free(t->g, t->staging);
        gpu_host_free(t->g, t->host_lr);
        void *bufs[] = {t->raw, t->ahead, t->images, t->momentum, t->lr, t->result};
        for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
            gpu_free(t->g, bufs[i]);
        gpu_destroy(t->g);
    }
    free(t);
}

/* Page-locked (cudaMallocHost) memory, which an asynchronous copy reads directly. */
static bool is_pinned(const void *p)
{
    cudaPointerAttributes a;
    if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
        cudaGetLastError(); /* an unknown pointer is not an error to keep */
        return false;
    }
    return a.type == cudaMemoryTypeHost;
}

/* The stream the views of the step after next go up on, and its two events. */
static int copy_stream(gpu_trainer *t, moco_error *err)
{
    CUDA_CHECK(cudaStreamCreateWithFlags(&t->copies, cudaStreamNonBlocking), err, "creating the copy stream");
    CUDA_CHECK(cudaEventCreateWithFlags(&t->ahead_ready, cudaEventDisableTiming), err, "creating the copy stream");
    CUDA_CHECK(cudaEventCreateWithFlags(&t->ahead_free, cudaEventDisableTiming), err, "creating the copy stream");
    return MOCO_OK;
}

gpu_trainer *gpu_trainer_create(int device, gpu_precision precision, const moco *host, const sgd *opt, int batch,
                                int size, int channels, const double mean[3], const double std[3], moco_error *err)
{
    gpu_trainer *t = (gpu_trainer *)calloc(1, sizeof *t);
    if (!t) {
        moco_fail(err, "out of memory");
        return NULL;
    }
    t->batch = batch, t->size = size, t->param_count = host->q->param_count;
    t->momentum_factor = (float)opt->momentum, t->weight_decay = (float)opt->weight_decay;
    t->use_graph = 1;
    t->view = (size_t)size * size * channels;
    for (int c = 0; c < 3; c++)
        t->mean[c] = mean[c], t->std[c] = std[c];
    size_t raw_bytes = 2 * (size_t)batch * t->view;
    int ok = (t->g = gpu_create(device, precision, err)) && (t->m = gpu_moco_create(t->g, host, err)) &&
             (t->staging = (uint8_t *)gpu_host_alloc(t->g, raw_bytes, err)) &&
             (t->raw = (uint8_t *)gpu_alloc(t->g, raw_bytes, err)) &&
             (t->ahead = (uint8_t *)gpu_alloc(t->g, raw_bytes, err)) && !copy_stream(t, err) &&
             (t->images = gpu_alloc(t->g, raw_bytes * gpu_act_size(t->g), err)) &&
             (t->momentum = (float *)gpu_alloc(t->g, sizeof(float) * t->param_count, err)) &&
             (t->lr = (float *)gpu_alloc(t->g, sizeof(float), err)) && (t->result = (float *)gpu_alloc(t->g, 3 * sizeof(float), err)) &&
             (t->host_lr = (float *)gpu_host_alloc(t->g, sizeof(float), err)) &&
             !gpu_upload(t->g, t->momentum, opt->buf, sizeof(float) * t->param_count, err);
    if (!ok) { /* gpu_create's message names the device */
        gpu_trainer_destroy(t);
        return NULL;
    }
    return t;
}

void gpu_trainer_upload_next(gpu_trainer *t, const uint8_t *host_q, const uint8_t *host_k, int n)
{
    int ok = n > 0 && n <= t->batch && is_pinned(host_q) && is_pinned(host_k);
    t->next_q = ok ? host_q : NULL, t->next_k = ok ? host_k : NULL, t->next_n = ok ? n : 0;
}

int gpu_trainer_join(gpu_trainer *t, const unsigned char id[GPU_RANKS_ID_BYTES], int rank, int ranks, double timeout,
                     moco_error *err)
{
    if (ranks > 1 && !(t->ranks = gpu_ranks_join(t->g, id, rank, ranks, timeout, err)))
        return MOCO_ERR;
    return MOCO_OK;
}

void gpu_trainer_use_graph(gpu_trainer *t, int on) { t->use_graph = on; }
int gpu_trainer_graph_failed(const gpu_trainer *t) { return t->graph_failed; }

const char *gpu_trainer_describe(const gpu_trainer *t)
{
    gpu_trainer *w = (gpu_trainer *)t; /* the text is rebuilt on each call */
    snprintf(w->description, sizeof w->description, "%s, %s%s%s", gpu_describe(t->g),
             t->graph_failed ? "CUDA graph capture failed, steps go op by op"
             : t->use_graph  ? "each step one CUDA graph"
                             : "CUDA graphs off",
             t->graph_failed ? ": " : "", t->graph_failed ? t->graph_error.msg : "");
    return w->description;
}

void *gpu_trainer_host_alloc(void *trainer, size_t bytes)
{
    moco_error err;
    return gpu_host_alloc(((gpu_trainer *)trainer)->g, bytes, &err);
}

void gpu_trainer_host_free(void *trainer, void *p) { gpu_host_free(((gpu_trainer *)trainer)->g, p); }

size_t gpu_trainer_peak_bytes(const gpu_trainer *t) { return gpu_peak_bytes(t->g); }

/* A step's device work, from the uploaded views to the SGD step: what a graph captures. */
static int device_work(gpu_trainer *t, int n, moco_error *err)
{
    gpu *g = t->g;
    gpu_resnet *q = gpu_moco_query(t->m);
    size_t bytes = (size_t)n * t->view;
    char *im_k = (char *)t->images + bytes * gpu_act_size(g);
    int channels = (int)(t->view / ((size_t)t->size * t->size));
    if (gpu_normalise_u8(g, t->raw, 2 * (size_t)n * t->size * t->size, channels, t->mean, t->std, t->images, err) ||
        gpu_moco_run(t->m, t->images, im_k, n, t->size, t->size, t->ranks, t->result, err))
        return MOCO_ERR;
    if (t->ranks && (gpu_ranks_mean(t->ranks, gpu_resnet_grad(q), t->param_count, err) ||
                     gpu_ranks_sum(t->ranks, t->result, 3, err)))
        return MOCO_ERR;
    return gpu_sgd_step(g, gpu_resnet_param(q), gpu_resnet_grad(q), t->momentum, t->param_count, t->lr,
                        t->momentum_factor, t->weight_decay, err);
}

/* Capture device_work as a graph; MOCO_ERR (and the capture abandoned, nothing run) when a call in
 * it cannot be captured. */
static int capture(gpu_trainer *t, int n, moco_error *err)
{
    gpu *g = t->g;
    CUDA_CHECK(cudaStreamBeginCapture(g->stream, cudaStreamCaptureModeThreadLocal), err, "capturing a step");
    int rc = device_work(t, n, err);
    cudaGraph_t graph = NULL;
    cudaError_t end = cudaStreamEndCapture(g->stream, &graph);
    if (!rc && end != cudaSuccess)
        rc = gpu_fail_cuda(err, end, "cudaStreamEndCapture", "capturing a step");
    if (!rc) {
        cudaError_t made = cudaGraphInstantiate(&t->graph, graph, 0);
        if (made != cudaSuccess)
            rc = gpu_fail_cuda(err, made, "cudaGraphInstantiate", "capturing a step");
    }
    if (graph)
        cudaGraphDestroy(graph);
    cudaGetLastError(); /* a failed capture leaves its error behind: it is reported through err */
    t->graph_n = rc ? 0 : n;
    return rc;
}

int gpu_trainer_step(gpu_trainer *t, const uint8_t *host_q, const uint8_t *host_k, int n, const int64_t *host_perm,
                     double lr, moco_result *result, moco_error *err)
{
    gpu *g = t->g;
    if (n > t->batch)
        return moco_fail(err, "a batch of %d pairs, more than the %d planned", n, t->batch);
    /* what changes per step, queued before the work (and outside any graph) */
    size_t bytes = (size_t)n * t->view;
    if (t->ahead_n == n && t->ahead_q == host_q && t->ahead_k == host_k) { /* uploaded during the last step */
        CUDA_CHECK(cudaStreamWaitEvent(g->stream, t->ahead_ready, 0), err, "waiting for the views copied ahead");
        CUDA_CHECK(cudaMemcpyAsync(t->raw, t->ahead, 2 * bytes, cudaMemcpyDeviceToDevice, g->stream), err,
                   "moving the views copied ahead");
    } else if (is_pinned(host_q) && is_pinned(host_k)) { /* the batcher's own page-locked batches */
        CUDA_CHECK(cudaMemcpyAsync(t->raw, host_q, bytes, cudaMemcpyHostToDevice, g->stream), err, "uploading the views");
        CUDA_CHECK(cudaMemcpyAsync(t->raw + bytes, host_k, bytes, cudaMemcpyHostToDevice, g->stream), err,
                   "uploading the views");
    } else {
        memcpy(t->staging, host_q, bytes);
        memcpy(t->staging + bytes, host_k, bytes);
        CUDA_CHECK(cudaMemcpyAsync(t->raw, t->staging, 2 * bytes, cudaMemcpyHostToDevice, g->stream), err,
                   "uploading the views");
    }
    t->ahead_n = 0;
    if (t->next_n) { /* the next step's views, on the copy stream once this step has read `ahead` */
        size_t next = (size_t)t->next_n * t->view;
        CUDA_CHECK(cudaEventRecord(t->ahead_free, g->stream), err, "copying views ahead");
        CUDA_CHECK(cudaStreamWaitEvent(t->copies, t->ahead_free, 0), err, "copying views ahead");
        CUDA_CHECK(cudaMemcpyAsync(t->ahead, t->next_q, next, cudaMemcpyHostToDevice, t->copies), err,
                   "copying views ahead");
        CUDA_CHECK(cudaMemcpyAsync(t->ahead + next, t->next_k, next, cudaMemcpyHostToDevice, t->copies), err,
                   "copying views ahead");
        CUDA_CHECK(cudaEventRecord(t->ahead_ready, t->copies), err, "copying views ahead");
        t->ahead_q = t->next_q, t->ahead_k = t->next_k, t->ahead_n = t->next_n;
        t->next_n = 0;
    }
    *t->host_lr = (float)lr;
    CUDA_CHECK(cudaMemcpyAsync(t->lr, t->host_lr, sizeof(float), cudaMemcpyHostToDevice, g->stream), err,
               "uploading the rate");
    if (gpu_moco_stage(t->m, n, t->size, t->size, host_perm, t->ranks, err))
        return MOCO_ERR;
    /* the device work: replayed, captured (second step), or queued op by op */
    if (t->graph && t->graph_n != n) { /* another batch size (never in training): capture again */
        cudaGraphExecDestroy(t->graph);
        t->graph = NULL;
    }
    if (!t->graph && t->use_graph && !t->graph_failed && t->steps > 0) {
        if (capture(t, n, &t->graph_error)) {
            t->graph_failed = 1;
            gpu_moco_count_forwards(t->m, -1); /* the captured forwards did not run */
        } else {
            gpu_moco_count_forwards(t->m, -1); /* counted at capture, counted again below */
        }
    }
    if (t->graph && t->use_graph) {
        CUDA_CHECK(cudaGraphLaunch(t->graph, g->stream), err, "replaying the step");
        gpu_moco_count_forwards(t->m, 1);
    } else if (device_work(t, n, err)) {
        return MOCO_ERR;
    }
    t->steps++;
    if (t->ranks && gpu_ranks_wait(t->ranks, err)) /* with a deadline: a dead rank must not hang us */
        return MOCO_ERR;
    float figures[3];
    if (gpu_download(g, figures, t->result, sizeof figures, err)) /* waits for the step */
        return MOCO_ERR;
    result->loss = figures[0], result->top1 = (int)figures[1], result->top5 = (int)figures[2];
    return MOCO_OK;
}

int gpu_trainer_download(gpu_trainer *t, moco *host, sgd *opt, moco_error *err)
{
    if (gpu_moco_download(t->m, host, err) ||
        gpu_download(t->g, opt->buf, t->momentum, sizeof(float) * t->param_count, err))
        return MOCO_ERR;
    return MOCO_OK;
}

/* ---- frozen features ---- */

struct gpu_extractor {
    gpu *g;
    gpu_resnet *net;
    int batch, size, channels, feature_dim;
    double mean[3], std[3];
    uint8_t *staging, *raw; /* page-locked and device copies of a batch of u8 views */
    void *images;
};

void gpu_extractor_destroy(gpu_extractor *x)
{
    if (!x)
        return;
    if (x->g) {
        gpu_resnet_destroy(x->net);
        gpu_host_free(x->g, x->staging);
        gpu_free(x->g, x->raw);
        gpu_free(x->g, x->images);
        gpu_destroy(x->g);
    }
    free(x);
}

gpu_extractor *gpu_extractor_create(int device, gpu_precision precision, const resnet *host, int batch, int size,
                                    int channels, const double mean[3], const double std[3], moco_error *err)
{
    gpu_extractor *x = (gpu_extractor *)calloc(1, sizeof *x);
    if (!x) {
        moco_fail(err, "out of memory");
        return NULL;
    }
    x->batch = batch, x->size = size, x->channels = channels, x->feature_dim = host->feature_dim;
    for (int c = 0; c < 3; c++)
        x->mean[c] = mean[c], x->std[c] = std[c];
    size_t bytes = (size_t)batch * size * size * channels;
    int ok = (x->g = gpu_create(device, precision, err)) && (x->net = gpu_resnet_create(x->g, host, 0, err)) &&
             (x->staging = (uint8_t *)gpu_host_alloc(x->g, bytes, err)) && (x->raw = (uint8_t *)gpu_alloc(x->g, bytes, err)) &&
             (x->images = gpu_alloc(x->g, bytes * gpu_act_size(x->g), err));
    if (!ok) {
        gpu_extractor_destroy(x);
        return NULL;
    }
    return x;
}

const char *gpu_extractor_describe(const gpu_extractor *x) { return gpu_describe(x->g); }

int gpu_extractor_run(gpu_extractor *x, const uint8_t *host_views, int n, float *host_features, moco_error *err)
{
    gpu *g = x->g;
    if (n < 1 || n > x->batch)
        return moco_fail(err, "a batch of %d views; between 1 and %d planned", n, x->batch);
    size_t pixels = (size_t)n * x->size * x->size, bytes = pixels * x->channels;
    memcpy(x->staging, host_views, bytes);
    CUDA_CHECK(cudaMemcpyAsync(x->raw, x->staging, bytes, cudaMemcpyHostToDevice, g->stream), err, "uploading the views");
    if (gpu_normalise_u8(g, x->raw, pixels, x->channels, x->mean, x->std, x->images, err) ||
        gpu_resnet_forward(x->net, x->images, n, x->size, x->size, 0, 1, err))
        return MOCO_ERR;
    return gpu_download(g, host_features, gpu_resnet_pooled(x->net), sizeof(float) * n * x->feature_dim, err);
}

/* ---- the linear classifier ---- */

struct gpu_linear {
    gpu *g;
    int in, classes, batch;
    size_t param_count;
    float momentum, weight_decay;
    float *param, *grad, *buf;   /* [weight | bias], their gradients, the momentum buffers */
    float *x, *logits, *d_logits, *lr, *result;
    int64_t *labels;
    float *host_lr;
};

void gpu_linear_destroy(gpu_linear *l)
{
    if (!l)
        return;
    if (l->g) {
        void *bufs[] = {l->param, l->grad, l->buf, l->x, l->logits, l->d_logits, l->lr, l->result, l->labels};
        for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
            gpu_free(l->g, bufs[i]);
        gpu_host_free(l->g, l->host_lr);
        gpu_destroy(l->g);
    }
    free(l);
}

gpu_linear *gpu_linear_create(int device, const classifier *c, double momentum, double weight_decay, int batch,
                              moco_error *err)
{
    gpu_linear *l = (gpu_linear *)calloc(1, sizeof *l);
    if (!l) {
        moco_fail(err, "out of memory");
        return NULL;
    }
    l->in = c->in, l->classes = c->classes, l->batch = batch, l->param_count = c->param_count;
    l->momentum = (float)momentum, l->weight_decay = (float)weight_decay;
    size_t f = sizeof(float), p = l->param_count, rows = (size_t)batch;
    int ok = (l->g = gpu_create(device, GPU_F32, err)) && (l->param = (float *)gpu_alloc(l->g, f * p, err)) &&
             (l->grad = (float *)gpu_alloc(l->g, f * p, err)) && (l->buf = (float *)gpu_alloc(l->g, f * p, err)) &&
             (l->x = (float *)gpu_alloc(l->g, f * rows * l->in, err)) &&
             (l->logits = (float *)gpu_alloc(l->g, f * rows * l->classes, err)) &&
             (l->d_logits = (float *)gpu_alloc(l->g, f * rows * l->classes, err)) &&
             (l->lr = (float *)gpu_alloc(l->g, f, err)) && (l->result = (float *)gpu_alloc(l->g, 3 * f, err)) &&
             (l->labels = (int64_t *)gpu_alloc(l->g, sizeof(int64_t) * rows, err)) &&
             (l->host_lr = (float *)gpu_host_alloc(l->g, f, err)) && !gpu_upload(l->g, l->param, c->param, f * p, err) &&
             !gpu_zero(l->g, l->buf, f * p, err);
    if (!ok) {
        gpu_linear_destroy(l);
        return NULL;
    }
    return l;
}

const char *gpu_linear_describe(const gpu_linear *l) { return gpu_describe(l->g); }

int gpu_linear_step(void *lv, const float *x, const int64_t *labels, int n, double lr, double *loss, int *top1,
                    int *top5, moco_error *err)
{
    gpu_linear *l = (gpu_linear *)lv;
    gpu *g = l->g;
    if (n < 1 || n > l->batch)
        return moco_fail(err, "a batch of %d samples; between 1 and %d planned", n, l->batch);
    int in = l->in, k = l->classes;
    float *weight = l->param, *bias = l->param + (size_t)k * in, *dweight = l->grad, *dbias = l->grad + (size_t)k * in;
    *l->host_lr = (float)lr;
    if (gpu_upload(g, l->x, x, sizeof(float) * n * in, err) || gpu_upload(g, l->labels, labels, sizeof(int64_t) * n, err))
        return MOCO_ERR;
    CUDA_CHECK(cudaMemcpyAsync(l->lr, l->host_lr, sizeof(float), cudaMemcpyHostToDevice, g->stream), err,
               "uploading the rate");
    if (gpu_linear_forward(g, l->x, n, in, k, weight, bias, l->logits, err) ||
        gpu_softmax_cross_entropy(g, l->logits, n, k, l->labels, l->d_logits, l->result, err) ||
        gpu_linear_backward(g, l->x, l->d_logits, n, in, k, weight, NULL, dweight, dbias, err) ||
        gpu_sgd_step(g, l->param, l->grad, l->buf, l->param_count, l->lr, l->momentum, l->weight_decay, err))
        return MOCO_ERR;
    float figures[3];
    if (gpu_download(g, figures, l->result, sizeof figures, err))
        return MOCO_ERR;
    *loss = figures[0], *top1 = (int)figures[1], *top5 = (int)figures[2];
    return MOCO_OK;
}

int gpu_linear_pull(void *lv, classifier *c, moco_error *err)
{
    gpu_linear *l = (gpu_linear *)lv;
    if (c->param_count != l->param_count)
        return moco_fail(err, "GPU classifier: the host classifier has another shape");
    return gpu_download(l->g, c->param, l->param, sizeof(float) * l->param_count, err);
}
