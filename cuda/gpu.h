/* gpu.h — the CUDA backend's ops: libcommon/backend.h's, on device memory, plus the fused kernels
 * a MoCo step wants on a GPU (DESIGN: cuDNN, cuBLAS, our own kernels where fusing pays).
 *
 * Precision: activations (the NHWC tensors between layers) are float32 or bf16, chosen when the
 * backend is created. float32 is the parity mode: TF32 is off everywhere, so the CPU backend's
 * results are matched to float rounding. bf16 stores activations in bf16 and accumulates in
 * float32, as PyTorch's autocast does. Parameters, their gradients, batch-norm statistics, the
 * pooled features, the head, the logits and the queue are float32 in both modes, in the CPU
 * layouts (OIHW convolution weights, (out, in) linear weights): the GPU is checked op by op against
 * backend.h (tests/cuda/) and checkpoints need no conversion.
 *
 * Memory: every pointer is a device pointer unless its name starts with host_. Activations are
 * typed void * (their element size is gpu_act_size bytes). Ops are queued on the backend's one
 * stream and return at once; a failed launch or library call is reported at the call with the op
 * and shape, a failure during execution at the next gpu_sync. Nothing here prints or exits.
 *
 * Declared extern "C": the C check programs link it; the tools load it (gpu_api.h, api.cu). */
#ifndef MOCO_CUDA_GPU_H
#define MOCO_CUDA_GPU_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" { /* libcommon's headers are C: their functions keep C linkage in the .cu files too */
#endif

#include "error.h"
#include "gpu_api.h" /* gpu_precision, and the tools' entry points gathered into a table */
#include "moco.h"
#include "optim.h"
#include "resnet.h"

typedef struct gpu gpu;

/* ---- the device, its stream, memory (gpu.cu) ---- */

/* Select device `index` (cuda:N), create the stream and the cuDNN and cuBLAS handles. */
gpu *gpu_create(int index, gpu_precision precision, moco_error *err);
void gpu_destroy(gpu *g);
gpu_precision gpu_get_precision(const gpu *g);
/* Bytes per activation element: 4 (float32) or 2 (bf16). */
size_t gpu_act_size(const gpu *g);
/* "NVIDIA H200 (sm_90, 139.8 GiB, cuDNN 9.14.0), bf16" */
const char *gpu_describe(const gpu *g);
/* Wait for everything queued; reports an error raised while executing. */
int gpu_sync(gpu *g, moco_error *err);

void *gpu_alloc(gpu *g, size_t bytes, moco_error *err);
void gpu_free(gpu *g, void *p);
int gpu_upload(gpu *g, void *dst, const void *host_src, size_t bytes, moco_error *err);
int gpu_download(gpu *g, void *host_dst, const void *src, size_t bytes, moco_error *err);
int gpu_copy(gpu *g, void *dst, const void *src, size_t bytes, moco_error *err);
int gpu_zero(gpu *g, void *dst, size_t bytes, moco_error *err);
/* Activations to and from host float32 (rounded to bf16 on the way in, in bf16 mode). Synchronous. */
int gpu_upload_act(gpu *g, void *dst, const float *host_src, size_t count, moco_error *err);
int gpu_download_act(gpu *g, float *host_dst, const void *src, size_t count, moco_error *err);
/* Page-locked host memory, for copies that overlap compute. */
void *gpu_host_alloc(gpu *g, size_t bytes, moco_error *err);
void gpu_host_free(gpu *g, void *host_p);
/* Peak device memory allocated through gpu_alloc and the libraries' workspaces, in bytes. */
size_t gpu_peak_bytes(const gpu *g);

