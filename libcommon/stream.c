/* stream.c — the tensor stream writer and reader (see stream.h; byte layout in man 5 moco-stream).
 *
 * Wire layout of one record (all integers little-endian):
 *   fixed header, 64 bytes:
 *     0 u32 magic "TSZR"   4 u8 type (1 header, 2 data, 3 end)   5 u8 version   6 u16 ntensors
 *     8 u32 meta_len       12 u32 desc_len
 *     16 i64 sample_id     24 i64 label      32 u64 body_len     40 u64 body_check (XXH3-64 of body)
 *     48 u64 reserved (0)  56 u64 header_check (XXH3-64 of bytes 0..55)
 *   body, body_len bytes:
 *     descriptors (desc_len bytes, padded to 64): per tensor u8 dtype, u8 rank, u16 name_len,
 *       u32 0, i64 dims[rank], name bytes, padded to 8
 *     meta (meta_len bytes of JSON, padded to 64): the header object, or {"records":N} in an end record
 *     tensor data, each padded to 64 bytes, in descriptor order
 * The 64-byte padding keeps every tensor 64-byte aligned in the reader's buffer. */
#include "stream.h"
#include "output.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>
#include <xxhash.h>
#if defined(__x86_64__) || defined(__i386__)
#include <xxh_x86dispatch.h> /* XXH3 with AVX2/AVX-512 when the CPU has them: 3x faster */
#endif
#include <zstd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the tensor stream code assumes a little-endian host"
#endif

#define RECORD_MAGIC 0x525a5354u /* bytes "TSZR" */
#define ZSTD_MAGIC 0xfd2fb528u
enum { REC_HEADER = 1, REC_DATA = 2, REC_END = 3 };
enum { FIXED_HEADER = 64, ALIGN = 64, MAX_DIM_BITS = 40 };
/* Raw input is read in small steps and bodies straight into place, so a 300 KB record is copied
 * once (pipe to body), not twice (pipe to input buffer to body). */
enum { RAW_REFILL = 4096 };
enum { MODE_RAW, MODE_ZSTD };
/* Zero-copy ring: pages are handed to the pipe in chunks of at most ZC_CHUNK and rewritten one lap
 * later, after at least ZC_RING - 2 * ZC_CHUNK further bytes; so a pipe of up to ZC_MAX_PIPE bytes
 * has surely been read past them (see stream_options.zero_copy). */
enum { ZC_RING = 8 << 20, ZC_CHUNK = 1 << 20, ZC_MAX_PIPE = 4 << 20 };

static size_t align_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

static uint32_t load_u32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t load_u64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static void store_u32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void store_u64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

static int is_zstd_magic(uint32_t m)
{
    return m == ZSTD_MAGIC || (m & 0xfffffff0u) == 0x184d2a50u; /* frames and skippable frames */
}

int stream_default_level(const char *path)
{
    struct stat st;
    int to_stdout = !path || !strcmp(path, "-");
    int known = to_stdout ? fstat(STDOUT_FILENO, &st) == 0 : stat(path, &st) == 0;
    int to_pipe = known && (S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode) || (!to_stdout && S_ISCHR(st.st_mode)));
    return to_pipe ? 0 : 3;
}

int stream_magic(const void *first, size_t n)
{
    if (n < 4)
        return 0;
    uint32_t m = load_u32(first);
    return m == RECORD_MAGIC || is_zstd_magic(m);
}

/* ================================ header ================================ */

struct stream_header {
    json_t *obj;
};

static stream_header *header_wrap(json_t *obj)
{
    stream_header *h = malloc(sizeof *h);
    if (!h) {
        json_decref(obj);
        return NULL;
    }
    h->obj = obj;
    return h;
}

stream_header *stream_header_new(const char *kind, const char *producer)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    json_object_set_new(o, "format", json_string("moco-tensor-stream"));
    json_object_set_new(o, "version", json_integer(STREAM_VERSION));
    json_object_set_new(o, "kind", json_string(kind));
    json_object_set_new(o, "producer", json_string(producer));
    return header_wrap(o);
}

void stream_header_free(stream_header *h)
{
    if (h) {
        json_decref(h->obj);
        free(h);
    }
}

stream_header *stream_header_copy(const stream_header *h)
{
    json_t *o = json_deep_copy(h->obj);
    return o ? header_wrap(o) : NULL;
}

void stream_header_set_args(stream_header *h, int argc, char **argv)
{
    json_t *a = json_array();
    for (int i = 0; i < argc; i++)
        json_array_append_new(a, json_string(argv[i]));
    json_object_set_new(h->obj, "args", a);
}

void stream_header_set_classes(stream_header *h, int n, const char *const *names)
{
    json_t *a = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(a, json_string(names[i]));
    json_object_set_new(h->obj, "classes", a);
}

void stream_header_set_str(stream_header *h, const char *key, const char *value)
{
    json_object_set_new(h->obj, key, json_string(value));
}

void stream_header_set_int(stream_header *h, const char *key, int64_t value)
{
    json_object_set_new(h->obj, key, json_integer(value));
}

void stream_header_set_reals(stream_header *h, const char *key, int n, const double *values)
{
    json_t *a = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(a, json_real(values[i]));
    json_object_set_new(h->obj, key, a);
}

int stream_header_get_reals(const stream_header *h, const char *key, int n, double *values)
{
    json_t *a = json_object_get(h->obj, key);
    if (!json_is_array(a) || (int)json_array_size(a) != n)
        return 0;
    for (int i = 0; i < n; i++) {
        json_t *v = json_array_get(a, (size_t)i);
        if (!json_is_number(v))
            return 0;
        values[i] = json_number_value(v);
    }
    return 1;
}

