/* idx.h — IDX files, the format of MNIST and Fashion-MNIST (gzipped or not).
 *
 * Layout: a big-endian u32 magic 0x000008TT (TT 0x08 = u8; other element types are refused: the
 * image datasets use u8), then one big-endian u32 per dim, then the elements. Images are (N,H,W)
 * u8, labels (N) u8. The whole array is loaded: these datasets are tens of megabytes; sizes are
 * checked against a limit before allocating, and the data must be exactly as long as the dims say. */
#ifndef MOCO_IDX_H
#define MOCO_IDX_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

enum { IDX_MAX_RANK = 4 };
#define IDX_MAX_BYTES ((int64_t)8 << 30)

typedef struct {
    int rank;
    int64_t dims[IDX_MAX_RANK];
    uint8_t *data; /* owned; row-major */
    int64_t count; /* dims[0] */
    int64_t item_bytes; /* product of dims[1..] */
} idx_array;

/* Load path (gzip detected by content). Errors name the file. */
int idx_load(const char *path, idx_array *out, moco_error *err);
/* Parse an in-memory (already decompressed) IDX file; data is copied. */
int idx_parse(const uint8_t *buf, size_t len, const char *name, idx_array *out, moco_error *err);
/* Whether the first bytes look like an IDX u8 file (or a gzip stream, which may hold one). */
int idx_sniff(const uint8_t *buf, size_t len);
void idx_free(idx_array *a);

#endif
