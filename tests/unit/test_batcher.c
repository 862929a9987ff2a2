/* test_batcher.c — the read-ahead batcher: normalised or raw views, the skip of a resumed run, and
 * the batch-by-batch share of one stream among ranks. */
#include <math.h>
#include <stdint.h>
#include <unistd.h>

#include "batcher.h"
#include "test.h"

enum { RECORDS = 12, S = 4, C = 3, VIEW = S * S * C };

/* Record r's view v, byte p: a value that names them. */
static uint8_t pixel(int r, int v, int p) { return (uint8_t)(r * 16 + v * 7 + p); }

static int write_views(const char *path)
{
    moco_error err;
    stream_header *h = stream_header_new("views", "test_batcher");
    stream_writer *w = stream_writer_open(path, NULL, h, &err);
    stream_header_free(h);
    if (!w)
        return -1;
    for (int r = 0; r < RECORDS; r++) {
        uint8_t data[2 * VIEW];
        for (int v = 0; v < 2; v++)
            for (int p = 0; p < VIEW; p++)
                data[v * VIEW + p] = pixel(r, v, p);
        int64_t dims[4] = {2, S, S, C};
        stream_record rec;
        stream_record_init(&rec, 100 + r, r % 5);
        if (stream_record_add(&rec, "views", DTYPE_U8, 4, dims, data, &err) || stream_write(w, &rec, &err)) {
            stream_writer_abort(w);
            return -1;
        }
    }
    return stream_writer_close(w, &err);
}

/* The records of each batch a batcher with these options delivers, in order (-1 ends a batch). */
static int batches(const char *path, batcher_options o, int *ids, int max, int check_pixels)
{
    moco_error err;
    stream_reader *in = stream_reader_open(path, NULL, &err);
    batcher *b = in ? batcher_open(in, path, &o, &err) : NULL;
    if (!b)
        return -1;
    int count = 0;
    batch bt;
    while (batcher_next(b, &bt, NULL, &err) == 1) {
        for (int i = 0; i < bt.n && count < max; i++) {
            int r = (int)bt.sample_ids[i] - 100;
            ids[count++] = r;
            for (int v = 0; check_pixels && v < 2; v++)
                for (int p = 0; p < VIEW; p++) {
                    uint8_t want = pixel(r, v, p);
                    float norm = (float)((want / 255.0 - o.mean[p % C]) / o.std[p % C]);
                    if (o.raw ? bt.raw[v][i * VIEW + p] != want : fabsf(bt.views[v][i * VIEW + p] - norm) > 1e-6f)
                        ids[count - 1] = -100; /* a wrong value */
                }
        }
        if (count < max)
            ids[count++] = -1;
        batcher_release(b);
    }
    batcher_close(b);
    return count;
}

static char path[64];

TEST(test_batcher_normalises_views)
{
    batcher_options o = {.batch = 4, .views = 2, .size = S, .channels = C, .mean = {0.4, 0.5, 0.6}, .std = {0.2, 0.3, 0.4}};
    int ids[64];
    int n = batches(path, o, ids, 64, 1);
    int want[] = {0, 1, 2, 3, -1, 4, 5, 6, 7, -1, 8, 9, 10, 11, -1};
    CHECK(n == 15 && !memcmp(ids, want, sizeof want));
}

TEST(test_batcher_raw_keeps_the_bytes)
{
    batcher_options o = {.batch = 5, .views = 2, .size = S, .channels = C, .raw = 1, .std = {1, 1, 1}};
    int ids[64];
    int n = batches(path, o, ids, 64, 1);
    int want[] = {0, 1, 2, 3, 4, -1, 5, 6, 7, 8, 9, -1}; /* the partial batch is dropped */
    CHECK(n == 12 && !memcmp(ids, want, sizeof want));
}

