/* safetensors.c — see safetensors.h. The reader parses the header with jansson and checks it the
 * way the reference Rust crate's Metadata::validate does; the writer builds the header with jansson
 * too, so names are escaped exactly as JSON requires. */
#include "safetensors.h"
#include "output.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Tensor bytes are copied between file and memory as they are. */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors data are little-endian");

/* Writers pad the header so data start here: enough for any SIMD load and for a page-cache copy. */
enum { DATA_ALIGN = 64 };

static const struct {
    const char *name;
    tensor_dtype dtype;
} st_dtypes[] = {
    {"U8", DTYPE_U8},   {"I32", DTYPE_I32},   {"I64", DTYPE_I64},
    {"F16", DTYPE_F16}, {"BF16", DTYPE_BF16}, {"F32", DTYPE_F32},
};
enum { N_ST_DTYPES = sizeof st_dtypes / sizeof st_dtypes[0] };

static const char *st_dtype_name(tensor_dtype d)
{
    for (int i = 0; i < N_ST_DTYPES; i++)
        if (st_dtypes[i].dtype == d)
            return st_dtypes[i].name;
    return NULL;
}

/* ================================ reader ================================ */

typedef struct {
    uint64_t begin, end; /* data_offsets, relative to the data buffer */
    size_t header_pos;   /* order in the header: breaks ties between empty tensors */
    tensor t;
} entry;

struct safetensors {
    void *map; /* the mapped file, or NULL when reading caller memory */
    size_t map_len;
    json_t *header; /* owns the metadata strings */
    int count, nmeta;
    entry *entries; /* sorted by data offset */
    const char **meta_keys, **meta_values;
};

