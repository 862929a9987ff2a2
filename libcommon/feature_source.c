/* feature_source.c — see feature_source.h. */
#include "feature_source.h"

#include <glob.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct feature_source {
    char name[1024];       /* for messages: the path or "standard input" */
    char **files;          /* shard folder: its shard files in name order */
    int nfiles, file, is_stdin;
    stream_reader *r;
    stream_header *header; /* the first file's */
    feature_kind kind;
    int dim, pending;      /* pending: x holds the first record, not handed out yet */
    float *x;
    int64_t label, sample_id;
    int64_t count, damaged;
    int64_t file_record;   /* 1-based record number within the current file */
    int images_h, images_w, images_c;
};

static const char *current_file(const feature_source *s)
{
    return s->files ? s->files[s->file] : s->name;
}

const char *feature_source_where(const feature_source *s, char *buf, int len)
{
    snprintf(buf, (size_t)len, "%s: record %lld", current_file(s), (long long)s->file_record);
    return buf;
}

static int open_file(feature_source *s, moco_error *err)
{
    const char *path = s->files ? s->files[s->file] : s->name;
    s->r = stream_reader_open(s->is_stdin ? "-" : path, NULL, err);
    if (!s->r)
        return MOCO_ERR;
    s->file_record = 0;
    const stream_header *h = stream_reader_header(s->r);
    const char *kind = stream_header_kind(h);
    feature_kind k = !strcmp(kind, "features") ? FEATURES_VECTORS
                     : !strcmp(kind, "views")  ? FEATURES_VIEWS
                     : !strcmp(kind, "images") ? FEATURES_IMAGES
                                               : (feature_kind)-1;
    if ((int)k < 0)
        return moco_fail(err, "%s: a \"%s\" stream; expected features (moco-extract), views (moco-augment) or "
                              "images (moco-shard, for raw pixels)", path, kind);
    if (!s->header) {
        if (!(s->header = stream_header_copy(h)))
            return moco_fail(err, "out of memory");
        s->kind = k;
        if (k == FEATURES_VECTORS)
            s->dim = (int)stream_header_get_int(h, "dim", 0);
    } else if (k != s->kind) {
        return moco_fail(err, "%s: a \"%s\" stream after \"%s\" ones in %s", path, kind,
                         stream_header_kind(s->header), s->name);
    }
    return MOCO_OK;
}

feature_source *feature_source_open(const char *path, moco_error *err)
{
    feature_source *s = calloc(1, sizeof *s);
    if (!s) {
        moco_fail(err, "out of memory");
        return NULL;
    }
    s->is_stdin = !path || !strcmp(path, "-");
    snprintf(s->name, sizeof s->name, "%s", s->is_stdin ? "standard input" : path);
    struct stat st;
    if (!s->is_stdin && stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        char pattern[1100];
        snprintf(pattern, sizeof pattern, "%s/shard-*.tsz", path);
        glob_t g;
        int rc = glob(pattern, 0, NULL, &g); /* sorted by name: shard order */
        if (rc || g.gl_pathc == 0) {
            if (!rc)
                globfree(&g);
            moco_fail(err, "%s: a folder without shard files (shard-*.tsz, as moco-shard writes them)", path);
            free(s);
            return NULL;
        }
        s->files = calloc(g.gl_pathc, sizeof *s->files);
        for (size_t i = 0; s->files && i < g.gl_pathc; i++)
            if ((s->files[s->nfiles] = strdup(g.gl_pathv[i])))
                s->nfiles++;
        int ok = s->files && s->nfiles == (int)g.gl_pathc;
        globfree(&g);
        if (!ok) {
            moco_fail(err, "out of memory");
            feature_source_close(s);
            return NULL;
        }
    }
    const float *x;
    int64_t label, id;
    int got;
    if (open_file(s, err) || (got = feature_source_next(s, &x, &label, &id, err)) < 0) {
        feature_source_close(s);
        return NULL;
    }
    s->pending = got == 1;
    s->count = 0;
    if (got == 0)
        s->dim = 0; /* no sample: whatever the header says, there is nothing to train on */
    return s;
}

