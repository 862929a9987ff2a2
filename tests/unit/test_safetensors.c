/* test_safetensors.c — the safetensors reader and writer: round trips, a file laid out as PyTorch
 * writes it (tests/fixtures/python.safetensors, from make_safetensors_fixture.py beside it), and the
 * reference implementation's rejections. Runs from the repository root. */
#include <dirent.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#include "safetensors.h"
#include "test.h"

#define FIXTURE "tests/fixtures/python.safetensors"

static char scratch[64]; /* a fresh directory per test that needs files */

static const char *make_scratch(void)
{
    snprintf(scratch, sizeof scratch, "/tmp/test_safetensors.XXXXXX");
    return mkdtemp(scratch);
}

/* Entries in dir besides . and .. */
static int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    if (!d)
        return -1;
    for (struct dirent *e; (e = readdir(d));)
        n += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
    closedir(d);
    return n;
}

/* A safetensors file in buf from header JSON and data_len bytes of data (0, 1, 2, ...). */
static uint8_t file_buf[4096];
static size_t make_file(const char *json, size_t data_len)
{
    uint64_t n = strlen(json);
    for (int i = 0; i < 8; i++)
        file_buf[i] = (uint8_t)(n >> (8 * i));
    memcpy(file_buf + 8, json, n);
    for (size_t i = 0; i < data_len; i++)
        file_buf[8 + n + i] = (uint8_t)i;
    return 8 + n + data_len;
}

/* The file made of json + data is refused with a message holding the file name and `needle`. */
static int rejects(const char *json, size_t data_len, const char *needle)
{
    moco_error err = {{0}};
    safetensors *st = safetensors_open_memory(file_buf, make_file(json, data_len), "bad.st", &err);
    if (st) {
        safetensors_close(st);
        printf("# accepted: %s\n", json);
        return 0;
    }
    if (strncmp(err.msg, "bad.st: ", 8) != 0 || !strstr(err.msg, needle)) {
        printf("# message: %s\n", err.msg);
        return 0;
    }
    return 1;
}

TEST(test_safetensors_round_trips_six_dtypes_and_metadata)
{
    uint8_t u8[6] = {0, 1, 2, 253, 254, 255};
    int32_t i32[4] = {INT32_MIN, -1, 0, INT32_MAX};
    int64_t i64 = INT64_MIN + 5;
    uint16_t f16[6], bf16[5];
    float f32[24];
    for (int i = 0; i < 6; i++)
        f16[i] = f32_to_f16(i * 0.5f - 1.0f);
    for (int i = 0; i < 5; i++)
        bf16[i] = f32_to_bf16(i * -3.0f);
    for (int i = 0; i < 24; i++)
        f32[i] = (float)i / 7.0f;
    struct {
        const char *name;
        tensor_dtype dtype;
        int rank;
        int64_t dims[4];
        void *data;
    } spec[] = {
        {"layer1.0.conv1.weight", DTYPE_F32, 4, {2, 3, 2, 2}, f32},
        {"step", DTYPE_I64, 0, {0}, &i64},
        {"empty", DTYPE_F32, 3, {3, 0, 2}, NULL},
        {"half", DTYPE_F16, 3, {2, 3, 1}, f16},
        {"brain \"float\"", DTYPE_BF16, 1, {5}, bf16},
        {"ids", DTYPE_I32, 2, {2, 2}, i32},
        {"image", DTYPE_U8, 3, {1, 2, 3}, u8},
    };
    enum { N = sizeof spec / sizeof spec[0] };
    tensor ts[N];
    moco_error err = {{0}};
    for (int i = 0; i < N; i++) {
        CHECK_OK(tensor_init(&ts[i], spec[i].name, spec[i].dtype, spec[i].rank, spec[i].dims, &err), &err);
        ts[i].data = spec[i].data;
    }
    const char *keys[] = {"format", "note"}, *values[] = {"pt", "h\xc3\xa9llo \"quoted\"\n"};
    CHECK(make_scratch());
    char path[128];
    snprintf(path, sizeof path, "%s/round.safetensors", scratch);
    CHECK_OK(safetensors_write(path, ts, N, keys, values, 2, &err), &err);

    safetensors *st = safetensors_open(path, &err);
    CHECK_OK(!st, &err);
    int ok = safetensors_count(st) == N;
    for (int i = 0; ok && i < N; i++) {
        const tensor *t = safetensors_tensor(st, i); /* data order = the order written */
        ok = strcmp(t->name, ts[i].name) == 0 && t->dtype == ts[i].dtype && t->rank == ts[i].rank &&
             memcmp(t->dims, ts[i].dims, sizeof(int64_t) * (size_t)t->rank) == 0 &&
             (tensor_nbytes(t) == 0 || memcmp(t->data, ts[i].data, (size_t)tensor_nbytes(t)) == 0) &&
             safetensors_find(st, ts[i].name) == t;
    }
    ok = ok && safetensors_find(st, "missing") == NULL && safetensors_metadata_count(st) == 2 &&
         strcmp(safetensors_metadata(st, "format"), "pt") == 0 &&
         strcmp(safetensors_metadata(st, "note"), values[1]) == 0 &&
         safetensors_metadata(st, "absent") == NULL;
    safetensors_close(st);
    unlink(path);
    rmdir(scratch);
    CHECK(ok);
}

