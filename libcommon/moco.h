/* moco.h — the MoCo v2 training step (DESIGN §4) on two ResNets of resnet.h.
 *
 * One step, as the original and ../shared/peers/moco_torch.py compute it:
 *   q = normalize(f_q(im_q))                                   query forward (kept for backward)
 *   theta_k = m theta_k + (1 - m) theta_q                       key momentum update, parameters only
 *   k = normalize(f_k(im_k[perm])), un-permuted                 key forward, BN in G groups
 *   logits = [q.k+, q queue^T] / tau, loss = CE(logits, 0)      InfoNCE
 *   backward into the query encoder's gradients; enqueue k
 * The optimiser step is the caller's (optim.h), so moco-pretrain owns the schedule.
 *
 * Shuffle-BN emulation: the peer normalises the permuted key batch in G interleaved groups (sample s
 * of the permuted batch in group s mod G, what a (N/G, G*C) reshape gives). We lay the permuted batch
 * out group by group instead, so each group is one contiguous slice for the BN primitive; the groups
 * hold the same samples, so the keys are the same.
 *
 * The key encoder's running statistics are not updated (with G > 1 neither are the peer's): the key
 * encoder always runs in training mode, and evaluation uses the query encoder.
 * The queue is (K, dim), row j holding key j (the original keeps its transpose, (dim, K)). */
#ifndef MOCO_MOCO_H
#define MOCO_MOCO_H
#include <stdint.h>
#include "backend.h"
#include "error.h"
#include "resnet.h"

typedef struct {
    int queue_size;       /* K: 65536 */
    double key_momentum;  /* m: 0.999 */
    double temperature;   /* tau: 0.2 */
    int bn_groups;        /* G: 8 */
} moco_config;

typedef struct {
    double loss;
    int top1, top5; /* rows whose positive key has the largest / a top-5 logit */
} moco_result;

typedef struct {
    moco_config cfg;
    resnet *q, *k;       /* query (trainable) and key encoders, with the head; q->cfg.out_dim = dim */
    int dim;
    float *queue;        /* (K, dim) */
    int64_t queue_ptr;   /* where the next batch of keys goes */
    /* step scratch, sized for `capacity` samples */
    int capacity;
    float *q_norm, *q_len, *k_norm, *k_len, *k_slots, *im_k_grouped, *negatives, *logits, *d_logits, *d_q, *d_z;
    int64_t *zero_labels;
} moco;

moco *moco_create(backend *b, const resnet_config *encoder, const moco_config *cfg, moco_error *err);
void moco_destroy(moco *m);
/* A fresh start: the query encoder initialised from seed, the key encoder a copy of it, the queue
 * filled with normal noise and each key normalised. */
void moco_init(moco *m, uint64_t seed);
/* The key permutation for a step: a Fisher-Yates shuffle from the Philox stream (seed, step). */
void moco_permutation(int n, uint64_t seed, int64_t step, int64_t *perm);
/* One step on a batch of view pairs (N,H,W,C) f32, normalised; perm as moco_permutation gives it.
 * Fills the query encoder's gradients, updates the key encoder and the queue. */
int moco_step(moco *m, const float *im_q, const float *im_k, int n, int h, int w, const int64_t *perm,
              moco_result *result, moco_error *err);
/* theta_k = m theta_k + (1 - m) theta_q over all parameters. */
void moco_momentum_update(moco *m);

#endif
