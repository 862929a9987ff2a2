/* resample_bench.c — microseconds per resize on one core, for the shapes the tools resize most.
 *
 *   resample_bench [--seconds S] [--repeats N]
 * Each case is timed N times for S seconds; one JSON line a case gives the median and the fastest
 * of the N rates. The pixels are pseudo-random: the resampler does the same work whatever they are.
 *   shard       640x427 RGB -> 383x256 bilinear, resample_window (horizontal pass first), as
 *               moco-shard's resample
 *   rrc_fast    a 300x250 RGB window -> 224x224, resample_window_fast (vertical first), as augment
 *   rrc_exact   the same with resample_window (horizontal first), as augment --exact
 *   grey28      grey crops of a 28x28 image, 12x14 to 28x28, -> 28x28, resample_window_fast
 *   shard_grey  640x427 grey -> 383x256 bilinear
 *   shard_bicubic, shard_lanczos  the shard case with the filters whose lobes go negative */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "progress.h"
#include "resample.h"

typedef struct {
    const char *name;
    int sh, sw, channels, dh, dw; /* the window and the output */
    int fast, crops;              /* crops: grey28's changing windows */
    resample_filter filter;
} bench_case;

static int compare_doubles(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* One call of the case; the crop windows cycle with i. */
static int run_once(const bench_case *c, const uint8_t *src, size_t stride, uint8_t *dst, int64_t i,
                    moco_error *err)
{
    if (c->crops) {
        int ch = 12 + (int)(i % 17), cw = 14 + (int)(i * 7 % 15); /* 12..28 x 14..28 */
        const uint8_t *window = src + (size_t)(i % (29 - ch)) * stride + (size_t)(i % (29 - cw));
        double box[4] = {0.25, 0.5, cw - 0.25, ch - 0.125}; /* a fractional box, as a reduced decode */
        return resample_window_fast(window, stride, ch, cw, 1, i % 2 ? box : NULL, dst, c->dh, c->dw, c->filter,
                                    err);
    }
    return (c->fast ? resample_window_fast : resample_window)(src, stride, c->sh, c->sw, c->channels, NULL, dst,
                                                              c->dh, c->dw, c->filter, err);
}

int main(int argc, char **argv)
{
    cli_init("resample_bench");
    double seconds = 0.5;
    int64_t repeats = 7;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--seconds") && i + 1 < argc && !cli_real("--seconds", argv[i + 1], 0.01, 1e4, &seconds))
            i++;
        else if (!strcmp(argv[i], "--repeats") && i + 1 < argc && !cli_int("--repeats", argv[i + 1], 1, 1000, &repeats))
            i++;
        else
            return cli_usage_error("usage: resample_bench [--seconds S] [--repeats N]");
    }
    static const bench_case cases[] = {
        {"shard", 427, 640, 3, 256, 383, 0, 0, RESAMPLE_BILINEAR},
        {"rrc_fast", 250, 300, 3, 224, 224, 1, 0, RESAMPLE_BILINEAR},
        {"rrc_exact", 250, 300, 3, 224, 224, 0, 0, RESAMPLE_BILINEAR},
        {"grey28", 28, 28, 1, 28, 28, 1, 1, RESAMPLE_BILINEAR},
        {"shard_grey", 427, 640, 1, 256, 383, 0, 0, RESAMPLE_BILINEAR},
        {"shard_bicubic", 427, 640, 3, 256, 383, 0, 0, RESAMPLE_BICUBIC},
        {"shard_lanczos", 427, 640, 3, 256, 383, 0, 0, RESAMPLE_LANCZOS},
    };
    /* a source bigger than every window, so windows have a stride wider than their rows */
    const int src_h = 480, src_w = 700;
    size_t stride = (size_t)src_w * 3;
    uint8_t *src = malloc(stride * src_h), *dst = malloc((size_t)256 * 400 * 3);
    double *rates = malloc((size_t)repeats * sizeof *rates);
    if (!src || !dst || !rates)
        return cli_error("out of memory");
    uint32_t state = 12345;
    for (size_t i = 0; i < stride * src_h; i++) {
        state = state * 1664525u + 1013904223u;
        src[i] = (uint8_t)(state >> 24);
    }
    moco_error err;
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        const bench_case *c = &cases[k];
        size_t c_stride = c->crops ? 28 : c->channels == 1 ? (size_t)src_w : stride;
        for (int64_t r = 0; r < repeats; r++) {
            int64_t calls = 0;
            double t0 = progress_now(), t;
            do {
                for (int j = 0; j < 16; j++, calls++)
                    if (run_once(c, src, c_stride, dst, calls, &err))
                        return cli_error("%s: %s", c->name, err.msg);
                t = progress_now() - t0;
            } while (t < seconds);
            rates[r] = t / (double)calls * 1e6;
        }
        qsort(rates, (size_t)repeats, sizeof *rates, compare_doubles);
        printf("{\"case\": \"%s\", \"us_median\": %.2f, \"us_min\": %.2f}\n", c->name, rates[repeats / 2], rates[0]);
        fflush(stdout);
    }
    free(src);
    free(dst);
    free(rates);
    return 0;
}
