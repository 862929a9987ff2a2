/* progress.c — see progress.h. */
#include "progress.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

struct progress {
    char label[64];
    int64_t total, done;
    double start, last_draw;
};

double progress_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

progress *progress_start(const char *label, int64_t total, int quiet)
{
    if (quiet || !isatty(STDERR_FILENO))
        return NULL;
    progress *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    snprintf(p->label, sizeof p->label, "%s", label);
    p->total = total;
    p->start = progress_now();
    return p;
}

static void draw(progress *p, double now)
{
    double elapsed = now - p->start;
    double rate = elapsed > 0 ? (double)p->done / elapsed : 0;
    if (p->total > 0) {
        double eta = rate > 0 ? (double)(p->total - p->done) / rate : 0;
        fprintf(stderr, "\r%s %lld/%lld (%.0f%%) %.1f/s ETA %d:%02d  ", p->label, (long long)p->done,
                (long long)p->total, 100.0 * (double)p->done / (double)p->total, rate, (int)eta / 60,
                (int)eta % 60);
    } else {
        fprintf(stderr, "\r%s %lld %.1f/s  ", p->label, (long long)p->done, rate);
    }
    p->last_draw = now;
}

void progress_update(progress *p, int64_t done)
{
    if (!p)
        return;
    p->done = done;
    double now = progress_now();
    if (now - p->last_draw >= 0.1)
        draw(p, now);
}

void progress_finish(progress *p)
{
    if (!p)
        return;
    draw(p, progress_now());
    fputc('\n', stderr);
    free(p);
}
