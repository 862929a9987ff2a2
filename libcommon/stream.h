/* stream.h — the tensor stream: how every stage passes data to the next (man 5 moco-stream).
 *
 * A stream is a sequence of records: one header record (a JSON object: kind, producer, arguments,
 * class names, sample count, ...), any number of data records (named tensors plus a sample id and
 * a label), and one end record (the data-record count), which is how a reader tells a complete
 * stream from a truncated one. On disk and in pipes the records are zstd-compressed (level >= 1 or
 * zstd's fast negative levels) or raw (level 0, for fast local pipes); the reader detects which from
 * the first bytes. `cat a.tsz b.tsz` is a valid stream: its parts must agree on kind and classes.
 *
 * Each record carries an XXH3 check of its fixed header and of its body, so a flipped byte is
 * reported with the record number even in a raw stream; zstd adds its own content checksum.
 * Sizes are bounded (rank, dims, tensors per record, record bytes) and memory grows only as bytes
 * arrive, so a hostile header cannot make a reader allocate gigabytes.
 *
 * Ownership: a stream_record filled by stream_read points into the reader's buffer and is valid
 * until the next stream_read or stream_reader_close. Records passed to stream_write are not kept. */
#ifndef MOCO_STREAM_H
#define MOCO_STREAM_H

#include <stdint.h>
#include <stdio.h>

#include "error.h"
#include "tensor.h"

enum {
    STREAM_DAMAGED = -3, /* stream_read: a data record failed its check and was skipped; read on */
    STREAM_VERSION = 1,
    STREAM_MAX_TENSORS = 64,     /* per record */
    STREAM_MAX_HEADER = 1 << 24, /* bytes of header JSON (class names of big datasets fit) */
};
#define STREAM_DEFAULT_MAX_RECORD ((int64_t)1 << 30) /* bytes; a reader option can raise it */

/* ---- header: a JSON object with a few fixed keys and any others a tool needs ---- */

typedef struct stream_header stream_header;

stream_header *stream_header_new(const char *kind, const char *producer);
void stream_header_free(stream_header *h);
/* A deep copy (NULL when out of memory). */
stream_header *stream_header_copy(const stream_header *h);
/* The command line that made the stream (stored as a JSON array of strings). */
void stream_header_set_args(stream_header *h, int argc, char **argv);
void stream_header_set_classes(stream_header *h, int n, const char *const *names);
void stream_header_set_str(stream_header *h, const char *key, const char *value);
void stream_header_set_int(stream_header *h, const char *key, int64_t value);
void stream_header_set_real(stream_header *h, const char *key, double value);
/* An array of n numbers (e.g. the normalisation mean); get returns 1 when key holds exactly n. */
void stream_header_set_reals(stream_header *h, const char *key, int n, const double *values);
int stream_header_get_reals(const stream_header *h, const char *key, int n, double *values);

const char *stream_header_kind(const stream_header *h);
/* Missing keys (or the wrong JSON type) give the fallback. */
const char *stream_header_get_str(const stream_header *h, const char *key, const char *fallback);
int64_t stream_header_get_int(const stream_header *h, const char *key, int64_t fallback);
double stream_header_get_real(const stream_header *h, const char *key, double fallback);
/* Class names: count, and the i-th (NULL when out of range). */
int stream_header_num_classes(const stream_header *h);
const char *stream_header_class(const stream_header *h, int i);
/* The header as JSON text (malloc'd; the caller frees). indent 0 gives one line. */
char *stream_header_json(const stream_header *h, int indent);

/* ---- records ---- */

typedef struct {
    int64_t sample_id; /* -1 when the record is not a sample (e.g. a checkpoint tensor) */
    int64_t label;     /* -1 when unlabelled */
    int ntensors;
    tensor tensors[STREAM_MAX_TENSORS];
} stream_record;

/* An empty record (no tensors, ids -1); then stream_record_add for each tensor. */
void stream_record_init(stream_record *r, int64_t sample_id, int64_t label);
/* Append a tensor that points at caller memory; fails on too many tensors or a bad shape. */
int stream_record_add(stream_record *r, const char *name, tensor_dtype dtype, int rank,
                      const int64_t *dims, const void *data, moco_error *err);
/* The tensor named `name`, or NULL. */
const tensor *stream_record_find(const stream_record *r, const char *name);

/* ---- writer ---- */