static int get_u64(json_t *v, uint64_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return -1;
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

/* Check one header entry against a data buffer of data_len bytes and fill e (data left unset). */
static int parse_entry(const char *file, const char *name, json_t *info, size_t data_len, entry *e,
                       moco_error *err)
{
    size_t name_len = strlen(name);
    if (name_len == 0 || name_len > TENSOR_MAX_NAME)
        return moco_fail(err, "%s: tensor name '%.40s' has %zu bytes (1 to %d allowed)", file, name,
                         name_len, TENSOR_MAX_NAME);
    if (!json_is_object(info))
        return moco_fail(err, "%s: tensor '%s': expected an object with dtype, shape and data_offsets",
                         file, name);

    const char *dtype_str = json_string_value(json_object_get(info, "dtype"));
    if (!dtype_str)
        return moco_fail(err, "%s: tensor '%s': dtype missing or not a string", file, name);
    tensor_dtype dtype = 0;
    for (int i = 0; i < N_ST_DTYPES; i++)
        if (strcmp(dtype_str, st_dtypes[i].name) == 0)
            dtype = st_dtypes[i].dtype;
    if (!dtype)
        return moco_fail(err, "%s: tensor '%s': dtype '%.32s' is not supported (only U8, I32, I64, "
                         "F16, BF16, F32)", file, name, dtype_str);

    json_t *shape = json_object_get(info, "shape");
    if (!json_is_array(shape))
        return moco_fail(err, "%s: tensor '%s': shape missing or not an array", file, name);
    if (json_array_size(shape) > TENSOR_MAX_RANK)
        return moco_fail(err, "%s: tensor '%s': rank %zu (at most %d)", file, name,
                         json_array_size(shape), TENSOR_MAX_RANK);
    int rank = (int)json_array_size(shape);
    int64_t dims[TENSOR_MAX_RANK];
    for (int i = 0; i < rank; i++) {
        uint64_t d;
        if (get_u64(json_array_get(shape, (size_t)i), &d) != 0)
            return moco_fail(err, "%s: tensor '%s': shape[%d] is not a non-negative integer", file,
                             name, i);
        dims[i] = (int64_t)d;
    }

    json_t *offsets = json_object_get(info, "data_offsets");
    if (!json_is_array(offsets) || json_array_size(offsets) != 2 ||
        get_u64(json_array_get(offsets, 0), &e->begin) != 0 ||
        get_u64(json_array_get(offsets, 1), &e->end) != 0)
        return moco_fail(err, "%s: tensor '%s': data_offsets must be [begin, end], two non-negative "
                         "integers", file, name);
    if (e->begin > e->end)
        return moco_fail(err, "%s: tensor '%s': data_offsets [%llu, %llu] end before they begin",
                         file, name, (unsigned long long)e->begin, (unsigned long long)e->end);
    if (e->end > data_len)
        return moco_fail(err, "%s: tensor '%s': data_offsets [%llu, %llu] run past the %zu-byte data "
                         "buffer (truncated file?)", file, name, (unsigned long long)e->begin,
                         (unsigned long long)e->end, data_len);

    if (tensor_init(&e->t, name, dtype, rank, dims, err) != 0)
        return moco_prefix(err, "%s", file);
    char desc[160];
    int64_t nbytes = tensor_nbytes(&e->t); /* -1 when the element count overflows */
    if (nbytes < 0)
        return moco_fail(err, "%s: tensor '%s': %s has too many elements", file, name,
                         tensor_describe(&e->t, desc, sizeof desc));
    if ((uint64_t)nbytes != e->end - e->begin)
        return moco_fail(err, "%s: tensor '%s': %s needs %lld bytes but data_offsets [%llu, %llu] "
                         "hold %llu", file, name, tensor_describe(&e->t, desc, sizeof desc),
                         (long long)nbytes, (unsigned long long)e->begin,
                         (unsigned long long)e->end, (unsigned long long)(e->end - e->begin));
    return MOCO_OK;
}

static int by_offset(const void *a, const void *b)
{
    const entry *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return x->header_pos < y->header_pos ? -1 : x->header_pos > y->header_pos;
}

static int parse_metadata(const char *file, json_t *meta, safetensors *st, moco_error *err)
{
    if (!json_is_object(meta))
        return moco_fail(err, "%s: __metadata__ is not an object", file);
    size_t n = json_object_size(meta);
    st->meta_keys = calloc(n + 1, sizeof *st->meta_keys);
    st->meta_values = calloc(n + 1, sizeof *st->meta_values);
    if (!st->meta_keys || !st->meta_values)
        return moco_fail(err, "%s: out of memory for %zu metadata entries", file, n);
    const char *key;
    json_t *value;
    json_object_foreach(meta, key, value) {
        if (!json_is_string(value))
            return moco_fail(err, "%s: __metadata__ '%.64s' is not a string", file, key);
        st->meta_keys[st->nmeta] = key;
        st->meta_values[st->nmeta++] = json_string_value(value);
    }
    return MOCO_OK;
}

/* Fill st from the bytes of a whole file; buf stays borrowed. */
static int parse(safetensors *st, const uint8_t *buf, size_t len, const char *file, moco_error *err)
{
    if (len < 8)
        return moco_fail(err, "%s: %zu bytes is too short for a safetensors file", file, len);
    uint64_t n = 0;
    for (int i = 0; i < 8; i++)
        n |= (uint64_t)buf[i] << (8 * i);
    if (n > SAFETENSORS_MAX_HEADER)
        return moco_fail(err, "%s: header length %llu exceeds the limit of %d bytes", file,
                         (unsigned long long)n, SAFETENSORS_MAX_HEADER);
    if (n > len - 8)
        return moco_fail(err, "%s: header length %llu runs past the end of the file (%zu bytes; "
                         "truncated?)", file, (unsigned long long)n, len);
    /* The reference rejects anything else here, leading whitespace included. */
    if (n == 0 || buf[8] != '{')
        return moco_fail(err, "%s: header does not start with '{'", file);

    json_error_t jerr;
    st->header = json_loadb((const char *)buf + 8, n, JSON_REJECT_DUPLICATES, &jerr);
    if (!st->header)
        return moco_fail(err, "%s: header is not valid JSON: %s (at byte %d of the header)", file,
                         jerr.text, jerr.position);

    json_t *meta = json_object_get(st->header, "__metadata__");
    if (meta && parse_metadata(file, meta, st, err) != 0)
        return MOCO_ERR;

    /* Bounded by the 100 MB header: every entry takes dozens of bytes of JSON. */
    size_t ntensors = json_object_size(st->header) - (meta != NULL);
    st->entries = calloc(ntensors + 1, sizeof *st->entries);
    if (!st->entries)
        return moco_fail(err, "%s: out of memory for %zu tensors", file, ntensors);
    const uint8_t *data = buf + 8 + n;
    size_t data_len = len - 8 - n;
    const char *name;
    json_t *info;
    json_object_foreach(st->header, name, info) {
        if (info == meta)
            continue;
        entry *e = &st->entries[st->count];
        if (parse_entry(file, name, info, data_len, e, err) != 0)
            return MOCO_ERR;
        e->header_pos = (size_t)st->count++;
        e->t.data = (void *)(data + e->begin);
    }

    /* The tensors must tile the data buffer exactly: sorted by offset, each begins where the last
     * ended, and the last ends at the end of the file. */
    qsort(st->entries, (size_t)st->count, sizeof *st->entries, by_offset);
    uint64_t covered = 0;
    for (int i = 0; i < st->count; i++) {
        const entry *e = &st->entries[i];
        if (e->begin < covered) {
            const entry *prev = &st->entries[i - 1]; /* covered > 0 only after an entry */
            return moco_fail(err, "%s: tensor '%s' (bytes %llu..%llu) overlaps tensor '%s' (bytes "
                             "%llu..%llu)", file, e->t.name, (unsigned long long)e->begin,
                             (unsigned long long)e->end, prev->t.name,
                             (unsigned long long)prev->begin, (unsigned long long)prev->end);
        }
        if (e->begin > covered)
            return moco_fail(err, "%s: data bytes %llu..%llu, before tensor '%s', belong to no "
                             "tensor", file, (unsigned long long)covered,
                             (unsigned long long)e->begin, e->t.name);
        covered = e->end;
    }
    if (covered != data_len)
        return moco_fail(err, "%s: the data buffer has %zu bytes but its tensors cover only %llu",
                         file, data_len, (unsigned long long)covered);
    return MOCO_OK;
}

safetensors *safetensors_open_memory(const void *buf, size_t len, const char *name, moco_error *err)
{
    if (!name)
        name = "(memory)";
    safetensors *st = calloc(1, sizeof *st);
    if (!st) {
        moco_fail(err, "%s: out of memory", name);
        return NULL;
    }
    if (parse(st, buf, len, name, err) != 0) {
        safetensors_close(st);
        return NULL;
    }
    return st;
}

safetensors *safetensors_open(const char *path, moco_error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        moco_fail(err, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        moco_fail(err, "%s: not a regular file", path);
        close(fd);
        return NULL;
    }
    size_t len = (size_t)sb.st_size;
    if (len < 8) { /* mmap cannot map an empty file: say what is wrong instead */
        close(fd);
        moco_fail(err, "%s: %zu bytes is too short for a safetensors file", path, len);
        return NULL;
    }
    /* Mapped, not read: a checkpoint's tensors are paged in only as they are used. The file must
     * not shrink while open (reading a vanished page raises SIGBUS), as with every mmap reader. */
    void *map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        moco_fail(err, "%s: cannot map %zu bytes: %s", path, len, strerror(errno));
        return NULL;
    }
    safetensors *st = safetensors_open_memory(map, len, path, err);
    if (!st) {
        munmap(map, len);
        return NULL;
    }
    st->map = map;
    st->map_len = len;
    return st;
}

