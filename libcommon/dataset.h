/* dataset.h — what moco-shard reads: the samples of one or more inputs, in a fixed natural order,
 * with labels and class names.
 *
 * Inputs, recognised by what they are (not by name):
 *   - a folder with sub-folders: torchvision's ImageFolder (class = sub-folder name, files found
 *     recursively, sorted); a folder of files only: a flat folder, labelled by a label file or not
 *   - a text file list: "path<TAB>label" per line (paths relative to the list's folder)
 *   - an IDX file (MNIST / Fashion-MNIST, gzipped or not); its labels come from the matching
 *     "-labels-idx1-" file beside it, or the label file given
 *   - an archive libarchive reads (tar, tar.gz, ...): members in class folders, ImageNet's tar of
 *     one tar per class (class = inner tar name), or WebDataset (key.jpg + key.cls)
 * Archives are listed once (headers, and .cls contents) and streamed again when shards are made;
 * nothing inside an archive is ever written to disk.
 *
 * Labels are either class names (folders, archives, lists with names) mapped to indices in sorted
 * order, or numbers (IDX, WebDataset, lists with numbers); a classes file fixes the map, so train
 * and val agree. Sample ids are positions in the natural order: inputs in command-line order, each
 * in sorted (or archive) order. */
#ifndef MOCO_DATASET_H
#define MOCO_DATASET_H

#include <stdint.h>

#include "error.h"
#include "idx.h"

typedef enum { INPUT_FILES, INPUT_IDX, INPUT_ARCHIVE } input_kind;

typedef struct {
    input_kind kind;
    char *path;
    idx_array images; /* INPUT_IDX: (N,H,W) u8 */
    int64_t first_item, items; /* this input's slice of dataset.items */
} dataset_input;

typedef struct {
    int input;      /* index into dataset.inputs */
    int64_t member; /* IDX: item index; archive: image member number in walk order; files: -1 */
    int64_t label;  /* -1 unlabelled */
    int class_tmp;  /* during listing: index into the unsorted class table, -1 none */
    char *key;      /* file path, archive member path ("inner.tar/x.jpg"), or "file[i]" */
} dataset_item;

typedef struct {
    dataset_input *inputs;
    int ninputs;
    dataset_item *items;
    int64_t count, cap;
    char **classes; /* final class names, index = label */
    int nclasses;
    int fixed_classes;       /* from dataset_set_classes_file */
    int has_numeric, has_named;
    int64_t ignored;         /* files skipped in listing: not an image by extension */
    /* listing state (internal): class names in order of discovery, before sorting */
    char **found;
    int nfound, found_cap, last_found;
} dataset;

void dataset_init(dataset *d);
void dataset_free(dataset *d);
/* One class name per line; index = line number. Call before adding inputs. */
int dataset_set_classes_file(dataset *d, const char *path, moco_error *err);
/* Add an input; labels_file (may be NULL) labels a flat folder or an IDX file. */
int dataset_add(dataset *d, const char *path, const char *labels_file, moco_error *err);
/* Resolve labels to class indices once every input is added. */
int dataset_finish(dataset *d, moco_error *err);

/* Whole contents of a file (malloc'd). */
int dataset_read_file(const char *path, uint8_t **buf, size_t *len, int64_t max_bytes, moco_error *err);

/* Stream an archive's image members in walk order (nested tars included): for each member that
 * want(ctx, member) accepts, visit(ctx, member, key, data, len) gets its bytes (valid during the
 * call); the others are skipped without being read into memory. Member numbers match the item's
 * `member` from listing. A nonzero return from visit stops the walk with that status. */
typedef int (*archive_want_fn)(void *ctx, int64_t member);
typedef int (*archive_visit_fn)(void *ctx, int64_t member, const char *key, const uint8_t *data, size_t len,
                                moco_error *err);
int dataset_walk_archive(const char *path, archive_want_fn want, archive_visit_fn visit, void *ctx,
                         int64_t max_member_bytes, moco_error *err);

#endif