/* ---- convolution without bias, cuDNN (conv.cu) ----
 * x (N,H,W,Cin) activations, weight (Cout,Cin,K,K) float32, y (N,OH,OW,Cout) activations. The
 * weight is converted on each call into cuDNN's NHWC filter layout in the activation type; its
 * gradient is converted back and written (not accumulated) as float32 OIHW. Algorithms are chosen
 * once per shape (cudnnFind) and cached; one workspace, grown as needed, serves every conv of the
 * backend. Backward uses the shapes of the last forward. In bf16 an input of 3 or 1 channels goes
 * to cuDNN padded to 8 (environment MOCO_CUDA_PAD_CHANNELS=0: not padded, for comparison). */
typedef struct gpu_conv gpu_conv;
gpu_conv *gpu_conv_create(gpu *g, int in_channels, int out_channels, int kernel, int stride, int pad,
                          moco_error *err);
void gpu_conv_destroy(gpu_conv *c);
int gpu_conv_forward(gpu_conv *c, const void *x, int n, int h, int w, const float *weight, void *y,
                     moco_error *err);
/* dx may be NULL (the first layer). */
int gpu_conv_backward(gpu_conv *c, const void *x, const float *weight, const void *dy, void *dx,
                      float *dweight, moco_error *err);

/* ---- batch normalisation, optionally fused with the ReLU after it (norm.cu) ----
 * As backend.h's: training statistics over `groups` consecutive slices of N/groups samples each,
 * mean and biased variance saved per group for the backward pass, running statistics (when not
 * NULL) updated from the first group's as PyTorch does (momentum 0.1, unbiased variance); eps 1e-5.
 * Statistics are accumulated in float32 (double-free: per-block partial sums, then one pass). */
typedef struct gpu_bn gpu_bn;
gpu_bn *gpu_bn_create(gpu *g, int channels, int fuse_relu, moco_error *err);
void gpu_bn_destroy(gpu_bn *bn);
/* shortcut, when not NULL, makes this a residual block's end: y = ReLU(BN(x) + shortcut), the
 * ReLU applied whether or not fused (shortcut may equal y; the sum's ReLU is the caller's to undo
 * in the backward, which then takes the gradient of the sum). y may equal x. */
int gpu_bn_forward_train(gpu_bn *bn, const void *x, int n, int h, int w, int groups, const float *weight,
                         const float *bias, const void *shortcut, void *y, float *running_mean, float *running_var,
                         moco_error *err);
int gpu_bn_forward_eval(gpu_bn *bn, const void *x, int n, int h, int w, const float *weight, const float *bias,
                        const float *running_mean, const float *running_var, const void *shortcut, void *y,
                        moco_error *err);
/* After a training forward: x its input, y its output (the ReLU's mask when fused), dy the gradient
 * of y. dx may equal dy. dweight and dbias are written, summed over the groups. */
int gpu_bn_backward(gpu_bn *bn, const void *x, const void *y, const void *dy, const float *weight, void *dx,
                    float *dweight, float *dbias, moco_error *err);

/* ---- pooling (norm.cu) ---- */
/* Max-pool 3x3, stride 2, pad 1 (ResNet's stem): x (N,H,W,C) -> y (N,OH,OW,C). The backward
 * recomputes each window's first maximum from x and sends dy there (dx written, not accumulated). */
int gpu_maxpool_forward(gpu *g, const void *x, int n, int h, int w, int c, void *y, moco_error *err);
int gpu_maxpool_backward(gpu *g, const void *x, const void *dy, int n, int h, int w, int c, void *dx,
                         moco_error *err);
/* Global average pool: activations x (N,HW,C) -> float32 y (N,C); backward spreads float32 dy / HW
 * into activations dx. */
int gpu_avgpool_forward(gpu *g, const void *x, int n, int hw, int c, float *y, moco_error *err);
int gpu_avgpool_backward(gpu *g, const float *dy, int n, int hw, int c, void *dx, moco_error *err);

/* ---- element-wise on activations (math.cu) ---- */
/* dy = dy where y > 0 else 0, in place. */
int gpu_relu_backward(gpu *g, const void *y, void *dy, size_t count, moco_error *err);
/* y += x */
int gpu_add_inplace(gpu *g, void *y, const void *x, size_t count, moco_error *err);

