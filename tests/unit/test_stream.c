/* test_stream.c — the tensor stream: round trips, concatenation, and every kind of bad input. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "stream.h"
#include "test.h"

static char tmpdir[] = "/tmp/moco-test-stream-XXXXXX";

static char *tmp_path(const char *name)
{
    static char buf[4][256];
    static int i;
    i = (i + 1) % 4;
    snprintf(buf[i], sizeof buf[i], "%s/%s", tmpdir, name);
    return buf[i];
}

static stream_header *sample_header(const char *kind)
{
    stream_header *h = stream_header_new(kind, "test_stream 1.0");
    const char *classes[] = {"cat", "dog", "ünïcode \"quoted\""};
    stream_header_set_classes(h, 3, classes);
    stream_header_set_int(h, "samples", 5);
    return h;
}

/* Record i: one u8 image (i+1, 3, 2) filled with i*7+k, plus an f32 vector. */
static int write_sample_stream(const char *path, int level, int records, const char *kind)
{
    moco_error err;
    stream_options opt = STREAM_OPTIONS_DEFAULT;
    opt.level = level;
    stream_header *h = sample_header(kind);
    stream_writer *w = stream_writer_open(path, &opt, h, &err);
    stream_header_free(h);
    if (!w)
        return -1;
    uint8_t img[64];
    float vec[5];
    for (int i = 0; i < records; i++) {
        for (int k = 0; k < 64; k++)
            img[k] = (uint8_t)(i * 7 + k);
        for (int k = 0; k < 5; k++)
            vec[k] = (float)i + 0.25f * (float)k;
        stream_record r;
        stream_record_init(&r, 1000 + i, i % 3);
        int64_t dims[3] = {i + 1, 3, 2};
        int64_t vdims[1] = {5};
        if (stream_record_add(&r, "image", DTYPE_U8, 3, dims, img, &err) ||
            stream_record_add(&r, "vec", DTYPE_F32, 1, vdims, vec, &err) || stream_write(w, &r, &err)) {
            stream_writer_abort(w);
            return -1;
        }
    }
    return stream_writer_close(w, &err);
}

/* Read a whole stream from memory; returns records read, or -1 with err filled. */
static int read_all(const uint8_t *buf, size_t len, moco_error *err)
{
    stream_reader *r = stream_reader_open_memory(buf, len, "mem", NULL, err);
    if (!r)
        return -1;
    stream_record rec;
    int n = 0, rc;
    while ((rc = stream_read(r, &rec, err)) == 1)
        n++;
    stream_reader_close(r);
    return rc < 0 ? -1 : n;
}

static int check_sample_records(stream_reader *r, int records, int repeat)
{
    moco_error err;
    stream_record rec;
    for (int rep = 0; rep < repeat; rep++)
        for (int i = 0; i < records; i++) {
            if (stream_read(r, &rec, &err) != 1)
                return -1;
            const tensor *img = stream_record_find(&rec, "image");
            const tensor *vec = stream_record_find(&rec, "vec");
            if (!img || !vec || rec.sample_id != 1000 + i || rec.label != i % 3 || img->rank != 3 ||
                img->dims[0] != i + 1 || img->dims[1] != 3 || img->dims[2] != 2 || img->dtype != DTYPE_U8 ||
                vec->dtype != DTYPE_F32 || vec->dims[0] != 5 || ((uintptr_t)img->data & 63) != 0)
                return -2;
            for (int k = 0; k < (i + 1) * 6; k++)
                if (((uint8_t *)img->data)[k] != (uint8_t)(i * 7 + k))
                    return -3;
            for (int k = 0; k < 5; k++)
                if (((float *)vec->data)[k] != (float)i + 0.25f * (float)k)
                    return -4;
        }
    return stream_read(r, &rec, &err) == 0 ? 0 : -5;
}


