/* backend.h — the compute ops a ResNet and the MoCo step are made of, on the CPU (backend.c).
 *
 * The CPU backend is the reference every other backend is checked against: oneDNN for convolution,
 * batch norm and max-pooling (primitives built once per shape and reused), OpenBLAS for matrix
 * products, OpenMP loops for the small element-wise ops. Float32 throughout.
 *
 * Layouts: activations are NHWC (channels last, the layout of the u8 views moco-augment writes);
 * convolution weights are OIHW, exactly as torchvision stores them, and are reordered into the
 * primitive's preferred layout on each call (cheap next to the convolution itself); linear weights
 * are (out, in). Every op object caches the primitives of the last shape it ran at and rebuilds them
 * when the batch or image size changes. Op objects own their primitives and internal buffers
 * (reordered weights, workspaces), never the caller's tensors.
 *
 * Backward functions overwrite their outputs (dx, dweight, ...); the caller sums where a tensor
 * feeds two places (the residual shortcut). Backward ops use the shapes of the last forward call. */
#ifndef MOCO_BACKEND_H
#define MOCO_BACKEND_H
#include <stddef.h>
#include <stdint.h>
#include "error.h"

typedef struct backend backend;

/* threads <= 0: all cores. Sets OpenMP's and OpenBLAS's thread counts. */
backend *backend_create(int threads, moco_error *err);
void backend_destroy(backend *b);
int backend_threads(const backend *b);
/* 3x3 stride-1 convolutions with channels in multiples of 16 by Winograd's F(4x4, 3x3) where
 * oneDNN offers it (on by default: about 2.2x faster than direct on ResNet layers, relative error
 * ~1e-6); off: direct convolution only. */
void backend_set_winograd(backend *b, int on);

/* ---- convolution without bias (all ResNet convolutions) ----
 * x (N,H,W,Cin), weight (Cout,Cin,K,K), y (N,OH,OW,Cout) with OH = (H + 2*pad - K)/stride + 1. */
typedef struct conv2d conv2d;
conv2d *conv2d_create(backend *b, int in_channels, int out_channels, int kernel, int stride, int pad,
                      moco_error *err);
void conv2d_destroy(conv2d *c);
int conv2d_out_size(int in, int kernel, int stride, int pad);
int conv2d_forward(conv2d *c, const float *x, int n, int h, int w, const float *weight, float *y,
                   moco_error *err);
/* "winograd" or "direct": what the last forward ran ("none" before any). */
const char *conv2d_algorithm(const conv2d *c);
/* dx may be NULL (the first layer needs no input gradient). */
int conv2d_backward(conv2d *c, const float *x, const float *weight, const float *dy, float *dx,
                    float *dweight, moco_error *err);

/* ---- batch normalisation, optionally fused with the ReLU that follows it ----
 * Training mode normalises with the batch's own statistics, split into `groups` consecutive slices of
 * N/groups samples each (groups = 1 is plain BN; more emulate shuffle BN's or data-parallel ranks'
 * per-device batches), and saves mean and biased variance (groups*C values each) for the backward
 * pass. When running_mean is not NULL the running statistics are updated as PyTorch does (momentum
 * 0.1, unbiased variance) from the first group's statistics, as rank 0's are under DDP. Evaluation
 * mode normalises with the running statistics. eps = 1e-5. y may equal x. */
typedef struct batchnorm batchnorm;
batchnorm *batchnorm_create(backend *b, int channels, int fuse_relu, moco_error *err);
void batchnorm_destroy(batchnorm *bn);
int batchnorm_forward_train(batchnorm *bn, const float *x, int n, int h, int w, int groups,
                            const float *weight, const float *bias, float *y, float *running_mean,
                            float *running_var, moco_error *err);
int batchnorm_forward_eval(batchnorm *bn, const float *x, int n, int h, int w, const float *weight,
                           const float *bias, const float *running_mean, const float *running_var,
                           float *y, moco_error *err);
/* After a training forward: x is that forward's input, dy the gradient of its output (after the fused
 * ReLU, when fused); oneDNN wants the shift (bias) too. dx may equal dy. Each group is differentiated
 * with its own statistics; dweight and dbias are summed over the groups. */
int batchnorm_backward(batchnorm *bn, const float *x, const float *dy, const float *weight, const float *bias,
                       float *dx, float *dweight, float *dbias, moco_error *err);

/* ---- max-pooling, 3x3 stride 2 pad 1 as ResNet's stem (padding never wins) ---- */
typedef struct maxpool maxpool;
maxpool *maxpool_create(backend *b, int channels, int kernel, int stride, int pad, moco_error *err);
void maxpool_destroy(maxpool *p);
/* training != 0 keeps the argmax workspace for maxpool_backward. */
int maxpool_forward(maxpool *p, const float *x, int n, int h, int w, float *y, int training,
                    moco_error *err);
int maxpool_backward(maxpool *p, const float *dy, float *dx, moco_error *err);

/* ---- element-wise and small ops (OpenMP loops) ---- */
/* y = max(x, 0) in place; dx = dy where y > 0 else 0 (in place on dy). */
void relu_forward(float *x, size_t count);
void relu_backward(const float *y, float *dy, size_t count);
/* y = max(y + shortcut, 0): the end of a residual block. */
void add_relu_forward(float *y, const float *shortcut, size_t count);
/* y += x */
void add_inplace(float *y, const float *x, size_t count);
/* Global average pool: x (N,HW,C) -> y (N,C); backward spreads dy/HW over the positions. */
void avgpool_forward(const float *x, int n, int hw, int c, float *y);
void avgpool_backward(const float *dy, int n, int hw, int c, float *dx);
/* Linear: y (N,out) = x (N,in) W^T + b (b may be NULL). Backward: dW, db (may be NULL), dx (may be
 * NULL) from dy. */
void linear_forward(const float *x, int n, int in, int out, const float *weight, const float *bias,
                    float *y);
void linear_backward(const float *x, const float *dy, int n, int in, int out, const float *weight,
                     float *dx, float *dweight, float *dbias);
/* Rows of x (N,D) divided by max(|row|, 1e-12), as torch.nn.functional.normalize; norms saved
 * (N values) for the backward: dx = (dy - y (y.dy)) / norm. */
void l2norm_forward(const float *x, int n, int d, float *y, float *norms);
void l2norm_backward(const float *y, const float *norms, const float *dy, int n, int d, float *dx);
/* Mean softmax cross-entropy of logits (N,C) against labels (N); dlogits (may be NULL) gets its
 * gradient. top1/top5 (may be NULL) count rows whose label is among the 1 / 5 largest logits
 * (ties counted against the label). Returns the loss. */
double softmax_cross_entropy(const float *logits, int n, int c, const int64_t *labels, float *dlogits,
                             int *top1, int *top5);
/* One row of it: returns -log softmax(row)[label]; when d_row is not NULL it gets
 * (softmax(row) - onehot(label)) * scale (d_row may be row itself). */
double softmax_cross_entropy_row(const float *row, int c, int64_t label, float scale, float *d_row);
/* y (M,N) = alpha * A (M,K) B (K,N), or B^T when b_transposed (B stored (N,K)); OpenBLAS sgemm. */
void matmul(const float *a, const float *b, float *y, int m, int n, int k, int b_transposed, float alpha);

#endif