/* ---- float32 products and the head (math.cu; cuBLAS, TF32 off) ---- */
/* y (N,out) = x (N,in) W^T + b (b may be NULL). */
int gpu_linear_forward(gpu *g, const float *x, int n, int in, int out, const float *weight, const float *bias,
                       float *y, moco_error *err);
/* dW, db (may be NULL), dx (may be NULL) from dy; written, not accumulated. */
int gpu_linear_backward(gpu *g, const float *x, const float *dy, int n, int in, int out, const float *weight,
                        float *dx, float *dweight, float *dbias, moco_error *err);
/* float32 ReLU forward in place, and its backward (dy zeroed where y <= 0). */
int gpu_relu_f32(gpu *g, float *x, size_t count, moco_error *err);
int gpu_relu_backward_f32(gpu *g, const float *y, float *dy, size_t count, moco_error *err);
/* y (M,N) = alpha A (M,K) B (K,N), or B^T when b_transposed (B stored (N,K)); ldy is y's row
 * stride (>= N), so a product can land inside a wider matrix (the logits beside their positive). */
int gpu_matmul(gpu *g, const float *a, const float *b, float *y, int m, int n, int k, int b_transposed, float alpha,
               int ldy, moco_error *err);
/* Rows of x (N,D) over max(|row|, 1e-12); norms (N) kept for the backward. */
int gpu_l2norm_forward(gpu *g, const float *x, int n, int d, float *y, float *norms, moco_error *err);
int gpu_l2norm_backward(gpu *g, const float *y, const float *norms, const float *dy, int n, int d, float *dx,
                        moco_error *err);
/* Mean softmax cross-entropy of logits (N,C) against labels (N, int64; NULL: every label 0, the
 * positive key). dlogits (may be NULL) gets the gradient of the mean. The loss and the counts of
 * rows whose label is among the 1 and 5 largest logits (ties against the label) go to device
 * memory, so a captured step needs no host round trip: result[0] = loss, result[1] = top1,
 * result[2] = top5 (float32). */
int gpu_softmax_cross_entropy(gpu *g, const float *logits, int n, int c, const int64_t *labels, float *dlogits,
                              float *result, moco_error *err);

/* ---- the MoCo step's own kernels (math.cu) ---- */
/* u8 (pixels, C) -> activations ((x / 255 - mean) / std per channel), one pass. */
int gpu_normalise_u8(gpu *g, const uint8_t *x, size_t pixels, int c, const double host_mean[3],
                     const double host_std[3], void *y, moco_error *err);
/* dst row i = src row index[i] (n rows of row_bytes bytes; index on the device). */
int gpu_gather_rows(gpu *g, const void *src, const int64_t *index, int n, size_t row_bytes, void *dst,
                    moco_error *err);
/* dst row index[i] = src row i. */
int gpu_scatter_rows(gpu *g, const void *src, const int64_t *index, int n, size_t row_bytes, void *dst,
                     moco_error *err);
/* logits[i * ld] = q_i . k_i / tau: column 0 of the N rows of (N, K+1) logits, ld = K+1 (the
 * negatives beside them come from gpu_matmul with ldy = K+1). */
int gpu_positive_logits(gpu *g, const float *q, const float *k, int n, int d, float tau, float *logits, int ld,
                        moco_error *err);
/* d_q (N,D) += dlogits[i][0] / tau * k_i: the positive's share of the query gradient. */
int gpu_positive_backward(gpu *g, const float *dlogits, int ld, const float *k, int n, int d, float tau, float *d_q,
                          moco_error *err);
/* theta_k = m theta_k + (1 - m) theta_q over `count` float32 parameters, in one launch. */
int gpu_momentum_update(gpu *g, float *k, const float *q, size_t count, double m, moco_error *err);
/* SGD as PyTorch (and optim.h): d = grad + wd param; buf = momentum buf + d; param -= lr buf; over
 * all parameters in one launch. lr is read from device memory (a captured graph replays with new
 * rates). */
