/* moco_step_bench.c — MoCo v2 training steps per second on the CPU backend, beside
 * ../shared/peers/moco_torch.py --device cpu with the same flags.
 *
 *   moco_step_bench [--arch resnet18] [--cifar-stem] [--width 64] [--in-channels 3] [--size 224]
 *                   [--batch 256] [--dim 128] [--K 65536] [--m 0.999] [--T 0.2] [--bn-groups 1]
 *                   [--warmup 5] [--steps 20] [--threads 0] [--device cpu|cuda] [--precision bf16|f32]
 *                   [--no-cuda-graph] [--no-copy-ahead] [--direct-conv] [--profile]
 * As the peer does by default, each step takes random u8 view pairs already in memory, normalises
 * them (here u8 NHWC -> f32 NHWC, as moco-pretrain does), runs the MoCo step and an SGD step
 * (lr 0.03, momentum 0.9, weight decay 1e-4). Prints one JSON line: pairs_per_s (batch over the
 * median step time), step_ms, loss, and peak_rss_mib (the process's maximum resident size).
 * --device cuda (builds with the CUDA backend): the same step through its trainer, as moco-pretrain
 * --device cuda runs it (u8 views uploaded from page-locked memory and normalised on the GPU, the
 * step, SGD, the loss read back), with peak_gpu_gib, the device memory it allocated at most; each
 * step's batch goes up during the step before, as moco-pretrain's do (gpu_trainer_upload_next),
 * unless --no-copy-ahead.
 * --direct-conv: the CPU backend without Winograd convolutions. --profile: the timed steps between
 * cuProfilerStart and cuProfilerStop, for `ncu --profile-from-start off` (tests/cuda/device-check.sh's
 * profile part). */