TEST(test_stream_round_trip_raw_and_every_zstd_kind)
{
    int levels[] = {0, 1, 3, 19, -1, -7};
    for (size_t l = 0; l < sizeof levels / sizeof *levels; l++) {
        const char *p = tmp_path("rt.tsz");
        CHECK(write_sample_stream(p, levels[l], 5, "images") == 0);
        moco_error err;
        stream_reader *r = stream_reader_open(p, NULL, &err);
        CHECK(r != NULL);
        CHECK(strcmp(stream_reader_encoding(r), levels[l] ? "zstd" : "raw") == 0);
        const stream_header *h = stream_reader_header(r);
        CHECK(strcmp(stream_header_kind(h), "images") == 0);
        CHECK(strcmp(stream_header_get_str(h, "producer", ""), "test_stream 1.0") == 0);
        CHECK(stream_header_get_int(h, "samples", -1) == 5);
        CHECK(stream_header_num_classes(h) == 3);
        CHECK(strcmp(stream_header_class(h, 2), "ünïcode \"quoted\"") == 0);
        CHECK(stream_header_class(h, 3) == NULL);
        CHECK(check_sample_records(r, 5, 1) == 0);
        CHECK(stream_reader_records(r) == 5);
        stream_reader_close(r);
    }
}

TEST(test_stream_round_trip_every_dtype_and_rank)
{
    const char *p = tmp_path("dtypes.tsz");
    moco_error err;
    stream_header *h = stream_header_new("tensors", "test");
    stream_writer *w = stream_writer_open(p, NULL, h, &err);
    stream_header_free(h);
    CHECK(w != NULL);
    static uint8_t data[8 * 256];
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = (uint8_t)(i * 31 + 7);
    int64_t dims[8] = {2, 1, 2, 1, 2, 1, 2, 2}; /* rank 8, 32 elements */
    for (int dtype = DTYPE_U8; dtype <= DTYPE_F32; dtype++)
        for (int rank = 0; rank <= 8; rank++) {
            stream_record r;
            stream_record_init(&r, dtype * 100 + rank, -1);
            CHECK_OK(stream_record_add(&r, dtype_name(dtype), dtype, rank, dims, data, &err), &err);
            int64_t zero[2] = {3, 0};
            CHECK_OK(stream_record_add(&r, "empty", dtype, 2, zero, data, &err), &err);
            CHECK_OK(stream_write(w, &r, &err), &err);
        }
    CHECK_OK(stream_writer_close(w, &err), &err);
    stream_reader *r = stream_reader_open(p, NULL, &err);
    CHECK(r != NULL);
    stream_record rec;
    for (int dtype = DTYPE_U8; dtype <= DTYPE_F32; dtype++)
        for (int rank = 0; rank <= 8; rank++) {
            CHECK(stream_read(r, &rec, &err) == 1);
            CHECK(rec.sample_id == dtype * 100 + rank && rec.label == -1 && rec.ntensors == 2);
            const tensor *t = &rec.tensors[0];
            CHECK(t->dtype == (tensor_dtype)dtype && t->rank == rank && strcmp(t->name, dtype_name(dtype)) == 0);
            CHECK(memcmp(t->dims, dims, sizeof(int64_t) * (size_t)rank) == 0);
            CHECK(memcmp(t->data, data, (size_t)tensor_nbytes(t)) == 0);
            CHECK(tensor_numel(&rec.tensors[1]) == 0);
        }
    CHECK(stream_read(r, &rec, &err) == 0);
    stream_reader_close(r);
}

TEST(test_stream_concatenation_of_raw_and_zstd_parts)
{
    const char *a = tmp_path("a.tsz"), *b = tmp_path("b.tsz"), *c = tmp_path("c.tsz");
    CHECK(write_sample_stream(a, 0, 5, "images") == 0);
    CHECK(write_sample_stream(b, -3, 5, "images") == 0);
    CHECK(write_sample_stream(c, 0, 5, "images") == 0);
    size_t la, lb, lc;
    uint8_t *ba = test_slurp(a, &la), *bb = test_slurp(b, &lb), *bc = test_slurp(c, &lc);
    uint8_t *all = malloc(la + lb + lc);
    memcpy(all, ba, la);
    memcpy(all + la, bb, lb);
    memcpy(all + la + lb, bc, lc);
    moco_error err;
    stream_reader *r = stream_reader_open_memory(all, la + lb + lc, "cat", NULL, &err);
    CHECK(r != NULL);
    CHECK(check_sample_records(r, 5, 3) == 0);
    CHECK(stream_reader_parts(r) == 3);
    stream_reader_close(r);
    free(ba), free(bb), free(bc), free(all);
}

