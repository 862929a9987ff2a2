/* stream_bench.c — how fast view pairs pass through a pipe as a tensor stream.
 *
 *   stream_bench write [--pairs N] [--level L] [--rate PAIRS_PER_S] [--png FILE] > pipe
 *   stream_bench read < pipe
 *   stream_bench drain < pipe     (read(2) only: the floor a reader cannot go below)
 * Each side prints one JSON line on stderr: pairs, wall seconds, CPU seconds (user + system).
 * Views are 224x224 RGB crops of a real photo (--png), so zstd sees image-like bytes; each record
 * holds one u8 tensor "views" (2,224,224,3), as moco-augment emits pairs. */
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "progress.h"
#include "stream.h"

enum { SIDE = 224, VIEW = SIDE * SIDE * 3, NPAIRS_PREPARED = 16 };

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + 1e-6 * (double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_sec +
           1e-6 * (double)ru.ru_stime.tv_usec;
}

/* Load an RGB(A) PNG as 8-bit RGB; NULL when it cannot be read. */
static uint8_t *load_png(const char *path, int *w, int *h)
{
    png_image img;
    memset(&img, 0, sizeof img);
    img.version = PNG_IMAGE_VERSION;
    if (!png_image_begin_read_from_file(&img, path))
        return NULL;
    img.format = PNG_FORMAT_RGB;
    uint8_t *buf = malloc(PNG_IMAGE_SIZE(img));
    if (!buf || !png_image_finish_read(&img, NULL, buf, 0, NULL)) {
        free(buf);
        png_image_free(&img);
        return NULL;
    }
    *w = (int)img.width;
    *h = (int)img.height;
    return buf;
}

/* Prepared pairs: crops of the photo at different offsets (or a noisy gradient without one). */
static uint8_t *prepare_pairs(const char *png)
{
    uint8_t *pairs = malloc((size_t)NPAIRS_PREPARED * 2 * VIEW);
    int w = 0, h = 0;
    uint8_t *photo = png ? load_png(png, &w, &h) : NULL;
    if (photo && (w < SIDE || h < SIDE)) {
        free(photo);
        photo = NULL;
    }
    unsigned seed = 1;
    for (int v = 0; v < NPAIRS_PREPARED * 2; v++) {
        uint8_t *dst = pairs + (size_t)v * VIEW;
        int ox = photo ? (v * 37) % (w - SIDE + 1) : 0, oy = photo ? (v * 53) % (h - SIDE + 1) : 0;
        for (int y = 0; y < SIDE; y++)
            for (int x = 0; x < SIDE; x++)
                for (int c = 0; c < 3; c++) {
                    seed = seed * 1103515245u + 12345u;
                    dst[(y * SIDE + x) * 3 + c] =
                        photo ? photo[((size_t)(oy + y) * (size_t)w + (size_t)(ox + x)) * 3 + (size_t)c]
                              : (uint8_t)(x + y + v + (seed >> 28));
                }
    }
    free(photo);
    return pairs;
}

static int bench_write(int64_t pairs, int level, double rate, const char *png, int zero_copy)
{
    uint8_t *prepared = prepare_pairs(png);
    moco_error err;
    stream_options opt = STREAM_OPTIONS_DEFAULT;
    opt.level = level;
    opt.zero_copy = zero_copy;
    stream_header *h = stream_header_new("views", "stream_bench");
    stream_header_set_int(h, "samples", pairs);
    stream_writer *w = stream_writer_open(NULL, &opt, h, &err);
    stream_header_free(h);
    if (!w)
        return cli_error("%s", err.msg);
    double t0 = progress_now(), c0 = cpu_seconds();
    int64_t i;
    for (i = 0; i < pairs; i++) {
        if (rate > 0) { /* pace the writer: the reader's cost is measured at a fixed rate */
            double due = t0 + (double)i / rate, now = progress_now();
            if (due > now)
                usleep((useconds_t)((due - now) * 1e6));
        }
        stream_record r;
        stream_record_init(&r, i, (int64_t)(i % 1000));
        int64_t dims[4] = {2, SIDE, SIDE, 3};
        stream_record_add(&r, "views", DTYPE_U8, 4, dims, prepared + (size_t)(i % NPAIRS_PREPARED) * 2 * VIEW, &err);
        int rc = stream_write(w, &r, &err);
        if (rc == MOCO_EPIPE)
            break;
        if (rc)
            return cli_error("%s", err.msg);
    }
    if (stream_writer_close(w, &err))
        return cli_error("%s", err.msg);
    fprintf(stderr, "{\"side\":\"write\",\"zero_copy\":%d,\"level\":%d,\"pairs\":%lld,\"wall_s\":%.4f,\"cpu_s\":%.4f}\n", 
            zero_copy, level, (long long)i, progress_now() - t0, cpu_seconds() - c0);
    free(prepared);
    return 0;
}