#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "cli.h"
#include "moco.h"
#include "optim.h"
#include "rng.h"
#include "gpu_api.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* --profile: the timed steps alone between the driver's cuProfilerStart and cuProfilerStop, for
 * `ncu --profile-from-start off` (the warm-up's cudnnFind trials left out). */
static void profiler(int on)
{
    void *cuda = dlopen("libcuda.so.1", RTLD_NOW);
    int (*call)(void) = cuda ? (int (*)(void))dlsym(cuda, on ? "cuProfilerStart" : "cuProfilerStop") : NULL;
    if (!call || call())
        fprintf(stderr, "moco_step_bench: cannot %s the profiler\n", on ? "start" : "stop");
}

static int compare(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* u8 (N,H,W,C) -> f32 normalised with ImageNet's mean and std (the first C of them). */
static void normalise(const uint8_t *in, float *out, size_t pixels, int c)
{
    static const float mean[3] = {0.485f, 0.456f, 0.406f}, std[3] = {0.229f, 0.224f, 0.225f};
    for (size_t i = 0; i < pixels; i++)
        for (int k = 0; k < c; k++)
            out[i * c + k] = (in[i * c + k] - 255 * mean[k]) / (255 * std[k]);
}

int main(int argc, char **argv)
{
    cli_init("moco_step_bench");
    const char *arch = "resnet18";
    int cifar = 0;
    int64_t width = 64, in_c = 3, size = 224, batch = 256, dim = 128, K = 65536, groups = 1, warmup = 5, steps = 20,
            threads = 0;
    double m = 0.999, T = 0.2;
    int cuda = 0, bf16 = 1, graph = 1, winograd = 1, profile = 0, ahead = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (!strcmp(a, "--cifar-stem")) {
            cifar = 1;
            continue;
        }
        if (!strcmp(a, "--profile")) {
            profile = 1;
            continue;
        }
        if (!strcmp(a, "--no-cuda-graph")) {
            graph = 0;
            continue;
        }
        if (!strcmp(a, "--no-copy-ahead")) {
            ahead = 0;
            continue;
        }
        if (!strcmp(a, "--direct-conv")) {
            winograd = 0;
            continue;
        }
        if (!v)
            return cli_usage_error("%s needs a value", a);
        if (!strcmp(a, "--arch"))
            arch = v;
        else if (!strcmp(a, "--width"))
            bad = cli_int(a, v, 1, 1024, &width);
        else if (!strcmp(a, "--in-channels"))
            bad = cli_int(a, v, 1, 3, &in_c);
        else if (!strcmp(a, "--size"))
            bad = cli_int(a, v, 8, 1024, &size);
        else if (!strcmp(a, "--batch"))
            bad = cli_int(a, v, 2, 65536, &batch);
        else if (!strcmp(a, "--dim"))
            bad = cli_int(a, v, 1, 65536, &dim);
        else if (!strcmp(a, "--K"))
            bad = cli_int(a, v, 1, 1 << 24, &K);
        else if (!strcmp(a, "--bn-groups"))
            bad = cli_int(a, v, 1, 1024, &groups);
        else if (!strcmp(a, "--warmup"))
            bad = cli_int(a, v, 0, 100000, &warmup);
        else if (!strcmp(a, "--steps"))
            bad = cli_int(a, v, 1, 100000, &steps);
        else if (!strcmp(a, "--threads"))
            bad = cli_int(a, v, 0, 4096, &threads);
        else if (!strcmp(a, "--m"))
            bad = cli_real(a, v, 0, 1, &m);
        else if (!strcmp(a, "--T"))
            bad = cli_real(a, v, 1e-6, 1e6, &T);
        else if (!strcmp(a, "--device") && (!strcmp(v, "cpu") || !strcmp(v, "cuda")))
            cuda = !strcmp(v, "cuda");
        else if (!strcmp(a, "--precision") && (!strcmp(v, "bf16") || !strcmp(v, "f32")))
            bf16 = !strcmp(v, "bf16");
        else
            return cli_usage_error("unknown option %s", a);
        if (bad)
            return EXIT_USAGE;
        i++;
    }
    moco_error err;
    backend *b = backend_create((int)threads, &err);
    if (!b)
        return cli_error("%s", err.msg);
    backend_set_winograd(b, winograd);
    resnet_config enc = {.depth = resnet_depth_from_name(arch), .width = (int)width, .in_channels = (int)in_c,
                         .cifar_stem = cifar, .head = RESNET_HEAD_MLP, .out_dim = (int)dim};
    moco_config cfg = {.queue_size = (int)K, .key_momentum = m, .temperature = T, .bn_groups = (int)groups};
    moco *net = moco_create(b, &enc, &cfg, &err);
    if (!net)
        return cli_error("%s", err.msg);
    sgd opt;
    if (sgd_init(&opt, net->q->param_count, 0.9, 1e-4, &err))
        return cli_error("%s", err.msg);
    size_t view = (size_t)size * size * in_c, pixels = (size_t)batch * size * size;
    enum { BATCHES = 4 }; /* as the peer: four random batches, used in turn */
    uint8_t *raw = malloc(BATCHES * 2 * batch * view);
    float *im_q = malloc(sizeof(float) * batch * view), *im_k = malloc(sizeof(float) * batch * view);
    int64_t *perm = malloc(sizeof(int64_t) * batch);
    double *times = malloc(sizeof(double) * steps);
    if (!raw || !im_q || !im_k || !perm || !times)
        return cli_error("out of memory");
    rng r;
    rng_init(&r, 1, 0, 0, 0);
    for (size_t i = 0; i < BATCHES * 2 * batch * view; i++)
        raw[i] = (uint8_t)rng_u32(&r);
    moco_result res = {0};
    if (cuda) {
        static const double mean[3] = {0.485, 0.456, 0.406}, std[3] = {0.229, 0.224, 0.225};
        const gpu_api *gpu = gpu_api_load(&err);
        if (!gpu)
            return cli_error("%s", err.msg);
        gpu_trainer *t = gpu->trainer_create(0, bf16 ? GPU_BF16 : GPU_F32, net, &opt, (int)batch, (int)size, (int)in_c, mean,
                                            std, &err);
        if (!t)
            return cli_error("%s", err.msg);
        gpu->trainer_use_graph(t, graph);
        /* the batches in page-locked memory, as moco-pretrain's batcher gives them to the trainer */
        size_t raw_bytes = BATCHES * 2 * batch * view;
        uint8_t *pinned = gpu->trainer_host_alloc(t, raw_bytes);
        if (!pinned)
            return cli_error("out of page-locked memory for the batches");
        memcpy(pinned, raw, raw_bytes);
        for (int64_t s = 0; s < warmup + steps; s++) {
            if (profile && s == warmup)
                profiler(1);
            double t0 = now();
            const uint8_t *pair = pinned + (s % BATCHES) * 2 * batch * view;
            const uint8_t *after = pinned + ((s + 1) % BATCHES) * 2 * batch * view;
            if (ahead)
                gpu->trainer_upload_next(t, after, after + batch * view, (int)batch);
            moco_permutation((int)batch, 0, s, perm);
            if (gpu->trainer_step(t, pair, pair + batch * view, (int)batch, perm, 0.03, &res, &err))
                return cli_error("step %lld: %s", (long long)s, err.msg);
            if (s >= warmup)
                times[s - warmup] = now() - t0;
        }
        if (profile)
            profiler(0);
        qsort(times, steps, sizeof *times, compare);
        double med = times[steps / 2];
        printf("{\"impl\":\"libcommon-cuda\",\"device\":\"%s\",\"arch\":\"%s\",\"cifar_stem\":%s,\"width\":%lld,"
               "\"in_channels\":%lld,\"size\":%lld,\"batch\":%lld,\"K\":%lld,\"bn_groups\":%lld,\"precision\":\"%s\","
               "\"step_ms\":%.2f,\"pairs_per_s\":%.1f,\"loss\":%.4f,\"peak_gpu_gib\":%.2f}\n",
               gpu->trainer_describe(t), arch, cifar ? "true" : "false", (long long)width, (long long)in_c, (long long)size,
               (long long)batch, (long long)K, (long long)groups, bf16 ? "bf16" : "f32", med * 1e3, batch / med, res.loss,
               gpu->trainer_peak_bytes(t) / (double)(1 << 30));
        gpu->trainer_host_free(t, pinned);
        gpu->trainer_destroy(t);
        free(raw), free(im_q), free(im_k), free(perm), free(times);
        sgd_free(&opt);
        moco_destroy(net);
        backend_destroy(b);
        return 0;
    }
    for (int64_t s = 0; s < warmup + steps; s++) {
        double t0 = now();
        const uint8_t *pair = raw + (s % BATCHES) * 2 * batch * view;
        normalise(pair, im_q, pixels, (int)in_c);
        normalise(pair + batch * view, im_k, pixels, (int)in_c);
        moco_permutation((int)batch, 0, s, perm);
        if (moco_step(net, im_q, im_k, (int)batch, (int)size, (int)size, perm, NULL, &res, &err))
            return cli_error("step %lld: %s", (long long)s, err.msg);
        sgd_step(&opt, net->q->param, net->q->grad, 0.03);
        if (s >= warmup)
            times[s - warmup] = now() - t0;
    }
    qsort(times, steps, sizeof *times, compare);
    double med = times[steps / 2];
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("{\"impl\":\"libcommon-cpu\",\"arch\":\"%s\",\"cifar_stem\":%s,\"width\":%lld,\"in_channels\":%lld,"
           "\"size\":%lld,\"batch\":%lld,\"K\":%lld,\"bn_groups\":%lld,\"threads\":%d,\"winograd\":%s,"
           "\"step_ms\":%.2f,\"pairs_per_s\":%.1f,\"loss\":%.4f,\"peak_rss_mib\":%.1f}\n",
           arch, cifar ? "true" : "false", (long long)width, (long long)in_c, (long long)size, (long long)batch,
           (long long)K, (long long)groups, backend_threads(b), winograd ? "true" : "false", med * 1e3, batch / med, res.loss, ru.ru_maxrss / 1024.0);
    free(raw), free(im_q), free(im_k), free(perm), free(times);
    sgd_free(&opt);
    moco_destroy(net);
    backend_destroy(b);
    return 0;
}
