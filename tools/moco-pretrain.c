/* moco-pretrain — MoCo v2 pretraining on a stream of view pairs: the stage users leave running.
 *
 * Wiring: options -> encoder and MoCo settings (moco.h), a batcher reading the pairs ahead on a
 * thread (batcher.h), SGD and the schedule (optim.h), checkpoints (checkpoint.h), JSON-lines metrics.
 * Steps follow the input in order: step s takes records [s*B, (s+1)*B) of the run, epoch = s / (samples
 * per epoch / B), so a resumed run skips exactly the records already trained on. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "batcher.h"
#include "checkpoint.h"
#include "cli.h"
#include "dist.h"
#include "gpu_api.h"
#include "metrics.h"
#include "moco.h"
#include "optim.h"
#include "progress.h"

static const char usage[] =
    "Usage: moco-pretrain [OPTION]... --out DIR [STREAM]...\n"
    "Train a MoCo encoder on a stream of view pairs (moco-augment's output; standard input when no\n"
    "STREAM is given). Checkpoints go to DIR/ckpt-EEEE.tsz and DIR/last.tsz.\n"
    "\n"
    "Model (defaults: --recipe v2, DESIGN's MoCo v2):\n"
    "  --recipe v2|v1        v2: MLP head, tau 0.2, cosine; v1: no MLP, tau 0.07, step at 120,160\n"
    "  --arch NAME           resnet18, resnet34 or resnet50 (default resnet50)\n"
    "  --width N             base width (default 64); --cifar-stem: 3x3 stride-1 stem, no max-pool\n"
    "  --in-channels N       input channels (default: the stream's)\n"
    "  --dim N               key dimension (default 128); --mlp / --no-mlp\n"
    "  --queue K             queue length (default 65536)\n"
    "  --momentum-key M      key encoder momentum (default 0.999)\n"
    "  --temperature T       InfoNCE temperature (default 0.2; v1 0.07)\n"
    "  --bn-groups G         key batch-norm groups, shuffle-BN on one device (default 8; 1 per MPI rank)\n"
    "  --query-bn-groups G   query batch-norm groups: one process training as G ranks would (default 1)\n"
    "Optimisation:\n"
    "  --batch N             pairs per step, per rank under MPI (default 256)\n"
    "  --lr LR               base rate for batch 256 (default 0.03), scaled by the global batch/256 unless\n"
    "                        --no-lr-scale\n"
    "  --wd W                weight decay (default 1e-4); --momentum M SGD momentum (default 0.9)\n"
    "  --schedule cos|step   (default cos; v1 step); --milestones E,E (default 120,160); --warmup-epochs E\n"
    "  --epochs E            (default: the stream header's epochs, else 200)\n"
    "  --max-steps N         stop after N steps in all (short runs, tests); 0 saves the initialisation\n"
    "Run:\n"
    "  --out DIR             checkpoints (required); --save-every E epochs (default 10; 0: at the end only)\n"
    "  --resume PATH         continue from a checkpoint file, or DIR/last.tsz when PATH is a folder\n"
    "  --log FILE            JSON-lines metrics (appended); --log-every N steps (default 10)\n"
    "  --seed S              seed of the initialisation and of each step's key permutation (default 0)\n"
    "  --threads N           compute threads (default: all cores)\n"
    "  --direct-conv         CPU: direct convolution only; by default 3x3 stride-1 layers with channels in\n"
    "                        multiples of 16 use Winograd's algorithm (about 2x faster, error ~1e-6)\n"
    "  --device cpu|cuda[:N] where the step runs (default cpu; cuda only in builds with the CUDA backend)\n"
    "  --precision bf16|f32  GPU activations (default bf16; f32 is the parity mode, TF32 off)\n"
    "  --no-cuda-graph       queue each GPU step op by op instead of replaying one captured graph\n"
    "  --mean M,M,M --std S,S,S   normalisation (default: the stream header's)\n"
    "  -q, --quiet           no progress bar or per-epoch lines\n"
    "Several processes (started by mpirun or srun: data-parallel ranks, rank 0 saves and logs):\n"
    "  --rank-timeout S      give up on ranks silent for S seconds in an exchange (default 600)\n"
    "      --help, --version\n"
    "\n"
    "Examples:\n"
    "  moco-augment --epochs 200 shards/ | moco-pretrain --epochs 200 --out run/\n"
    "  moco-augment --size 28 --scale 0.2,1 --jitter 0.4,0.4,0,0 --grayscale 0 --blur 0 --epochs 100 fmnist/ |\n"
    "    moco-pretrain --arch resnet18 --cifar-stem --width 16 --dim 128 --queue 4096 --momentum-key 0.99 \\\n"
    "      --bn-groups 4 --lr 0.06 --wd 5e-4 --out run/\n"
    "  mpirun -np 2 sh -c 'moco-augment --part $OMPI_COMM_WORLD_RANK/2 shards/ | moco-pretrain --batch 128 --out run/'\n"
    "Exit status: 0 done, 1 failure (a NaN loss, bad input, a failed save, another rank's), 2 usage error,\n"
    "130/143 stopped by SIGINT/SIGTERM after saving DIR/last.tsz.\n";

static volatile sig_atomic_t stop_signal;
static void on_signal(int sig) { stop_signal = sig; }

typedef struct {
    resnet_config enc;
    moco_config moco;
    int64_t batch, epochs, max_steps, save_every, log_every, seed, threads;
    double lr, wd, momentum, warmup;
    int lr_scale, quiet;
    lr_schedule sched;
    const char *out, *resume, *log, *milestones;
    double mean[3], std[3];
    int have_mean, have_std, have_groups;
    double rank_timeout;
    int device;   /* -1: the CPU; else cuda:device */
    int device_given; /* cuda:N given; plain cuda takes the rank's place on its machine */
    int no_graph;     /* --no-cuda-graph: queue each step op by op */
    int direct_conv;  /* --direct-conv: no Winograd on the CPU */
    int bf16;     /* GPU activations in bf16 */
} settings;

