/* batcher_bench.c — how fast moco-pretrain's reader delivers batches: a view stream on standard
 * input (moco-augment's pairs), read by the batcher as the GPU trainer reads it (raw u8 batches,
 * read ahead on its thread), the batches taken as fast as they come and handed back.
 *
 *   moco-augment ... | batcher_bench [--batch 256]
 * Prints one JSON line: pairs, seconds, pairs_per_s, reader_cpu_ms_per_pair (the process's CPU time
 * per pair: the reading thread's, as the consumer only waits). On a GPU machine this is the ceiling
 * the reading side puts on moco-augment | moco-pretrain (tests/cuda/device-check.sh's e2e part). */
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "batcher.h"
#include "cli.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    cli_init("batcher_bench");
    int64_t size_batch = 256;
    if (argc == 3 && !strcmp(argv[1], "--batch")) {
        if (cli_int("--batch", argv[2], 1, 1 << 20, &size_batch))
            return 2;
    } else if (argc != 1) {
        return cli_usage_error("usage: batcher_bench [--batch N] < VIEWS");
    }
    moco_error err;
    stream_reader *in = stream_reader_open("-", NULL, &err);
    if (!in)
        return cli_error("%s", err.msg);
    const stream_header *h = stream_reader_header(in);
    int64_t size = stream_header_get_int(h, "size", 0), channels = stream_header_get_int(h, "channels", 3);
    if (size < 1 || size > 1 << 16 || channels < 1 || channels > 3)
        return cli_error("(stdin): a view stream whose header gives its size (and channels) is needed");
    batcher_options o = {.batch = (int)size_batch, .views = 2, .size = (int)size, .channels = (int)channels, .raw = 1,
                         .std = {1, 1, 1}};
    batcher *b = batcher_open(in, "(stdin)", &o, &err);
    if (!b)
        return cli_error("%s", err.msg);
    double t0 = now();
    int64_t pairs = 0;
    batch bt;
    int rc;
    while ((rc = batcher_next(b, &bt, NULL, &err)) == 1) {
        pairs += bt.n;
        batcher_release(b);
    }
    double seconds = now() - t0;
    batcher_close(b);
    if (rc < 0)
        return cli_error("%s", err.msg);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6;
    printf("{\"tool\":\"batcher_bench\",\"batch\":%lld,\"pairs\":%lld,\"seconds\":%.3f,\"pairs_per_s\":%.1f,"
           "\"reader_cpu_ms_per_pair\":%.4f}\n",
           (long long)size_batch, (long long)pairs, seconds, seconds > 0 ? pairs / seconds : 0.0,
           pairs ? 1e3 * cpu / pairs : 0.0);
    return 0;
}
