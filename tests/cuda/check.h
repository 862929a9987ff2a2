/* check.h — the CUDA backend's op checks (make check-cuda, on a GPU machine): each op of cuda/gpu.h
 * runs on random data on the GPU and its twin of libcommon/backend.h on the CPU, and the two are
 * compared, in the float32 parity mode (TF32 off: relative error <= 1e-4) and in bf16 (<= 2e-2).
 * Each check program runs its tests once per precision; tests print "PASS name/f32" or "FAIL ...",
 * as tests/unit/test.h's do, and a line "# name: largest relative error E" for the record. */
#ifndef MOCO_CUDA_CHECK_H
#define MOCO_CUDA_CHECK_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "gpu.h"
#include "rng.h"
#include "test.h"

static gpu *g;      /* the backend under test, in the precision of the current pass */
static backend *be; /* the CPU reference */

/* The tolerance of the current precision for a single op. */
static inline double tolerance(void) { return gpu_get_precision(g) == GPU_BF16 ? 2e-2 : 1e-4; }

/* Through a whole network of these tiny test widths, bf16 is not a precision one can hold to a
 * tolerance: batch norm over a handful of values amplifies the 2^-9 rounding of every layer's
 * activations about a hundredfold (an emulated run with exact float32 arithmetic and only the input
 * rounded to bf16 already moved a ResNet-50's output by 0.17). So networks and steps in bf16 are
 * reported, and asserted only on the loss and on being finite: NaN fails (rel_error), infinity
 * passes. Float32 is held to its tolerance. */
static inline double whole_net_tolerance(double f32_tolerance)
{
    return gpu_get_precision(g) == GPU_BF16 ? INFINITY : f32_tolerance;
}

static inline void fill_normal(float *v, size_t count, uint64_t seed, double mean, double std)
{
    rng r;
    rng_init(&r, seed, 0, 0, 0);
    for (size_t i = 0; i < count; i++)
        v[i] = (float)(mean + std * rng_normal(&r));
}

/* Round to bf16 and back in bf16 mode, so the CPU reference starts from the values the GPU holds. */
static inline void as_activations(float *v, size_t count)
{
    if (gpu_get_precision(g) != GPU_BF16)
        return;
    for (size_t i = 0; i < count; i++) {
        uint32_t u;
        memcpy(&u, &v[i], 4);
        u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000u; /* round to nearest even */
        memcpy(&v[i], &u, 4);
    }
}

/* Random u8 views (count bytes, channels last, c channels) from the Philox stream (seed, step), and
 * in im the activations batcher.c makes of them, (x / 255 - mean) / std, rounded to the current
 * precision: the GPU normalises the bytes, the CPU reference starts from im. */
static inline void random_views(uint8_t *u8, float *im, size_t count, int c, const double mean[3],
                                const double std[3], uint64_t seed, uint64_t step)
{
    rng r;
    rng_init(&r, seed, 0, step, 0);
    for (size_t i = 0; i < count; i++) {
        u8[i] = (uint8_t)rng_below(&r, 256);
        im[i] = (float)((u8[i] / 255.0 - mean[i % c]) / std[i % c]);
    }
    as_activations(im, count);
}

/* Device copies of host float32 data: as float32, or as activations of the current precision. */
static inline float *dev_f32(const float *host, size_t count)
{
    moco_error err;
    float *d = (float *)gpu_alloc(g, count * sizeof(float), &err);
    if (d && host && gpu_upload(g, d, host, count * sizeof(float), &err)) {
        gpu_free(g, d);
        return NULL;
    }
    return d;
}
static inline void *dev_act(const float *host, size_t count)
{
    moco_error err;
    void *d = gpu_alloc(g, count * gpu_act_size(g), &err);
    if (d && host && gpu_upload_act(g, d, host, count, &err)) {
        gpu_free(g, d);
        return NULL;
    }
    return d;
}

/* Compare a device tensor (float32 or activations) with the CPU's; fails the test past tol. */
#define CHECK_DEVICE(dev, is_act, want, count, tol, what)                                          \
    do {                                                                                           \
        float *got_ = (float *)malloc(sizeof(float) * (count));                                    \
        moco_error e_;                                                                             \
        CHECK(got_);                                                                               \
        int rc_ = (is_act) ? gpu_download_act(g, got_, (dev), (count), &e_)                       \
                           : gpu_download(g, got_, (dev), sizeof(float) * (count), &e_);           \
        double r_ = rc_ ? INFINITY : rel_error(got_, (want), (count));                             \
        free(got_);                                                                                \
        printf("# %s/%s: largest relative error %.2g\n", (what),                                   \
               gpu_get_precision(g) == GPU_BF16 ? "bf16" : "f32", r_);                             \
        CHECK_OK(rc_, &e_);                                                                        \
        CHECK(r_ <= (tol));                                                                        \
    } while (0)

/* Run every test of a program once per precision: CHECK_MAIN(run_all) */
#define CHECK_MAIN(run_all)                                                                        \
    int main(void)                                                                                 \
    {                                                                                              \
        moco_error err;                                                                            \
        const char *threads_ = getenv("CHECK_THREADS"); /* the CPU reference's threads; all cores */ \
        setvbuf(stdout, NULL, _IOLBF, 0);               /* a crash keeps the lines before it */      \
        if (!(be = backend_create(threads_ ? atoi(threads_) : 0, &err))) {                         \
            printf("FAIL backend_create: %s\n", err.msg);                                          \
            return 1;                                                                              \
        }                                                                                          \
        backend_set_winograd(be, 0); /* the reference: direct convolution, as cuDNN's in f32 */    \
        for (int p = GPU_F32; p <= GPU_BF16; p++) {                                                \
            if (!(g = gpu_create(0, (gpu_precision)p, &err))) {                                    \
                printf("FAIL gpu_create: %s\n", err.msg);                                          \
                return 1;                                                                          \
            }                                                                                      \
            printf("# %s\n", gpu_describe(g));                                                     \
            run_all();                                                                             \
            gpu_destroy(g);                                                                        \
        }                                                                                          \
        backend_destroy(be);                                                                       \
        TEST_EXIT();                                                                               \
    }

#endif