/* Path of a checkpoint to resume from: a file, or DIR/last.tsz. */
static const char *resume_path(const char *p, char *buf, size_t len)
{
    struct stat st;
    if (stat(p, &st) == 0 && S_ISDIR(st.st_mode)) {
        snprintf(buf, len, "%s/last.tsz", p);
        return buf;
    }
    return p;
}

/* The header every checkpoint of this run carries; save() adds the position. */
static stream_header *run_header(int argc, char **argv, const settings *s, int64_t steps_per_epoch, int size, int ranks)
{
    static const char *const schedules[] = {[SCHEDULE_COS] = "cos", [SCHEDULE_STEP] = "step", [SCHEDULE_CONSTANT] = "constant"};
    stream_header *h = stream_header_new("checkpoint", "moco-pretrain " MOCO_VERSION);
    stream_header_set_args(h, argc, argv);
    stream_header_set_int(h, "steps_per_epoch", steps_per_epoch);
    stream_header_set_int(h, "epochs", s->epochs);
    stream_header_set_int(h, "batch", s->batch); /* per rank */
    stream_header_set_int(h, "ranks", ranks);
    stream_header_set_int(h, "seed", s->seed);
    stream_header_set_int(h, "size", size);
    stream_header_set_real(h, "lr", s->sched.base_lr);
    stream_header_set_real(h, "weight_decay", s->wd);
    stream_header_set_real(h, "momentum", s->momentum);
    stream_header_set_str(h, "schedule", schedules[s->sched.kind]);
    stream_header_set_reals(h, "mean", 3, s->mean);
    stream_header_set_reals(h, "std", 3, s->std);
    return h;
}

/* Save the state at `step` (after `consumed` samples) as DIR/ckpt-EEEE.tsz when epoch_file > 0, and
 * as DIR/last.tsz (a hard link to it when possible). */
static int save(const settings *s, stream_header *h, int64_t step, int64_t consumed, const moco *m, const sgd *opt,
                int64_t epoch_file, moco_error *err)
{
    stream_header_set_int(h, "step", step);
    stream_header_set_real(h, "epoch", (double)step / stream_header_get_int(h, "steps_per_epoch", 1));
    stream_header_set_int(h, "samples_consumed", consumed);
    char last[4096], ckpt[4096], tmp[4200];
    snprintf(last, sizeof last, "%s/last.tsz", s->out);
    if (epoch_file <= 0)
        return checkpoint_save(last, h, m, opt, err);
    snprintf(ckpt, sizeof ckpt, "%s/ckpt-%04lld.tsz", s->out, (long long)epoch_file);
    if (checkpoint_save(ckpt, h, m, opt, err))
        return MOCO_ERR;
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", last, (long)getpid());
    unlink(tmp);
    if (link(ckpt, tmp) == 0 && rename(tmp, last) == 0)
        return MOCO_OK;
    unlink(tmp);
    return checkpoint_save(last, h, m, opt, err); /* a file system without hard links */
}

/* The model and optimiser state: from the checkpoint --resume names (its settings replace the
 * options'), or freshly initialised. NULL and err on failure, with nothing left allocated. */
static moco *start_model(settings *s, backend *be, sgd *opt, int64_t *step, int64_t *consumed, moco_error *err)
{
    char rbuf[4096];
    const char *rpath = s->resume ? resume_path(s->resume, rbuf, sizeof rbuf) : NULL;
    if (rpath) {
        stream_header *ch = checkpoint_read_header(rpath, err);
        if (!ch || checkpoint_config(ch, &s->enc, &s->moco, err)) {
            stream_header_free(ch);
            moco_prefix(err, "--resume %s", rpath);
            return NULL;
        }
        *step = stream_header_get_int(ch, "step", 0);
        *consumed = stream_header_get_int(ch, "samples_consumed", 0);
        stream_header_free(ch);
    }
    moco *m = moco_create(be, &s->enc, &s->moco, err);
    if (m && !sgd_init(opt, m->q->param_count, s->momentum, s->wd, err)) {
        if (!rpath) {
            moco_init(m, (uint64_t)s->seed);
            return m;
        }
        if (!checkpoint_load(rpath, m, opt, err))
            return m;
        moco_prefix(err, "--resume");
    }
    sgd_free(opt);
    moco_destroy(m);
    return NULL;
}

