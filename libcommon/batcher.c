/* batcher.c — read-ahead batching of view streams (see batcher.h). */
#include "batcher.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "progress.h"

enum { SLOTS = 3 };

/* Batchers whose reader thread was stuck in read(2) at close (see batcher_close). */
static struct batcher *abandoned;

struct batcher {
    stream_reader *in;
    char name[256];
    batcher_options opt;
    float lut[3][256]; /* u8 -> normalised float, per channel */
    batch slots[SLOTS];
    int head, count;   /* slots[head] is the oldest full batch; count full ones */
    int finished;      /* the thread has delivered everything it will (end or error) */
    int stop;          /* the consumer is closing */
    int status;        /* MOCO_OK or MOCO_ERR once finished */
    moco_error err;
    int64_t records, damaged;
    char first_damage[1024];
    pthread_t thread;
    int started;
    struct batcher *abandoned_next;
    pthread_mutex_t lock;
    pthread_cond_t changed;
};

/* Convert record r's views into row i of slot s; MOCO_ERR when the record is not what we expect. */
static int take_record(batcher *b, batch *s, int i, const stream_record *rec, moco_error *err)
{
    const tensor *t = stream_record_find(rec, "views");
    const batcher_options *o = &b->opt;
    if (!t || t->dtype != DTYPE_U8 || t->rank != 4 || t->dims[0] < o->views || t->dims[1] != o->size ||
        t->dims[2] != o->size || t->dims[3] != o->channels) {
        char got[96] = "no \"views\" tensor";
        if (t)
            tensor_describe(t, got, sizeof got);
        return moco_fail(err, "%s: record %lld: %s; expected u8 views (>=%d,%d,%d,%d)", b->name,
                         (long long)b->records, got, o->views, o->size, o->size, o->channels);
    }
    size_t view = (size_t)o->size * o->size * o->channels;
    for (int v = 0; v < o->views; v++) {
        const uint8_t *src = (const uint8_t *)t->data + v * view;
        if (o->raw) {
            memcpy(s->raw[v] + i * view, src, view);
            continue;
        }
        float *dst = s->views[v] + i * view;
        for (size_t p = 0; p < view; p += o->channels)
            for (int c = 0; c < o->channels; c++)
                dst[p + c] = b->lut[c][src[p + c]];
    }
    s->labels[i] = rec->label;
    s->sample_ids[i] = rec->sample_id;
    return MOCO_OK;
}

static void finish(batcher *b, int status)
{
    pthread_mutex_lock(&b->lock);
    b->finished = 1;
    b->status = status;
    pthread_cond_broadcast(&b->changed);
    pthread_mutex_unlock(&b->lock);
}

static void *read_loop(void *arg)
{
    batcher *b = arg;
    moco_error err = {{0}};

    for (;;) {
        pthread_mutex_lock(&b->lock);
        while (b->count == SLOTS && !b->stop)
            pthread_cond_wait(&b->changed, &b->lock);
        int stop = b->stop, slot = (b->head + b->count) % SLOTS;
        pthread_mutex_unlock(&b->lock);
        if (stop)
            break;
        batch *s = &b->slots[slot];
        int n = 0, rc = 0;
        while (n < b->opt.batch && !__atomic_load_n(&b->stop, __ATOMIC_RELAXED)) {
            stream_record rec;
            rc = stream_read(b->in, &rec, &err);
            if (rc == STREAM_DAMAGED && !b->opt.strict) {
                if (!b->damaged++)
                    snprintf(b->first_damage, sizeof b->first_damage, "%s", err.msg);
                continue;
            }
            if (rc != 1)
                break;
            b->records++;
            if (b->records <= b->opt.skip)
                continue;
            if (b->opt.shares > 1 && (b->records - b->opt.skip - 1) / b->opt.batch % b->opt.shares != b->opt.share)
                continue; /* another rank's batch */
            if (take_record(b, s, n, &rec, &err)) {
                rc = MOCO_ERR;
                break;
            }
            n++;
        }
        if (rc < 0) {
            if (rc == STREAM_DAMAGED)
                moco_prefix(&err, "--strict");
            b->err = err;
            finish(b, MOCO_ERR);
            return NULL;
        }
        if (n == b->opt.batch || (n > 0 && b->opt.keep_last)) {
            s->n = n;
            pthread_mutex_lock(&b->lock);
            b->count++;
            pthread_cond_broadcast(&b->changed);
            pthread_mutex_unlock(&b->lock);
        }
        if (rc == 0) /* the end of the stream; a partial batch is dropped unless keep_last */
            break;
    }
    finish(b, MOCO_OK);
    return NULL;
}

void batcher_normalisation(const stream_header *h, int have_mean, double mean[3], int have_std, double std[3])
{
    static const double imagenet_mean[3] = {0.485, 0.456, 0.406}, imagenet_std[3] = {0.229, 0.224, 0.225};
    if (!have_mean && !stream_header_get_reals(h, "mean", 3, mean))
        memcpy(mean, imagenet_mean, sizeof imagenet_mean);
    if (!have_std && !stream_header_get_reals(h, "std", 3, std))
        memcpy(std, imagenet_std, sizeof imagenet_std);
}