typedef struct {
    int level;          /* 0 raw records; 1..22 zstd; -1..-7 zstd's fast levels. Default 3. */
    int threads;        /* zstd worker threads for large writes (0 = compress on the caller's thread) */
    int allow_terminal; /* write binary even when the output is a terminal */
    int zero_copy;      /* raw records into a pipe: vmsplice(2) pages instead of copying them */
} stream_options;

/* zero_copy: the pipe then holds references to the writer's pages, which it reuses once at least a
 * pipe's capacity of later bytes has gone in (so the reader has copied them out). That is safe for
 * a reader that read()s the pipe, as every moco tool does, but not for a relay that splice()s the
 * pages on (pv does): the pages may then change before the final reader sees them, and its record
 * checks will report corruption. Roughly halves the CPU cost of a raw pipe on both sides. */
#define STREAM_OPTIONS_DEFAULT ((stream_options){.level = 3, .threads = 0, .allow_terminal = 0, .zero_copy = 0})

typedef struct stream_writer stream_writer;

/* Open `path` for writing ("-" or NULL: stdout) and write the header. A named file is written
 * under a temporary name in the same directory and renamed into place by stream_writer_close, so
 * a killed writer never leaves a file that looks whole. Returns NULL and fills err on failure. */
stream_writer *stream_writer_open(const char *path, const stream_options *opt,
                                  const stream_header *h, moco_error *err);
/* Same on an open descriptor (not closed by the writer); `name` is used in messages. */
stream_writer *stream_writer_open_fd(int fd, const char *name, const stream_options *opt,
                                     const stream_header *h, moco_error *err);
/* MOCO_OK, MOCO_ERR, or MOCO_EPIPE when the reader has gone away (stop quietly). */
int stream_write(stream_writer *w, const stream_record *r, moco_error *err);
/* Push everything written so far to the output (a zstd flush: a block boundary, not a new frame). */
int stream_flush(stream_writer *w, moco_error *err);
/* Write the end record, flush, fsync and rename a named file into place, free w.
 * On any failure the temporary file is removed and nothing is left at `path`. */
int stream_writer_close(stream_writer *w, moco_error *err);
/* Give up: free w, remove a temporary file, write no end record (readers will see truncation). */
void stream_writer_abort(stream_writer *w);
int64_t stream_writer_records(const stream_writer *w);

/* ---- reader ---- */

typedef struct {
    int64_t max_record_bytes; /* 0: STREAM_DEFAULT_MAX_RECORD */
} stream_read_options;

typedef struct stream_reader stream_reader;

/* Open `path` ("-" or NULL: stdin), read and check the header. NULL and err on failure. */
stream_reader *stream_reader_open(const char *path, const stream_read_options *opt, moco_error *err);
stream_reader *stream_reader_open_fd(int fd, const char *name, const stream_read_options *opt,
                                     moco_error *err);
/* Read from memory (tests, fuzzing); buf must outlive the reader. */
stream_reader *stream_reader_open_memory(const void *buf, size_t len, const char *name,
                                         const stream_read_options *opt, moco_error *err);
/* The header of the (first) stream. */
const stream_header *stream_reader_header(const stream_reader *r);
/* 1: a record was read into rec; 0: clean end of the stream; MOCO_ERR: corrupt or truncated
 * input, with the file and record number in err; STREAM_DAMAGED: one data record failed its body
 * check (err says which) and was passed over: the caller may warn and read on (raw records only:
 * damage inside a zstd frame stops the stream). */
int stream_read(stream_reader *r, stream_record *rec, moco_error *err);
/* Data records read so far, and the number of concatenated parts seen. */
int64_t stream_reader_records(const stream_reader *r);
int stream_reader_parts(const stream_reader *r);
/* "raw" or "zstd": the encoding of the part being read. */
const char *stream_reader_encoding(const stream_reader *r);
void stream_reader_close(stream_reader *r);

/* The zstd level a tool writes at unless told: 0 (raw records: the reader is a process on the same
 * machine, and compressing costs more than the copy) into a pipe or socket (standard output when
 * path is NULL or "-", or a FIFO named by path) and into a device named by path (/dev/null), 3 into
 * a file. */
int stream_default_level(const char *path);

/* 1 when a file's first n bytes (n >= 4) start a tensor stream: a record or a zstd frame. Lets a tool
 * tell a damaged stream (report the stream's error) from a file of another format. */
int stream_magic(const void *first, size_t n);

/* Make a pipe's kernel buffer large (1 MiB) when fd is a pipe: far fewer context switches when
 * hundreds of kilobytes pass per record. Harmless on files and terminals. */
void stream_grow_pipe(int fd);

#endif