int gpu_sgd_step(gpu *g, float *param, const float *grad, float *buf, size_t count, const float *lr,
                 float momentum, float weight_decay, moco_error *err);
/* Rows [*ptr, *ptr + n) of the (K, D) queue, wrapping around, = keys (n, D); then *ptr = (*ptr + n)
 * mod K. ptr lives on the device, so a captured step enqueues where the last one stopped. */
int gpu_enqueue(gpu *g, float *queue, int k_rows, int d, const float *keys, int n, int64_t *ptr, moco_error *err);

/* ---- a ResNet on the GPU (resnet.cu): resnet.h's network over these ops ----
 * The twin of libcommon/resnet.c, built from a host resnet of the same configuration: its tensor
 * table (torchvision's names, state_dict order) gives the layout of the device's float32 param,
 * grad and buffer arrays, so moving a model either way is one copy per array and the host resnet
 * is the mirror checkpoints read and write. Inputs are activations (N,H,W,C) normalised
 * (gpu_normalise_u8). A trainable net keeps every activation of its last training forward; a
 * forward-only one (the key encoder) rotates four buffers. */
typedef struct gpu_resnet gpu_resnet;
gpu_resnet *gpu_resnet_create(gpu *g, const resnet *host, int trainable, moco_error *err);
void gpu_resnet_destroy(gpu_resnet *net);
/* Device arrays in the host's layout (grad NULL unless trainable), and the last forward's results:
 * output (N, out_dim) float32, or the pooled features (N, F) for a net without a head. */
float *gpu_resnet_param(gpu_resnet *net);
float *gpu_resnet_grad(gpu_resnet *net);
float *gpu_resnet_buffer(gpu_resnet *net);
const float *gpu_resnet_output(const gpu_resnet *net);
const float *gpu_resnet_pooled(const gpu_resnet *net);
/* Parameters and running statistics from the host net, or back to it (with the gradients when
 * trainable, and num_batches_tracked). Synchronous. */
int gpu_resnet_upload(gpu_resnet *net, const resnet *host, moco_error *err);
int gpu_resnet_download(gpu_resnet *net, resnet *host, moco_error *err);
/* Training forwards replayed from a captured graph, which the host did not see: added to
 * num_batches_tracked. */
void gpu_resnet_count_forwards(gpu_resnet *net, int64_t count);
/* A forward-only net's activations (three buffers of its largest one) kept in a trainable net's
 * backward scratch (three of the same), instead of memory of their own: for a net whose forwards
 * never run between the lender's forward and the end of its backward, as MoCo's key encoder runs
 * between the query's forward and backward. Used when the lender has planned the same shapes or
 * larger before; a lender that plans again makes the net plan again too. */
void gpu_resnet_borrow_scratch(gpu_resnet *net, gpu_resnet *lender);
/* As resnet_forward and resnet_backward (resnet.h). */
int gpu_resnet_forward(gpu_resnet *net, const void *x, int n, int h, int w, int train, int bn_groups, moco_error *err);
int gpu_resnet_backward(gpu_resnet *net, const float *d_output, moco_error *err);

/* ---- ranks on GPUs (ranks.cu): NCCL collectives on the backend's stream ----
 * The communicator's unique id is made by rank 0 (gpu_ranks_id) and sent to the others over MPI
 * (dist.h) before every rank joins. Collectives are queued on the stream like any op; gpu_ranks_wait
 * waits for them with a deadline, and a rank that died or hangs makes the others abort the
 * communicator and fail instead of waiting forever. */
typedef struct gpu_ranks gpu_ranks;
int gpu_ranks_id(unsigned char id[GPU_RANKS_ID_BYTES], moco_error *err);
gpu_ranks *gpu_ranks_join(gpu *g, const unsigned char id[GPU_RANKS_ID_BYTES], int rank, int ranks, double timeout,
                          moco_error *err);
