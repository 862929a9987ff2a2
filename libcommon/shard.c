/* shard.c — see shard.h. */
#include "shard.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <dirent.h>

#include "rng.h"

int shard_plan_make(shard_plan *p, int64_t samples, int64_t per_shard, int shuffle, uint64_t seed, int part,
                    int parts, moco_error *err)
{
    memset(p, 0, sizeof *p);
    if (per_shard < 1 || parts < 1 || part < 0 || part >= parts)
        return moco_fail(err, "bad shard plan (per shard %lld, part %d of %d)", (long long)per_shard, part, parts);
    p->samples = samples;
    p->per_shard = per_shard;
    p->nshards = (samples + per_shard - 1) / per_shard;
    p->part = part;
    p->parts = parts;
    p->position = malloc((size_t)(samples ? samples : 1) * sizeof *p->position);
    p->sample = malloc((size_t)(samples ? samples : 1) * sizeof *p->sample);
    if (!p->position || !p->sample) {
        shard_plan_free(p);
        return moco_fail(err, "out of memory planning %lld samples", (long long)samples);
    }
    for (int64_t i = 0; i < samples; i++)
        p->sample[i] = i;
    if (shuffle) { /* Fisher-Yates from one Philox stream keyed by the seed: same plan on every part */
        rng r;
        rng_init(&r, seed, 0, 0, 0x5348u /* "SH": the shard shuffle's own stream */);
        for (int64_t i = samples - 1; i > 0; i--) {
            int64_t j = i < UINT32_MAX ? (int64_t)rng_below(&r, (uint32_t)(i + 1))
                                       : (int64_t)(((uint64_t)rng_u32(&r) << 32 | rng_u32(&r)) % (uint64_t)(i + 1));
            int64_t t = p->sample[i];
            p->sample[i] = p->sample[j];
            p->sample[j] = t;
        }
    }
    for (int64_t i = 0; i < samples; i++)
        p->position[p->sample[i]] = i;
    return MOCO_OK;
}

void shard_plan_free(shard_plan *p)
{
    free(p->position);
    free(p->sample);
    memset(p, 0, sizeof *p);
}

int64_t shard_size(const shard_plan *p, int64_t shard)
{
    int64_t start = shard * p->per_shard, end = start + p->per_shard;
    return (end > p->samples ? p->samples : end) - start;
}

typedef struct {
    stream_writer *w;
    int64_t remaining, records, bytes, unlabelled;
    int64_t *class_counts;
    int done;
} shard_state;

struct shard_set {
    char *dir;
    const shard_plan *plan;
    stream_header *tmpl;
    stream_options opt;
    int nclasses;
    int64_t max_bytes, nshards;
    shard_state *shards; /* by shard index (size mode: grows) */
    int64_t current;     /* size mode: the shard being filled */
    int64_t written, files;
};

static char *shard_path(const shard_set *s, int64_t k)
{
    size_t n = strlen(s->dir) + 32;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/shard-%05lld.tsz", s->dir, (long long)k);
    return p;
}

static int ensure_shards(shard_set *s, int64_t n, moco_error *err)
{
    if (n <= s->nshards)
        return MOCO_OK;
    shard_state *p = realloc(s->shards, (size_t)n * sizeof *p);
    if (!p)
        return moco_fail(err, "out of memory");
    memset(p + s->nshards, 0, (size_t)(n - s->nshards) * sizeof *p);
    s->shards = p;
    s->nshards = n;
    return MOCO_OK;
}

/* mkdir -p */
static int make_folders(const char *dir, moco_error *err)
{
    char *path = strdup(dir);
    if (!path)
        return moco_fail(err, "out of memory");
    for (char *p = path + 1; ; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        char c = *p;
        *p = '\0';
        struct stat st;
        if (mkdir(path, 0777) != 0 && errno != EEXIST) {
            int e = errno;
            free(path);
            return moco_fail(err, "%s: cannot create folder: %s", dir, strerror(e));
        }
        if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) {
            free(path);
            return moco_fail(err, "%s: not a folder", dir);
        }
        *p = c;
        if (!c)
            break;
    }
    free(path);
    return MOCO_OK;
}