TEST(test_batcher_shares_batches_among_ranks_after_the_skip)
{
    batcher_options o = {.batch = 2, .views = 2, .size = S, .channels = C, .raw = 1, .skip = 2, .share = 1, .shares = 2};
    int ids[64];
    int n = batches(path, o, ids, 64, 1);
    int want[] = {4, 5, -1, 8, 9, -1}; /* after records 0, 1: rank 0 has 2,3 and 6,7 and 10,11 */
    CHECK(n == 6 && !memcmp(ids, want, sizeof want));
}

/* raw batches in the caller's memory (a GPU's page-locked buffers): every one allocated is freed */
static int live, made;
static void *counting_alloc(void *ctx, size_t bytes)
{
    (*(int *)ctx)++;
    live++, made++;
    return malloc(bytes);
}
static void counting_free(void *ctx, void *p)
{
    (void)ctx;
    live--;
    free(p);
}

TEST(test_batcher_raw_batches_in_the_callers_memory)
{
    int calls = 0;
    batcher_options o = {.batch = 4, .views = 2, .size = S, .channels = C, .raw = 1, .raw_alloc = counting_alloc,
                         .raw_free = counting_free, .raw_ctx = &calls};
    int ids[64];
    int n = batches(path, o, ids, 64, 1);
    CHECK(n == 15 && ids[0] == 0 && ids[13] == 11);
    CHECK(made == 3 * 2 && calls == made && live == 0); /* three slots of two views, all given back */
}

/* The batch after the current one, once the reader has it, is the one batcher_next gives after the
 * release, in the same memory (a GPU copies it from there during the current step); the last
 * batch has none after it. */
static int peek_within_a_second(batcher *b, batch *after)
{
    for (int tries = 0; tries < 500; tries++) {
        if (batcher_peek_next(b, after))
            return 1;
        usleep(2000);
    }
    return 0;
}

TEST(test_batcher_peeks_at_the_next_batch)
{
    moco_error err;
    batcher_options o = {.batch = 4, .views = 2, .size = S, .channels = C, .raw = 1, .std = {1, 1, 1}};
    stream_reader *in = stream_reader_open(path, NULL, &err);
    batcher *b = in ? batcher_open(in, path, &o, &err) : NULL;
    CHECK(b);
    batch cur, after;
    CHECK(batcher_next(b, &cur, NULL, &err) == 1 && cur.sample_ids[0] == 100);
    for (int k = 1; k < 3; k++) { /* batches of records 4.. and 8.. */
        CHECK(peek_within_a_second(b, &after));
        CHECK(after.sample_ids[0] == 100 + 4 * k && after.raw[0] != cur.raw[0] && after.raw[0][0] == pixel(4 * k, 0, 0));
        batcher_release(b);
        CHECK(batcher_next(b, &cur, NULL, &err) == 1);
        CHECK(cur.raw[0] == after.raw[0] && cur.raw[1] == after.raw[1] && cur.sample_ids[0] == 100 + 4 * k);
    }
    CHECK(!peek_within_a_second(b, &after)); /* the stream has ended */
    batcher_release(b);
    CHECK(batcher_next(b, &cur, NULL, &err) == 0);
    batcher_close(b);
}

TEST(test_batcher_refuses_a_share_out_of_range)
{
    moco_error err;
    stream_reader *in = stream_reader_open(path, NULL, &err);
    CHECK(in);
    batcher_options o = {.batch = 2, .views = 2, .size = S, .channels = C, .share = 2, .shares = 2};
    CHECK(batcher_open(in, path, &o, &err) == NULL); /* the batcher closes the reader */
}

int main(void)
{
    snprintf(path, sizeof path, "/tmp/test_batcher.%d.tsz", (int)getpid());
    if (write_views(path)) {
        printf("FAIL test_batcher: cannot write %s\n", path);
        return 1;
    }
    RUN(test_batcher_normalises_views);
    RUN(test_batcher_raw_keeps_the_bytes);
    RUN(test_batcher_shares_batches_among_ranks_after_the_skip);
    RUN(test_batcher_raw_batches_in_the_callers_memory);
    RUN(test_batcher_peeks_at_the_next_batch);
    RUN(test_batcher_refuses_a_share_out_of_range);
    unlink(path);
    TEST_EXIT();
}