void safetensors_close(safetensors *st)
{
    if (!st)
        return;
    if (st->map)
        munmap(st->map, st->map_len);
    json_decref(st->header);
    free(st->entries);
    free(st->meta_keys);
    free(st->meta_values);
    free(st);
}

int safetensors_count(const safetensors *st) { return st->count; }

const tensor *safetensors_tensor(const safetensors *st, int i)
{
    return i >= 0 && i < st->count ? &st->entries[i].t : NULL;
}

/* A linear search: checkpoints hold hundreds of tensors and are looked up once each. */
const tensor *safetensors_find(const safetensors *st, const char *name)
{
    for (int i = 0; i < st->count; i++)
        if (strcmp(st->entries[i].t.name, name) == 0)
            return &st->entries[i].t;
    return NULL;
}

const char *safetensors_metadata(const safetensors *st, const char *key)
{
    for (int i = 0; i < st->nmeta; i++)
        if (strcmp(st->meta_keys[i], key) == 0)
            return st->meta_values[i];
    return NULL;
}

int safetensors_metadata_count(const safetensors *st) { return st->nmeta; }

const char *safetensors_metadata_key(const safetensors *st, int i)
{
    return i >= 0 && i < st->nmeta ? st->meta_keys[i] : NULL;
}

/* ================================ writer ================================ */