TEST(test_stream_refuses_concatenating_different_kinds)
{
    const char *a = tmp_path("k1.tsz"), *b = tmp_path("k2.tsz");
    CHECK(write_sample_stream(a, 1, 2, "images") == 0);
    CHECK(write_sample_stream(b, 1, 2, "features") == 0);
    size_t la, lb;
    uint8_t *ba = test_slurp(a, &la), *bb = test_slurp(b, &lb);
    uint8_t *all = malloc(la + lb);
    memcpy(all, ba, la);
    memcpy(all + la, bb, lb);
    moco_error err;
    CHECK(read_all(all, la + lb, &err) == -1);
    CHECK(strstr(err.msg, "part 2 is a 'features' stream but part 1 is 'images'") != NULL);
    free(ba), free(bb), free(all);
}

/* Flip each byte in turn: every flip must be reported, or (zstd only: a flip in an unused bit of
 * the frame header, say) leave the decoded records exactly as written. Never a crash, never
 * different data passed off as good. */
static void flip_every_byte(int level, int *caught, int *total, int *silently_changed)
{
    const char *p = tmp_path("flip.tsz");
    *caught = *total = *silently_changed = 0;
    if (write_sample_stream(p, level, 5, "images"))
        return;
    size_t len;
    uint8_t *buf = test_slurp(p, &len);
    for (size_t i = 0; i < len; i++) {
        buf[i] ^= 0x10;
        moco_error err;
        (*total)++;
        if (read_all(buf, len, &err) < 0) {
            (*caught)++;
        } else {
            stream_reader *r = stream_reader_open_memory(buf, len, "mem", NULL, &err);
            *silently_changed += !r || check_sample_records(r, 5, 1) != 0;
            stream_reader_close(r);
        }
        buf[i] ^= 0x10;
    }
    free(buf);
}

TEST(test_stream_rejects_every_flipped_byte_raw)
{
    int caught, total, changed;
    flip_every_byte(0, &caught, &total, &changed);
    CHECK(total > 1000);
    CHECK(caught == total);
}

TEST(test_stream_flipped_bytes_in_zstd_never_pass_changed_data)
{
    int caught, total, changed;
    flip_every_byte(3, &caught, &total, &changed);
    CHECK(total > 100);
    CHECK(changed == 0);
    CHECK(caught > total * 9 / 10);
}

TEST(test_stream_flipped_data_byte_names_the_record)
{
    const char *p = tmp_path("flip2.tsz");
    CHECK(write_sample_stream(p, 0, 5, "images") == 0);
    size_t len;
    uint8_t *buf = test_slurp(p, &len);
    buf[len - 300] ^= 1; /* inside the last data record's image */
    moco_error err;
    CHECK(read_all(buf, len, &err) == -1);
    CHECK(strstr(err.msg, "mem: record 5: checksum mismatch") != NULL);
    free(buf);
}

static size_t first_data_record(const uint8_t *buf)
{
    uint64_t body_len;
    memcpy(&body_len, buf + 32, 8);
    return 64 + body_len;
}

TEST(test_stream_skips_a_damaged_record_and_reads_on)
{
    const char *p = tmp_path("damaged.tsz");
    CHECK(write_sample_stream(p, 0, 5, "images") == 0);
    size_t len;
    uint8_t *buf = test_slurp(p, &len);
    uint8_t *rec2 = buf + first_data_record(buf);
    uint64_t body_len;
    memcpy(&body_len, rec2 + 32, 8);
    rec2 += 64 + body_len; /* the second data record */
    rec2[64 + 100] ^= 0x40;  /* a byte of its body */
    moco_error err;
    stream_reader *r = stream_reader_open_memory(buf, len, "mem", NULL, &err);
    CHECK(r != NULL);
    stream_record rec;
    int seen[5] = {0}, rc, damaged = 0;
    while ((rc = stream_read(r, &rec, &err)) == 1 || rc == STREAM_DAMAGED) {
        if (rc == STREAM_DAMAGED) {
            damaged++;
            CHECK(strstr(err.msg, "mem: record 2: checksum mismatch") != NULL);
        } else {
            seen[rec.sample_id - 1000] = 1;
        }
    }
    stream_reader_close(r);
    free(buf);
    CHECK(rc == 0 && damaged == 1);
    CHECK(seen[0] && !seen[1] && seen[2] && seen[3] && seen[4]);
}

