/* tensor.h — a named, typed, shaped block of memory, as the stream and safetensors files carry it.
 *
 * A tensor here does not own its data: `data` points into a reader's buffer (valid until that
 * reader's next call) or into memory the caller owns. Shapes are row-major (C order), at most
 * TENSOR_MAX_RANK dims; images are HWC u8 (H,W,C) and batches of views NHWC (N,H,W,C). */
#ifndef MOCO_TENSOR_H
#define MOCO_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

enum { TENSOR_MAX_RANK = 8, TENSOR_MAX_NAME = 127 };

typedef enum {
    DTYPE_U8 = 1,
    DTYPE_I32 = 2,
    DTYPE_I64 = 3,
    DTYPE_F16 = 4,
    DTYPE_BF16 = 5,
    DTYPE_F32 = 6,
} tensor_dtype;

typedef struct {
    char name[TENSOR_MAX_NAME + 1];
    tensor_dtype dtype;
    int rank;
    int64_t dims[TENSOR_MAX_RANK];
    void *data;
} tensor;

/* Bytes per element, or 0 for an unknown dtype code. */
size_t dtype_size(int dtype);
/* "u8", "i32", ... or NULL for an unknown code; dtype_from_name returns 0 when unknown. */
const char *dtype_name(int dtype);
int dtype_from_name(const char *name);

/* Fill t's name, dtype and shape (data left to the caller); fails on a name too long or a bad rank. */
int tensor_init(tensor *t, const char *name, tensor_dtype dtype, int rank, const int64_t *dims,
                moco_error *err);

/* Element count and byte size; both saturate to -1 on overflow or a negative dim. */
int64_t tensor_numel(const tensor *t);
int64_t tensor_nbytes(const tensor *t);

/* "u8[2,224,224,3]" into buf (always NUL-terminated); returns buf. */
char *tensor_describe(const tensor *t, char *buf, size_t len);

/* float32 <-> float16 / bfloat16 conversions (round to nearest even), for inspection and export. */
float f16_to_f32(uint16_t h);
float bf16_to_f32(uint16_t b);
uint16_t f32_to_f16(float f);
uint16_t f32_to_bf16(float f);

/* Element i of t as a double (any dtype), for printing values. */
double tensor_get(const tensor *t, int64_t i);

#endif