void stream_header_set_real(stream_header *h, const char *key, double value)
{
    json_object_set_new(h->obj, key, json_real(value));
}

const char *stream_header_kind(const stream_header *h)
{
    return stream_header_get_str(h, "kind", "");
}

const char *stream_header_get_str(const stream_header *h, const char *key, const char *fallback)
{
    json_t *v = json_object_get(h->obj, key);
    return json_is_string(v) ? json_string_value(v) : fallback;
}

int64_t stream_header_get_int(const stream_header *h, const char *key, int64_t fallback)
{
    json_t *v = json_object_get(h->obj, key);
    return json_is_integer(v) ? (int64_t)json_integer_value(v) : fallback;
}

double stream_header_get_real(const stream_header *h, const char *key, double fallback)
{
    json_t *v = json_object_get(h->obj, key);
    return json_is_number(v) ? json_number_value(v) : fallback;
}

int stream_header_num_classes(const stream_header *h)
{
    json_t *a = json_object_get(h->obj, "classes");
    return json_is_array(a) ? (int)json_array_size(a) : 0;
}

const char *stream_header_class(const stream_header *h, int i)
{
    json_t *a = json_object_get(h->obj, "classes");
    json_t *v = json_is_array(a) && i >= 0 ? json_array_get(a, (size_t)i) : NULL;
    return json_is_string(v) ? json_string_value(v) : NULL;
}

char *stream_header_json(const stream_header *h, int indent)
{
    return json_dumps(h->obj, indent > 0 ? JSON_INDENT(indent) : JSON_COMPACT);
}

/* ================================ records ================================ */

void stream_record_init(stream_record *r, int64_t sample_id, int64_t label)
{
    r->sample_id = sample_id;
    r->label = label;
    r->ntensors = 0;
}

int stream_record_add(stream_record *r, const char *name, tensor_dtype dtype, int rank,
                      const int64_t *dims, const void *data, moco_error *err)
{
    if (r->ntensors >= STREAM_MAX_TENSORS)
        return moco_fail(err, "record holds more than %d tensors", STREAM_MAX_TENSORS);
    tensor *t = &r->tensors[r->ntensors];
    if (tensor_init(t, name, dtype, rank, dims, err))
        return MOCO_ERR;
    if (tensor_nbytes(t) < 0)
        return moco_fail(err, "tensor '%s': invalid shape", name);
    t->data = (void *)data;
    r->ntensors++;
    return MOCO_OK;
}

const tensor *stream_record_find(const stream_record *r, const char *name)
{
    for (int i = 0; i < r->ntensors; i++)
        if (strcmp(r->tensors[i].name, name) == 0)
            return &r->tensors[i];
    return NULL;
}

/* ================================ writer ================================ */

struct stream_writer {
    int fd, own_fd;
    output dest;           /* writing to a path (dest.write_to not NULL until committed) */
    char name[256];        /* for messages */
    ZSTD_CCtx *cctx;       /* NULL for raw records */
    uint8_t *out;          /* raw: staging for small records; zstd: compressed bytes */
    size_t out_len, out_cap;
    uint8_t *prefix;       /* fixed header + descriptors + meta of the record being written */
    size_t prefix_cap;
    XXH3_state_t *xxh;
    int64_t records;
    uint8_t *ring;          /* zero-copy ring (mmap'd), NULL when copying through write() */
    size_t ring_pos, ring_staged; /* next free byte; bytes before it not yet spliced */
};

static const uint8_t zero_pad[ALIGN];

void stream_grow_pipe(int fd)
{
#ifdef F_SETPIPE_SZ
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISFIFO(st.st_mode))
        (void)fcntl(fd, F_SETPIPE_SZ, 1 << 20); /* may fail above pipe-max-size: then keep 64 KiB */
#else
    (void)fd;
#endif
}

static int write_all(stream_writer *w, const void *buf, size_t len, moco_error *err)
{
    const uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = write(w->fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EPIPE) {
                moco_fail(err, "%s: the reader has gone away", w->name);
                return MOCO_EPIPE;
            }
            if (errno == ENOSPC || errno == EDQUOT)
                return moco_fail(err, "%s: disk full while writing (%s)", w->name, strerror(errno));
            return moco_fail(err, "%s: write failed: %s", w->name, strerror(errno));
        }
        p += n;
        len -= (size_t)n;
    }
    return MOCO_OK;
}

/* Hand the staged ring bytes to the pipe. Falls back to write() for good if the pipe has grown
 * beyond what the ring's lap guarantees, or vmsplice is refused. */
static int zc_flush(stream_writer *w, moco_error *err)
{
    uint8_t *p = w->ring + w->ring_pos - w->ring_staged;
    size_t len = w->ring_staged;
    w->ring_staged = 0;
    int cap = fcntl(w->fd, F_GETPIPE_SZ);
    while (len > 0 && cap > 0 && cap <= ZC_MAX_PIPE) {
        struct iovec iov = {p, len};
        ssize_t n = vmsplice(w->fd, &iov, 1, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EPIPE) {
            moco_fail(err, "%s: the reader has gone away", w->name);
            return MOCO_EPIPE;
        }
        if (n <= 0)
            break;
        p += n;
        len -= (size_t)n;
    }
    if (len == 0)
        return MOCO_OK;
    int rc = write_all(w, p, len, err);
    munmap(w->ring, ZC_RING);
    w->ring = NULL; /* pages already in the pipe stay valid: the kernel holds references */
    return rc;
}