/* Rank 0's message, or every rank's prefixed with its rank in a run of several. */
static int report(const dist *d, const moco_error *err)
{
    if (dist_size(d) > 1)
        return cli_error("rank %d: %s", dist_rank(d), err->msg);
    return cli_error("%s", err->msg);
}

/* All ranks learn whether any failed (this one when `failed`): 0 when none did, else 1 + the lowest
 * failed rank. A rank that did not fail and hears of a failure says so; the failed one has spoken. */
static int agree(dist *d, int failed, const char *when, moco_error *err)
{
    double v = failed ? dist_rank(d) : dist_size(d);
    if (dist_reduce(d, &v, 1, DIST_MIN, "status", err))
        return -1;
    if ((int)v == dist_size(d))
        return 0;
    if (!failed)
        cli_error("rank %d: stopping %s: rank %d failed", dist_rank(d), when, (int)v);
    return 1 + (int)v;
}

/* The ranks must hold the same encoders and queue: a digest of each, compared over the ranks (at
 * the start and at each checkpoint). */
static int same_state(dist *d, const moco *m, int64_t step, moco_error *err)
{
    if (dist_size(d) == 1)
        return MOCO_OK;
    uint64_t mine[3] = {XXH3_64bits(m->q->param, sizeof(float) * m->q->param_count),
                        XXH3_64bits(m->k->param, sizeof(float) * m->k->param_count),
                        XXH3_64bits(m->queue, sizeof(float) * m->cfg.queue_size * m->dim)};
    uint64_t *all = malloc(sizeof(uint64_t) * dist_size(d));
    if (!all)
        return moco_fail(err, "out of memory");
    static const char *const what[] = {"query encoder", "key encoder", "queue"};
    int rc = MOCO_OK;
    for (int k = 0; k < 3 && !rc; k++) {
        rc = dist_allgather_u64(d, mine[k], all, "state digest", err);
        for (int r = 1; r < dist_size(d) && !rc; r++)
            if (all[r] != all[0])
                rc = moco_fail(err, "step %lld: the ranks' %s differ (rank %d's from rank 0's)", (long long)step, what[k], r);
    }
    free(all);
    return rc;
}

/* With --device cuda the state lives on the GPU: bring it into the host mirror before a save. */
static int to_host(const gpu_api *gpu, gpu_trainer *trainer, moco *m, sgd *opt, moco_error *err)
{
    return trainer ? gpu->trainer_download(trainer, m, opt, err) : MOCO_OK;
}