TEST(test_safetensors_writer_starts_data_at_multiple_of_64)
{
    float w[3] = {1, 2, 3};
    tensor t;
    moco_error err = {{0}};
    CHECK_OK(tensor_init(&t, "w", DTYPE_F32, 1, (int64_t[]){3}, &err), &err);
    t.data = w;
    CHECK(make_scratch());
    char path[128];
    snprintf(path, sizeof path, "%s/a.safetensors", scratch);
    CHECK_OK(safetensors_write(path, &t, 1, NULL, NULL, 0, &err), &err);
    size_t len = 0;
    uint8_t *buf = test_slurp(path, &len);
    unlink(path);
    rmdir(scratch);
    CHECK(buf);
    uint64_t n = 0;
    for (int i = 0; i < 8; i++)
        n |= (uint64_t)buf[i] << (8 * i);
    int ok = (8 + n) % 64 == 0 && len == 8 + n + sizeof w && buf[8 + n - 1] == ' ' &&
             memcmp(buf + 8 + n, w, sizeof w) == 0;
    free(buf);
    CHECK(ok);
}

TEST(test_safetensors_reads_python_fixture)
{
    moco_error err = {{0}};
    safetensors *st = safetensors_open(FIXTURE, &err);
    CHECK_OK(!st, &err);
    const tensor *conv = safetensors_find(st, "conv1.weight");
    const tensor *step = safetensors_find(st, "bn1.num_batches_tracked");
    const tensor *bias = safetensors_find(st, "fc.bias");
    const tensor *labels = safetensors_find(st, "labels");
    const tensor *pixels = safetensors_find(st, "pixels");
    const tensor *bf = safetensors_find(st, "bf");
    int ok = safetensors_count(st) == 6 && conv && step && bias && labels && pixels && bf;
    /* PyTorch's writer orders data by dtype, widest first */
    ok = ok && safetensors_tensor(st, 0) == step && safetensors_tensor(st, 5) == pixels;
    ok = ok && conv->dtype == DTYPE_F32 && conv->rank == 4 && conv->dims[0] == 2 &&
         conv->dims[1] == 1 && conv->dims[2] == 3 && conv->dims[3] == 3;
    for (int i = 0; ok && i < 18; i++)
        ok = tensor_get(conv, i) == i * 0.25 - 1;
    ok = ok && step->dtype == DTYPE_I64 && step->rank == 0 && tensor_get(step, 0) == 7;
    ok = ok && bias->dtype == DTYPE_F16 && bias->rank == 1 && bias->dims[0] == 3 &&
         tensor_get(bias, 0) == 0.5 && tensor_get(bias, 1) == -1.25 && tensor_get(bias, 2) == 2.0;
    ok = ok && labels->dtype == DTYPE_I32 && labels->rank == 1 && labels->dims[0] == 4 &&
         tensor_get(labels, 0) == 0 && tensor_get(labels, 1) == 9 && tensor_get(labels, 2) == -1 &&
         tensor_get(labels, 3) == 123456;
    ok = ok && pixels->dtype == DTYPE_U8 && pixels->rank == 2 && pixels->dims[0] == 2 &&
         pixels->dims[1] == 3 && tensor_get(pixels, 3) == 128 && tensor_get(pixels, 5) == 255;
    ok = ok && bf->dtype == DTYPE_BF16 && bf->rank == 1 && bf->dims[0] == 2 &&
         tensor_get(bf, 0) == 1.0 && tensor_get(bf, 1) == -2.5;
    ok = ok && safetensors_metadata_count(st) == 1 &&
         strcmp(safetensors_metadata_key(st, 0), "format") == 0 &&
         strcmp(safetensors_metadata(st, "format"), "pt") == 0;
    safetensors_close(st);
    CHECK(ok);
}

