/* resnet.h — ResNet-18/34/50 in torchvision's layout and names, with MoCo's heads, on backend.h.
 *
 * The network: stem (conv1 7x7/2 + bn1 + ReLU + 3x3/2 max-pool, or the CIFAR stem conv1 3x3/1 and
 * no pool), layer1..layer4 of BasicBlocks (18, 34) or Bottlenecks (50, stride on the 3x3 conv as
 * torchvision v1.5), global average pool, then the head: none (the pooled features), `fc` (Linear)
 * or MoCo v2's MLP `fc.0` Linear(F,F), ReLU, `fc.2` Linear(F,dim). F = 8 * width * expansion.
 *
 * Parameters and buffers are listed in state_dict order with torchvision's names
 * (`conv1.weight`, `layer1.0.bn1.running_var`, `fc.0.weight`, ...); all parameter values live in one
 * float array (`param`, and `grad` beside it in the same layout), running statistics in another
 * (`buffer`), so an optimiser or the key encoder's momentum update is one loop over the array.
 * Tensors hold: conv weights OIHW, linear weights (out, in), everything else vectors.
 *
 * Inputs are NHWC float32, already normalised. A trainable net keeps every activation of its last
 * training forward for resnet_backward; a net created with trainable = 0 (the key encoder, feature
 * extraction) runs forward only and reuses four activation buffers, so it costs little memory. */
#ifndef MOCO_RESNET_H
#define MOCO_RESNET_H
#include <stddef.h>
#include <stdint.h>
#include "backend.h"
#include "error.h"

typedef enum { RESNET_HEAD_NONE = 0, RESNET_HEAD_LINEAR = 1, RESNET_HEAD_MLP = 2 } resnet_head;

typedef struct {
    int depth;       /* 18, 34 or 50 */
    int width;       /* base width: 64 is torchvision's */
    int in_channels; /* 3 for RGB views, 1 for grey */
    int cifar_stem;  /* 3x3 stride-1 conv1 and no max-pool, for small images */
    resnet_head head;
    int out_dim;     /* head output size (MoCo: 128; a classifier: its class count); unused for NONE */
} resnet_config;

typedef struct {
    char name[64];  /* torchvision's state_dict key */
    int buffer;     /* 0: a parameter (in `param`), 1: a running statistic (in `buffer`) */
    int rank;
    int64_t dims[4];
    size_t offset;  /* into param/grad or into buffer */
    size_t count;
} resnet_tensor;

typedef struct resnet_layers resnet_layers;

typedef struct {
    resnet_config cfg;
    int feature_dim;          /* F: the pooled feature size */
    int ntensors;             /* state_dict entries (num_batches_tracked left out) */
    resnet_tensor *tensors;
    size_t param_count, buffer_count;
    float *param, *grad, *buffer; /* grad is NULL unless trainable */
    int64_t num_batches_tracked;  /* training forwards that updated the running statistics */
    const float *output;      /* after a forward: (N, out_dim), or the pooled features for HEAD_NONE */
    const float *pooled;      /* after a forward: (N, F) */
    resnet_layers *layers;
} resnet;

/* "resnet18" -> 18 and so on; 0 when unknown. */
int resnet_depth_from_name(const char *name);
/* Check a configuration; fills err with what is wrong. */
int resnet_config_check(const resnet_config *cfg, moco_error *err);

resnet *resnet_create(backend *b, const resnet_config *cfg, int trainable, moco_error *err);
void resnet_destroy(resnet *net);
/* A forward-only net's activations (three buffers of its largest one) kept in a trainable net's
 * backward scratch (three of the same) instead of memory of their own: for a net whose forwards
 * never run between the lender's forward and the end of its backward, as MoCo's key encoder runs
 * between the query's forward and backward. Used when the lender has planned the same shapes or
 * larger before; a lender that plans again makes the net plan again too. */
void resnet_borrow_scratch(resnet *net, resnet *lender);

/* torchvision's initialisation, drawn from Philox streams keyed by seed: convolutions Kaiming
 * normal (fan-out, ReLU gain), BN weight 1 bias 0, running mean 0 variance 1, Linear weight and bias
 * uniform in +-1/sqrt(fan_in). */
void resnet_init(resnet *net, uint64_t seed);
/* The entry named `name`, or NULL. */
const resnet_tensor *resnet_find(const resnet *net, const char *name);
/* Copy parameters and buffers from another net of the same configuration. */
void resnet_copy(resnet *dst, const resnet *src);

/* Forward pass over x (N,H,W,C). train != 0: batch statistics, normalised in bn_groups consecutive
 * slices of N / bn_groups samples, the running statistics updated from the first group's (groups
 * stand for data-parallel ranks, and rank 0's are the ones DDP keeps); train == 0: running
 * statistics. Results in net->output and net->pooled, valid until the next forward. */
int resnet_forward(resnet *net, const float *x, int n, int h, int w, int train, int bn_groups, moco_error *err);
/* Backward from the gradient of net->output (N, out_dim) after a training forward on a trainable
 * net (each BN group differentiated with its own statistics); every parameter's gradient is written (not accumulated) into net->grad. */
int resnet_backward(resnet *net, const float *d_output, moco_error *err);

#endif