shard_set *shard_set_open(const char *dir, const shard_plan *plan, const stream_header *tmpl,
                          const stream_options *opt, int nclasses, int64_t max_bytes, moco_error *err)
{
    if (make_folders(dir, err))
        return NULL;
    shard_set *s = calloc(1, sizeof *s);
    if (!s || !(s->dir = strdup(dir)) || !(s->tmpl = stream_header_copy(tmpl))) {
        shard_set_abort(s);
        moco_fail(err, "out of memory");
        return NULL;
    }
    s->plan = plan;
    s->opt = *opt;
    s->nclasses = nclasses;
    s->max_bytes = max_bytes;
    if (ensure_shards(s, max_bytes > 0 ? 1 : plan->nshards, err)) {
        shard_set_abort(s);
        return NULL;
    }
    for (int64_t k = 0; max_bytes <= 0 && k < plan->nshards; k++)
        s->shards[k].remaining = shard_size(plan, k);
    return s;
}

static int open_shard(shard_set *s, int64_t k, moco_error *err)
{
    shard_state *st = &s->shards[k];
    stream_header *h = stream_header_copy(s->tmpl);
    if (!h)
        return moco_fail(err, "out of memory");
    stream_header_set_int(h, "shard", k);
    if (s->max_bytes <= 0) {
        stream_header_set_int(h, "shards", s->plan->nshards);
        stream_header_set_int(h, "samples", shard_size(s->plan, k));
    }
    char *path = shard_path(s, k);
    st->class_counts = calloc((size_t)s->nclasses + 1, sizeof *st->class_counts);
    st->w = path && st->class_counts ? stream_writer_open(path, &s->opt, h, err) : NULL;
    if (!path || !st->class_counts)
        moco_fail(err, "out of memory");
    free(path);
    stream_header_free(h);
    return st->w ? MOCO_OK : MOCO_ERR;
}

static int finish_shard(shard_set *s, int64_t k, moco_error *err)
{
    shard_state *st = &s->shards[k];
    st->done = 1;
    if (!st->w)
        return MOCO_OK; /* every sample of it was skipped: no file */
    int rc = stream_writer_close(st->w, err);
    st->w = NULL;
    s->files += rc == MOCO_OK;
    return rc;
}

int shard_set_write(shard_set *s, int64_t shard, const stream_record *r, int64_t record_bytes, moco_error *err)
{
    if (s->max_bytes > 0) {
        shard = s->current;
        if (s->shards[shard].w && s->shards[shard].bytes + record_bytes > s->max_bytes) {
            if (finish_shard(s, shard, err) || ensure_shards(s, shard + 2, err))
                return MOCO_ERR;
            shard = ++s->current;
        }
    }
    shard_state *st = &s->shards[shard];
    if (!st->w && open_shard(s, shard, err))
        return MOCO_ERR;
    int rc = stream_write(st->w, r, err);
    if (rc)
        return rc;
    st->records++;
    st->bytes += record_bytes;
    if (r->label >= 0 && r->label < s->nclasses)
        st->class_counts[r->label]++;
    else
        st->unlabelled++;
    s->written++;
    return MOCO_OK;
}

int shard_set_position_done(shard_set *s, int64_t shard, moco_error *err)
{
    if (s->max_bytes > 0)
        return MOCO_OK;
    shard_state *st = &s->shards[shard];
    if (--st->remaining == 0)
        return finish_shard(s, shard, err);
    return MOCO_OK;
}

