/* batcher.h — a stream of u8 views in, normalised float batches out, read ahead by a thread.
 *
 * Training must never wait for the pipe when it need not: a reader thread takes records from the
 * stream (moco-augment's "views" records: u8 (V,S,S,C), label, sample id), converts each view to
 * float ((x / 255 - mean) / std per channel, by a lookup table), and fills batches in a ring of
 * three; the consumer takes a batch, computes, and hands it back. The time the consumer spends
 * waiting is counted, so a tool can report the share of time spent waiting for data.
 *
 * Layout: views[v] is (N,S,S,C) f32 for view v (raw[v] the same bytes unconverted, with opt.raw). A batch is valid from batcher_next until
 * batcher_release. The batcher owns the reader it is given. */
#ifndef MOCO_BATCHER_H
#define MOCO_BATCHER_H
#include <signal.h>
#include <stdint.h>
#include "error.h"
#include "stream.h"

enum { BATCHER_MAX_VIEWS = 4 };

typedef struct {
    int batch;           /* samples per batch */
    int views;           /* views used per record (the first `views` of each) */
    int size, channels;  /* every record must have these */
    double mean[3], std[3];
    int64_t skip;        /* records to read and drop first (a resumed run) */
    int share, shares;   /* ranks sharing one stream: after the skip, keep only batch-sized runs of
                            records share, share + shares, ... (shares 0 or 1: keep all) */
    int keep_last;       /* deliver a final partial batch (extraction); training drops it */
    int strict;          /* a damaged record stops the stream instead of being skipped */
    int raw;             /* keep the views as u8 in batch.raw (a GPU normalises them itself) */
    /* with raw: where those batches live (page-locked memory, which a GPU copies from directly);
     * NULL: malloc and free */
    void *(*raw_alloc)(void *ctx, size_t bytes);
    void (*raw_free)(void *ctx, void *p);
    void *raw_ctx;
    /* when not NULL and set (by a signal handler), a waiting batcher_next returns BATCHER_INTERRUPTED */
    const volatile sig_atomic_t *interrupt;
} batcher_options;

enum { BATCHER_INTERRUPTED = 2 };

typedef struct {
    int n;
    float *views[BATCHER_MAX_VIEWS];   /* normalised; NULL with opt.raw */
    uint8_t *raw[BATCHER_MAX_VIEWS];   /* with opt.raw: the stream's bytes, (N,S,S,C) per view */
    int64_t *labels, *sample_ids;
} batch;

/* The normalisation a view stream asks for: its header's "mean" and "std", else ImageNet's (what
 * DESIGN's recipe uses); only the ones whose have_* is 0 are filled (the rest came from options). */
void batcher_normalisation(const stream_header *h, int have_mean, double mean[3], int have_std, double std[3]);

typedef struct batcher batcher;

/* Start reading `in` (named `name` in messages) on a thread. NULL and err on failure. */
batcher *batcher_open(stream_reader *in, const char *name, const batcher_options *opt, moco_error *err);
/* 1 and the next batch; 0 at the end of the stream; MOCO_ERR with the file and record in err;
 * BATCHER_INTERRUPTED when opt.interrupt was set while waiting. Adds the seconds spent waiting to
 * *waited (may be NULL). */
int batcher_next(batcher *b, batch *out, double *waited, moco_error *err);
/* The batch after the one batcher_next gave, when the reader has it ready already: 1 and that
 * batch, or 0; never waits. It stays valid (and in place) until its own batcher_next and release,
 * so a GPU can copy it during the current step. */
int batcher_peek_next(batcher *b, batch *out);
/* Hand the batch from batcher_next back. */
void batcher_release(batcher *b);
/* Records read (skipped ones included) and damaged records passed over; the first damage message. */
int64_t batcher_records(const batcher *b);
int64_t batcher_damaged(const batcher *b, const char **first_message);
/* Stop the thread, close the reader, free everything. A thread still blocked reading a stalled pipe
 * two seconds later is left detached, its batcher kept until the process exits. */
void batcher_close(batcher *b);

#endif