static int zc_emit(stream_writer *w, const uint8_t *data, size_t len, moco_error *err)
{
    while (w->ring && len > 0) {
        size_t k = len < ZC_CHUNK ? len : ZC_CHUNK;
        if (w->ring_pos + k > ZC_RING) {
            int rc = zc_flush(w, err);
            if (rc)
                return rc;
            w->ring_pos = 0;
            continue;
        }
        memcpy(w->ring + w->ring_pos, data, k);
        w->ring_pos += k;
        w->ring_staged += k;
        data += k;
        len -= k;
        if (w->ring_staged >= ZC_CHUNK) {
            int rc = zc_flush(w, err);
            if (rc)
                return rc;
        }
    }
    return len ? write_all(w, data, len, err) : MOCO_OK;
}

static int flush_out(stream_writer *w, moco_error *err)
{
    if (w->ring)
        return zc_flush(w, err);
    int rc = write_all(w, w->out, w->out_len, err);
    w->out_len = 0;
    return rc;
}

/* Compress (or stage) bytes; `end` finishes the zstd frame. */
static int emit(stream_writer *w, const void *data, size_t len, ZSTD_EndDirective mode, moco_error *err)
{
    if (w->ring)
        return zc_emit(w, data, len, err);
    if (!w->cctx) {
        if (len > w->out_cap - w->out_len) {
            int rc = flush_out(w, err);
            if (rc)
                return rc;
        }
        if (len >= w->out_cap / 2) /* big tensors go straight out: no staging copy */
            return write_all(w, data, len, err);
        memcpy(w->out + w->out_len, data, len);
        w->out_len += len;
        return MOCO_OK;
    }
    ZSTD_inBuffer in = {data, len, 0};
    for (;;) {
        ZSTD_outBuffer out = {w->out, w->out_cap, w->out_len};
        size_t left = ZSTD_compressStream2(w->cctx, &out, &in, mode);
        if (ZSTD_isError(left))
            return moco_fail(err, "%s: zstd compression failed: %s", w->name, ZSTD_getErrorName(left));
        w->out_len = out.pos;
        if (w->out_len == w->out_cap || (mode != ZSTD_e_continue && w->out_len > 0)) {
            int rc = flush_out(w, err);
            if (rc)
                return rc;
        }
        int done = mode == ZSTD_e_continue ? in.pos == in.size : left == 0;
        if (done)
            return MOCO_OK;
    }
}

static int ensure_prefix(stream_writer *w, size_t need, moco_error *err)
{
    if (need <= w->prefix_cap)
        return MOCO_OK;
    uint8_t *p = realloc(w->prefix, need);
    if (!p)
        return moco_fail(err, "%s: out of memory (%zu bytes)", w->name, need);
    w->prefix = p;
    w->prefix_cap = need;
    return MOCO_OK;
}

/* Lay out and emit one record: the fixed header, descriptors and meta are assembled in w->prefix;
 * tensor data is emitted from the caller's memory. */
static int write_record(stream_writer *w, int type, const stream_record *r, const char *meta,
                        moco_error *err)
{
    size_t meta_len = meta ? strlen(meta) : 0;
    size_t desc_len = 0;
    int ntensors = r ? r->ntensors : 0;
    for (int i = 0; i < ntensors; i++)
        desc_len += align_up(8 + 8 * (size_t)r->tensors[i].rank + strlen(r->tensors[i].name), 8);
    size_t desc_padded = align_up(desc_len, ALIGN), meta_padded = align_up(meta_len, ALIGN);
    uint64_t body_len = desc_padded + meta_padded;
    for (int i = 0; i < ntensors; i++) {
        int64_t nb = tensor_nbytes(&r->tensors[i]);
        if (nb < 0)
            return moco_fail(err, "%s: tensor '%s' has an invalid shape", w->name, r->tensors[i].name);
        body_len += align_up((size_t)nb, ALIGN);
    }
    if (ensure_prefix(w, FIXED_HEADER + desc_padded + meta_padded, err))
        return MOCO_ERR;

    uint8_t *h = w->prefix, *d = w->prefix + FIXED_HEADER;
    memset(w->prefix, 0, FIXED_HEADER + desc_padded + meta_padded);
    size_t off = 0;
    for (int i = 0; i < ntensors; i++) {
        const tensor *t = &r->tensors[i];
        size_t name_len = strlen(t->name);
        d[off] = (uint8_t)t->dtype;
        d[off + 1] = (uint8_t)t->rank;
        uint16_t nl = (uint16_t)name_len;
        memcpy(d + off + 2, &nl, 2);
        for (int k = 0; k < t->rank; k++)
            store_u64(d + off + 8 + 8 * (size_t)k, (uint64_t)t->dims[k]);
        memcpy(d + off + 8 + 8 * (size_t)t->rank, t->name, name_len);
        off += align_up(8 + 8 * (size_t)t->rank + name_len, 8);
    }
    if (meta_len)
        memcpy(d + desc_padded, meta, meta_len);

    /* Check the body as it will be read: prefix part, then each tensor and its padding. */
    XXH3_64bits_reset(w->xxh);
    XXH3_64bits_update(w->xxh, d, desc_padded + meta_padded);
    for (int i = 0; i < ntensors; i++) {
        size_t nb = (size_t)tensor_nbytes(&r->tensors[i]);
        XXH3_64bits_update(w->xxh, r->tensors[i].data, nb);
        XXH3_64bits_update(w->xxh, zero_pad, align_up(nb, ALIGN) - nb);
    }
    store_u32(h, RECORD_MAGIC);
    h[4] = (uint8_t)type;
    h[5] = STREAM_VERSION;
    uint16_t nt = (uint16_t)ntensors;
    memcpy(h + 6, &nt, 2);
    store_u32(h + 8, (uint32_t)meta_len);
    store_u32(h + 12, (uint32_t)desc_len);
    store_u64(h + 16, (uint64_t)(r ? r->sample_id : -1));
    store_u64(h + 24, (uint64_t)(r ? r->label : -1));
    store_u64(h + 32, body_len);
    store_u64(h + 40, XXH3_64bits_digest(w->xxh));
    store_u64(h + 56, XXH3_64bits(h, 56));

    int rc = emit(w, w->prefix, FIXED_HEADER + desc_padded + meta_padded, ZSTD_e_continue, err);
    for (int i = 0; i < ntensors && !rc; i++) {
        size_t nb = (size_t)tensor_nbytes(&r->tensors[i]);
        rc = emit(w, r->tensors[i].data, nb, ZSTD_e_continue, err);
        if (!rc && align_up(nb, ALIGN) > nb)
            rc = emit(w, zero_pad, align_up(nb, ALIGN) - nb, ZSTD_e_continue, err);
    }
    return rc;
}