TEST(test_safetensors_rejects_header_length_beyond_file)
{
    size_t len = make_file("{}", 0);
    file_buf[0] = 200; /* 200 header bytes claimed, 2 present */
    moco_error err = {{0}};
    CHECK(!safetensors_open_memory(file_buf, len, "bad.st", &err));
    CHECK(strstr(err.msg, "bad.st: header length 200 runs past the end"));
}

TEST(test_safetensors_rejects_header_length_over_100mb)
{
    size_t len = make_file("{}", 0);
    file_buf[7] = 0x80;
    moco_error err = {{0}};
    CHECK(!safetensors_open_memory(file_buf, len, "bad.st", &err));
    CHECK(strstr(err.msg, "exceeds the limit"));
}

TEST(test_safetensors_rejects_bad_json)
{
    CHECK(rejects("{\"a\":{\"dtype\":\"U8\",,\"shape\":[1],\"data_offsets\":[0,1]}}", 1, "not valid JSON"));
    CHECK(rejects("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}", 1, "not valid JSON"));
    CHECK(rejects(" {}", 0, "does not start with '{'"));
}

TEST(test_safetensors_rejects_duplicate_names)
{
    CHECK(rejects("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                  "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}", 2, "duplicate"));
}

TEST(test_safetensors_rejects_overlapping_offsets)
{
    CHECK(rejects("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                  "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12,
                  "tensor 'b' (bytes 4..12) overlaps tensor 'a'"));
}

TEST(test_safetensors_rejects_gap_between_tensors)
{
    CHECK(rejects("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                  "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}", 20,
                  "data bytes 8..12, before tensor 'b', belong to no tensor"));
    CHECK(rejects("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 9,
                  "cover only 8"));
}

TEST(test_safetensors_rejects_wrong_byte_size_for_shape)
{
    CHECK(rejects("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8,
                  "tensor 'a': f32[3] needs 12 bytes"));
    CHECK(rejects("{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,4611686018427387904],"
                  "\"data_offsets\":[0,0]}}", 0, "tensor 'a': f32[4611686018427387904,"));
}

TEST(test_safetensors_rejects_f64_naming_tensor_and_dtype)
{
    CHECK(rejects("{\"w\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8,
                  "tensor 'w': dtype 'F64' is not supported"));
}

TEST(test_safetensors_rejects_rank_above_8)
{
    CHECK(rejects("{\"w\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", 1,
                  "tensor 'w': rank 9 (at most 8)"));
}