/* Everything after the options: the input, the model, the loop. Returns the exit status. */
static int pretrain(settings *s, dist *d, int argc, char **argv, const char *in_path)
{
    int rank = dist_rank(d), ranks = dist_size(d);
    moco_error err = {{0}};
    stream_reader *in = NULL;
    backend *be = NULL;
    moco *m = NULL;
    sgd opt = {0};
    metrics_log *log = NULL;
    batcher *feed = NULL;
    const gpu_api *gpu = NULL; /* --device cuda: the backend, loaded */
    gpu_trainer *trainer = NULL; /* and where the step runs; m is its host mirror */
    int64_t step = 0, consumed = 0, samples = 0, first_epoch = 0, steps_per_epoch = 0, total_steps = 0;
    int size = 0, channels = 0, shared = 1, failed = 1;
    const char *name = strcmp(in_path, "-") ? in_path : "standard input";

    /* the input's header says what the views are and how many make an epoch */
    if (!(in = stream_reader_open(in_path, NULL, &err)))
        goto setup_done;
    stream_grow_pipe(STDIN_FILENO);
    const stream_header *ih = stream_reader_header(in);
    if (strcmp(stream_header_kind(ih), "views")) {
        moco_fail(&err, "%s: a \"%s\" stream; moco-pretrain reads view pairs from moco-augment", name, stream_header_kind(ih));
        goto setup_done;
    }
    int views = (int)stream_header_get_int(ih, "views", 0);
    size = (int)stream_header_get_int(ih, "size", 0);
    channels = (int)stream_header_get_int(ih, "channels", 3);
    samples = stream_header_get_int(ih, "samples", 0), first_epoch = stream_header_get_int(ih, "first_epoch", 0);
    /* a stream of moco-augment --part i/R is this rank's own; a whole one is shared, batch by batch */
    int part = (int)stream_header_get_int(ih, "part", 0), parts = (int)stream_header_get_int(ih, "parts", 1);
    shared = parts == 1;
    if (views < 2) {
        moco_fail(&err, "%s: %d view(s) per sample; MoCo needs pairs (moco-augment --recipe v2 or v1)", name, views);
        goto setup_done;
    }
    if (!shared && parts != ranks) {
        moco_fail(&err, "%s: part %d of %d (moco-augment --part), but the run has %d rank(s): give each rank its part "
                  "of %d, or every rank the whole stream", name, part, parts, ranks, ranks);
        goto setup_done;
    }
    if (!s->enc.in_channels)
        s->enc.in_channels = channels;
    if (s->enc.in_channels != channels) {
        moco_fail(&err, "%s: views have %d channel(s), the encoder takes %d", name, channels, s->enc.in_channels);
        goto setup_done;
    }
    if (!s->epochs)
        s->epochs = stream_header_get_int(ih, "epochs", 200);
    batcher_normalisation(ih, s->have_mean, s->mean, s->have_std, s->std);
    int64_t per_step = shared ? s->batch * ranks : s->batch; /* records of this stream each step takes */
    if (samples < per_step) {
        moco_fail(&err, "%s: %lld samples per epoch, fewer than one step's %lld (header \"samples\")", name,
                  (long long)samples, (long long)per_step);
        goto setup_done;
    }
    steps_per_epoch = samples / per_step;
    /* the model: fresh, or as a checkpoint left it */
    if (!(be = backend_create((int)s->threads, &err)))
        goto setup_done;
    backend_set_winograd(be, !s->direct_conv);
    if (!(m = start_model(s, be, &opt, &step, &consumed, &err)))
        goto setup_done;
    if (s->device >= 0) {
        if (!s->device_given)
            s->device = dist_local_rank(d); /* one GPU per rank on each machine */
        if (!(gpu = gpu_api_load(&err)) ||
            !(trainer = gpu->trainer_create(s->device, s->bf16 ? GPU_BF16 : GPU_F32, m, &opt, (int)s->batch, size,
                                            channels, s->mean, s->std, &err)))
            goto setup_done;
        gpu->trainer_use_graph(trainer, !s->no_graph);
        if (!s->quiet)
            fprintf(stderr, "moco-pretrain: cuda:%d: %s\n", s->device, gpu->trainer_describe(trainer));
    }
    if (rank == 0 && mkdir(s->out, 0777) && errno != EEXIST) {
        moco_fail(&err, "%s: %s", s->out, strerror(errno));
        goto setup_done;
    }
    if (rank == 0 && s->log && !(log = metrics_open(s->log, &err)))
        goto setup_done;
    /* where this rank's stream resumes: the checkpoint counts the samples of all ranks */
    if (consumed % ranks) {
        moco_fail(&err, "the checkpoint's %lld samples do not split over %d ranks", (long long)consumed, ranks);
        goto setup_done;
    }
    int64_t skip = (shared ? consumed : consumed / ranks) - first_epoch * samples;
    if (skip < 0) {
        moco_fail(&err, "%s starts at epoch %lld, after the checkpoint's %lld samples: give the stream from epoch %lld",
                  name, (long long)first_epoch, (long long)consumed, (long long)(consumed / ranks / (steps_per_epoch * s->batch)));
        goto setup_done;
    }
    batcher_options bo = {.batch = (int)s->batch, .views = 2, .size = size, .channels = channels, .skip = skip,
                          .share = shared ? rank : 0, .shares = shared ? ranks : 1, .raw = s->device >= 0,
                          .interrupt = &stop_signal};
    if (trainer) /* the GPU copies the batches straight from page-locked memory */
        bo.raw_alloc = gpu->trainer_host_alloc, bo.raw_free = gpu->trainer_host_free, bo.raw_ctx = trainer;
    memcpy(bo.mean, s->mean, sizeof bo.mean);
    memcpy(bo.std, s->std, sizeof bo.std);
    feed = batcher_open(in, name, &bo, &err); /* owns `in` from here, even when it fails */
    in = NULL;
    if (!feed)
        goto setup_done;
    failed = 0;
setup_done:
    if (failed)
        report(d, &err);
    /* every rank started, or all stop; then they agree on the length of the run and the settings */
    int agreed = agree(d, failed, "before training", &err);
    if (agreed < 0)
        goto fail_reported;
    if (agreed)
        goto fail;
    double check[] = {(double)steps_per_epoch, (double)s->epochs, (double)s->batch, (double)s->seed, (double)size,
                      (double)s->max_steps, (double)m->q->param_count, (double)m->cfg.queue_size, (double)step,
                      (double)shared};
    static const char *const check_names[] = {"steps per epoch", "epochs", "--batch", "--seed", "the view size",
                                              "--max-steps", "the model", "--queue", "the checkpoint's step",
                                              "whether the input is shared"};
    enum { NCHECK = sizeof check / sizeof *check };
    double low[NCHECK], high[NCHECK];
    memcpy(low, check, sizeof check), memcpy(high, check, sizeof check);
    if (dist_reduce(d, low, NCHECK, DIST_MIN, "settings", &err) || dist_reduce(d, high, NCHECK, DIST_MAX, "settings", &err))
        goto fail_reported;
    steps_per_epoch = (int64_t)low[0]; /* own parts may differ in size: the smallest sets the epoch */
    for (int i = 1; i < NCHECK; i++)
        if (low[i] != high[i]) {
            moco_fail(&err, "the ranks disagree on %s (%g on some, %g on others)", check_names[i], low[i], high[i]);
            goto fail_reported;
        }
    if (same_state(d, m, step, &err))
        goto fail_reported;
    if (trainer && ranks > 1) { /* the GPUs' communicator: rank 0's NCCL id, sent over MPI */
        unsigned char id[GPU_RANKS_ID_BYTES] = {0};
        if ((rank == 0 && gpu->ranks_id(id, &err)) || dist_broadcast(d, id, sizeof id, 0, "NCCL id", &err) ||
            gpu->trainer_join(trainer, id, rank, ranks, s->rank_timeout, &err))
            goto fail_reported;
    }
    total_steps = steps_per_epoch * s->epochs;
    if (s->max_steps >= 0 && s->max_steps < total_steps)
        total_steps = s->max_steps; /* 0: just the initial checkpoint, a random-init baseline */
    s->sched.base_lr = s->lr * (s->lr_scale ? s->batch * ranks / 256.0 : 1.0);
    s->sched.epochs = (int)s->epochs;
    s->sched.warmup_epochs = s->warmup;

    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);

    moco_peers peers = dist_peers(d);
    int64_t global_batch = s->batch * ranks;
    int64_t *perm = malloc(sizeof(int64_t) * global_batch);
    stream_header *header = run_header(argc, argv, s, steps_per_epoch, size, ranks);
    progress *bar = progress_start("moco-pretrain", total_steps - step, s->quiet || rank);
    int terminal = isatty(STDERR_FILENO);
    double t_start = progress_now(), t_log = t_start, wait_log = 0, wait_epoch = 0, t_epoch = t_start;
    double loss_epoch = 0, acc_epoch = 0;
    int64_t steps_epoch = 0, start_step = step, log_steps = 0;
    double loss_log = 0, acc1_log = 0, acc5_log = 0;
    int rc = perm ? MOCO_OK : moco_fail(&err, "out of memory for a permutation of %lld pairs", (long long)global_batch);
    int exit_code = 0, stop = 0;
    while (!rc && step < total_steps) {
        batch b;
        double waited = 0;
        int got = batcher_next(feed, &b, &waited, &err);
        if (got == 0)
            moco_fail(&err, "%s ended at step %lld of %lld (epoch %lld of %lld)", name, (long long)step,
                      (long long)total_steps, (long long)(step / steps_per_epoch), (long long)s->epochs);
        /* every rank goes on, or all stop here: at a signal (any rank's), or when a rank has no batch */
        double flags[2] = {got == 1 || got == BATCHER_INTERRUPTED ? 0 : 1, stop_signal};
        if (got != 1 && got != BATCHER_INTERRUPTED)
            report(d, &err);
        if (dist_reduce(d, flags, 2, DIST_MAX, "step start", &err)) {
            rc = MOCO_ERR;
            break;
        }
        if (flags[0]) { /* reported by the rank that had no batch */
            if (got == 1 || got == BATCHER_INTERRUPTED)
                cli_error("rank %d: stopping at step %lld: another rank has no batch", rank, (long long)step);
            exit_code = 1;
            break;
        }
        if (flags[1]) {
            stop = (int)flags[1];
            break;
        }
        int64_t epoch = step / steps_per_epoch;
        double lr = schedule_lr(&s->sched, epoch + (double)(step % steps_per_epoch) / steps_per_epoch);
        moco_permutation((int)global_batch, (uint64_t)s->seed, step, perm);
        moco_result r;
        double figures[3];
        if (trainer) { /* the MoCo and SGD steps on the GPU (summed over the ranks' GPUs) */
            batch after;
            if (batcher_peek_next(feed, &after)) /* its views go up while this step computes */
                gpu->trainer_upload_next(trainer, after.raw[0], after.raw[1], after.n);
            if (gpu->trainer_step(trainer, b.raw[0], b.raw[1], b.n, perm, lr, &r, &err)) {
                rc = moco_prefix(&err, "step %lld", (long long)step);
                break;
            }
            batcher_release(feed);
            figures[0] = r.loss, figures[1] = r.top1, figures[2] = r.top5;
        } else {
            if (moco_step(m, b.views[0], b.views[1], b.n, size, size, perm, &peers, &r, &err)) {
                rc = moco_prefix(&err, "step %lld", (long long)step);
                break;
            }
            batcher_release(feed);
            /* the gradient and the figures of all ranks' pairs */
            figures[0] = r.loss, figures[1] = r.top1, figures[2] = r.top5;
            if (dist_mean(d, m->q->grad, m->q->param_count, "gradient", &err) ||
                dist_reduce(d, figures, 3, DIST_SUM, "loss", &err)) {
                rc = moco_prefix(&err, "step %lld", (long long)step);
                break;
            }
        }
        double loss = figures[0] / ranks, acc1 = 100.0 * figures[1] / global_batch, acc5 = 100.0 * figures[2] / global_batch;
        if (!isfinite(loss)) {
            char last[4096];
            snprintf(last, sizeof last, "%s/last.tsz", s->out);
            rc = moco_fail(&err, "step %lld (epoch %lld): the loss is %g; stopping (%s%s; try a lower --lr)",
                           (long long)step, (long long)epoch, loss, access(last, F_OK) ? "no checkpoint yet in " : "the last good checkpoint is ",
                           access(last, F_OK) ? s->out : last);
            break;
        }
        if (!trainer) /* the GPU's step did its SGD step itself */
            sgd_step(&opt, m->q->param, m->q->grad, lr);
        if (trainer && step == start_step + 1 && gpu->trainer_graph_failed(trainer)) /* the capture, at the second */
            cli_warn("%s", gpu->trainer_describe(trainer));
        step++;
        consumed += global_batch;
        wait_log += waited, wait_epoch += waited;
        loss_log += loss, acc1_log += acc1, acc5_log += acc5, log_steps++;
        loss_epoch += loss, acc_epoch += acc1, steps_epoch++;
        progress_update(bar, step - start_step);
        double now = progress_now();
        if (log && (step % s->log_every == 0 || step == total_steps)) {
            json_t *o = json_pack("{s:I,s:f,s:f,s:f,s:f,s:f,s:f,s:f}", "step", (json_int_t)step, "epoch",
                                  (double)step / steps_per_epoch, "loss", loss_log / log_steps, "acc1",
                                  acc1_log / log_steps, "acc5", acc5_log / log_steps, "lr", lr, "pairs_per_s",
                                  log_steps * global_batch / (now - t_log), "data_wait", wait_log / (now - t_log));
            if (ranks > 1)
                json_object_set_new(o, "ranks", json_integer(ranks));
            if (metrics_write(log, o, &err)) {
                rc = MOCO_ERR;
                break;
            }
        }
        if (step % s->log_every == 0 || step == total_steps)
            t_log = now, wait_log = 0, loss_log = acc1_log = acc5_log = 0, log_steps = 0;
        if (step % steps_per_epoch == 0 || step == total_steps) {
            int64_t done = step / steps_per_epoch; /* completed epochs */
            if (!s->quiet && !terminal && rank == 0)
                fprintf(stderr, "moco-pretrain: epoch %lld/%lld: loss %.4f, acc1 %.1f%%, lr %.4g, %.0f pairs/s, data wait %.0f%%\n",
                        (long long)(step % steps_per_epoch ? done + 1 : done), (long long)s->epochs,
                        loss_epoch / steps_epoch, acc_epoch / steps_epoch, lr, steps_epoch * global_batch / (now - t_epoch),
                        100 * wait_epoch / (now - t_epoch));
            loss_epoch = acc_epoch = 0, steps_epoch = 0, t_epoch = now, wait_epoch = 0;
            int epoch_end = step % steps_per_epoch == 0;
            int due = epoch_end && s->save_every && done % s->save_every == 0;
            if (due || step == total_steps) {
                if ((rc = to_host(gpu, trainer, m, &opt, &err)) || (rc = same_state(d, m, step, &err)))
                    break;
                int save_failed = rank == 0 && save(s, header, step, consumed, m, &opt, epoch_end ? done : 0, &err);
                if (save_failed)
                    report(d, &err);
                if ((rc = agree(d, save_failed, "after a checkpoint", &err)) > 0) {
                    rc = MOCO_OK, exit_code = 1;
                    break;
                }
                if (rc)
                    break;
            }
        }
    }
    progress_finish(bar);
    if (!rc && !exit_code && start_step == total_steps && rank == 0) /* nothing to train (--max-steps 0): the state as it is */
        rc = save(s, header, step, consumed, m, &opt, 0, &err);
    if (!rc && !exit_code && stop) { /* SIGINT / SIGTERM: keep what was done, resumable from here */
        if (rank == 0 && !(rc = to_host(gpu, trainer, m, &opt, &err)) && !(rc = save(s, header, step, consumed, m, &opt, 0, &err)))
            cli_warn("stopped by signal %d at step %lld; %s/last.tsz resumes from there", stop, (long long)step, s->out);
        if (!rc)
            exit_code = 128 + stop;
    }
    const char *damage;
    int64_t damaged = batcher_damaged(feed, &damage);
    if (damaged)
        cli_warn("%lld damaged record(s) skipped, the first: %s", (long long)damaged, damage);
    batcher_close(feed);
    if (log)
        metrics_close(log, rc ? NULL : &err);
    free(perm);
    stream_header_free(header);
    if (trainer)
        gpu->trainer_destroy(trainer);
    sgd_free(&opt);
    moco_destroy(m);
    backend_destroy(be);
    if (rc)
        return report(d, &err);
    return exit_code;

