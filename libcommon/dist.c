/* dist.c — see dist.h. Built without MPI (no mpi.h found), every run is a run of one and a process
 * a launcher started says so. */
#include "dist.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef MOCO_HAVE_MPI
#include <mpi.h>
#endif

struct dist {
    int rank, size, local_rank, mpi, broken;
    double timeout;
};

/* The environment variables MPI launchers give their processes: Open MPI's mpirun, PMI (MPICH and
 * Intel MPI's hydra, srun --mpi=pmi2), PMIx (srun --mpi=pmix, Open MPI 5), MVAPICH. */
static const char *launcher_variable(void)
{
    static const char *const vars[] = {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE", "MV2_COMM_WORLD_SIZE"};
    for (size_t i = 0; i < sizeof vars / sizeof *vars; i++)
        if (getenv(vars[i]))
            return vars[i];
    return NULL;
}

dist *dist_open(int *argc, char ***argv, double timeout, moco_error *err)
{
    dist *d = calloc(1, sizeof *d);
    if (!d) {
        moco_fail(err, "out of memory");
        return NULL;
    }
    d->size = 1, d->timeout = timeout;
    const char *launched = launcher_variable();
    if (!launched)
        return d;
#ifdef MOCO_HAVE_MPI
    int provided = 0;
    if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
        free(d);
        moco_fail(err, "MPI_Init failed (started by an MPI launcher: %s is set)", launched);
        return NULL;
    }
    d->mpi = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &d->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &d->size);
    MPI_Comm local; /* the ranks sharing this machine's memory: their order picks the GPUs */
    if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, d->rank, MPI_INFO_NULL, &local) == MPI_SUCCESS) {
        MPI_Comm_rank(local, &d->local_rank);
        MPI_Comm_free(&local);
    }
    return d;
#else
    (void)argc, (void)argv;
    free(d);
    moco_fail(err, "started by an MPI launcher (%s is set), but this build has no MPI (install an MPI's "
                   "development files, e.g. libopenmpi-dev, and rebuild)", launched);
    return NULL;
#endif
}

void dist_close(dist *d)
{
    if (!d)
        return;
#ifdef MOCO_HAVE_MPI
    if (d->mpi && d->broken)
        MPI_Abort(MPI_COMM_WORLD, 1); /* does not return */
    if (d->mpi)
        MPI_Finalize();
#endif
    free(d);
}

int dist_rank(const dist *d) { return d->rank; }
int dist_local_rank(const dist *d) { return d->local_rank; }
int dist_size(const dist *d) { return d->size; }

#ifdef MOCO_HAVE_MPI
static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* Wait for a started collective, polling; spin briefly (an exchange between ranks in step is quick),
 * then sleep between polls so a long wait leaves the cores to others. */
static int wait_for(dist *d, MPI_Request *req, const char *what, moco_error *err)
{
    double start = now();
    for (long polls = 0;; polls++) {
        int done = 0;
        if (MPI_Test(req, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS) {
            d->broken = 1;
            return moco_fail(err, "rank %d: MPI failed in the %s exchange", d->rank, what);
        }
        if (done)
            return MOCO_OK;
        if (polls > 2000) {
            if (now() - start > d->timeout) {
                d->broken = 1;
                return moco_fail(err, "rank %d: no answer from the other ranks for %.0f s in the %s exchange "
                                      "(a rank died or hangs); aborting the run", d->rank, d->timeout, what);
            }
            nanosleep(&(struct timespec){0, 50000}, NULL);
        }
    }
}

static int fits_int(dist *d, size_t count, const char *what, moco_error *err)
{
    if (count <= INT_MAX)
        return MOCO_OK;
    return moco_fail(err, "rank %d: the %s exchange of %zu values is larger than MPI's counts (%d)", d->rank, what,
                     count, INT_MAX);
}
#endif

int dist_mean(dist *d, float *data, size_t count, const char *what, moco_error *err)
{
    if (d->size == 1)
        return MOCO_OK;
#ifdef MOCO_HAVE_MPI
    MPI_Request req;
    if (fits_int(d, count, what, err))
        return MOCO_ERR;
    MPI_Iallreduce(MPI_IN_PLACE, data, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &req);
    if (wait_for(d, &req, what, err))
        return MOCO_ERR;
    float scale = 1.0f / (float)d->size;
    for (size_t i = 0; i < count; i++)
        data[i] *= scale;
#endif
    (void)data, (void)count, (void)what, (void)err;
    return MOCO_OK;
}

int dist_reduce(dist *d, double *data, int count, dist_op op, const char *what, moco_error *err)
{
    if (d->size == 1)
        return MOCO_OK;
#ifdef MOCO_HAVE_MPI
    MPI_Request req;
    MPI_Op mop = op == DIST_SUM ? MPI_SUM : op == DIST_MIN ? MPI_MIN : MPI_MAX;
    MPI_Iallreduce(MPI_IN_PLACE, data, count, MPI_DOUBLE, mop, MPI_COMM_WORLD, &req);
    return wait_for(d, &req, what, err);
#else
    (void)data, (void)count, (void)op, (void)what, (void)err;
    return MOCO_OK;
#endif
}

int dist_allgather(dist *d, const float *send, size_t count, float *recv, const char *what, moco_error *err)
{
    if (d->size == 1) {
        memmove(recv, send, sizeof(float) * count);
        return MOCO_OK;
    }
#ifdef MOCO_HAVE_MPI
    MPI_Request req;
    if (fits_int(d, count * d->size, what, err))
        return MOCO_ERR;
    MPI_Iallgather(send, (int)count, MPI_FLOAT, recv, (int)count, MPI_FLOAT, MPI_COMM_WORLD, &req);
    return wait_for(d, &req, what, err);
#else
    (void)what, (void)err;
    return MOCO_OK;
#endif
}

int dist_broadcast(dist *d, void *data, size_t bytes, int root, const char *what, moco_error *err)
{
    if (d->size == 1)
        return MOCO_OK;
#ifdef MOCO_HAVE_MPI
    MPI_Request req;
    if (fits_int(d, bytes, what, err))
        return MOCO_ERR;
    MPI_Ibcast(data, (int)bytes, MPI_BYTE, root, MPI_COMM_WORLD, &req);
    return wait_for(d, &req, what, err);
#else
    (void)data, (void)bytes, (void)root, (void)what, (void)err;
    return MOCO_OK;
#endif
}

int dist_allgather_u64(dist *d, uint64_t value, uint64_t *recv, const char *what, moco_error *err)
{
    recv[d->rank] = value;
    if (d->size == 1)
        return MOCO_OK;
#ifdef MOCO_HAVE_MPI
    MPI_Request req;
    MPI_Iallgather(&value, 1, MPI_UINT64_T, recv, 1, MPI_UINT64_T, MPI_COMM_WORLD, &req);
    return wait_for(d, &req, what, err);
#else
    (void)what, (void)err;
    return MOCO_OK;
#endif
}

static int peers_allgather(void *ctx, const float *send, size_t count, float *recv, const char *what, moco_error *err)
{
    return dist_allgather(ctx, send, count, recv, what, err);
}

moco_peers dist_peers(dist *d)
{
    return (moco_peers){.rank = d->rank, .ranks = d->size, .ctx = d, .allgather = peers_allgather};
}