int shard_set_close(shard_set *s, json_t *extra, int64_t *files, moco_error *err)
{
    int rc = MOCO_OK;
    for (int64_t k = 0; k < s->nshards && !rc; k++)
        if (!s->shards[k].done && (s->max_bytes > 0 || shard_owned(s->plan, k)))
            rc = finish_shard(s, k, err);
    json_t *index = extra ? extra : json_object();
    json_t *list = json_array(), *totals = json_array();
    int64_t *total = calloc((size_t)s->nclasses + 1, sizeof *total);
    int64_t unlabelled = 0;
    for (int64_t k = 0; k < s->nshards && total; k++) {
        shard_state *st = &s->shards[k];
        if (!st->records)
            continue;
        json_t *counts = json_array();
        for (int c = 0; c < s->nclasses; c++) {
            json_array_append_new(counts, json_integer(st->class_counts[c]));
            total[c] += st->class_counts[c];
        }
        unlabelled += st->unlabelled;
        char name[32];
        snprintf(name, sizeof name, "shard-%05lld.tsz", (long long)k);
        json_array_append_new(list, json_pack("{s:s,s:I,s:I,s:o,s:I}", "file", name, "records",
                                              (json_int_t)st->records, "bytes", (json_int_t)st->bytes,
                                              "class_counts", counts, "unlabelled", (json_int_t)st->unlabelled));
    }
    for (int c = 0; total && c < s->nclasses; c++)
        json_array_append_new(totals, json_integer(total[c]));
    free(total);
    json_object_set_new(index, "written", json_integer(s->written));
    json_object_set_new(index, "class_counts", totals);
    json_object_set_new(index, "unlabelled", json_integer(unlabelled));
    json_object_set_new(index, "shards", list);
    if (!rc) {
        size_t n = strlen(s->dir) + 64;
        char *path = malloc(n), *tmp = malloc(n + 32);
        if (!path || !tmp) {
            rc = moco_fail(err, "out of memory");
        } else {
            if (s->plan->parts == 1)
                snprintf(path, n, "%s/index.json", s->dir);
            else
                snprintf(path, n, "%s/index-%04d-of-%04d.json", s->dir, s->plan->part, s->plan->parts);
            snprintf(tmp, n + 32, "%s.tmp.%ld", path, (long)getpid());
            FILE *f = fopen(tmp, "w");
            if (!f || json_dumpf(index, f, JSON_INDENT(1)) != 0 || fputc('\n', f) == EOF || fflush(f) != 0 ||
                fsync(fileno(f)) != 0) {
                rc = moco_fail(err, "%s: cannot write: %s", path, strerror(errno));
                if (f)
                    fclose(f);
                unlink(tmp);
            } else if (fclose(f) != 0 || rename(tmp, path) != 0) {
                rc = moco_fail(err, "%s: cannot write: %s", path, strerror(errno));
                unlink(tmp);
            }
        }
        free(path);
        free(tmp);
    }
    json_decref(index);
    *files = s->files;
    shard_set_abort(s);
    return rc;
}

void shard_set_abort(shard_set *s)
{
    if (!s)
        return;
    for (int64_t k = 0; k < s->nshards; k++) {
        if (s->shards[k].w)
            stream_writer_abort(s->shards[k].w);
        free(s->shards[k].class_counts);
    }
    free(s->shards);
    stream_header_free(s->tmpl);
    free(s->dir);
    free(s);
}

int64_t shard_set_written(const shard_set *s) { return s->written; }

/* ------------------------------------------------------------------ one sample */

/* The output size for the resize options (shrink only), or the input size. */
static void target_size(const shard_format *fmt, int h, int w, int *oh, int *ow)
{
    *oh = h;
    *ow = w;
    if (fmt->short_side > 0 && (h < w ? h : w) > fmt->short_side)
        resize_short_side(h, w, fmt->short_side, oh, ow);
    int longest = *oh > *ow ? *oh : *ow;
    if (fmt->max_side > 0 && longest > fmt->max_side) {
        /* same truncation as the short-side rule, applied to the long side */
        if (*oh >= *ow) {
            *ow = (int)((int64_t)fmt->max_side * *ow / *oh);
            *oh = fmt->max_side;
        } else {
            *oh = (int)((int64_t)fmt->max_side * *oh / *ow);
            *ow = fmt->max_side;
        }
        if (*oh < 1)
            *oh = 1;
        if (*ow < 1)
            *ow = 1;
    }
}

int shard_sample_prepare(const shard_format *fmt, const uint8_t *bytes, size_t len, const image *pixels,
                         shard_sample *out, moco_error *err)
{
    memset(out, 0, sizeof *out);
    image_decode_options dopt = {.channels = 0, .max_pixels = fmt->max_pixels};
    int native_channels, oh = 0, ow = 0, resized = 0;
    if (pixels) {
        if (image_alloc(&out->img, pixels->height, pixels->width, pixels->channels, err))
            return MOCO_ERR;
        memcpy(out->img.pixels, pixels->pixels, (size_t)pixels->height * (size_t)pixels->width * (size_t)pixels->channels);
        native_channels = pixels->channels;
    } else {
        int h, w, c;
        if (image_probe(bytes, len, &h, &w, &c, err))
            return MOCO_ERR;
        target_size(fmt, h, w, &oh, &ow);
        resized = oh != h || ow != w;
        if (resized && !fmt->exact) { /* a JPEG shrunk anyway decodes at a reduced DCT scale */
            dopt.min_height = oh;
            dopt.min_width = ow;
        }
        if (image_decode(bytes, len, &dopt, &out->img, err))
            return MOCO_ERR;
        native_channels = out->img.channels;
    }
    if (pixels) {
        target_size(fmt, out->img.height, out->img.width, &oh, &ow);
        resized = oh != out->img.height || ow != out->img.width;
    }
    if (!pixels && fmt->store == STORE_JPEG && !resized && native_channels == fmt->channels &&
        image_sniff(bytes, len) == IMAGE_JPEG) {
        out->jpeg = (uint8_t *)bytes; /* checked by the decode above; kept as it is */
        out->jpeg_len = len;
    } else {
        if (image_convert_channels(&out->img, fmt->channels, err))
            goto fail;
        if (oh != out->img.height || ow != out->img.width) {
            image small;
            if (image_alloc(&small, oh, ow, out->img.channels, err) ||
                resample(out->img.pixels, out->img.height, out->img.width, out->img.channels, NULL, small.pixels, oh,
                         ow, fmt->filter, err)) {
                image_free(&small);
                goto fail;
            }
            image_free(&out->img);
            out->img = small;
        }
        if (fmt->store == STORE_JPEG) {
            if (image_encode_jpeg(&out->img, fmt->quality, &out->jpeg, &out->jpeg_len, err))
                goto fail;
            out->jpeg_owned = 1;
        }
    }
    out->height = oh;
    out->width = ow;
    out->channels = fmt->channels;
    if (fmt->store == STORE_JPEG)
        image_free(&out->img); /* only the JPEG bytes are stored */
    return MOCO_OK;
fail:
    shard_sample_free(out);
    return MOCO_ERR;
}