void feature_source_close(feature_source *s)
{
    if (!s)
        return;
    stream_reader_close(s->r);
    stream_header_free(s->header);
    for (int i = 0; i < s->nfiles; i++)
        free(s->files[i]);
    free(s->files);
    free(s->x);
    free(s);
}

const stream_header *feature_source_header(const feature_source *s) { return s->header; }
feature_kind feature_source_kind(const feature_source *s) { return s->kind; }
const char *feature_source_name(const feature_source *s) { return s->name; }
int feature_source_dim(const feature_source *s) { return s->dim; }
int64_t feature_source_samples(const feature_source *s) { return stream_header_get_int(s->header, "samples", 0); }
int64_t feature_source_epochs(const feature_source *s) { return stream_header_get_int(s->header, "epochs", 1); }
int64_t feature_source_count(const feature_source *s) { return s->count; }
int64_t feature_source_damaged(const feature_source *s) { return s->damaged; }

/* The vector of record rec into s->x; dim fixed by the first record (or the header). */
static int convert(feature_source *s, const stream_record *rec, moco_error *err)
{
    char where[1200], desc[96];
    feature_source_where(s, where, sizeof where);
    const tensor *t;
    int64_t n;
    if (s->kind == FEATURES_VECTORS) {
        if (!(t = stream_record_find(rec, "features")))
            return moco_fail(err, "%s: no \"features\" tensor (a feature stream from moco-extract has one per record)", where);
        if (t->rank != 1 || (t->dtype != DTYPE_F32 && t->dtype != DTYPE_F16 && t->dtype != DTYPE_BF16))
            return moco_fail(err, "%s: \"features\" is %s; expected a vector of f32, f16 or bf16", where,
                             tensor_describe(t, desc, sizeof desc));
        n = t->dims[0];
    } else if (s->kind == FEATURES_VIEWS) {
        if (!(t = stream_record_find(rec, "views")))
            return moco_fail(err, "%s: no \"views\" tensor", where);
        if (t->rank != 4 || t->dtype != DTYPE_U8 || t->dims[0] < 1)
            return moco_fail(err, "%s: \"views\" is %s; expected u8 (V,S,S,C)", where, tensor_describe(t, desc, sizeof desc));
        n = t->dims[1] * t->dims[2] * t->dims[3];
    } else {
        if (stream_record_find(rec, "jpeg"))
            return moco_fail(err, "%s: a JPEG-stored image; raw pixels need one size for all: make views first "
                                  "(moco-augment --recipe eval --size S SHARDS | moco-linear ...)", where);
        if (!(t = stream_record_find(rec, "image")))
            return moco_fail(err, "%s: no \"image\" tensor", where);
        if (t->rank != 3 || t->dtype != DTYPE_U8)
            return moco_fail(err, "%s: \"image\" is %s; expected u8 (H,W,C)", where, tensor_describe(t, desc, sizeof desc));
        if (s->images_h && (t->dims[0] != s->images_h || t->dims[1] != s->images_w || t->dims[2] != s->images_c))
            return moco_fail(err, "%s: a %lldx%lldx%lld image after %dx%dx%d ones; raw pixels need one size for all "
                                  "(moco-augment --recipe eval --size S makes them)", where, (long long)t->dims[0],
                             (long long)t->dims[1], (long long)t->dims[2], s->images_h, s->images_w, s->images_c);
        s->images_h = (int)t->dims[0], s->images_w = (int)t->dims[1], s->images_c = (int)t->dims[2];
        n = t->dims[0] * t->dims[1] * t->dims[2];
    }
    if (n < 1 || n > (1 << 26))
        return moco_fail(err, "%s: %lld values per sample; expected 1 to %d", where, (long long)n, 1 << 26);
    if (!s->x) {
        if (s->dim && n != s->dim)
            return moco_fail(err, "%s: %lld features, the header says %d (\"dim\")", where, (long long)n, s->dim);
        s->dim = (int)n;
        if (!(s->x = malloc(sizeof(float) * (size_t)n)))
            return moco_fail(err, "out of memory for %lld features", (long long)n);
    } else if (n != s->dim) {
        return moco_fail(err, "%s: %lld features, earlier records have %d", where, (long long)n, s->dim);
    }
    if (rec->label < 0)
        return moco_fail(err, "%s: no label (%lld); training a classifier needs labelled samples", where,
                         (long long)rec->label);
    if (t->dtype == DTYPE_F32) {
        memcpy(s->x, t->data, sizeof(float) * (size_t)n); /* the stream does not align tensor data */
    } else if (t->dtype == DTYPE_F16 || t->dtype == DTYPE_BF16) {
        const uint8_t *p = t->data;
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            s->x[i] = t->dtype == DTYPE_F16 ? f16_to_f32(h) : bf16_to_f32(h);
        }
    } else {
        const uint8_t *p = t->data;
        for (int64_t i = 0; i < n; i++)
            s->x[i] = p[i] * (1.0f / 255.0f);
    }
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(s->x[i]))
            return moco_fail(err, "%s: feature %lld is %s (a diverged encoder? check the checkpoint)", where,
                             (long long)i, isnan(s->x[i]) ? "NaN" : "infinite");
    s->label = rec->label;
    s->sample_id = rec->sample_id;
    return MOCO_OK;
}