TEST(test_stream_rejects_truncation_at_every_length)
{
    int levels[] = {0, 3};
    for (int l = 0; l < 2; l++) {
        const char *p = tmp_path("trunc.tsz");
        CHECK(write_sample_stream(p, levels[l], 5, "images") == 0);
        size_t len;
        uint8_t *buf = test_slurp(p, &len);
        for (size_t cut = 0; cut < len; cut++) {
            moco_error err;
            uint8_t *copy = malloc(cut ? cut : 1); /* exact size: ASan sees any over-read */
            memcpy(copy, buf, cut);
            int n = read_all(copy, cut, &err);
            free(copy);
            CHECK(n == -1);
            CHECK(strstr(err.msg, "truncated") || strstr(err.msg, "empty input") || strstr(err.msg, "zstd"));
        }
        free(buf);
    }
}

TEST(test_stream_truncated_raw_stream_says_so)
{
    const char *p = tmp_path("trunc2.tsz");
    CHECK(write_sample_stream(p, 0, 5, "images") == 0);
    size_t len;
    uint8_t *buf = test_slurp(p, &len);
    moco_error err;
    CHECK(read_all(buf, len - 128, &err) == -1); /* the end record (64 + 64 bytes) is gone */
    CHECK(strstr(err.msg, "truncated stream: it ends after record 5 without an end record") != NULL);
    free(buf);
}

TEST(test_stream_rejects_foreign_and_empty_input)
{
    moco_error err;
    const char *png = "\x89PNG\r\n\x1a\n and then some more bytes to fill a header.................";
    CHECK(read_all((const uint8_t *)png, strlen(png), &err) == -1);
    CHECK(strstr(err.msg, "not a tensor stream (it starts with bytes 89 50 4e 47)") != NULL);
    CHECK(read_all((const uint8_t *)"", 0, &err) == -1);
    CHECK(strstr(err.msg, "empty input") != NULL);
    CHECK(stream_reader_open(tmp_path("does-not-exist"), NULL, &err) == NULL);
    CHECK(strstr(err.msg, "cannot open") != NULL);
}

/* Rewrite the checks of a raw record at `off` after tampering, as a hostile writer would. */
static void reseal(uint8_t *rec)
{
    uint64_t body_len;
    memcpy(&body_len, rec + 32, 8);
    uint64_t c = XXH3_64bits(rec + 64, body_len);
    memcpy(rec + 40, &c, 8);
    c = XXH3_64bits(rec, 56);
    memcpy(rec + 56, &c, 8);
}

TEST(test_stream_rejects_hostile_dims)
{
    const char *p = tmp_path("hostile.tsz");
    CHECK(write_sample_stream(p, 0, 2, "images") == 0);
    size_t len;
    uint8_t *buf = test_slurp(p, &len);
    uint8_t *rec = buf + first_data_record(buf);
    /* First descriptor: dtype, rank, name_len, pad, dims[0] at +8. */
    uint64_t huge = (uint64_t)1 << 45;
    memcpy(rec + 64 + 8, &huge, 8);
    reseal(rec);
    moco_error err;
    CHECK(read_all(buf, len, &err) == -1);
    CHECK(strstr(err.msg, "record 1: tensor 0: dim 0 is 35184372088832 (hostile or corrupt)") != NULL);
    /* Plausible dims whose product overflows the record. */
    uint64_t big = (uint64_t)1 << 30;
    memcpy(rec + 64 + 8, &big, 8);
    reseal(rec);
    CHECK(read_all(buf, len, &err) == -1);
    CHECK(strstr(err.msg, "runs past the record body") != NULL);
    /* Rank 9. */
    memcpy(rec + 64 + 8, &(uint64_t){1}, 8);
    rec[64 + 1] = 9;
    reseal(rec);
    CHECK(read_all(buf, len, &err) == -1);
    CHECK(strstr(err.msg, "rank 9") != NULL);
    free(buf);
}

TEST(test_stream_rejects_record_larger_than_limit_without_allocating)
{
    const char *p = tmp_path("huge.tsz");
    CHECK(write_sample_stream(p, 0, 2, "images") == 0);
    size_t len;
    uint8_t *buf = test_slurp(p, &len);
    uint8_t *rec = buf + first_data_record(buf);
    uint64_t body = (uint64_t)1 << 40;
    memcpy(rec + 32, &body, 8);
    uint64_t c = XXH3_64bits(rec, 56);
    memcpy(rec + 56, &c, 8);
    moco_error err;
    CHECK(read_all(buf, len, &err) == -1);
    CHECK(strstr(err.msg, "record 1: 1099511627776 bytes exceeds the limit") != NULL);
    /* Within the limit but longer than the input: truncated, and memory grew only with the data. */
    body = (uint64_t)900 << 20;
    memcpy(rec + 32, &body, 8);
    c = XXH3_64bits(rec, 56);
    memcpy(rec + 56, &c, 8);
    CHECK(read_all(buf, len, &err) == -1);
    CHECK(strstr(err.msg, "truncated") != NULL);
    free(buf);
}

