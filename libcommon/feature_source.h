/* feature_source.h — samples as float vectors, whatever stage made them: what moco-linear trains on.
 *
 * A source is one tensor stream (a file, or "-" for standard input) or a folder of shards
 * (DIR/shard-*.tsz, read in name order, as one stream). What a sample's vector is depends on the
 * stream's kind:
 *   features  tensor "features", rank 1 (F), f32, f16 or bf16 (moco-extract): the values as they are;
 *   views     tensor "views" u8 (V,S,S,C) (moco-augment): view 0, flattened HWC, x / 255;
 *   images    tensor "image" u8 (H,W,C) (moco-shard, raw-stored): flattened, x / 255. A JPEG-stored
 *             record is refused: pixels of different sizes make no feature vector.
 * The last two make the raw-pixel baseline. Every vector of a source has the same length F (the
 * first record's, or the header's "dim"); a record that differs, has no label, or holds a NaN or an
 * infinity is an error naming the file and record.
 *
 * Opening reads the header and the first record, so feature_source_dim is known (0 only for a
 * stream without samples). A vector from feature_source_next lives in the source's own buffer,
 * valid until the next call. */
#ifndef MOCO_FEATURE_SOURCE_H
#define MOCO_FEATURE_SOURCE_H

#include <stdint.h>

#include "error.h"
#include "stream.h"

typedef enum { FEATURES_VECTORS = 0, FEATURES_VIEWS = 1, FEATURES_IMAGES = 2 } feature_kind;

typedef struct feature_source feature_source;

/* path: a stream file, "-" (standard input) or a shard folder. NULL and err on failure. */
feature_source *feature_source_open(const char *path, moco_error *err);
void feature_source_close(feature_source *s);

/* The (first file's) header: class names, "samples" per epoch, "epochs", "recipe", ... */
const stream_header *feature_source_header(const feature_source *s);
feature_kind feature_source_kind(const feature_source *s);
/* The name used in messages: the path, or "standard input". */
const char *feature_source_name(const feature_source *s);
/* Vector length F (0: the stream holds no sample). */
int feature_source_dim(const feature_source *s);
/* Header "samples" (per epoch; 0 when absent) and "epochs" (1 when absent). */
int64_t feature_source_samples(const feature_source *s);
int64_t feature_source_epochs(const feature_source *s);

/* 1 and the next sample (x: F floats; label >= 0), 0 at the end, MOCO_ERR with the file and record
 * in err. Damaged records (a failed check in a raw stream) are skipped with a count. */
int feature_source_next(feature_source *s, const float **x, int64_t *label, int64_t *sample_id, moco_error *err);
/* Samples returned so far, damaged records skipped so far. */
int64_t feature_source_count(const feature_source *s);
int64_t feature_source_damaged(const feature_source *s);
/* "train.feat: record 812" for the sample last returned (into buf; returns buf), for messages. */
const char *feature_source_where(const feature_source *s, char *buf, int len);

/* ---- every sample in memory: the fast protocol ---- */
typedef struct {
    int64_t n, capacity;
    int dim;
    float *x;        /* (n, dim) */
    int64_t *labels; /* n */
    int64_t max_label;
} feature_set;

/* Read the rest of s into d (grows as samples arrive; d starts zeroed). */
int feature_set_load(feature_set *d, feature_source *s, moco_error *err);
void feature_set_free(feature_set *d);

#endif