static int bench_read(void)
{
    moco_error err;
    double t0 = progress_now(), c0 = cpu_seconds();
    stream_reader *r = stream_reader_open(NULL, NULL, &err);
    if (!r)
        return cli_error("%s", err.msg);
    stream_record rec;
    int rc;
    uint64_t sum = 0;
    while ((rc = stream_read(r, &rec, &err)) == 1)
        sum += ((const uint8_t *)rec.tensors[0].data)[VIEW]; /* touch the data */
    if (rc < 0)
        return cli_error("%s", err.msg);
    fprintf(stderr, "{\"side\":\"read\",\"encoding\":\"%s\",\"pairs\":%lld,\"wall_s\":%.4f,\"cpu_s\":%.4f,\"touch\":%llu}\n",
            stream_reader_encoding(r), (long long)stream_reader_records(r), progress_now() - t0,
            cpu_seconds() - c0, (unsigned long long)sum);
    stream_reader_close(r);
    return 0;
}

/* The floor for the reader: read(2) the same bytes into one buffer, parse and check nothing. */
static int bench_drain(void)
{
    double t0 = progress_now(), c0 = cpu_seconds();
    stream_grow_pipe(0);
    size_t cap = 2 * VIEW + 4096;
    uint8_t *buf = malloc(cap);
    long long total = 0;
    ssize_t n;
    while (buf && (n = read(0, buf, cap)) > 0)
        total += n;
    fprintf(stderr, "{\"side\":\"drain\",\"bytes\":%lld,\"wall_s\":%.4f,\"cpu_s\":%.4f}\n", total,
            progress_now() - t0, cpu_seconds() - c0);
    free(buf);
    return 0;
}

int main(int argc, char **argv)
{
    cli_init("stream_bench");
    if (argc < 2)
        return cli_usage_error("usage: stream_bench write|read|drain [--pairs N] [--level L] [--rate R] [--png FILE] [--zero-copy]");
    int64_t pairs = 20000, level = 0;
    double rate = 0;
    const char *png = NULL;
    int zero_copy = 0;
    for (int i = 2; i < argc; i += 2) {
        int rc = 0;
        if (!strcmp(argv[i], "--zero-copy")) {
            zero_copy = 1;
            i--;
            continue;
        }
        if (i + 1 >= argc)
            return cli_usage_error("%s needs a value", argv[i]);
        if (!strcmp(argv[i], "--pairs"))
            rc = cli_int("--pairs", argv[i + 1], 1, INT64_MAX, &pairs);
        else if (!strcmp(argv[i], "--level"))
            rc = cli_int("--level", argv[i + 1], -131072, 22, &level);
        else if (!strcmp(argv[i], "--rate"))
            rc = cli_real("--rate", argv[i + 1], 0, 1e9, &rate);
        else if (!strcmp(argv[i], "--png"))
            png = argv[i + 1];
        else
            rc = cli_usage_error("unknown option %s", argv[i]);
        if (rc)
            return rc;
    }
    if (!strcmp(argv[1], "write"))
        return bench_write(pairs, (int)level, rate, png, zero_copy);
    if (!strcmp(argv[1], "read"))
        return bench_read();
    if (!strcmp(argv[1], "drain"))
        return bench_drain();
    return cli_usage_error("unknown mode '%s'", argv[1]);
}