batcher *batcher_open(stream_reader *in, const char *name, const batcher_options *opt, moco_error *err)
{
    if (opt->batch < 1 || opt->shares < 0 || opt->share < 0 || (opt->shares > 1 && opt->share >= opt->shares) || opt->views < 1 || opt->views > BATCHER_MAX_VIEWS || opt->channels < 1 || opt->channels > 3 ||
        opt->size < 1) {
        moco_fail(err, "%s: batches of %d, %d views of %dx%dx%d: out of range", name, opt->batch, opt->views,
                  opt->size, opt->size, opt->channels);
        stream_reader_close(in);
        return NULL;
    }
    batcher *b = calloc(1, sizeof *b);
    if (!b) {
        moco_fail(err, "out of memory");
        stream_reader_close(in);
        return NULL;
    }
    b->in = in;
    b->opt = *opt;
    snprintf(b->name, sizeof b->name, "%s", name);
    for (int c = 0; c < opt->channels; c++)
        for (int v = 0; v < 256; v++)
            b->lut[c][v] = (float)((v / 255.0 - opt->mean[c]) / opt->std[c]);
    size_t view = (size_t)opt->size * opt->size * opt->channels;
    int ok = 1;
    for (int s = 0; s < SLOTS; s++) {
        for (int v = 0; v < opt->views; v++)
            ok = ok && (opt->raw ? (b->slots[s].raw[v] = opt->raw_alloc ? opt->raw_alloc(opt->raw_ctx, (size_t)opt->batch * view)
                                                                        : malloc((size_t)opt->batch * view)) != NULL
                                 : (b->slots[s].views[v] = malloc(sizeof(float) * opt->batch * view)) != NULL);
        ok = ok && (b->slots[s].labels = malloc(sizeof(int64_t) * opt->batch));
        ok = ok && (b->slots[s].sample_ids = malloc(sizeof(int64_t) * opt->batch));
    }
    pthread_mutex_init(&b->lock, NULL);
    pthread_cond_init(&b->changed, NULL);
    if (!ok) {
        moco_fail(err, "out of memory for batches of %d views of %dx%dx%d", opt->batch, opt->size, opt->size,
                  opt->channels);
        batcher_close(b);
        return NULL;
    }
    if (pthread_create(&b->thread, NULL, read_loop, b)) {
        moco_fail(err, "cannot start the reader thread");
        batcher_close(b);
        return NULL;
    }
    b->started = 1;
    return b;
}

int batcher_next(batcher *b, batch *out, double *waited, moco_error *err)
{
    double t0 = progress_now();
    pthread_mutex_lock(&b->lock);
    int interrupted = 0;
    while (b->count == 0 && !b->finished && !interrupted) {
        if (!b->opt.interrupt) {
            pthread_cond_wait(&b->changed, &b->lock);
            continue;
        }
        struct timespec until; /* look at the interrupt flag five times a second */
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += 200000000;
        if (until.tv_nsec >= 1000000000)
            until.tv_sec++, until.tv_nsec -= 1000000000;
        pthread_cond_timedwait(&b->changed, &b->lock, &until);
        interrupted = *b->opt.interrupt != 0;
    }
    int rc = b->count > 0 ? 1 : interrupted ? BATCHER_INTERRUPTED : b->status == MOCO_OK ? 0 : MOCO_ERR;
    if (rc == 1)
        *out = b->slots[b->head];
    else if (rc < 0)
        *err = b->err;
    pthread_mutex_unlock(&b->lock);
    if (waited)
        *waited += progress_now() - t0;
    return rc;
}

int batcher_peek_next(batcher *b, batch *out)
{
    pthread_mutex_lock(&b->lock);
    int ready = b->count >= 2;
    if (ready)
        *out = b->slots[(b->head + 1) % SLOTS];
    pthread_mutex_unlock(&b->lock);
    return ready;
}

void batcher_release(batcher *b)
{
    pthread_mutex_lock(&b->lock);
    if (b->count > 0) {
        b->head = (b->head + 1) % SLOTS;
        b->count--;
        pthread_cond_broadcast(&b->changed);
    }
    pthread_mutex_unlock(&b->lock);
}

int64_t batcher_records(const batcher *b) { return b->records; }

int64_t batcher_damaged(const batcher *b, const char **first_message)
{
    if (first_message)
        *first_message = b->first_damage;
    return b->damaged;
}

void batcher_close(batcher *b)
{
    if (!b)
        return;
    if (b->started) {
        pthread_mutex_lock(&b->lock);
        b->stop = 1;
        int finished = b->finished;
        pthread_cond_broadcast(&b->changed);
        pthread_mutex_unlock(&b->lock);
        if (!finished) {
            /* It may be blocked in read(2) on a pipe whose writer has stalled. It stops after its
             * next record; if none comes within two seconds it is left behind, detached, with its
             * memory kept (reachable, until the process exits) rather than cancelled mid-read. */
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_sec += 2;
            if (pthread_timedjoin_np(b->thread, NULL, &until)) {
                pthread_detach(b->thread);
                b->abandoned_next = abandoned;
                abandoned = b;
                return;
            }
        } else {
            pthread_join(b->thread, NULL);
        }
    }
    for (int s = 0; s < SLOTS; s++) {
        for (int v = 0; v < BATCHER_MAX_VIEWS; v++)
            free(b->slots[s].views[v]);
        for (int v = 0; v < BATCHER_MAX_VIEWS; v++)
            if (b->slots[s].raw[v] && b->opt.raw_free)
                b->opt.raw_free(b->opt.raw_ctx, b->slots[s].raw[v]);
            else
                free(b->slots[s].raw[v]);
        free(b->slots[s].labels);
        free(b->slots[s].sample_ids);
    }
    pthread_mutex_destroy(&b->lock);
    pthread_cond_destroy(&b->changed);
    stream_reader_close(b->in);
    free(b);
}
