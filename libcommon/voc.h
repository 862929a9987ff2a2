/* voc.h — Pascal VOC detection evaluation, exactly as detectron2's PascalVOCDetectionEvaluator
 * computes it (its voc_eval / voc_ap, the devkit's Python port): annotations, detections, the metric.
 *
 * Not the detector: detections come in from devkit result files or a "detections" tensor stream
 * (layout in man 1 moco-voc-eval). Boxes are in the devkit's convention throughout: 1-based
 * inclusive pixel coordinates (xmin, ymin, xmax, ymax), width = xmax - xmin + 1.
 *
 * The metric, per class and IoU threshold t = k/100 for k = 50, 55, ..., 95: detections sorted by
 * descending score (ties keep their input order); each is matched with the ground-truth box of its
 * image that overlaps it most (the first such box on ties); IoU > t and that box difficult: ignored;
 * not difficult and not yet taken: a true positive (the box is taken); taken: a false positive;
 * IoU <= t: a false positive. Positives are the non-difficult boxes. Precision = tp / max(tp + fp,
 * DBL_EPSILON). AP is the VOC2007 11-point interpolation at recall k * 0.1 in double (as numpy's
 * arange gives them: 0.30000000000000004, so a recall of exactly 0.3 misses the fourth point), or the
 * area under the precision envelope (VOC2010+). Sums run in numpy's pairwise order, so results
 * agree with numpy to the last bit, not just to rounding.
 *
 * Ownership: a voc_dataset owns its class names, image ids and objects; voc_detections and
 * voc_result own their arrays. Each has a _free that accepts a zeroed struct. No global state. */
#ifndef MOCO_VOC_H
#define MOCO_VOC_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

enum {
    VOC_NUM_CLASSES = 20,     /* the default class list */
    VOC_MAX_CLASSES = 4096,   /* --classes files beyond this are refused */
    VOC_NUM_THRESHOLDS = 10,  /* IoU 0.50, 0.55, ..., 0.95 */
    VOC_MAX_NAME = 255,       /* bytes of a class name or image id */
};

typedef enum { VOC_METRIC_11POINT = 0, VOC_METRIC_AREA = 1 } voc_metric;

/* aeroplane ... tvmonitor, in detectron2's (and the devkit's) order: class index = position. */
extern const char *const voc_default_classes[VOC_NUM_CLASSES];

/* ---- ground truth ---- */

typedef struct {
    int cls;        /* index into the dataset's classes */
    int difficult;  /* 1: neither a positive nor, when matched, a false positive */
    double box[4];  /* xmin, ymin, xmax, ymax: integers as the XML has them */
} voc_object;

typedef struct {
    char *id;       /* "000005" */
    voc_object *objects;
    int nobjects, cap;
} voc_image;

typedef struct {
    int nclasses;
    char **classes;
    int nimages, cap;
    voc_image *images;   /* in the order of the image set file */
    int *slots;          /* open-addressing index id -> image (-1 empty); nslots is a power of 2 */
    size_t nslots;
} voc_dataset;

/* An empty dataset with these classes (copied; duplicates and empty names refused). */
int voc_dataset_init(voc_dataset *ds, int nclasses, const char *const *classes, moco_error *err);
void voc_dataset_free(voc_dataset *ds);
/* Class index of name, or -1. */
int voc_class_index(const voc_dataset *ds, const char *name);
/* Append an image with no objects; returns its index, or MOCO_ERR (duplicate id, no memory). */
int voc_dataset_add_image(voc_dataset *ds, const char *id, moco_error *err);
/* Image index of the id (len bytes, not NUL-terminated), or -1. */
int voc_dataset_find(const voc_dataset *ds, const char *id, size_t len);
int voc_dataset_add_object(voc_dataset *ds, int image, int cls, int difficult, const double box[4],
                           moco_error *err);

/* Parse one annotation (len bytes of XML) and append its objects to image `image`. As detectron2's
 * parse_rec: the <object> children of the root element; in each, the first <name>, <difficult>
 * (missing: 0) and <bndbox> with integer <xmin> <ymin> <xmax> <ymax>; other elements (pose,
 * truncated, part, ...) are ignored. Errors say "file: line N: what" (malformed XML, a missing
 * field, a class not in the dataset, a coordinate that is not an integer, xmax < xmin). */
int voc_parse_annotation(voc_dataset *ds, int image, const char *xml, size_t len, const char *file,
                         moco_error *err);

/* Load a devkit tree into ds (initialised with its classes, no images yet): the ids listed in
 * DIR/ImageSets/Main/<set>.txt, each with DIR/Annotations/<id>.xml. */
