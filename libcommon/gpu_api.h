/* gpu_api.h — the CUDA backend as the tools reach it: loaded at run time, only when asked for.
 *
 * The backend (cuda/, built into libmoco_cuda.so when nvcc, cuDNN and NCCL are found) pulls in
 * cuDNN, cuBLAS and NCCL: hundreds of megabytes the loader would map into every process. So no
 * tool links it: `--device cuda` calls gpu_api_load, which opens libmoco_cuda.so (beside the tools,
 * in ../lib, or on the library path) and returns its table of entry points; a CPU run never touches
 * it, and a build or a machine without CUDA says so when cuda is asked for. The entry points are
 * cuda/gpu.h's trainer (moco-pretrain), extractor (moco-extract), linear classifier (moco-linear)
 * and NCCL id; see there. */
#ifndef MOCO_GPU_API_H
#define MOCO_GPU_API_H
#include <stddef.h>
#include <stdint.h>
#include "classifier.h"
#include "error.h"
#include "moco.h"
#include "optim.h"
#include "resnet.h"

typedef enum { GPU_F32 = 0, GPU_BF16 = 1 } gpu_precision;
enum { GPU_RANKS_ID_BYTES = 128, GPU_API_VERSION = 5 };

typedef struct gpu_trainer gpu_trainer;
typedef struct gpu_extractor gpu_extractor;
typedef struct gpu_linear gpu_linear;

typedef struct {
    int version; /* GPU_API_VERSION of the library: a mismatch is refused */
    /* moco-pretrain --device cuda */
    gpu_trainer *(*trainer_create)(int device, gpu_precision precision, const moco *host, const sgd *opt, int batch,
                                   int size, int channels, const double mean[3], const double std[3], moco_error *err);
    void (*trainer_use_graph)(gpu_trainer *t, int on);
    int (*trainer_graph_failed)(const gpu_trainer *t); /* 1 once a capture failed: steps go op by op */
    int (*trainer_join)(gpu_trainer *t, const unsigned char id[GPU_RANKS_ID_BYTES], int rank, int ranks,
                        double timeout, moco_error *err);
    int (*trainer_step)(gpu_trainer *t, const uint8_t *host_q, const uint8_t *host_k, int n, const int64_t *host_perm,
                        double lr, moco_result *result, moco_error *err);
    /* the pinned views of the step after the next, copied during the next (gpu.h) */
    void (*trainer_upload_next)(gpu_trainer *t, const uint8_t *host_q, const uint8_t *host_k, int n);
    int (*trainer_download)(gpu_trainer *t, moco *host, sgd *opt, moco_error *err);
    /* page-locked host memory for the batches (batcher.h's raw_alloc/raw_free with ctx = the
     * trainer): the step then copies from it directly, without staging */
    void *(*trainer_host_alloc)(void *trainer, size_t bytes);
    void (*trainer_host_free)(void *trainer, void *p);
    const char *(*trainer_describe)(const gpu_trainer *t);
    size_t (*trainer_peak_bytes)(const gpu_trainer *t);
    void (*trainer_destroy)(gpu_trainer *t);
    int (*ranks_id)(unsigned char id[GPU_RANKS_ID_BYTES], moco_error *err);
    /* moco-extract --device cuda */
    gpu_extractor *(*extractor_create)(int device, gpu_precision precision, const resnet *host, int batch, int size,
                                       int channels, const double mean[3], const double std[3], moco_error *err);
    int (*extractor_run)(gpu_extractor *x, const uint8_t *host_views, int n, float *host_features, moco_error *err);
    const char *(*extractor_describe)(const gpu_extractor *x);
    void (*extractor_destroy)(gpu_extractor *x);
    /* moco-linear --device cuda: the SGD protocol's steps (linear_eval.h's linear_device) */
    gpu_linear *(*linear_create)(int device, const classifier *c, double momentum, double weight_decay, int batch,
                                 moco_error *err);
    int (*linear_step)(void *l, const float *x, const int64_t *labels, int n, double lr, double *loss, int *top1,
                       int *top5, moco_error *err);
    int (*linear_pull)(void *l, classifier *c, moco_error *err);
    const char *(*linear_describe)(const gpu_linear *l);
    void (*linear_destroy)(gpu_linear *l);
} gpu_api;

/* The backend's table, loaded on the first call; NULL and err when there is none to load. */
const gpu_api *gpu_api_load(moco_error *err);

#endif