int64_t shard_sample_record(shard_sample *s, const char *key, int64_t sample_id, int64_t label, stream_record *r,
                            moco_error *err)
{
    stream_record_init(r, sample_id, label);
    int64_t key_len = (int64_t)strlen(key);
    int64_t bytes = key_len;
    int rc;
    if (s->jpeg) {
        int64_t n = (int64_t)s->jpeg_len, three = 3;
        s->shape[0] = s->height;
        s->shape[1] = s->width;
        s->shape[2] = s->channels;
        rc = stream_record_add(r, "jpeg", DTYPE_U8, 1, &n, s->jpeg, err);
        if (!rc)
            rc = stream_record_add(r, "shape", DTYPE_I32, 1, &three, s->shape, err);
        bytes += n + 12;
    } else {
        int64_t dims[3] = {s->img.height, s->img.width, s->img.channels};
        rc = stream_record_add(r, "image", DTYPE_U8, 3, dims, s->img.pixels, err);
        bytes += dims[0] * dims[1] * dims[2];
    }
    if (!rc && key_len > 0)
        rc = stream_record_add(r, "key", DTYPE_U8, 1, &key_len, key, err);
    return rc ? MOCO_ERR : bytes;
}

void shard_sample_free(shard_sample *s)
{
    image_free(&s->img);
    if (s->jpeg_owned)
        free(s->jpeg);
    memset(s, 0, sizeof *s);
}

/* ------------------------------------------------------------------ reading shards */

typedef struct {
    char *path;
    int64_t records; /* from the index; -1 unknown */
} shard_file;

struct shard_source {
    shard_file *files;
    int nfiles, cap;
    stream_header *header;
    int64_t samples;
    /* epoch state */
    rng g;
    int *order, next_file;
    stream_reader *reader;
    shard_item *buffer;
    int buffered, buffer_cap;
};

static int cmp_file(const void *a, const void *b)
{
    return strcmp(((const shard_file *)a)->path, ((const shard_file *)b)->path);
}

static int add_file(shard_source *s, const char *path, moco_error *err)
{
    if (s->nfiles == s->cap) {
        int cap = s->cap ? 2 * s->cap : 64;
        shard_file *p = realloc(s->files, (size_t)cap * sizeof *p);
        if (!p)
            return moco_fail(err, "out of memory");
        s->files = p;
        s->cap = cap;
    }
    s->files[s->nfiles].records = -1;
    if (!(s->files[s->nfiles].path = strdup(path)))
        return moco_fail(err, "out of memory");
    s->nfiles++;
    return MOCO_OK;
}

/* Record counts of the shards a folder's index files list. */
static void read_indexes(shard_source *s, const char *dir, int first, int last)
{
    DIR *dp = opendir(dir);
    struct dirent *e;
    while (dp && (e = readdir(dp))) {
        if (strncmp(e->d_name, "index", 5) != 0 || !strstr(e->d_name, ".json") || strstr(e->d_name, ".tmp."))
            continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        json_t *index = json_load_file(path, 0, NULL);
        json_t *shards = json_object_get(index, "shards"), *sh;
        size_t i;
        json_array_foreach(shards, i, sh) {
            const char *file = json_string_value(json_object_get(sh, "file"));
            json_t *records = json_object_get(sh, "records");
            for (int k = first; file && k < last; k++) {
                const char *base = strrchr(s->files[k].path, '/');
                if (!strcmp(base ? base + 1 : s->files[k].path, file) && json_is_integer(records))
                    s->files[k].records = json_integer_value(records);
            }
        }
        json_decref(index);
    }
    if (dp)
        closedir(dp);
}