int voc_load(voc_dataset *ds, const char *dir, const char *set, moco_error *err);

/* Read a class list: one name per line, surrounding blanks stripped, empty lines and lines
 * starting with '#' skipped. *names is malloc'd (free with voc_free_classes). */
int voc_read_classes(const char *path, char ***names, int *n, moco_error *err);
void voc_free_classes(char **names, int n);

/* ---- detections ---- */

typedef struct {
    int image, cls;
    double score;
    double box[4];  /* devkit convention, as in a result file */
} voc_detection;

typedef struct {
    voc_detection *items; /* in input order: the order that breaks ties in score */
    size_t n, cap;
    int64_t skipped;      /* detections of image ids not in the set, left out (not with strict) */
    char first_skipped[512]; /* "file: line N: image id 'x'" of the first one */
} voc_detections;

typedef struct {
    int strict;       /* an image id not in the set is an error, not skipped */
    int exact;        /* streams: keep f32 values as they are instead of detectron2's rounding */
} voc_read_options;

void voc_detections_free(voc_detections *d);
int voc_detections_add(voc_detections *d, int image, int cls, double score, const double box[4],
                       moco_error *err);

/* Devkit result files: PREFIX<class>.txt for every class, lines "image_id score xmin ymin xmax ymax"
 * (blank-separated; empty lines skipped). Errors name the file and line: a missing file, a wrong
 * field count, a number that does not parse, a NaN score, a non-finite coordinate, xmax < xmin or
 * ymax < ymin, an unknown image id with opt->strict. */
int voc_read_results(const voc_dataset *ds, const char *prefix, const voc_read_options *opt,
                     voc_detections *out, moco_error *err);
/* The same for one class from memory (len bytes of text; `file` names it in messages). */
int voc_parse_results(const voc_dataset *ds, int cls, const char *text, size_t len, const char *file,
                      const voc_read_options *opt, voc_detections *out, moco_error *err);

/* A "detections" tensor stream (path "-": stdin). Each data record: tensors boxes f32 (n,4) in
 * detectron2's coordinates (x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax), scores f32 (n),
 * classes i64 or i32 (n), and the image: a u8 tensor image_id holding the id's bytes, or else the
 * record's sample id as the index of the image in the set. Class indices refer to the header's
 * class names when it has them (mapped by name), else to the dataset's classes. Unless opt->exact,
 * each detection becomes what detectron2's evaluator writes: "%.3f" of the score, xmin = x1 + 1
 * and ymin = y1 + 1 in float32, all four "%.1f". Errors name the file, record and detection. */
int voc_read_stream(const voc_dataset *ds, const char *path, const voc_read_options *opt,
                    voc_detections *out, moco_error *err);
/* Write d as such a stream (one record per run of detections of one image, so reading it back gives
 * the same order): boxes converted back to detectron2's coordinates, in float32. argc/argv go into
 * the header's args (argv may be NULL). Atomic for a named file, as every stream writer. */
int voc_write_stream(const voc_dataset *ds, const voc_detections *d, const char *path,
                     const char *producer, int argc, char **argv, moco_error *err);

/* ---- the metric ---- */

typedef struct {
    voc_metric metric;
    int skip_empty;   /* a class with no positives is left out of the means (else an error) */
} voc_eval_options;

typedef struct {
    int nclasses, nevaluated;
    double thresholds[VOC_NUM_THRESHOLDS];      /* 0.50 ... 0.95 as k/100 */
    int64_t *positives, *difficult, *detections;  /* per class */
    int *evaluated;                             /* per class: 0 when skipped for no positives */
    double *ap;                  /* [class * VOC_NUM_THRESHOLDS + t], percent */
    double map[VOC_NUM_THRESHOLDS];             /* mean over evaluated classes, percent */
    double AP, AP50, AP75;                      /* mean of map; map at 0.50; map at 0.75 */
} voc_result;

int voc_evaluate(const voc_dataset *ds, const voc_detections *d, const voc_eval_options *opt,
                 voc_result *res, moco_error *err);
void voc_result_free(voc_result *res);

/* The pieces, exposed for tests: IoU with the +1 pixel convention; AP of a precision/recall curve
 * (fraction, not percent); numpy's pairwise sum (np.sum / np.add.reduce on a contiguous array). */
double voc_iou(const double det[4], const double gt[4]);
int voc_ap(const double *rec, const double *prec, size_t n, voc_metric metric, double *ap, moco_error *err);
double voc_pairwise_sum(const double *a, size_t n);

#endif