TEST(test_stream_rejects_newer_version)
{
    const char *p = tmp_path("ver.tsz");
    CHECK(write_sample_stream(p, 0, 1, "images") == 0);
    size_t len;
    uint8_t *buf = test_slurp(p, &len);
    buf[5] = 2;
    uint64_t c = XXH3_64bits(buf, 56);
    memcpy(buf + 56, &c, 8);
    moco_error err;
    CHECK(read_all(buf, len, &err) == -1);
    CHECK(strstr(err.msg, "format version 2; this reader knows version 1") != NULL);
    free(buf);
}

TEST(test_stream_record_limits_are_enforced_on_write)
{
    moco_error err;
    stream_record r;
    stream_record_init(&r, 0, 0);
    int64_t d = 1;
    uint8_t x = 0;
    for (int i = 0; i < STREAM_MAX_TENSORS; i++)
        CHECK(stream_record_add(&r, "t", DTYPE_U8, 1, &d, &x, &err) == 0);
    CHECK(stream_record_add(&r, "t", DTYPE_U8, 1, &d, &x, &err) == MOCO_ERR);
    stream_record_init(&r, 0, 0);
    char long_name[200];
    memset(long_name, 'a', sizeof long_name - 1);
    long_name[199] = 0;
    CHECK(stream_record_add(&r, long_name, DTYPE_U8, 1, &d, &x, &err) == MOCO_ERR);
    int64_t neg = -1;
    CHECK(stream_record_add(&r, "neg", DTYPE_U8, 1, &neg, &x, &err) == MOCO_ERR);
    CHECK(stream_record_add(&r, "rank", DTYPE_U8, 9, &d, &x, &err) == MOCO_ERR);
}

TEST(test_stream_writer_returns_epipe_when_reader_is_gone)
{
    int fds[2];
    CHECK(pipe(fds) == 0);
    close(fds[0]);
    signal(SIGPIPE, SIG_IGN);
    moco_error err;
    stream_options opt = STREAM_OPTIONS_DEFAULT;
    opt.level = 0;
    stream_header *h = stream_header_new("views", "test");
    stream_writer *w = stream_writer_open_fd(fds[1], "pipe", &opt, h, &err);
    stream_header_free(h);
    int rc = MOCO_OK;
    if (w) { /* the header may already have failed; otherwise the first big write does */
        static uint8_t big[1 << 20];
        stream_record r;
        stream_record_init(&r, 0, 0);
        int64_t d = sizeof big;
        stream_record_add(&r, "x", DTYPE_U8, 1, &d, big, &err);
        rc = stream_write(w, &r, &err);
        stream_writer_abort(w);
    } else {
        rc = strstr(err.msg, "gone away") ? MOCO_EPIPE : MOCO_ERR;
    }
    close(fds[1]);
    CHECK(rc == MOCO_EPIPE);
}

TEST(test_stream_refuses_to_write_to_a_terminal)
{
    int master = posix_openpt(O_RDWR | O_NOCTTY);
    CHECK(master >= 0);
    CHECK(grantpt(master) == 0 && unlockpt(master) == 0);
    int tty = open(ptsname(master), O_RDWR | O_NOCTTY);
    CHECK(tty >= 0);
    moco_error err;
    stream_header *h = stream_header_new("views", "test");
    stream_writer *w = stream_writer_open_fd(tty, "(stdout)", NULL, h, &err);
    stream_header_free(h);
    close(tty);
    close(master);
    CHECK(w == NULL);
    CHECK(strstr(err.msg, "refusing to write a binary stream to a terminal") != NULL);
}

