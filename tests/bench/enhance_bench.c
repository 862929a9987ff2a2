/* enhance_bench.c — microseconds per call of each enhance.h operation on one 224x224 RGB view,
 * single thread, as the augmentation runs them once per view.
 *
 *   enhance_bench [--reps N]
 * The view is a synthetic photo-like image (smooth colour gradients plus noise); every call starts
 * from a fresh copy of it, and the copy's own time (the "copy" line) is taken off the others.
 * Prints one line per operation: the best of 5 rounds of N calls each, in microseconds per call. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "enhance.h"

enum { SIDE = 224, VIEW = SIDE * SIDE * 3 };

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct {
    const char *name;
    int op;
    float factor;
} bench_case;

static uint8_t scratch[VIEW];

static void run_op(const bench_case *b, uint8_t *px)
{
    moco_error err;
    switch (b->op) {
    case 0: break; /* the copy alone */
    case 1: enhance_brightness(px, SIDE, SIDE, b->factor); break;
    case 2: enhance_contrast(px, SIDE, SIDE, b->factor); break;
    case 3: enhance_saturation(px, SIDE, SIDE, b->factor); break;
    case 4: enhance_hue(px, SIDE, SIDE, b->factor); break;
    case 5: enhance_grayscale(px, SIDE, SIDE); break;
    case 6:
        if (enhance_gaussian_blur(px, SIDE, SIDE, 3, b->factor, scratch, &err))
            fprintf(stderr, "enhance_bench: %s\n", err.msg), exit(1);
        break;
    case 7: enhance_flip(px, SIDE, SIDE, 3); break;
    case 8:
        if (enhance_gaussian_blur(px, SIDE, SIDE, 1, b->factor, scratch, &err)) /* first third as grey */
            fprintf(stderr, "enhance_bench: %s\n", err.msg), exit(1);
        break;
    }
}

int main(int argc, char **argv)
{
    int reps = 2000;
    if (argc == 3 && strcmp(argv[1], "--reps") == 0)
        reps = atoi(argv[2]);
    if (reps < 1) {
        fprintf(stderr, "usage: enhance_bench [--reps N]\n");
        return 2;
    }
    static uint8_t view[VIEW], px[VIEW];
    unsigned seed = 12345;
    for (int y = 0; y < SIDE; y++)
        for (int x = 0; x < SIDE; x++)
            for (int c = 0; c < 3; c++) {
                seed = seed * 1103515245u + 12345u;
                int v = (x * (c + 1) + y * (3 - c)) / 2 + (int)((seed >> 16) % 24) - 12;
                view[(y * SIDE + x) * 3 + c] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
            }
    const bench_case cases[] = {
        {"copy (subtracted below)", 0, 0},  {"brightness 0.7", 1, 0.7f},   {"brightness 1.3", 1, 1.3f},
        {"contrast 0.7", 2, 0.7f},          {"contrast 1.3", 2, 1.3f},     {"saturation 0.7", 3, 0.7f},
        {"saturation 1.3", 3, 1.3f},        {"hue -0.07", 4, -0.07f},      {"hue 0.1", 4, 0.1f},
        {"grayscale", 5, 0},                {"blur sigma 0.5 (r 0)", 6, 0.5f}, {"blur sigma 1.0 (r 0)", 6, 1.0f},
        {"blur sigma 2.0 (r 1)", 6, 2.0f},  {"blur sigma 5.0 (r 4)", 6, 5.0f}, {"blur sigma 1.0, grey", 8, 1.0f},
        {"flip", 7, 0},
    };
    double copy_us = 0;
    printf("enhance.h on one %dx%d RGB view, single thread: us per call (best of 5 x %d)\n", SIDE, SIDE, reps);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        double best = 1e30;
        for (int round = 0; round < 5; round++) {
            double t0 = now();
            for (int k = 0; k < reps; k++) {
                memcpy(px, view, VIEW);
                run_op(&cases[i], px);
            }
            double us = (now() - t0) * 1e6 / reps;
            best = us < best ? us : best;
        }
        if (i == 0)
            copy_us = best;
        printf("%-26s %8.1f\n", cases[i].name, i == 0 ? best : best - copy_us);
    }
    return 0;
}