static void writer_free(stream_writer *w)
{
    if (!w)
        return;
    if (w->own_fd && w->fd >= 0)
        close(w->fd);
    output_discard(&w->dest);
    if (w->ring)
        munmap(w->ring, ZC_RING);
    ZSTD_freeCCtx(w->cctx);
    XXH3_freeState(w->xxh);
    free(w->out);
    free(w->prefix);
    free(w);
}

static stream_writer *writer_start(stream_writer *w, const stream_options *opt,
                                   const stream_header *h, moco_error *err)
{
    stream_options o = opt ? *opt : STREAM_OPTIONS_DEFAULT;
    if (!o.allow_terminal && isatty(w->fd)) {
        moco_fail(err, "%s: refusing to write a binary stream to a terminal (redirect to a file or a pipe)",
                  w->name);
        goto fail;
    }
    if (o.level != 0 && (o.level < ZSTD_minCLevel() || o.level > ZSTD_maxCLevel())) {
        moco_fail(err, "compression level %d is outside %d..%d", o.level, ZSTD_minCLevel(),
                  ZSTD_maxCLevel());
        goto fail;
    }
    stream_grow_pipe(w->fd);
    w->xxh = XXH3_createState();
    if (o.level != 0) {
        w->cctx = ZSTD_createCCtx();
        w->out_cap = ZSTD_CStreamOutSize();
        if (!w->cctx || ZSTD_isError(ZSTD_CCtx_setParameter(w->cctx, ZSTD_c_compressionLevel, o.level)) ||
            ZSTD_isError(ZSTD_CCtx_setParameter(w->cctx, ZSTD_c_checksumFlag, 1))) {
            moco_fail(err, "%s: cannot set up zstd", w->name);
            goto fail;
        }
        if (o.threads > 0 && ZSTD_isError(ZSTD_CCtx_setParameter(w->cctx, ZSTD_c_nbWorkers, o.threads))) {
            moco_fail(err, "%s: this libzstd cannot compress with %d threads", w->name, o.threads);
            goto fail;
        }
    } else {
        w->out_cap = 1 << 20;
        struct stat st;
        if (o.zero_copy && fstat(w->fd, &st) == 0 && S_ISFIFO(st.st_mode)) {
            w->ring = mmap(NULL, ZC_RING, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (w->ring == MAP_FAILED)
                w->ring = NULL; /* no ring: copy through write() instead */
        }
    }
    w->out = malloc(w->out_cap);
    if (!w->xxh || !w->out) {
        moco_fail(err, "%s: out of memory", w->name);
        goto fail;
    }
    char *meta = stream_header_json(h, 0);
    if (!meta) {
        moco_fail(err, "%s: cannot encode the stream header", w->name);
        goto fail;
    }
    int rc = strlen(meta) > STREAM_MAX_HEADER
                 ? moco_fail(err, "%s: stream header is larger than %d bytes", w->name, STREAM_MAX_HEADER)
                 : write_record(w, REC_HEADER, NULL, meta, err);
    free(meta);
    if (rc)
        goto fail;
    return w;
fail:
    writer_free(w);
    return NULL;
}

stream_writer *stream_writer_open_fd(int fd, const char *name, const stream_options *opt,
                                     const stream_header *h, moco_error *err)
{
    stream_writer *w = calloc(1, sizeof *w);
    if (!w) {
        moco_fail(err, "out of memory");
        return NULL;
    }
    w->fd = fd;
    snprintf(w->name, sizeof w->name, "%s", name ? name : "(output)");
    return writer_start(w, opt, h, err);
}

stream_writer *stream_writer_open(const char *path, const stream_options *opt,
                                  const stream_header *h, moco_error *err)
{
    if (!path || strcmp(path, "-") == 0)
        return stream_writer_open_fd(STDOUT_FILENO, "(stdout)", opt, h, err);
    stream_writer *w = calloc(1, sizeof *w);
    if (!w) {
        moco_fail(err, "out of memory");
        return NULL;
    }
    snprintf(w->name, sizeof w->name, "%s", path);
    w->own_fd = 1, w->fd = -1;
    if (output_begin(&w->dest, path, err)) {
        writer_free(w);
        return NULL;
    }
    w->fd = open(w->dest.write_to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (w->fd < 0) {
        moco_fail(err, "%s: cannot create: %s", path, strerror(errno));
        writer_free(w);
        return NULL;
    }
    return writer_start(w, opt, h, err);
}

int stream_write(stream_writer *w, const stream_record *r, moco_error *err)
{
    int rc = write_record(w, REC_DATA, r, NULL, err);
    if (!rc)
        w->records++;
    return rc;
}

int stream_flush(stream_writer *w, moco_error *err)
{
    if (w->cctx)
        return emit(w, NULL, 0, ZSTD_e_flush, err);
    return flush_out(w, err);
}

int64_t stream_writer_records(const stream_writer *w) { return w->records; }

void stream_writer_abort(stream_writer *w) { writer_free(w); }

int stream_writer_close(stream_writer *w, moco_error *err)
{
    char meta[64];
    snprintf(meta, sizeof meta, "{\"records\":%lld}", (long long)w->records);
    int rc = write_record(w, REC_END, NULL, meta, err);
    if (!rc)
        rc = w->cctx ? emit(w, NULL, 0, ZSTD_e_end, err) : flush_out(w, err);
    if (!rc && w->dest.write_to) {
        /* Durable before visible: data on disk, then the rename, then the directory entry (a
         * device or FIFO written in place has neither to do). */
        if (!w->dest.in_place && fsync(w->fd) != 0)
            rc = moco_fail(err, "%s: fsync failed: %s", w->name, strerror(errno));
        if (close(w->fd) != 0 && !rc)
            rc = moco_fail(err, "%s: close failed: %s", w->name, strerror(errno));
        w->fd = -1;
        if (!rc)
            rc = output_commit(&w->dest, err);
    }
    writer_free(w);
    return rc;
}

/* ================================ reader ================================ */

struct stream_reader {
    int fd, own_fd;
    const uint8_t *mem; /* memory source: the whole input, used in place */
    char name[256];
    int mode, frame_open, eof;
    int part_mode; /* encoding of the current part, for stream_reader_encoding */
    ZSTD_DCtx *dctx;
    uint8_t *in; /* raw input bytes (fd source) */
    size_t in_pos, in_len, in_cap;
    uint8_t *body; /* record body, 64-byte aligned, grown as bytes arrive */
    size_t body_cap;
    int64_t max_record;
    stream_header *header;
    int parts, in_part;
    int64_t records, part_records, record_index; /* record_index counts every record of the input */
};

/* Refill r->in, keeping the unread tail. Returns bytes available (0 at end of input) or MOCO_ERR. */
static int64_t fill_input(stream_reader *r, moco_error *err)
{
    if (r->in_pos < r->in_len || r->mem || r->eof)
        return (int64_t)(r->in_len - r->in_pos);
    r->in_pos = r->in_len = 0;
    size_t want = r->mode == MODE_RAW && r->in_cap > RAW_REFILL ? RAW_REFILL : r->in_cap;
    for (;;) {
        ssize_t n = read(r->fd, r->in, want);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return moco_fail(err, "%s: read failed: %s", r->name, strerror(errno));
        if (n == 0)
            r->eof = 1;
        r->in_len = (size_t)n;
        return n;
    }
}

/* Make at least 4 input bytes contiguous for a magic check; fewer only at end of input. */
static int peek4(stream_reader *r, uint32_t *magic, moco_error *err)
{
    while (!r->mem && !r->eof && r->in_len - r->in_pos < 4) {
        memmove(r->in, r->in + r->in_pos, r->in_len - r->in_pos);
        r->in_len -= r->in_pos;
        r->in_pos = 0;
        ssize_t n = read(r->fd, r->in + r->in_len, r->in_cap - r->in_len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return moco_fail(err, "%s: read failed: %s", r->name, strerror(errno));
        if (n == 0)
            r->eof = 1;
        r->in_len += (size_t)n;
    }
    size_t avail = r->in_len - r->in_pos;
    if (avail < 4)
        return (int)avail;
    *magic = load_u32(r->in + r->in_pos);
    return 4;
}

/* Between zstd frames (or at a record boundary of raw records) the next bytes say which follows. */
static int detect_mode(stream_reader *r, moco_error *err)
{
    uint32_t magic = 0;
    int n = peek4(r, &magic, err);
    if (n < 0)
        return MOCO_ERR;
    r->mode = n == 4 && is_zstd_magic(magic) ? MODE_ZSTD : MODE_RAW;
    return MOCO_OK;
}

/* Deliver up to n decoded bytes into dst; fewer only at the end of input. Returns the count. */
static int64_t read_bytes(stream_reader *r, uint8_t *dst, size_t n, moco_error *err)
{
    size_t got = 0;
    while (got < n) {
        if (r->mode == MODE_RAW) {
            size_t avail = r->in_len - r->in_pos;
            if (avail > 0) {
                size_t k = avail < n - got ? avail : n - got;
                memcpy(dst + got, r->in + r->in_pos, k);
                r->in_pos += k;
                got += k;
                continue;
            }
            if (r->mem || r->eof)
                break;
            if (n - got >= RAW_REFILL) { /* big payloads go straight into place: no double copy */
                ssize_t k = read(r->fd, dst + got, n - got);
                if (k < 0 && errno == EINTR)
                    continue;
                if (k < 0)
                    return moco_fail(err, "%s: read failed: %s", r->name, strerror(errno));
                if (k == 0) {
                    r->eof = 1;
                    break;
                }
                got += (size_t)k;
                continue;
            }
            int64_t k = fill_input(r, err);
            if (k < 0)
                return MOCO_ERR;
            if (k == 0)
                break;
            continue;
        }
        if (!r->frame_open) {
            if (detect_mode(r, err))
                return MOCO_ERR;
            if (r->mode == MODE_RAW)
                continue;
            r->frame_open = 1;
        }
        int64_t avail = fill_input(r, err);
        if (avail < 0)
            return MOCO_ERR;
        /* With no input left, one more call still drains what the decoder holds back. */
        size_t before = got;
        ZSTD_inBuffer in = {r->in, r->in_len, r->in_pos};
        ZSTD_outBuffer out = {dst, n, got};
        size_t ret = ZSTD_decompressStream(r->dctx, &out, &in);
        r->in_pos = in.pos;
        got = out.pos;
        if (ZSTD_isError(ret))
            return moco_fail(err, "zstd: %s", ZSTD_getErrorName(ret));
        if (ret == 0)
            r->frame_open = 0; /* frame complete (its checksum verified); more may follow */
        else if (avail == 0 && got == before)
            break;
    }
    return (int64_t)got;
}

static int ensure_body(stream_reader *r, size_t need, size_t keep, moco_error *err)
{
    if (need <= r->body_cap)
        return MOCO_OK;
    void *p = NULL;
    if (posix_memalign(&p, ALIGN, need) != 0)
        return moco_fail(err, "out of memory (%zu bytes for a record)", need);
    if (keep)
        memcpy(p, r->body, keep);
    free(r->body);
    r->body = p;
    r->body_cap = need;
    return MOCO_OK;
}

/* Parse descriptors, meta and tensor offsets of a checked body into rec (tensors point into it). */
static int parse_body(stream_reader *r, const uint8_t *hdr, stream_record *rec, const char **meta,
                      size_t *meta_len, moco_error *err)
{
    int ntensors = hdr[6] | hdr[7] << 8;
    size_t ml = load_u32(hdr + 8), desc_len = load_u32(hdr + 12);
    uint64_t body_len = load_u64(hdr + 32);
    if (ntensors > STREAM_MAX_TENSORS)
        return moco_fail(err, "%d tensors in one record (at most %d)", ntensors, STREAM_MAX_TENSORS);
    size_t meta_off = align_up(desc_len, ALIGN);
    size_t data_off = meta_off + align_up(ml, ALIGN);
    if (data_off > body_len)
        return moco_fail(err, "descriptor and meta sizes exceed the record body");
    rec->sample_id = (int64_t)load_u64(hdr + 16);
    rec->label = (int64_t)load_u64(hdr + 24);
    rec->ntensors = ntensors;
    const uint8_t *d = r->body;
    size_t off = 0;
    for (int i = 0; i < ntensors; i++) {
        tensor *t = &rec->tensors[i];
        if (off + 8 > desc_len)
            return moco_fail(err, "tensor %d: descriptor runs past its table", i);
        int dtype = d[off], rank = d[off + 1];
        size_t name_len = (size_t)(d[off + 2] | d[off + 3] << 8);
        if (!dtype_size(dtype))
            return moco_fail(err, "tensor %d: unknown dtype code %d", i, dtype);
        if (rank > TENSOR_MAX_RANK)
            return moco_fail(err, "tensor %d: rank %d (at most %d)", i, rank, TENSOR_MAX_RANK);
        if (name_len == 0 || name_len > TENSOR_MAX_NAME)
            return moco_fail(err, "tensor %d: name of %zu bytes (1 to %d allowed)", i, name_len,
                             TENSOR_MAX_NAME);
        size_t size = 8 + 8 * (size_t)rank + name_len;
        if (off + size > desc_len)
            return moco_fail(err, "tensor %d: descriptor runs past its table", i);
        t->dtype = dtype;
        t->rank = rank;
        for (int k = 0; k < rank; k++) {
            uint64_t dim = load_u64(d + off + 8 + 8 * (size_t)k);
            if (dim >> MAX_DIM_BITS)
                return moco_fail(err, "tensor %d: dim %d is %llu (hostile or corrupt)", i, k,
                                 (unsigned long long)dim);
            t->dims[k] = (int64_t)dim;
        }
        memcpy(t->name, d + off + 8 + 8 * (size_t)rank, name_len);
        t->name[name_len] = '\0';
        if (memchr(t->name, '\0', name_len))
            return moco_fail(err, "tensor %d: name holds a NUL byte", i);
        off += align_up(size, 8);
        int64_t nb = tensor_nbytes(t);
        if (nb < 0 || (uint64_t)nb > body_len - data_off)
            return moco_fail(err, "tensor '%s': its data runs past the record body", t->name);
        t->data = r->body + data_off;
        data_off += align_up((size_t)nb, ALIGN);
        if (data_off > body_len)
            return moco_fail(err, "tensor '%s': its data runs past the record body", t->name);
    }
    if (data_off != body_len)
        return moco_fail(err, "record body is %llu bytes but its tensors need %zu",
                         (unsigned long long)body_len, data_off);
    *meta = (const char *)r->body + meta_off;
    *meta_len = ml;
    return MOCO_OK;
}

/* Read one record of any type. Returns its type, 0 at a clean end of input, MOCO_ERR otherwise. */
static int read_record(stream_reader *r, stream_record *rec, const char **meta, size_t *meta_len,
                       moco_error *err)
{
    uint8_t hdr[FIXED_HEADER];
    int64_t idx = r->record_index;
    if (r->mode == MODE_RAW || !r->frame_open)
        if (detect_mode(r, err))
            return moco_prefix(err, "%s: record %lld", r->name, (long long)idx);
    int64_t n = read_bytes(r, hdr, FIXED_HEADER, err);
    if (n < 0)
        return moco_prefix(err, "%s: record %lld", r->name, (long long)idx);
    if (n == 0 && !r->frame_open)
        return 0;
    if (n < FIXED_HEADER)
        return r->frame_open
                   ? moco_fail(err, "%s: record %lld: truncated zstd stream", r->name, (long long)idx)
                   : moco_fail(err, "%s: record %lld: truncated (%lld of %d header bytes)", r->name,
                               (long long)idx, (long long)n, FIXED_HEADER);
    if (load_u32(hdr) != RECORD_MAGIC) {
        if (idx == 0)
            return moco_fail(err, "%s: not a tensor stream (it starts with bytes %02x %02x %02x %02x)",
                             r->name, hdr[0], hdr[1], hdr[2], hdr[3]);
        return moco_fail(err, "%s: record %lld: bad record magic (corrupt stream)", r->name, (long long)idx);
    }
    if (XXH3_64bits(hdr, 56) != load_u64(hdr + 56))
        return moco_fail(err, "%s: record %lld: corrupt record header (checksum mismatch)", r->name,
                         (long long)idx);
    if (hdr[5] > STREAM_VERSION || hdr[5] == 0)
        return moco_fail(err, "%s: record %lld: format version %d; this reader knows version %d "
                         "(upgrade the tools)", r->name, (long long)idx, hdr[5], STREAM_VERSION);
    int type = hdr[4];
    if (type < REC_HEADER || type > REC_END)
        return moco_fail(err, "%s: record %lld: unknown record type %d", r->name, (long long)idx, type);
    uint64_t body_len = load_u64(hdr + 32);
    if (body_len > (uint64_t)r->max_record)
        return moco_fail(err, "%s: record %lld: %llu bytes exceeds the limit of %lld bytes per record",
                         r->name, (long long)idx, (unsigned long long)body_len, (long long)r->max_record);
    /* Grow the buffer only as bytes actually arrive, so a lying length costs nothing. */
    size_t got = 0;
    while (got < body_len) {
        size_t want = (size_t)body_len;
        if (want > r->body_cap) {
            size_t cap = r->body_cap < (1u << 20) ? (1u << 20) : r->body_cap * 2;
            want = cap < body_len ? cap : (size_t)body_len;
            if (ensure_body(r, want, got, err))
                return moco_prefix(err, "%s: record %lld", r->name, (long long)idx);
        }
        size_t asked = want - got;
        int64_t k = read_bytes(r, r->body + got, asked, err);
        if (k < 0)
            return moco_prefix(err, "%s: record %lld", r->name, (long long)idx);
        got += (size_t)k;
        if ((size_t)k < asked)
            return moco_fail(err, "%s: record %lld: truncated (%zu of %llu body bytes)%s", r->name,
                             (long long)idx, got, (unsigned long long)body_len,
                             r->frame_open ? "; the zstd stream ends early" : "");
    }
    if (XXH3_64bits(r->body, (size_t)body_len) != load_u64(hdr + 40)) {
        moco_fail(err, "%s: record %lld: checksum mismatch (corrupt data)", r->name, (long long)idx);
        /* The fixed header was sound, so the next record starts right after this one: a data
         * record can be skipped and reading go on. */
        if (type != REC_DATA)
            return MOCO_ERR;
        r->record_index++;
        r->part_records++;
        return STREAM_DAMAGED;
    }
    if (parse_body(r, hdr, rec, meta, meta_len, err))
        return moco_prefix(err, "%s: record %lld", r->name, (long long)idx);
    r->record_index++;
    return type;
}

static int parse_header(stream_reader *r, const char *meta, size_t len, stream_header **out,
                        moco_error *err)
{
    json_error_t je;
    json_t *o = json_loadb(meta, len, JSON_REJECT_DUPLICATES, &je);
    if (!o)
        return moco_fail(err, "%s: stream header is not valid JSON: %s", r->name, je.text);
    json_t *fmt = json_object_get(o, "format"), *kind = json_object_get(o, "kind");
    if (!json_is_object(o) || !json_is_string(fmt) ||
        strcmp(json_string_value(fmt), "moco-tensor-stream") != 0 || !json_is_string(kind)) {
        json_decref(o);
        return moco_fail(err, "%s: stream header lacks format \"moco-tensor-stream\" or a kind", r->name);
    }
    *out = header_wrap(o);
    return *out ? MOCO_OK : moco_fail(err, "out of memory");
}

/* A later part of a concatenated input must hold the same kind of data with the same classes. */
static int check_part(stream_reader *r, const stream_header *h, moco_error *err)
{
    const stream_header *first = r->header;
    if (strcmp(stream_header_kind(first), stream_header_kind(h)) != 0)
        return moco_fail(err, "%s: part %d is a '%s' stream but part 1 is '%s': cannot concatenate",
                         r->name, r->parts + 1, stream_header_kind(h), stream_header_kind(first));
    int n = stream_header_num_classes(first);
    int same = n == stream_header_num_classes(h);
    for (int i = 0; same && i < n; i++)
        same = strcmp(stream_header_class(first, i), stream_header_class(h, i)) == 0;
    if (!same)
        return moco_fail(err, "%s: part %d has different class names from part 1: cannot concatenate",
                         r->name, r->parts + 1);
    return MOCO_OK;
}

int stream_read(stream_reader *r, stream_record *rec, moco_error *err)
{
    for (;;) {
        const char *meta = NULL;
        size_t meta_len = 0;
        int64_t idx = r->record_index;
        int type = read_record(r, rec, &meta, &meta_len, err);
        if (type == STREAM_DAMAGED)
            return r->in_part ? STREAM_DAMAGED : moco_fail(err, "%s: record %lld: data record without a stream header",
                                                          r->name, (long long)idx);
        if (type < 0)
            return MOCO_ERR;
        if (type == 0) {
            if (r->in_part)
                return moco_fail(err, "%s: truncated stream: it ends after record %lld without an end "
                                 "record (was the writer killed?)", r->name, (long long)idx - 1);
            if (r->parts == 0)
                return moco_fail(err, "%s: empty input (not a tensor stream)", r->name);
            return 0;
        }
        if (type == REC_DATA) {
            if (!r->in_part)
                return moco_fail(err, "%s: record %lld: data record without a stream header", r->name,
                                 (long long)idx);
            r->records++;
            r->part_records++;
            return 1;
        }
        if (type == REC_END) {
            json_t *o = json_loadb(meta, meta_len, 0, NULL);
            json_t *count = json_object_get(o, "records");
            int ok = r->in_part && json_is_integer(count) && json_integer_value(count) == r->part_records;
            json_decref(o);
            if (!ok)
                return moco_fail(err, "%s: record %lld: end record does not match the %lld records read",
                                 r->name, (long long)idx, (long long)r->part_records);
            r->in_part = 0;
            continue;
        }
        /* REC_HEADER: the first, or the start of a concatenated part */
        if (r->in_part)
            return moco_fail(err, "%s: record %lld: a new stream header before the end of the previous "
                             "part (truncated input?)", r->name, (long long)idx);
        stream_header *h = NULL;
        if (parse_header(r, meta, meta_len, &h, err))
            return moco_prefix(err, "record %lld", (long long)idx);
        if (r->header) {
            int rc = check_part(r, h, err);
            stream_header_free(h);
            if (rc)
                return MOCO_ERR;
        } else {
            r->header = h;
        }
        r->parts++;
        r->part_mode = r->mode;
        r->in_part = 1;
        r->part_records = 0;
        if (r->parts == 1)
            return 2; /* only stream_reader_open sees this: the first header */
    }
}

static stream_reader *reader_start(stream_reader *r, const stream_read_options *opt, moco_error *err)
{
    r->max_record = opt && opt->max_record_bytes > 0 ? opt->max_record_bytes : STREAM_DEFAULT_MAX_RECORD;
    r->dctx = ZSTD_createDCtx();
    if (!r->mem) {
        r->in_cap = ZSTD_DStreamInSize();
        r->in = malloc(r->in_cap);
    }
    if (!r->dctx || (!r->mem && !r->in)) {
        moco_fail(err, "out of memory");
        stream_reader_close(r);
        return NULL;
    }
    stream_record *rec = malloc(sizeof *rec);
    int rc = rec ? stream_read(r, rec, err) : moco_fail(err, "out of memory");
    free(rec);
    if (rc == 1)
        rc = moco_fail(err, "%s: data before the stream header", r->name);
    if (rc != 2) {
        stream_reader_close(r);
        return NULL;
    }
    return r;
}

stream_reader *stream_reader_open_fd(int fd, const char *name, const stream_read_options *opt,
                                     moco_error *err)
{
    stream_reader *r = calloc(1, sizeof *r);
    if (!r) {
        moco_fail(err, "out of memory");
        return NULL;
    }
    r->fd = fd;
    snprintf(r->name, sizeof r->name, "%s", name ? name : "(input)");
    stream_grow_pipe(fd);
    return reader_start(r, opt, err);
}

stream_reader *stream_reader_open(const char *path, const stream_read_options *opt, moco_error *err)
{
    if (!path || strcmp(path, "-") == 0)
        return stream_reader_open_fd(STDIN_FILENO, "(stdin)", opt, err);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        moco_fail(err, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    stream_reader *r = stream_reader_open_fd(fd, path, opt, err);
    if (!r)
        close(fd);
    else
        r->own_fd = 1;
    return r;
}

stream_reader *stream_reader_open_memory(const void *buf, size_t len, const char *name,
                                         const stream_read_options *opt, moco_error *err)
{
    stream_reader *r = calloc(1, sizeof *r);
    if (!r) {
        moco_fail(err, "out of memory");
        return NULL;
    }
    r->fd = -1;
    r->mem = buf;
    r->in = (uint8_t *)buf; /* read in place; never written through */
    r->in_len = len;
    snprintf(r->name, sizeof r->name, "%s", name ? name : "(memory)");
    return reader_start(r, opt, err);
}

const stream_header *stream_reader_header(const stream_reader *r) { return r->header; }
int64_t stream_reader_records(const stream_reader *r) { return r->records; }
int stream_reader_parts(const stream_reader *r) { return r->parts; }
const char *stream_reader_encoding(const stream_reader *r) { return r->part_mode == MODE_ZSTD ? "zstd" : "raw"; }

void stream_reader_close(stream_reader *r)
{
    if (!r)
        return;
    if (r->own_fd)
        close(r->fd);
    if (!r->mem)
        free(r->in);
    free(r->body);
    ZSTD_freeDCtx(r->dctx);
    stream_header_free(r->header);
    free(r);
}