shard_source *shard_source_open(int npaths, char *const *paths, int part, int parts, moco_error *err)
{
    shard_source *s = calloc(1, sizeof *s);
    if (!s) {
        moco_fail(err, "out of memory");
        return NULL;
    }
    int rc = MOCO_OK;
    for (int i = 0; i < npaths && !rc; i++) {
        struct stat st;
        if (stat(paths[i], &st) != 0) {
            rc = moco_fail(err, "%s: %s", paths[i], strerror(errno));
        } else if (S_ISDIR(st.st_mode)) {
            int first = s->nfiles;
            DIR *dp = opendir(paths[i]);
            struct dirent *e;
            while (dp && (e = readdir(dp)) && !rc) {
                size_t n = strlen(e->d_name);
                if (strncmp(e->d_name, "shard-", 6) || n < 10 || strcmp(e->d_name + n - 4, ".tsz"))
                    continue;
                char path[4096];
                snprintf(path, sizeof path, "%s/%s", paths[i], e->d_name);
                rc = add_file(s, path, err);
            }
            if (dp)
                closedir(dp);
            else
                rc = moco_fail(err, "%s: cannot open folder: %s", paths[i], strerror(errno));
            if (!rc && s->nfiles == first)
                rc = moco_fail(err, "%s: no shard-*.tsz files", paths[i]);
            if (!rc) {
                qsort(s->files + first, (size_t)(s->nfiles - first), sizeof *s->files, cmp_file);
                read_indexes(s, paths[i], first, s->nfiles);
            }
        } else {
            rc = add_file(s, paths[i], err);
        }
    }
    /* keep this part's shards: k = part, part + parts, ... */
    int kept = 0;
    for (int k = 0; k < s->nfiles; k++) {
        if (k % parts == part)
            s->files[kept++] = s->files[k];
        else
            free(s->files[k].path);
    }
    s->nfiles = kept;
    if (!rc && kept == 0)
        rc = moco_fail(err, "part %d of %d has no shards (there are fewer shards than parts)", part, parts);
    for (int k = 0; k < s->nfiles && !rc; k++) {
        stream_reader *r = stream_reader_open(s->files[k].path, NULL, err);
        if (!r) {
            rc = MOCO_ERR;
            break;
        }
        const stream_header *h = stream_reader_header(r);
        if (strcmp(stream_header_kind(h), "images") != 0)
            rc = moco_fail(err, "%s: a '%s' stream, not shards of images (moco-shard makes those)", s->files[k].path,
                           stream_header_kind(h));
        if (!rc && k == 0 && !(s->header = stream_header_copy(h)))
            rc = moco_fail(err, "out of memory");
        if (!rc && s->files[k].records < 0)
            s->files[k].records = stream_header_get_int(h, "samples", 0);
        s->samples += s->files[k].records;
        stream_reader_close(r);
    }
    if (rc) {
        shard_source_close(s);
        return NULL;
    }
    return s;
}

const stream_header *shard_source_header(const shard_source *s) { return s->header; }
int shard_source_files(const shard_source *s) { return s->nfiles; }
int64_t shard_source_samples(const shard_source *s) { return s->samples; }

static void drop_buffer(shard_source *s)
{
    for (int i = 0; i < s->buffered; i++)
        free(s->buffer[i].data);
    s->buffered = 0;
}

int shard_source_begin_epoch(shard_source *s, uint64_t seed, int epoch, int buffer, moco_error *err)
{
    drop_buffer(s);
    stream_reader_close(s->reader);
    s->reader = NULL;
    free(s->order);
    free(s->buffer);
    s->buffer_cap = buffer < 1 ? 1 : buffer;
    s->order = malloc((size_t)s->nfiles * sizeof *s->order);
    s->buffer = calloc((size_t)s->buffer_cap, sizeof *s->buffer);
    if (!s->order || !s->buffer)
        return moco_fail(err, "out of memory for a shuffle buffer of %d", s->buffer_cap);
    rng_init(&s->g, seed, (uint32_t)epoch, 0, 0x5342u /* "SB": the reading shuffle's own stream */);
    for (int i = 0; i < s->nfiles; i++)
        s->order[i] = i;
    for (int i = s->nfiles - 1; i > 0; i--) {
        int j = (int)rng_below(&s->g, (uint32_t)(i + 1));
        int t = s->order[i];
        s->order[i] = s->order[j];
        s->order[j] = t;
    }
    s->next_file = 0;
    return MOCO_OK;
}