/* The header: 8-byte length, compact JSON, spaces up to a multiple of DATA_ALIGN. malloc'd. */
static uint8_t *build_header(const char *path, const tensor *tensors, int n,
                             const char *const *meta_keys, const char *const *meta_values, int nmeta,
                             size_t *header_len, moco_error *err)
{
    json_t *root = json_object();
    if (!root) {
        moco_fail(err, "%s: out of memory", path);
        return NULL;
    }
    if (nmeta > 0) { /* first, as the reference writer puts it */
        json_t *meta = json_object();
        if (json_object_set_new(root, "__metadata__", meta) != 0)
            goto oom;
        for (int i = 0; i < nmeta; i++) {
            if (json_object_get(meta, meta_keys[i])) {
                moco_fail(err, "%s: metadata key '%s' given twice", path, meta_keys[i]);
                goto fail;
            }
            if (json_object_set_new(meta, meta_keys[i], json_string(meta_values[i])) != 0) {
                moco_fail(err, "%s: metadata '%.64s' is not valid UTF-8", path, meta_keys[i]);
                goto fail;
            }
        }
    }
    uint64_t offset = 0;
    for (int i = 0; i < n; i++) {
        const tensor *t = &tensors[i];
        size_t name_len = strnlen(t->name, sizeof t->name);
        const char *dt = st_dtype_name(t->dtype);
        int64_t nbytes = t->rank >= 0 && t->rank <= TENSOR_MAX_RANK ? tensor_nbytes(t) : -1;
        if (name_len == 0 || name_len > TENSOR_MAX_NAME || strcmp(t->name, "__metadata__") == 0) {
            moco_fail(err, "%s: tensor %d: bad name '%.40s'", path, i, t->name);
            goto fail;
        }
        if (!dt || nbytes < 0 || (nbytes > 0 && !t->data)) {
            moco_fail(err, "%s: tensor '%s': bad dtype, shape or data", path, t->name);
            goto fail;
        }
        if (json_object_get(root, t->name)) {
            moco_fail(err, "%s: tensor '%s' given twice", path, t->name);
            goto fail;
        }
        if (offset > (uint64_t)INT64_MAX - (uint64_t)nbytes) {
            moco_fail(err, "%s: tensor '%s': data past 2^63 bytes", path, t->name);
            goto fail;
        }
        json_t *shape = json_array();
        int failed = !shape;
        for (int k = 0; k < t->rank; k++)
            failed |= json_array_append_new(shape, json_integer(t->dims[k])) != 0;
        json_t *info = failed ? (json_decref(shape), NULL)
                           : json_pack("{s:s, s:o, s:[I,I]}", "dtype", dt, "shape", shape,
                                       "data_offsets", (json_int_t)offset,
                                       (json_int_t)(offset + (uint64_t)nbytes));
        if (json_object_set_new(root, t->name, info) != 0) {
            moco_fail(err, "%s: tensor '%.40s': name is not valid UTF-8 (or out of memory)", path,
                      t->name);
            goto fail;
        }
        offset += (uint64_t)nbytes;
    }

    char *text = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    if (!text) {
        moco_fail(err, "%s: out of memory", path);
        return NULL;
    }
    size_t text_len = strlen(text);
    size_t total = (8 + text_len + DATA_ALIGN - 1) / DATA_ALIGN * DATA_ALIGN;
    uint64_t hlen = total - 8;
    if (hlen > SAFETENSORS_MAX_HEADER) {
        free(text);
        moco_fail(err, "%s: header of %llu bytes exceeds the limit of %d", path,
                  (unsigned long long)hlen, SAFETENSORS_MAX_HEADER);
        return NULL;
    }
    uint8_t *buf = malloc(total);
    if (!buf) {
        free(text);
        moco_fail(err, "%s: out of memory", path);
        return NULL;
    }
    for (int i = 0; i < 8; i++)
        buf[i] = (uint8_t)(hlen >> (8 * i));
    memcpy(buf + 8, text, text_len);
    memset(buf + 8 + text_len, ' ', total - 8 - text_len);
    free(text);
    *header_len = total;
    return buf;

oom:
    moco_fail(err, "%s: out of memory", path);
fail:
    json_decref(root);
    return NULL;
}

static int io_fail(const char *path, const char *what, moco_error *err)
{
    if (errno == ENOSPC || errno == EDQUOT)
        return moco_fail(err, "%s: disk full while writing (%s)", path, strerror(errno));
    return moco_fail(err, "%s: %s failed: %s", path, what, strerror(errno));
}

static int write_all(int fd, const void *buf, size_t len, const char *path, moco_error *err)
{
    const uint8_t *p = buf;
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return io_fail(path, "write", err);
        }
        p += w;
        len -= (size_t)w;
    }
    return MOCO_OK;
}

int safetensors_write(const char *path, const tensor *tensors, int n, const char *const *meta_keys,
                      const char *const *meta_values, int nmeta, moco_error *err)
{
    size_t header_len;
    uint8_t *header = build_header(path, tensors, n, meta_keys, meta_values, nmeta, &header_len, err);
    if (!header)
        return MOCO_ERR;
    output out;
    if (output_begin(&out, path, err)) {
        free(header);
        return MOCO_ERR;
    }
    int rc = MOCO_OK;
    int fd = open(out.write_to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd < 0) {
        rc = moco_fail(err, "%s: cannot create %s: %s", path, out.write_to, strerror(errno));
        goto out;
    }
    rc = write_all(fd, header, header_len, path, err);
    for (int i = 0; i < n && !rc; i++)
        rc = write_all(fd, tensors[i].data, (size_t)tensor_nbytes(&tensors[i]), path, err);
    /* Durable before visible: data on disk, then the rename, then the directory entry. */
    if (!rc && !out.in_place && fsync(fd) != 0)
        rc = io_fail(path, "fsync", err);
    if (close(fd) != 0 && !rc)
        rc = io_fail(path, "close", err);
out:
    if (rc)
        output_discard(&out);
    else
        rc = output_commit(&out, err);
    free(header);
    return rc;
}
