/* checkpoint.h — MoCo training state as a tensor stream file (kind "checkpoint", man 5 moco-stream).
 *
 * One record per tensor, named as the original MoCo's state_dict names them (minus "module."):
 *   encoder_q.<torchvision name>   query encoder parameters, running statistics and
 *                                  <bn>.num_batches_tracked (i64 scalars), so a rename is all an
 *                                  export to PyTorch or detectron2 needs
 *   encoder_k.<torchvision name>   key encoder, the same
 *   queue                          (K, dim) f32, row j = key j
 *   momentum_buffer.<name>         SGD momentum of each query parameter
 * The header holds the model and run settings (arch, width, in_channels, cifar_stem, head, dim,
 * queue_size, key_momentum, temperature, bn_groups) and the position (step, samples_consumed,
 * queue_ptr, epoch); the caller adds what else it wants before saving. The permutation of each step
 * is drawn from (seed, step), so no other random state needs saving.
 *
 * Files are written under a temporary name, fsync'd and renamed (stream.h), so a crash or a full
 * disk while saving leaves the previous checkpoint whole. */
#ifndef MOCO_CHECKPOINT_H
#define MOCO_CHECKPOINT_H
#include <stdint.h>
#include "error.h"
#include "moco.h"
#include "optim.h"
#include "resnet.h"
#include "stream.h"

/* Put the model's settings into h (arch ... bn_groups, queue_ptr). */
void checkpoint_describe(stream_header *h, const moco *m);
/* Read them back: the encoder and MoCo configurations a checkpoint was made with. */
int checkpoint_config(const stream_header *h, resnet_config *enc, moco_config *cfg, moco_error *err);
/* Write m (and opt's momentum when opt is not NULL) to path; h is the header to write (kind
 * "checkpoint"), completed by checkpoint_describe. */
int checkpoint_save(const char *path, stream_header *h, const moco *m, const sgd *opt, moco_error *err);
/* The header of a checkpoint file (the caller frees it), to build the right model before loading. */
stream_header *checkpoint_read_header(const char *path, moco_error *err);
/* Load every tensor of m (and opt's momentum when opt is not NULL); any tensor missing or of the
 * wrong shape is an error naming it. */
int checkpoint_load(const char *path, moco *m, sgd *opt, moco_error *err);
/* Load one encoder (prefix "encoder_q.") into net; with skip_head the fc tensors are not required
 * (feature extraction drops the MLP head). */
int checkpoint_load_encoder(const char *path, const char *prefix, resnet *net, int skip_head, moco_error *err);


/* ---- encoders from safetensors files with torchvision's names (published weights) ---- */
struct safetensors;
/* The configuration a set of torchvision ResNet tensors (names under prefix, "" for none) implies:
 * depth from the block counts, width, input channels and stem from conv1.weight, head from fc.*. */
int checkpoint_infer_config(const struct safetensors *st, const char *prefix, resnet_config *cfg, moco_error *err);
/* Load net's tensors from st (names under prefix); the fc head is not required with skip_head. */
int checkpoint_load_safetensors(const struct safetensors *st, const char *prefix, resnet *net, int skip_head,
                                moco_error *err);

#endif
