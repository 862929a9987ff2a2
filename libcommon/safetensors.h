/* safetensors.h — read and write safetensors files, the tensor format of Hugging Face and PyTorch
 * checkpoints (https://github.com/huggingface/safetensors).
 *
 * Layout: an 8-byte little-endian length N, N bytes of JSON header, then the data buffer. The header
 * maps each tensor name to {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]} (offsets
 * into the data buffer) and may hold "__metadata__", an object of string -> string. The reader
 * checks the file as the reference Rust implementation does: header at most 100 MB, every entry
 * well formed, byte size = element count * dtype size, and the tensors tiling the data buffer
 * exactly (no gap, no overlap, nothing left over). Only the six dtypes of tensor.h are read; any
 * other (F64, BOOL, I8, ...) is an error naming the tensor and the dtype. Data are little-endian,
 * as on every host we build for.
 *
 * Ownership: a reader maps the file read-only (or borrows the caller's memory); the tensors it
 * returns point into that mapping, are valid until safetensors_close and must not be written.
 * tensor.data need not be aligned for its dtype (the header length is arbitrary): read elements
 * with memcpy or tensor_get. Files from safetensors_write have their data start at a multiple of
 * 64 bytes, which the format allows by padding the header with spaces. */
#ifndef MOCO_SAFETENSORS_H
#define MOCO_SAFETENSORS_H

#include <stddef.h>

#include "error.h"
#include "tensor.h"

/* The reference implementation's bound on the header, so a hostile length cannot exhaust memory. */
#define SAFETENSORS_MAX_HEADER 100000000

typedef struct safetensors safetensors;

/* Map `path` and check it. NULL and err (naming the file and tensor) on failure. */
safetensors *safetensors_open(const char *path, moco_error *err);
/* Parse memory in place (tests, fuzzing); buf must outlive the reader. `name` is used in messages. */
safetensors *safetensors_open_memory(const void *buf, size_t len, const char *name, moco_error *err);
void safetensors_close(safetensors *st);

/* Tensors in the order of their data in the file; i from 0 to count-1. */
int safetensors_count(const safetensors *st);
const tensor *safetensors_tensor(const safetensors *st, int i);
/* The tensor named `name`, or NULL. */
const tensor *safetensors_find(const safetensors *st, const char *name);

/* "__metadata__" entries: the value of `key`, or NULL when absent; count and i-th key for listing. */
const char *safetensors_metadata(const safetensors *st, const char *key);
int safetensors_metadata_count(const safetensors *st);
const char *safetensors_metadata_key(const safetensors *st, int i);

/* Write n tensors (header keys and data in the order given) and nmeta metadata pairs to `path`:
 * written to "path.tmp.<pid>", fsync'd and renamed into place, so a failed or killed writer never
 * leaves a file that looks whole. Names must be unique. */
int safetensors_write(const char *path, const tensor *tensors, int n, const char *const *meta_keys,
                      const char *const *meta_values, int nmeta, moco_error *err);

#endif
