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
 * Data parallel (R ranks of n pairs, moco_peers): every rank holds the same encoders and queue. The
 * key images of all ranks are gathered and permuted by one permutation of R n, which every rank
 * computes from the seed; rank r encodes the permuted positions r, r+R, r+2R, ... (the samples group
 * r of the emulation holds, and a uniformly random share as the original's contiguous slices are),
 * the keys are gathered again and un-permuted, each rank takes its own pairs' positives, and every
 * rank enqueues all R n keys. One process with batch R n, query_bn_groups R and bn_groups R computes
 * the same step; the caller averages the gradients over the ranks (dist.h).
 *
 * The key encoder's running statistics are updated like the query's, from its first BN group (what
 * rank 0 keeps in the original; the peer's SplitBN leaves them alone when G > 1). Nothing uses them:
 * the key encoder always runs in training mode, and evaluation uses the query encoder.
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
    int bn_groups;        /* G: 8 key BN groups (per rank) */
    int query_bn_groups;  /* query BN groups: 1, or R to emulate R data-parallel ranks in one process */
} moco_config;

typedef struct {
    double loss;
    int top1, top5; /* rows whose positive key has the largest / a top-5 logit */
} moco_result;

/* The other ranks, as a step needs them: allgather sends `count` floats and receives every rank's,
 * rank 0's first, into recv; all ranks call it with the same count. `what` names the exchange in
 * errors. NULL peers: one process. */
typedef struct {
    int rank, ranks;
    void *ctx;
    int (*allgather)(void *ctx, const float *send, size_t count, float *recv, const char *what, moco_error *err);
} moco_peers;

typedef struct {
    moco_config cfg;
    resnet *q, *k;       /* query (trainable) and key encoders, with the head; q->cfg.out_dim = dim */
    int dim;
    float *queue;        /* (K, dim) */
    int64_t queue_ptr;   /* where the next batch of keys goes */
    /* step scratch, sized for `capacity` pairs on this rank and `capacity_all` on all ranks */
    int capacity, capacity_all, capacity_images;
    float *q_norm, *q_len, *k_len, *k_slots, *k_local, *im_k_grouped, *negatives, *logits, *d_logits, *d_q, *d_z;
    float *im_k_all, *k_gathered, *k_all; /* all ranks' key images, keys as gathered, keys un-permuted */
    int64_t *zero_labels;
} moco;

moco *moco_create(backend *b, const resnet_config *encoder, const moco_config *cfg, moco_error *err);
void moco_destroy(moco *m);
/* A fresh start: the query encoder initialised from seed, the key encoder a copy of it, the queue
 * filled with normal noise and each key normalised. */
void moco_init(moco *m, uint64_t seed);
/* The key permutation for a step (of all ranks' R n pairs): a Fisher-Yates shuffle from the Philox
 * stream (seed, step). */
void moco_permutation(int n, uint64_t seed, int64_t step, int64_t *perm);
/* One step on this rank's batch of n view pairs (n,H,W,C) f32, normalised; perm (R n entries) as
 * moco_permutation gives it; peers NULL in one process. Fills the query encoder's gradients (of this
 * rank's mean loss), updates the key encoder and the queue; result is this rank's. */
int moco_step(moco *m, const float *im_q, const float *im_k, int n, int h, int w, const int64_t *perm,
              const moco_peers *peers, moco_result *result, moco_error *err);
/* theta_k = m theta_k + (1 - m) theta_q over all parameters. */
void moco_momentum_update(moco *m);

#endif