TEST(test_safetensors_rejects_malformed_entries)
{
    CHECK(rejects("{\"w\":[1]}", 0, "tensor 'w': expected an object"));
    CHECK(rejects("{\"w\":{\"dtype\":\"U8\",\"shape\":[-1],\"data_offsets\":[0,0]}}", 0, "shape[0]"));
    CHECK(rejects("{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,0]}}", 1, "end before"));
    CHECK(rejects("{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0]}}", 1, "data_offsets"));
    CHECK(rejects("{\"__metadata__\":{\"epoch\":3}}", 0, "__metadata__ 'epoch' is not a string"));
}

TEST(test_safetensors_rejects_every_truncation_of_fixture)
{
    size_t len = 0;
    uint8_t *buf = test_slurp(FIXTURE, &len);
    CHECK(buf && len > 8);
    int accepted = 0;
    moco_error err = {{0}};
    for (size_t cut = 0; cut < len; cut++) {
        safetensors *st = safetensors_open_memory(buf, cut, FIXTURE, &err);
        accepted += st != NULL;
        safetensors_close(st);
    }
    safetensors *st = safetensors_open_memory(buf, len - 1, FIXTURE, &err);
    free(buf);
    CHECK(!st && accepted == 0);
    CHECK(strstr(err.msg, FIXTURE ": tensor 'pixels': data_offsets [106, 112] run past"));
}

TEST(test_safetensors_write_to_missing_directory_leaves_nothing)
{
    float w = 1;
    tensor t;
    moco_error err = {{0}};
    CHECK_OK(tensor_init(&t, "w", DTYPE_F32, 0, NULL, &err), &err);
    t.data = &w;
    CHECK(make_scratch());
    char path[128];
    snprintf(path, sizeof path, "%s/missing/a.safetensors", scratch);
    int rc = safetensors_write(path, &t, 1, NULL, NULL, 0, &err);
    int left = count_entries(scratch);
    rmdir(scratch);
    CHECK(rc == MOCO_ERR && left == 0);
    CHECK(strstr(err.msg, path) && strstr(err.msg, "No such file or directory"));
}

TEST(test_safetensors_write_rejects_duplicate_names)
{
    uint8_t bytes[2] = {1, 2};
    tensor t[2];
    moco_error err = {{0}};
    CHECK_OK(tensor_init(&t[0], "x", DTYPE_U8, 1, (int64_t[]){1}, &err), &err);
    t[1] = t[0];
    t[0].data = bytes;
    t[1].data = bytes + 1;
    CHECK(make_scratch());
    char path[128];
    snprintf(path, sizeof path, "%s/a.safetensors", scratch);
    int rc = safetensors_write(path, t, 2, NULL, NULL, 0, &err);
    int left = count_entries(scratch);
    rmdir(scratch);
    CHECK(rc == MOCO_ERR && left == 0);
    CHECK(strstr(err.msg, "tensor 'x' given twice"));
}

int main(void)
{
    RUN(test_safetensors_round_trips_six_dtypes_and_metadata);
    RUN(test_safetensors_writer_starts_data_at_multiple_of_64);
    RUN(test_safetensors_reads_python_fixture);
    RUN(test_safetensors_rejects_header_length_beyond_file);
    RUN(test_safetensors_rejects_header_length_over_100mb);
    RUN(test_safetensors_rejects_bad_json);
    RUN(test_safetensors_rejects_duplicate_names);
    RUN(test_safetensors_rejects_overlapping_offsets);
    RUN(test_safetensors_rejects_gap_between_tensors);
    RUN(test_safetensors_rejects_wrong_byte_size_for_shape);
    RUN(test_safetensors_rejects_f64_naming_tensor_and_dtype);
    RUN(test_safetensors_rejects_rank_above_8);
    RUN(test_safetensors_rejects_malformed_entries);
    RUN(test_safetensors_rejects_every_truncation_of_fixture);
    RUN(test_safetensors_write_to_missing_directory_leaves_nothing);
    RUN(test_safetensors_write_rejects_duplicate_names);
    TEST_EXIT();
}
