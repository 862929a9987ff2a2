/* rng.h — a counter-based random number generator: Philox4x32-10 (Salmon et al., SC'11).
 *
 * Every random choice in the toolkit is drawn from a stream keyed by (seed, epoch, sample, view),
 * so a sample's augmentation depends only on those four numbers: not on thread count, order of
 * processing or how many samples came before (DESIGN §6). Streams are cheap to create: a struct on
 * the stack, no state shared between threads. */
#ifndef MOCO_RNG_H
#define MOCO_RNG_H

#include <stdint.h>

typedef struct {
    uint32_t key[2];
    uint32_t counter[4]; /* [0] block index, [1] view, [2] sample (low 32 bits), [3] epoch */
    uint32_t block[4];   /* the current output block */
    int used;            /* words of block already handed out */
} rng;

/* The Philox4x32-10 bijection: out = philox(counter, key). */
void philox4x32_10(const uint32_t counter[4], const uint32_t key[2], uint32_t out[4]);

void rng_init(rng *r, uint64_t seed, uint32_t epoch, uint64_t sample, uint32_t view);
uint32_t rng_u32(rng *r);
/* Uniform in [0, 1) with 53 random bits. */
double rng_uniform(rng *r);
/* Uniform in [lo, hi). */
double rng_range(rng *r, double lo, double hi);
/* Uniform integer in [0, n), without modulo bias; n > 0. */
uint32_t rng_below(rng *r, uint32_t n);
/* Standard normal (Box-Muller). */
double rng_normal(rng *r);

#endif
