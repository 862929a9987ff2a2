/* dist.h — the ranks of a data-parallel run, over MPI (DESIGN §2: the engines clusters already run).
 *
 * A process started by mpirun, mpiexec or srun joins the run (MPI_Init); any other process is a run
 * of one, and no MPI call is made, so the tools work the same without a launcher. Collectives are
 * MPI's non-blocking ones, polled with a deadline: a rank that died or hangs makes the others fail
 * with a message after `timeout` seconds instead of waiting forever, and dist_close then aborts the
 * whole job (MPI_Abort), since an unfinished collective cannot be cleaned up.
 *
 * Only the thread that opened the run calls these (MPI_THREAD_FUNNELED). */
#ifndef MOCO_DIST_H
#define MOCO_DIST_H
#include <stddef.h>
#include <stdint.h>
#include "error.h"
#include "moco.h"

typedef struct dist dist;

/* Join the run, or make a run of one. timeout: seconds a collective may wait for the others. */
dist *dist_open(int *argc, char ***argv, double timeout, moco_error *err);
/* MPI_Finalize; MPI_Abort(1) instead when a collective failed (the others may be stuck in it). */
void dist_close(dist *d);
int dist_rank(const dist *d);
int dist_size(const dist *d);
/* This rank's place among the ranks on its machine (0 in a run of one): the GPU it takes by default. */
int dist_local_rank(const dist *d);

/* data (count floats) replaced by its mean over the ranks, the same on every rank. */
int dist_mean(dist *d, float *data, size_t count, const char *what, moco_error *err);
/* Sum, minimum or maximum of count doubles over the ranks, in place. */
typedef enum { DIST_SUM, DIST_MIN, DIST_MAX } dist_op;
int dist_reduce(dist *d, double *data, int count, dist_op op, const char *what, moco_error *err);
/* Every rank's `count` floats into recv, rank 0's first. */
int dist_allgather(dist *d, const float *send, size_t count, float *recv, const char *what, moco_error *err);
/* `bytes` bytes of rank root's data to every rank (NCCL's id, for one). */
int dist_broadcast(dist *d, void *data, size_t bytes, int root, const char *what, moco_error *err);
/* Every rank's 64-bit value into recv (size values). */
int dist_allgather_u64(dist *d, uint64_t value, uint64_t *recv, const char *what, moco_error *err);

/* The peers moco_step exchanges keys with. */
moco_peers dist_peers(dist *d);

#endif