TEST(test_stream_named_file_appears_only_when_complete)
{
    const char *p = tmp_path("atomic.tsz");
    unlink(p);
    moco_error err;
    stream_header *h = stream_header_new("views", "test");
    stream_writer *w = stream_writer_open(p, NULL, h, &err);
    CHECK(w != NULL);
    struct stat st;
    CHECK(stat(p, &st) != 0); /* still under its temporary name */
    stream_writer_abort(w);
    CHECK(stat(p, &st) != 0); /* abandoned: nothing left, not even the temporary */
    w = stream_writer_open(p, NULL, h, &err);
    stream_header_free(h);
    CHECK(w != NULL);
    CHECK_OK(stream_writer_close(w, &err), &err);
    CHECK(stat(p, &st) == 0);
    CHECK(stream_writer_open(tmp_path("no/such/dir.tsz"), NULL, h = stream_header_new("x", "t"), &err) == NULL);
    stream_header_free(h);
    CHECK(strstr(err.msg, "cannot create") != NULL);
}

/* A large raw record through a real pipe, written from a thread: the reader's direct-read path. */
struct pipe_job { int fd, level; size_t n; };

static void *pipe_writer(void *arg)
{
    struct pipe_job *job = arg;
    moco_error err;
    stream_options opt = STREAM_OPTIONS_DEFAULT;
    opt.level = job->level;
    opt.threads = job->level ? 2 : 0;
    stream_header *h = stream_header_new("views", "test");
    stream_writer *w = stream_writer_open_fd(job->fd, "pipe", &opt, h, &err);
    stream_header_free(h);
    uint8_t *big = malloc(job->n);
    for (size_t i = 0; i < job->n; i++)
        big[i] = (uint8_t)(i % 251);
    for (int k = 0; w && k < 4; k++) {
        stream_record r;
        stream_record_init(&r, k, k);
        int64_t d[4] = {2, (int64_t)job->n / 6, 1, 3};
        stream_record_add(&r, "views", DTYPE_U8, 4, d, big, &err);
        if (stream_write(w, &r, &err))
            break;
    }
    if (w)
        stream_writer_close(w, &err);
    close(job->fd);
    free(big);
    return NULL;
}

TEST(test_stream_large_records_through_a_pipe)
{
    for (int level = 0; level <= 1; level++) {
        int fds[2];
        CHECK(pipe(fds) == 0);
        struct pipe_job job = {fds[1], level, (size_t)6 * 500000};
        pthread_t th;
        pthread_create(&th, NULL, pipe_writer, &job);
        moco_error err;
        stream_reader *r = stream_reader_open_fd(fds[0], "pipe", NULL, &err);
        CHECK(r != NULL);
        stream_record rec;
        int n = 0, rc, ok = 1;
        while ((rc = stream_read(r, &rec, &err)) == 1) {
            const uint8_t *v = rec.tensors[0].data;
            for (size_t i = 0; i < job.n; i += 4099)
                ok &= v[i] == (uint8_t)(i % 251);
            n++;
        }
        stream_reader_close(r);
        pthread_join(th, NULL);
        close(fds[0]);
        CHECK(rc == 0 && n == 4 && ok);
    }
}

int main(void)
{
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(test_stream_round_trip_raw_and_every_zstd_kind);
    RUN(test_stream_round_trip_every_dtype_and_rank);
    RUN(test_stream_concatenation_of_raw_and_zstd_parts);
    RUN(test_stream_refuses_concatenating_different_kinds);
    RUN(test_stream_rejects_every_flipped_byte_raw);
    RUN(test_stream_flipped_bytes_in_zstd_never_pass_changed_data);
    RUN(test_stream_flipped_data_byte_names_the_record);
    RUN(test_stream_skips_a_damaged_record_and_reads_on);
    RUN(test_stream_rejects_truncation_at_every_length);
    RUN(test_stream_truncated_raw_stream_says_so);
    RUN(test_stream_rejects_foreign_and_empty_input);
    RUN(test_stream_rejects_hostile_dims);
    RUN(test_stream_rejects_record_larger_than_limit_without_allocating);
    RUN(test_stream_rejects_newer_version);
    RUN(test_stream_record_limits_are_enforced_on_write);
    RUN(test_stream_writer_returns_epipe_when_reader_is_gone);
    RUN(test_stream_refuses_to_write_to_a_terminal);
    RUN(test_stream_named_file_appears_only_when_complete);
    RUN(test_stream_large_records_through_a_pipe);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", tmpdir);
    TEST_EXIT();
}
