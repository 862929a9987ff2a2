/* ranks.cu — data-parallel ranks on GPUs over NCCL (see gpu.h), the GPU twin of libcommon/dist.c's
 * collectives. NCCL's calls only queue work on the stream; a peer that died leaves that work
 * waiting forever, so gpu_ranks_wait polls the stream and the communicator's asynchronous error
 * with a deadline, and on expiry aborts the communicator (ncclCommAbort frees the stream's kernels)
 * so the rank can report and exit. */
#include "gpu_internal.h"

#include <nccl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct gpu_ranks {
    gpu *g;
    ncclComm_t comm;
    int rank, size, broken;
    double timeout;
};

static int nccl_fail(moco_error *err, ncclResult_t rc, const char *call, const char *op)
{
    return moco_fail(err, "%s: %s: %s", op, call, ncclGetErrorString(rc));
}

#define NCCL_CHECK(call, err, op)                                                                  \
    do {                                                                                           \
        ncclResult_t rc_ = (call);                                                                 \
        if (rc_ != ncclSuccess)                                                                    \
            return nccl_fail((err), rc_, #call, (op));                                             \
    } while (0)

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int gpu_ranks_id(unsigned char id[GPU_RANKS_ID_BYTES], moco_error *err)
{
    static_assert(sizeof(ncclUniqueId) == GPU_RANKS_ID_BYTES, "NCCL's unique id size");
    ncclUniqueId uid;
    NCCL_CHECK(ncclGetUniqueId(&uid), err, "making the NCCL id");
    memcpy(id, &uid, sizeof uid);
    return MOCO_OK;
}

gpu_ranks *gpu_ranks_join(gpu *g, const unsigned char id[GPU_RANKS_ID_BYTES], int rank, int ranks, double timeout,
                          moco_error *err)
{
    gpu_ranks *r = (gpu_ranks *)calloc(1, sizeof *r);
    if (!r) {
        moco_fail(err, "out of memory");
        return NULL;
    }
    r->g = g, r->rank = rank, r->size = ranks, r->timeout = timeout;
    ncclUniqueId uid;
    memcpy(&uid, id, sizeof uid);
    ncclResult_t rc = ncclCommInitRank(&r->comm, ranks, uid, rank);
    if (rc != ncclSuccess) {
        nccl_fail(err, rc, "ncclCommInitRank", "joining the GPU ranks");
        free(r);
        return NULL;
    }
    return r;
}

void gpu_ranks_leave(gpu_ranks *r)
{
    if (!r)
        return;
    if (r->comm && r->broken)
        ncclCommAbort(r->comm);
    else if (r->comm)
        ncclCommDestroy(r->comm);
    free(r);
}

int gpu_ranks_rank(const gpu_ranks *r) { return r->rank; }
int gpu_ranks_size(const gpu_ranks *r) { return r->size; }

int gpu_ranks_mean(gpu_ranks *r, float *data, size_t count, moco_error *err)
{
    NCCL_CHECK(ncclAllReduce(data, data, count, ncclFloat32, ncclAvg, r->comm, r->g->stream), err, "the gradient all-reduce");
    return MOCO_OK;
}

int gpu_ranks_sum(gpu_ranks *r, float *data, size_t count, moco_error *err)
{
    NCCL_CHECK(ncclAllReduce(data, data, count, ncclFloat32, ncclSum, r->comm, r->g->stream), err, "the loss all-reduce");
    return MOCO_OK;
}

int gpu_ranks_allgather(gpu_ranks *r, const void *send, size_t bytes, void *recv, moco_error *err)
{
    NCCL_CHECK(ncclAllGather(send, recv, bytes, ncclUint8, r->comm, r->g->stream), err, "an all-gather");
    return MOCO_OK;
}

int gpu_ranks_wait(gpu_ranks *r, moco_error *err)
{
    double start = now();
    for (long polls = 0;; polls++) {
        cudaError_t done = cudaStreamQuery(r->g->stream);
        if (done == cudaSuccess)
            return MOCO_OK;
        if (done != cudaErrorNotReady)
            return gpu_fail_cuda(err, done, "cudaStreamQuery", "waiting for the GPU ranks");
        ncclResult_t async = ncclSuccess;
        if (ncclCommGetAsyncError(r->comm, &async) == ncclSuccess && async != ncclSuccess && async != ncclInProgress) {
            r->broken = 1;
            return nccl_fail(err, async, "ncclCommGetAsyncError", "the GPU ranks");
        }
        if (polls > 1000) {
            if (now() - start > r->timeout) {
                r->broken = 1;
                ncclCommAbort(r->comm);
                r->comm = NULL;
                r->broken = 0; /* aborted already: gpu_ranks_leave has nothing left to do */
                return moco_fail(err, "rank %d: no answer from the other GPU ranks for %.0f s (a rank died or hangs)",
                                 r->rank, r->timeout);
            }
            struct timespec nap = {0, 50000};
            nanosleep(&nap, NULL);
        }
    }
}