/* ncclCommDestroy, or ncclCommAbort after a failure. */
void gpu_ranks_leave(gpu_ranks *r);
int gpu_ranks_rank(const gpu_ranks *r);
int gpu_ranks_size(const gpu_ranks *r);
/* In place: the mean (the gradients) or the sum (the loss and counts) of count floats over the ranks. */
int gpu_ranks_mean(gpu_ranks *r, float *data, size_t count, moco_error *err);
int gpu_ranks_sum(gpu_ranks *r, float *data, size_t count, moco_error *err);
/* Every rank's `bytes` bytes into recv, rank 0's first. */
int gpu_ranks_allgather(gpu_ranks *r, const void *send, size_t bytes, void *recv, moco_error *err);
/* Wait for everything queued on the stream, collectives included, at most the timeout. */
int gpu_ranks_wait(gpu_ranks *r, moco_error *err);

/* ---- the MoCo step on the GPU (moco.cu): moco.h's step over these ops, one process ----
 * Built from a host moco (configuration, and the starting encoders and queue); the host moco is
 * the mirror for checkpoints (gpu_moco_download). The optimiser step is the caller's, on
 * gpu_resnet_param/grad of gpu_moco_query. */
typedef struct gpu_moco gpu_moco;
gpu_moco *gpu_moco_create(gpu *g, const moco *host, moco_error *err);
void gpu_moco_destroy(gpu_moco *m);
gpu_resnet *gpu_moco_query(gpu_moco *m);
gpu_resnet *gpu_moco_key(gpu_moco *m);
/* Encoders, queue and queue pointer to the GPU, or back to the host moco. Synchronous. */
int gpu_moco_upload(gpu_moco *m, const moco *host, moco_error *err);
int gpu_moco_download(gpu_moco *m, moco *host, moco_error *err);
/* As moco_step: im_q and im_k are this rank's activations (n,H,W,C) on the device, host_perm the
 * step's permutation of all ranks' R n pairs (moco_permutation); ranks NULL in one process, else
 * the key images and keys are all-gathered as moco.h describes. result (device, 3 floats): this
 * rank's loss, top1, top5. The logits (n, K+1) stay readable through gpu_moco_logits until the next
 * step. The gradients are this rank's: averaging them is the caller's (gpu_ranks_mean). */
int gpu_moco_step(gpu_moco *m, const void *im_q, const void *im_k, int n, int h, int w, const int64_t *host_perm,
                  gpu_ranks *ranks, float *result, moco_error *err);
/* gpu_moco_step in two halves, for a step captured once and replayed (train.cu): stage uploads the
 * step's row indices (host work and a copy, outside the graph); run queues the device work, which
 * reads them from the same place every time. */
int gpu_moco_stage(gpu_moco *m, int n, int h, int w, const int64_t *host_perm, gpu_ranks *ranks, moco_error *err);
int gpu_moco_run(gpu_moco *m, const void *im_q, const void *im_k, int n, int h, int w, gpu_ranks *ranks, float *result,
                 moco_error *err);
/* Forwards the host did not see (a replayed step: 1) or saw for nothing (a failed capture: -1),
 * for num_batches_tracked. */
void gpu_moco_count_forwards(gpu_moco *m, int64_t count);
const float *gpu_moco_logits(const gpu_moco *m);

/* ---- a training run's device side (train.cu): what moco-pretrain --device cuda calls ----
 * Holds the GPU MoCo, the SGD momentum buffers and page-locked staging for the u8 views: each step
 * copies the raw views of a batch (batcher.h's raw mode) into staging, uploads them, normalises on
 * the device, runs the MoCo and SGD steps and reads back the loss and accuracy counts. */
/* host and opt: the starting state (fresh or loaded from a checkpoint), uploaded now. */
gpu_trainer *gpu_trainer_create(int device, gpu_precision precision, const moco *host, const sgd *opt, int batch,
                                int size, int channels, const double mean[3], const double std[3], moco_error *err);