int feature_source_next(feature_source *s, const float **x, int64_t *label, int64_t *sample_id, moco_error *err)
{
    if (s->pending) {
        s->pending = 0;
    } else {
        for (;;) {
            if (!s->r)
                return 0;
            stream_record rec;
            int got = stream_read(s->r, &rec, err);
            if (got == STREAM_DAMAGED) {
                s->file_record++;
                s->damaged++;
                continue;
            }
            if (got < 0)
                return MOCO_ERR;
            if (got == 1) {
                s->file_record++;
                if (convert(s, &rec, err))
                    return MOCO_ERR;
                break;
            }
            /* the end of this file: the next shard, or the end */
            if (!s->files || s->file + 1 >= s->nfiles)
                return 0;
            stream_reader_close(s->r);
            s->r = NULL;
            s->file++;
            if (open_file(s, err))
                return MOCO_ERR;
        }
    }
    s->count++;
    *x = s->x;
    *label = s->label;
    if (sample_id)
        *sample_id = s->sample_id;
    return 1;
}

int feature_set_load(feature_set *d, feature_source *s, moco_error *err)
{
    const float *x;
    int64_t label;
    int got;
    d->dim = feature_source_dim(s);
    if (d->n == 0)
        d->max_label = -1;
    while ((got = feature_source_next(s, &x, &label, NULL, err)) == 1) {
        if (d->n == d->capacity) {
            int64_t cap = d->capacity ? d->capacity * 2 : 1024;
            float *nx = realloc(d->x, sizeof(float) * (size_t)cap * (size_t)d->dim);
            if (nx)
                d->x = nx;
            int64_t *nl = nx ? realloc(d->labels, sizeof(int64_t) * (size_t)cap) : NULL;
            if (nl)
                d->labels = nl;
            if (!nx || !nl)
                return moco_fail(err, "%s: out of memory for %lld samples of %d features (%.1f GB); the streaming "
                                      "protocol needs none of it in memory", feature_source_name(s), (long long)cap,
                                 d->dim, 4e-9 * (double)cap * d->dim);
            d->capacity = cap;
        }
        memcpy(d->x + (size_t)d->n * d->dim, x, sizeof(float) * (size_t)d->dim);
        d->labels[d->n++] = label;
        if (label > d->max_label)
            d->max_label = label;
    }
    return got < 0 ? MOCO_ERR : MOCO_OK;
}

void feature_set_free(feature_set *d)
{
    free(d->x);
    free(d->labels);
    *d = (feature_set){0};
}