/* Copy a shard record into an owned item. */
static int take_record(const stream_record *rec, shard_item *it, const char *file, moco_error *err)
{
    memset(it, 0, sizeof *it);
    it->sample_id = rec->sample_id;
    it->label = rec->label;
    const tensor *img = stream_record_find(rec, "image"), *jpeg = stream_record_find(rec, "jpeg");
    const tensor *shape = stream_record_find(rec, "shape"), *key = stream_record_find(rec, "key");
    if (key && key->dtype == DTYPE_U8 && key->rank == 1) {
        size_t n = (size_t)key->dims[0] < sizeof it->key - 1 ? (size_t)key->dims[0] : sizeof it->key - 1;
        memcpy(it->key, key->data, n);
    } else {
        snprintf(it->key, sizeof it->key, "%s: sample %lld", file, (long long)rec->sample_id);
    }
    const tensor *src;
    if (img && img->dtype == DTYPE_U8 && (img->rank == 3 || img->rank == 2)) {
        src = img;
        it->height = (int)img->dims[0];
        it->width = (int)img->dims[1];
        it->channels = img->rank == 3 ? (int)img->dims[2] : 1;
    } else if (jpeg && jpeg->dtype == DTYPE_U8 && jpeg->rank == 1 && shape && shape->dtype == DTYPE_I32 &&
               shape->rank == 1 && shape->dims[0] == 3) {
        int32_t hwc[3];
        memcpy(hwc, shape->data, sizeof hwc);
        src = jpeg;
        it->is_jpeg = 1;
        it->height = hwc[0], it->width = hwc[1], it->channels = hwc[2];
    } else {
        return moco_fail(err, "%s: sample %lld holds neither an \"image\" nor \"jpeg\" + \"shape\" tensor", file,
                         (long long)rec->sample_id);
    }
    if (it->height < 1 || it->width < 1 || (it->channels != 1 && it->channels != 3))
        return moco_fail(err, "%s: sample %lld has shape %dx%dx%d", file, (long long)rec->sample_id, it->height,
                         it->width, it->channels);
    it->len = (size_t)tensor_nbytes(src);
    if (!(it->data = malloc(it->len ? it->len : 1)))
        return moco_fail(err, "out of memory");
    memcpy(it->data, src->data, it->len);
    return MOCO_OK;
}

int shard_source_next(shard_source *s, shard_item *item, moco_error *err)
{
    /* Fill the buffer from the shards in this epoch's order. */
    while (s->buffered < s->buffer_cap) {
        if (!s->reader) {
            if (s->next_file == s->nfiles)
                break;
            const char *path = s->files[s->order[s->next_file++]].path;
            if (!(s->reader = stream_reader_open(path, NULL, err)))
                return MOCO_ERR;
            if (strcmp(stream_header_kind(stream_reader_header(s->reader)), "images") != 0)
                return moco_fail(err, "%s: not a shard of images", path);
        }
        stream_record rec;
        int rc = stream_read(s->reader, &rec, err);
        if (rc == STREAM_DAMAGED)
            return rc;
        if (rc < 0)
            return MOCO_ERR;
        if (rc == 0) {
            stream_reader_close(s->reader);
            s->reader = NULL;
            continue;
        }
        if (take_record(&rec, &s->buffer[s->buffered], s->files[s->order[s->next_file - 1]].path, err))
            return STREAM_DAMAGED; /* a record we cannot use: skip it */
        s->buffered++;
    }
    if (s->buffered == 0)
        return 0;
    int j = (int)rng_below(&s->g, (uint32_t)s->buffered);
    *item = s->buffer[j];
    s->buffer[j] = s->buffer[--s->buffered];
    return 1;
}

void shard_source_close(shard_source *s)
{
    if (!s)
        return;
    drop_buffer(s);
    stream_reader_close(s->reader);
    for (int k = 0; k < s->nfiles; k++)
        free(s->files[k].path);
    free(s->files);
    free(s->order);
    free(s->buffer);
    stream_header_free(s->header);
    free(s);
}