/* From the second step on, each step's device work is one CUDA graph, captured once and replayed
 * (on by default); a capture that fails leaves the trainer running without, and says so in
 * gpu_trainer_describe. */
void gpu_trainer_use_graph(gpu_trainer *t, int on);
int gpu_trainer_graph_failed(const gpu_trainer *t);
/* Make the trainer one of `ranks` data-parallel ranks (NCCL, id from rank 0 through MPI); its steps
 * then average the gradients and sum the figures over the ranks. */
int gpu_trainer_join(gpu_trainer *t, const unsigned char id[GPU_RANKS_ID_BYTES], int rank, int ranks, double timeout,
                     moco_error *err);
void gpu_trainer_destroy(gpu_trainer *t);
const char *gpu_trainer_describe(const gpu_trainer *t);
/* One step on n pairs of u8 views (n,S,S,C) each, with the step's permutation (of all ranks' pairs)
 * and learning rate; result: the sums over all ranks (loss summed: divide by the ranks). Views in
 * page-locked memory go straight to the device; others through the trainer's staging buffer. */
int gpu_trainer_step(gpu_trainer *t, const uint8_t *host_q, const uint8_t *host_k, int n, const int64_t *host_perm,
                     double lr, moco_result *result, moco_error *err);
/* The views of the step after the next one (page-locked, as the batcher's: others are ignored),
 * to copy to the device during the next step on a stream of their own: that step's compute then
 * hides the copy, and the step given these same pointers waits for it instead of copying. The
 * memory must stay as it is until that step. */
void gpu_trainer_upload_next(gpu_trainer *t, const uint8_t *host_q, const uint8_t *host_k, int n);
/* The device state into the host moco and optimiser (for a checkpoint). */
int gpu_trainer_download(gpu_trainer *t, moco *host, sgd *opt, moco_error *err);
/* Page-locked host memory (NULL when refused): views there are copied without staging. Free it
 * before destroying the trainer. */
void *gpu_trainer_host_alloc(void *trainer, size_t bytes);
void gpu_trainer_host_free(void *trainer, void *p);
/* Peak device memory of the run so far, in bytes (gpu_peak_bytes). */
size_t gpu_trainer_peak_bytes(const gpu_trainer *t);

/* ---- frozen features on the GPU (train.cu): what moco-extract --device cuda calls ----
 * A forward-only copy of the host net in evaluation mode; each call uploads a batch of u8 views,
 * normalises them on the device and brings the pooled features (n, F) back as float32. */
gpu_extractor *gpu_extractor_create(int device, gpu_precision precision, const resnet *host, int batch, int size,
                                    int channels, const double mean[3], const double std[3], moco_error *err);
void gpu_extractor_destroy(gpu_extractor *x);
const char *gpu_extractor_describe(const gpu_extractor *x);
int gpu_extractor_run(gpu_extractor *x, const uint8_t *host_views, int n, float *host_features, moco_error *err);

/* ---- the linear classifier's SGD steps on the GPU (train.cu): moco-linear --device cuda ----
 * A device copy of the classifier ([weight | bias], classifier.h's layout) and its momentum
 * buffers; each step uploads a batch of float32 features and their labels and runs forward, the
 * cross-entropy, backward and SGD as classifier_train_step and sgd_step do, in float32 with TF32
 * off. pull brings the weights back. l is a gpu_linear (void *: linear_eval.h's linear_device). */
gpu_linear *gpu_linear_create(int device, const classifier *c, double momentum, double weight_decay, int batch,
                              moco_error *err);
int gpu_linear_step(void *l, const float *x, const int64_t *labels, int n, double lr, double *loss, int *top1,
                    int *top5, moco_error *err);
int gpu_linear_pull(void *l, classifier *c, moco_error *err);
const char *gpu_linear_describe(const gpu_linear *l);
void gpu_linear_destroy(gpu_linear *l);

#ifdef __cplusplus
}
#endif

#endif