fail_reported: /* before training started, err not printed yet */
    report(d, &err);
fail:
    if (in)
        stream_reader_close(in);
    batcher_close(feed);
    if (trainer)
        gpu->trainer_destroy(trainer);
    if (log)
        metrics_close(log, NULL);
    sgd_free(&opt);
    moco_destroy(m);
    backend_destroy(be);
    return 1;
}

int main(int argc, char **argv)
{
    cli_init("moco-pretrain");
    enum { O_RECIPE = 256, O_ARCH, O_WIDTH, O_CIFAR, O_INC, O_DIM, O_MLP, O_NO_MLP, O_QUEUE, O_MKEY, O_TEMP,
           O_GROUPS, O_BATCH, O_LR, O_NO_LR_SCALE, O_WD, O_MOM, O_SCHED, O_MILESTONES, O_WARMUP, O_EPOCHS,
           O_MAX_STEPS, O_SAVE_EVERY, O_RESUME, O_LOG, O_LOG_EVERY, O_SEED, O_THREADS, O_DEVICE, O_MEAN, O_STD,
           O_QGROUPS, O_RANK_TIMEOUT, O_PRECISION, O_NO_GRAPH, O_DIRECT, O_HELP, O_VERSION };
    static const struct option options[] = {
        {"recipe", required_argument, 0, O_RECIPE}, {"arch", required_argument, 0, O_ARCH},
        {"width", required_argument, 0, O_WIDTH}, {"cifar-stem", no_argument, 0, O_CIFAR},
        {"in-channels", required_argument, 0, O_INC}, {"dim", required_argument, 0, O_DIM},
        {"mlp", no_argument, 0, O_MLP}, {"no-mlp", no_argument, 0, O_NO_MLP},
        {"queue", required_argument, 0, O_QUEUE}, {"momentum-key", required_argument, 0, O_MKEY},
        {"temperature", required_argument, 0, O_TEMP}, {"bn-groups", required_argument, 0, O_GROUPS},
        {"query-bn-groups", required_argument, 0, O_QGROUPS}, {"rank-timeout", required_argument, 0, O_RANK_TIMEOUT},
        {"precision", required_argument, 0, O_PRECISION}, {"no-cuda-graph", no_argument, 0, O_NO_GRAPH},
        {"direct-conv", no_argument, 0, O_DIRECT},
        {"batch", required_argument, 0, O_BATCH}, {"lr", required_argument, 0, O_LR},
        {"no-lr-scale", no_argument, 0, O_NO_LR_SCALE}, {"wd", required_argument, 0, O_WD},
        {"momentum", required_argument, 0, O_MOM}, {"schedule", required_argument, 0, O_SCHED},
        {"milestones", required_argument, 0, O_MILESTONES}, {"warmup-epochs", required_argument, 0, O_WARMUP},
        {"epochs", required_argument, 0, O_EPOCHS}, {"max-steps", required_argument, 0, O_MAX_STEPS},
        {"out", required_argument, 0, 'o'}, {"save-every", required_argument, 0, O_SAVE_EVERY},
        {"resume", required_argument, 0, O_RESUME}, {"log", required_argument, 0, O_LOG},
        {"log-every", required_argument, 0, O_LOG_EVERY}, {"seed", required_argument, 0, O_SEED},
        {"threads", required_argument, 0, O_THREADS}, {"device", required_argument, 0, O_DEVICE},
        {"mean", required_argument, 0, O_MEAN}, {"std", required_argument, 0, O_STD},
        {"quiet", no_argument, 0, 'q'}, {"help", no_argument, 0, O_HELP}, {"version", no_argument, 0, O_VERSION},
        {0, 0, 0, 0},
    };
    /* the recipe first: it sets the defaults the other options change */
    int v1 = 0;
    for (int i = 1; i < argc; i++) {
        const char *r = !strcmp(argv[i], "--recipe") && i + 1 < argc ? argv[i + 1]
                        : !strncmp(argv[i], "--recipe=", 9)       ? argv[i] + 9
                                                                  : NULL;
        if (r && strcmp(r, "v1") && strcmp(r, "v2"))
            return cli_usage_error("--recipe: '%s' is not v1 or v2", r);
        if (r)
            v1 = !strcmp(r, "v1");
    }
    settings s = {
        .enc = {.depth = 50, .width = 64, .in_channels = 0, .head = v1 ? RESNET_HEAD_LINEAR : RESNET_HEAD_MLP, .out_dim = 128},
        .moco = {.queue_size = 65536, .key_momentum = 0.999, .temperature = v1 ? 0.07 : 0.2, .bn_groups = 8, .query_bn_groups = 1},
        .batch = 256, .epochs = 0, .max_steps = -1, .save_every = 10, .log_every = 10, .seed = 0,
        .threads = cli_default_threads(), .lr = 0.03, .wd = 1e-4, .momentum = 0.9, .lr_scale = 1,
        .sched = {.kind = v1 ? SCHEDULE_STEP : SCHEDULE_COS, .gamma = 0.1},
        .milestones = "120,160", .rank_timeout = 600, .device = -1, .bf16 = 1,
    };
    int64_t v, c, status = 0;
    moco_error err = {{0}};
    while ((c = getopt_long(argc, argv, "o:q", options, NULL)) != -1 && !status) {
        switch (c) {
        case O_RECIPE: break;
        case O_ARCH:
            if (!(s.enc.depth = resnet_depth_from_name(optarg)))
                status = cli_usage_error("--arch: '%s' is not resnet18, resnet34 or resnet50", optarg);
            break;
        case O_WIDTH: status = cli_int("--width", optarg, 1, 1024, &v); s.enc.width = (int)v; break;
        case O_CIFAR: s.enc.cifar_stem = 1; break;
        case O_INC: status = cli_int("--in-channels", optarg, 1, 3, &v); s.enc.in_channels = (int)v; break;
        case O_DIM: status = cli_int("--dim", optarg, 1, 65536, &v); s.enc.out_dim = (int)v; break;
        case O_MLP: s.enc.head = RESNET_HEAD_MLP; break;
        case O_NO_MLP: s.enc.head = RESNET_HEAD_LINEAR; break;
        case O_QUEUE: status = cli_int("--queue", optarg, 1, 1 << 24, &v); s.moco.queue_size = (int)v; break;
        case O_MKEY: status = cli_real("--momentum-key", optarg, 0, 1, &s.moco.key_momentum); break;
        case O_TEMP: status = cli_real("--temperature", optarg, 1e-4, 100, &s.moco.temperature); break;
        case O_GROUPS: status = cli_int("--bn-groups", optarg, 1, 4096, &v); s.moco.bn_groups = (int)v, s.have_groups = 1; break;
        case O_QGROUPS: status = cli_int("--query-bn-groups", optarg, 1, 4096, &v); s.moco.query_bn_groups = (int)v; break;
        case O_RANK_TIMEOUT: status = cli_real("--rank-timeout", optarg, 0.1, 1e7, &s.rank_timeout); break;
        case O_BATCH: status = cli_int("--batch", optarg, 2, 1 << 20, &s.batch); break;
        case O_LR: status = cli_real("--lr", optarg, 0, 1e6, &s.lr); break;
        case O_NO_LR_SCALE: s.lr_scale = 0; break;
        case O_WD: status = cli_real("--wd", optarg, 0, 1, &s.wd); break;
        case O_MOM: status = cli_real("--momentum", optarg, 0, 1, &s.momentum); break;
        case O_SCHED:
            if ((int)(s.sched.kind = schedule_kind_from_name(optarg)) < 0)
                status = cli_usage_error("--schedule: '%s' is not cos, step or constant", optarg);
            break;
        case O_MILESTONES: s.milestones = optarg; break;
        case O_WARMUP: status = cli_real("--warmup-epochs", optarg, 0, 1e6, &s.warmup); break;
        case O_EPOCHS: status = cli_int("--epochs", optarg, 1, 1000000, &s.epochs); break;
        case O_MAX_STEPS: status = cli_int("--max-steps", optarg, 0, INT64_MAX, &s.max_steps); break;
        case 'o': s.out = optarg; break;
        case O_SAVE_EVERY: status = cli_int("--save-every", optarg, 0, 1000000, &s.save_every); break;
        case O_RESUME: s.resume = optarg; break;
        case O_LOG: s.log = optarg; break;
        case O_LOG_EVERY: status = cli_int("--log-every", optarg, 1, 1000000, &s.log_every); break;
        case O_SEED: status = cli_int("--seed", optarg, 0, INT64_MAX, &s.seed); break;
        case O_THREADS: status = cli_int("--threads", optarg, 1, 4096, &s.threads); break;
        case O_DEVICE: status = cli_device(optarg, &s.device, &s.device_given); break;
        case O_NO_GRAPH: s.no_graph = 1; break;
        case O_DIRECT: s.direct_conv = 1; break;
        case O_PRECISION: status = cli_precision(optarg, &s.bf16); break;
        case O_MEAN: status = cli_reals("--mean", optarg, 3, -1e9, 1e9, s.mean); s.have_mean = 1; break;
        case O_STD: status = cli_reals("--std", optarg, 3, 1e-12, 1e9, s.std); s.have_std = 1; break;
        case 'q': s.quiet = 1; break;
        case O_HELP: fputs(usage, stdout); return 0;
        case O_VERSION: return cli_version();
        default: return cli_usage_error("unknown option");
        }
    }
    if (status)
        return (int)status;
    if (!s.out)
        return cli_usage_error("--out DIR is required (checkpoints go there)");
    if (schedule_parse_milestones(&s.sched, s.milestones, &err))
        return cli_usage_error("--milestones: %s", err.msg);
    if (argc - optind > 1)
        return cli_usage_error("one input stream at most (concatenate files with cat)");
    const char *in_path = optind < argc ? argv[optind] : "-";

    /* the ranks of a data-parallel run (mpirun, srun), or a run of one */
    dist *d = dist_open(&argc, &argv, s.rank_timeout, &err);
    if (!d)
        return cli_error("%s", err.msg);
    if (dist_size(d) > 1 && !s.have_groups)
        s.moco.bn_groups = 1; /* the ranks are the shuffle BN's groups, as in the original */
    if (s.batch % s.moco.bn_groups) {
        dist_close(d);
        return cli_usage_error("--batch %lld does not split into --bn-groups %d", (long long)s.batch, s.moco.bn_groups);
    }
    if (s.batch % s.moco.query_bn_groups) {
        dist_close(d);
        return cli_usage_error("--batch %lld does not split into --query-bn-groups %d", (long long)s.batch,
                               s.moco.query_bn_groups);
    }
    int code = pretrain(&s, d, argc, argv, in_path);
    dist_close(d);
    return code;
}
