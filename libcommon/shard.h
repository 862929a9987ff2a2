/* shard.h — a set of shard files: which sample goes to which shard, the writers, the index.
 *
 * A plan gives every sample a position (its own index, or a seeded shuffle of them); shard k holds
 * positions [k * per_shard, (k + 1) * per_shard). With --part i/n a process owns the shards
 * k = i, i + n, i + 2n, ..., so n processes together write exactly the shards one would, whatever
 * n is. Shard files are DIR/shard-KKKKK.tsz, each written under a temporary name and renamed when
 * complete; the index (DIR/index.json, or index-PART-of-PARTS.json) lists the shards with their
 * record and per-class counts, the class names and the options used. Records in a shard follow
 * position order, except when the samples arrive in archive order (shard_set_write is then called
 * for many shards at once): they follow archive order within each shard. */
#ifndef MOCO_SHARD_H
#define MOCO_SHARD_H

#include <jansson.h>
#include <stdint.h>

#include "error.h"
#include "image.h"
#include "resample.h"
#include "stream.h"

/* ---- the record of one image in a shard ----
 * Tensors: "image" u8 (H,W,C) when stored raw; "jpeg" u8 (bytes) and "shape" i32 (3) = H,W,C when
 * stored as JPEG; "key" u8 (bytes): where the sample came from (path or archive member), for
 * messages. The record's label is the class index, its sample id the sample's natural position. */

typedef enum { STORE_RAW = 0, STORE_JPEG = 1 } shard_store;

typedef struct {
    shard_store store;
    int quality;             /* JPEG re-encoding quality */
    int channels;            /* 1 or 3 */
    int short_side, max_side; /* shrink so the short side is at most this / the long side at most this; 0 off */
    resample_filter filter;
    int64_t max_pixels;      /* decode limit */
    int exact;               /* resize from full-size decodes only: pixels exactly as PIL makes them */
} shard_format;

typedef struct {
    image img;         /* decoded (and resized) pixels; empty when the source JPEG is kept */
    uint8_t *jpeg;     /* JPEG bytes to store: re-encoded (owned) or the source's (borrowed) */
    size_t jpeg_len;
    int jpeg_owned;
    int height, width, channels;
    int32_t shape[3];
} shard_sample;

/* Turn a source into what the shard stores: `bytes` (a JPEG or PNG file) or `pixels` (HWC u8, e.g.
 * from IDX). A source JPEG that needs no resizing or channel change is kept byte for byte (after a
 * full decode has checked it), so shards of JPEG photos lose nothing and cost no re-encoding. */
int shard_sample_prepare(const shard_format *fmt, const uint8_t *bytes, size_t len, const image *pixels,
                         shard_sample *out, moco_error *err);
/* Point r's tensors at the sample (valid while the sample lives); returns the record's data bytes. */
int64_t shard_sample_record(shard_sample *s, const char *key, int64_t sample_id, int64_t label, stream_record *r,
                            moco_error *err);
void shard_sample_free(shard_sample *s);

typedef struct {
    int64_t samples, per_shard, nshards;
    int64_t *position; /* sample -> position */
    int64_t *sample;   /* position -> sample */
    int part, parts;
} shard_plan;

int shard_plan_make(shard_plan *p, int64_t samples, int64_t per_shard, int shuffle, uint64_t seed, int part,
                    int parts, moco_error *err);
void shard_plan_free(shard_plan *p);
static inline int64_t shard_of(const shard_plan *p, int64_t sample) { return p->position[sample] / p->per_shard; }
static inline int shard_owned(const shard_plan *p, int64_t shard) { return shard % p->parts == p->part; }
/* Positions that fall in shard k (the last shard may be short). */
int64_t shard_size(const shard_plan *p, int64_t shard);

typedef struct shard_set shard_set;

/* Writers for the owned shards of `plan` in `dir` (created if missing). Each shard's header is a copy
 * of `tmpl` plus "shard" and "shards". max_bytes > 0 cuts shards by size instead (sequential writes
 * only, one part). */
shard_set *shard_set_open(const char *dir, const shard_plan *plan, const stream_header *tmpl,
                          const stream_options *opt, int nclasses, int64_t max_bytes, moco_error *err);
/* Write a record to shard k (opened on first use). In size mode k is ignored. */
int shard_set_write(shard_set *s, int64_t shard, const stream_record *r, int64_t record_bytes, moco_error *err);
/* A position of shard k has been dealt with (written or skipped); the shard is closed and renamed
 * into place when all of its positions are. */
int shard_set_position_done(shard_set *s, int64_t shard, moco_error *err);
/* Close the remaining shards and write the index with the given extra fields (consumed); frees s.
 * *files gets the number of shard files written. */
int shard_set_close(shard_set *s, json_t *extra, int64_t *files, moco_error *err);
/* Remove temporary files, free. Shards already complete stay. */
void shard_set_abort(shard_set *s);
int64_t shard_set_written(const shard_set *s);

/* ---- reading a shard set back, epoch by epoch ----
 * The shards of one part (shard k belongs to part k mod parts) are visited in an order shuffled
 * per epoch, and their records pass through a shuffle buffer: it is kept full and a random one of
 * its items comes out each time, so samples mix across shards. Every random choice comes from the
 * Philox stream of (seed, epoch): the same seed gives the same order, any thread count. */

typedef struct {
    int64_t sample_id, label;
    int height, width, channels;
    int is_jpeg;    /* data: JPEG bytes, else raw HWC pixels */
    uint8_t *data;  /* owned (malloc'd) */
    size_t len;
    char key[160];  /* where the sample came from, for messages (may be cut short) */
} shard_item;

typedef struct shard_source shard_source;

/* paths: shard files or folders of them (shard-*.tsz; records counted from the index files). */
shard_source *shard_source_open(int npaths, char *const *paths, int part, int parts, moco_error *err);
/* The first shard's header (class names, channels, ...), the files this part reads, and its
 * records per epoch (from the index, or the shard headers where there is none). */
const stream_header *shard_source_header(const shard_source *s);
int shard_source_files(const shard_source *s);
int64_t shard_source_samples(const shard_source *s);
int shard_source_begin_epoch(shard_source *s, uint64_t seed, int epoch, int buffer, moco_error *err);
/* 1 and an item (the caller frees item->data), 0 at the end of the epoch, MOCO_ERR, or
 * STREAM_DAMAGED (err says which record; reading may go on). */
int shard_source_next(shard_source *s, shard_item *item, moco_error *err);
void shard_source_close(shard_source *s);

#endif
