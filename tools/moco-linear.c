/* moco-linear — the linear classification protocol: a Linear(F, classes) trained on frozen features,
 * then top-1 / top-5, per-class accuracy and the confusion matrix on a validation set.
 *
 * Wiring: feature sources (feature_source.h: features, views or raw images) -> in memory or streamed
 * batch by batch -> SGD (the original protocol) or L-BFGS (linear_eval.h) -> scores -> text, JSON
 * report, safetensors classifier. Modes: in memory, every epoch a fresh Philox order of the loaded
 * samples; streaming, when the train stream itself holds E epochs of fresh views (header "epochs" > 1):
 * batches follow the records in order, epoch = records / samples, nothing kept in memory. */
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "backend.h"
#include "cli.h"
#include "feature_source.h"
#include "gpu_api.h"
#include "linear_eval.h"
#include "metrics.h"
#include "output.h"
#include "progress.h"
#include "safetensors.h"

static const char usage[] =
    "Usage: moco-linear [OPTION]... [--val FILE] TRAIN\n"
    "Train a linear classifier on the samples of TRAIN (a feature stream from moco-extract, views from\n"
    "moco-augment or raw-pixel shards; - for standard input) and report top-1 / top-5 on --val.\n"
    "\n"
    "  --val FILE            validation samples (a stream or shard folder like TRAIN)\n"
    "  --solver sgd|lbfgs    sgd: the original protocol (default); lbfgs: full-batch multinomial\n"
    "                        logistic regression, mean cross-entropy + l2/2 ||W||^2, deterministic\n"
    "SGD (defaults: DESIGN's protocol, as MoCo's main_lincls.py):\n"
    "  --lr LR               learning rate (default 30)\n"
    "  --momentum M          (default 0.9); --wd W weight decay (default 0)\n"
    "  --batch N             (default 256)\n"
    "  --epochs E            (default 100; streaming: the stream's epochs)\n"
    "  --milestones E,E      lr x0.1 at these epochs (default 60,80)\n"
    "  --seed S              initialisation and per-epoch order (default 0)\n"
    "  --streaming           train batch by batch as records arrive (default when the header's epochs > 1)\n"
    "  --in-memory           load every record, then run E epochs in a fresh order each (default otherwise)\n"
    "L-BFGS:\n"
    "  --l2 LAMBDA[,...]     (default 1e-4); several: the one with the best top-1 on a held-out share of\n"
    "                        TRAIN (--holdout F, default 0.1; split by --seed), then refit on all of TRAIN\n"
    "  --max-iter N          (default 500); --tol EPS (default 1e-5)\n"
    "Both:\n"
    "  --standardize         per-feature mean/std of TRAIN, applied to TRAIN and --val (in memory only)\n"
    "  --classes N           class count when the header names none (else 1 + the largest label)\n"
    "  --report FILE         JSON report (- : standard output, instead of the text)\n"
    "  --confusion           per-class table and confusion matrix in the text even beyond 20 classes\n"
    "  --log FILE            JSON lines: one per epoch (sgd) or iteration (lbfgs)\n"
    "  --save FILE           the classifier as safetensors: fc.weight, fc.bias (+ feature_mean/std)\n"
    "  --threads N           at most N (default: all cores; SGD products under 2^24 multiply-adds use one)\n"
    "  --device cpu|cuda[:N] where the SGD steps run (default cpu; cuda in builds with the CUDA backend)\n"
    "  -q, --quiet           no progress bar or epoch lines\n"
    "      --help, --version\n"
    "\n"
    "Examples:\n"
    "  moco-linear --val val.feat train.feat                   (features extracted once, in memory)\n"
    "  moco-augment --recipe lincls --epochs 100 train/ | moco-extract run/last.tsz |\n"
    "    moco-linear --val val.feat -                          (the exact protocol, streaming)\n"
    "  moco-linear --solver lbfgs --standardize --val fmnist/test fmnist/train   (raw-pixel baseline)\n"
    "  moco-linear --solver lbfgs --standardize --l2 1e-5,1e-4,1e-3 --val test.feat train.feat\n"
    "Exit status: 0 done, 1 failure (bad input, a loss that is not finite), 2 usage error.\n";

enum { L2_MAX = 16 }; /* --l2 values at most */

typedef struct {
    const char *train, *val, *report, *log, *save, *milestones;
    int lbfgs, standardize, confusion, quiet, mode; /* mode: 0 auto, 1 streaming, 2 in memory */
    int device, device_given;                         /* -1: the CPU; else cuda:device (SGD only) */
    double lr, momentum, wd, l2, tol, holdout;
    double l2_list[L2_MAX]; /* --l2 values; several: chosen on held-out samples */
    int l2_count;
    double l2_holdout_top1[L2_MAX]; /* each candidate's held-out top-1 (percent) */
    int64_t batch, epochs, seed, threads, classes, max_iter;
    int epochs_given;
} settings;

typedef struct {
    const settings *s;
    classifier c;
    standardizer z;
    int standardized, classes;
    char **names;
    const char *train_recipe, *val_recipe; /* the headers' "recipe" (views the features came from) */
    metrics_log *log;
    progress *bar;
    double t0;
    moco_error err;
} run;

/* ---- training ---- */

static void epoch_line(const run *r, int epoch, int epochs, double loss, double top1, double lr)
{
    if (r->s->quiet || isatty(STDERR_FILENO) || !(epoch == 1 || epoch % 10 == 0 || epoch == epochs))
        return;
    fprintf(stderr, "moco-linear: epoch %d/%d: loss %.4f, top-1 %.2f%%, lr %.4g, %.1f s\n", epoch, epochs, loss, top1,
            lr, progress_now() - r->t0);
}

static int on_epoch(void *ctx, int epoch, double loss, double top1, double top5, double lr, moco_error *err)
{
    run *r = ctx;
    epoch_line(r, epoch, (int)r->s->epochs, loss, top1, lr);
    if (!r->log)
        return MOCO_OK;
    return metrics_write(r->log, json_pack("{s:i,s:f,s:f,s:f,s:f,s:f}", "epoch", epoch, "loss", loss, "top1", top1,
                                           "top5", top5, "lr", lr, "seconds", progress_now() - r->t0), err);
}

static void on_step(void *ctx, int64_t samples_done)
{
    progress_update(((run *)ctx)->bar, samples_done);
}

static int lbfgs_progress(void *ctx, int iteration, double objective, double grad_norm)
{
    run *r = ctx;
    progress_update(r->bar, iteration);
    if (r->log && metrics_write(r->log, json_pack("{s:i,s:f,s:f,s:f}", "iteration", iteration, "objective", objective,
                                                  "grad_norm", grad_norm, "seconds", progress_now() - r->t0), &r->err))
        return 1;
    return 0;
}

/* ---- reports ---- */

static json_t *scores_json(const linear_scores *sc)
{
    double n = sc->n ? (double)sc->n : 1;
    return json_pack("{s:I,s:f,s:f,s:f}", "n", (json_int_t)sc->n, "top1", 100.0 * sc->top1 / n, "top5",
                     100.0 * sc->top5 / n, "loss", sc->loss_sum / n);
}

static int64_t class_count(const linear_scores *sc, int k)
{
    int64_t n = 0;
    for (int j = 0; j < sc->classes; j++)
        n += sc->confusion[(size_t)k * sc->classes + j];
    return n;
}

static json_t *report_json(const run *r, const char *mode, const linear_scores *train, const linear_scores *eval,
                           int has_val, int dim, const linear_lbfgs_result *lb, double seconds, double train_seconds)
{
    const settings *s = r->s;
    json_t *o = json_pack("{s:s,s:s,s:s,s:I,s:I,s:i}", "producer", "moco-linear " MOCO_VERSION, "solver",
                          s->lbfgs ? "lbfgs" : "sgd", "mode", mode, "n_train", (json_int_t)train->n, "n_val",
                          (json_int_t)(has_val ? eval->n : 0), "dim", dim);
    json_t *names = json_array(), *per_class = json_array(), *confusion = json_array();
    double n = eval->n ? (double)eval->n : 1;
    json_object_set_new(o, "evaluated_on", json_string(has_val ? "val" : "train"));
    json_object_set_new(o, "top1", json_real(100.0 * eval->top1 / n));
    json_object_set_new(o, "top5", json_real(100.0 * eval->top5 / n));
    json_object_set_new(o, "loss", json_real(eval->loss_sum / n));
    json_t *tr = scores_json(train);
    json_object_set_new(tr, "measured", json_string(s->lbfgs || strcmp(mode, "streaming") ? "final weights"
                                                                                         : "during the last epoch"));
    json_object_set_new(o, "train", tr);
    for (int k = 0; k < r->classes; k++) {
        int64_t nk = class_count(eval, k), hit = eval->confusion[(size_t)k * r->classes + k];
        json_array_append_new(names, json_string(r->names[k]));
        json_array_append_new(per_class, json_pack("{s:s,s:I,s:o}", "class", r->names[k], "n", (json_int_t)nk, "top1",
                                                   nk ? json_real(100.0 * hit / nk) : json_null()));
        json_t *row = json_array();
        for (int j = 0; j < r->classes; j++)
            json_array_append_new(row, json_integer(eval->confusion[(size_t)k * r->classes + j]));
        json_array_append_new(confusion, row);
    }
    json_object_set_new(o, "classes", names);
    json_object_set_new(o, "per_class", per_class);
    json_object_set_new(o, "confusion", confusion);
    json_t *set = s->lbfgs ? json_pack("{s:f,s:I,s:f}", "l2", s->l2, "max_iter", (json_int_t)s->max_iter, "tol", s->tol)
                           : json_pack("{s:f,s:f,s:f,s:I,s:I,s:s,s:I}", "lr", s->lr, "momentum", s->momentum, "wd",
                                       s->wd, "batch", (json_int_t)s->batch, "epochs", (json_int_t)s->epochs,
                                       "milestones", s->milestones, "seed", (json_int_t)s->seed);
    json_object_set_new(set, "standardize", json_boolean(s->standardize));
    if (s->lbfgs && s->l2_count > 1) {
        json_t *cand = json_array();
        for (int k = 0; k < s->l2_count; k++)
            json_array_append_new(cand, json_pack("{s:f,s:f}", "l2", s->l2_list[k], "holdout_top1", s->l2_holdout_top1[k]));
        json_object_set_new(set, "l2_search", json_pack("{s:f,s:I,s:o}", "holdout", s->holdout, "seed",
                                                        (json_int_t)s->seed, "candidates", cand));
    }
    json_object_set_new(o, "settings", set);
    if (lb)
        json_object_set_new(o, "lbfgs", json_pack("{s:i,s:i,s:f,s:f,s:s}", "iterations", lb->iterations, "evaluations",
                                                  lb->evaluations, "objective", lb->objective, "grad_norm",
                                                  lb->grad_norm, "stop", lb->stop));
    json_object_set_new(o, "train_recipe", json_string(r->train_recipe));
    if (has_val)
        json_object_set_new(o, "val_recipe", json_string(r->val_recipe));
    json_object_set_new(o, "seconds", json_real(seconds));
    json_object_set_new(o, "train_seconds", json_real(train_seconds));
    return o;
}

static int write_json(json_t *o, const char *path)
{
    int to_stdout = strcmp(path, "-") == 0;
    moco_error err;
    output out = {0};
    if (!to_stdout && output_begin(&out, path, &err))
        return cli_error("%s", err.msg);
    FILE *f = to_stdout ? stdout : fopen(out.write_to, "w");
    int bad = !f, status = 0;
    if (f) {
        bad = json_dumpf(o, f, JSON_INDENT(2) | JSON_REAL_PRECISION(10)) != 0 || fputc('\n', f) == EOF;
        bad |= to_stdout ? fflush(f) != 0 : fclose(f) != 0;
    }
    if (bad) /* reported before the temporary is removed, which could change errno */
        status = cli_error("%s: cannot %s the report: %m", path, f ? "write" : "open");
    if (to_stdout)
        return status;
    if (bad) {
        output_discard(&out);
        return status;
    }
    return output_commit(&out, &err) ? cli_error("%s", err.msg) : 0;
}

static void print_text(const run *r, const char *mode, const linear_scores *train, const linear_scores *eval,
                       int has_val, int dim, double seconds)
{
    const settings *s = r->s;
    int k = r->classes;
    printf("moco-linear: %s (%s), %lld train / %lld val samples, %d features, %d classes, %.1f s\n",
           s->lbfgs ? "lbfgs" : "sgd", mode, (long long)train->n, (long long)(has_val ? eval->n : 0), dim, k, seconds);
    printf("%-10s %8s %8s %9s\n", "", "top-1", "top-5", "loss");
    const linear_scores *rows[2] = {train, has_val ? eval : NULL};
    for (int i = 0; i < 2 && rows[i]; i++) {
        double n = rows[i]->n ? (double)rows[i]->n : 1;
        printf("%-10s %8.2f %8.2f %9.4f\n", i ? "val" : "train", 100.0 * rows[i]->top1 / n, 100.0 * rows[i]->top5 / n,
               rows[i]->loss_sum / n);
    }
    if (s->lbfgs && s->l2_count > 1) {
        printf("l2 %g, chosen by top-1 on %g of train held out:", s->l2, s->holdout);
        for (int c = 0; c < s->l2_count; c++)
            printf(" %g %.2f%%%s", s->l2_list[c], s->l2_holdout_top1[c], c + 1 < s->l2_count ? "," : "\n");
    }
    int64_t scored = 0; /* none when streaming without --val: the train views are gone */
    for (int c = 0; c < k; c++)
        scored += class_count(eval, c);
    if (!scored)
        return;
    if (k > 20 && !s->confusion) {
        printf("(per-class accuracy and the confusion matrix: --confusion, or --report FILE)\n");
        return;
    }
    int width = 5;
    for (int c = 0; c < k; c++)
        width = (int)strlen(r->names[c]) > width ? (int)strlen(r->names[c]) : width;
    width = width > 24 ? 24 : width;
    printf("\n%-*s %8s %8s   (%s)\n", width, "class", "n", "top-1", has_val ? "val" : "train");
    for (int c = 0; c < k; c++) {
        int64_t n = class_count(eval, c);
        printf("%-*.*s %8lld ", width, width, r->names[c], (long long)n);
        if (n)
            printf("%8.2f\n", 100.0 * eval->confusion[(size_t)c * k + c] / n);
        else
            printf("%8s\n", "-");
    }
    printf("\nconfusion (rows: true class, columns: predicted; classes by index)\n%4s", "");
    for (int c = 0; c < k; c++)
        printf(" %5d", c);
    printf("\n");
    for (int c = 0; c < k; c++) {
        printf("%4d", c);
        for (int j = 0; j < k; j++)
            printf(" %5lld", (long long)eval->confusion[(size_t)c * k + j]);
        printf("\n");
    }
}

static int save_classifier(const run *r, const char *path, int dim, const linear_scores *eval, int has_val,
                           moco_error *err)
{
    const settings *s = r->s;
    tensor t[4];
    int64_t wd[2] = {r->classes, dim}, bd[1] = {r->classes}, fd[1] = {dim};
    int n = 0;
    if (tensor_init(&t[n], "fc.weight", DTYPE_F32, 2, wd, err))
        return MOCO_ERR;
    t[n++].data = r->c.param;
    if (tensor_init(&t[n], "fc.bias", DTYPE_F32, 1, bd, err))
        return MOCO_ERR;
    t[n++].data = r->c.param + (size_t)r->classes * dim;
    if (r->standardized) {
        tensor_init(&t[n], "feature_mean", DTYPE_F32, 1, fd, err);
        t[n++].data = r->z.mean;
        tensor_init(&t[n], "feature_std", DTYPE_F32, 1, fd, err);
        t[n++].data = r->z.std;
    }
    json_t *names = json_array();
    for (int k = 0; k < r->classes; k++)
        json_array_append_new(names, json_string(r->names[k]));
    char *classes = json_dumps(names, JSON_COMPACT), top1[64];
    json_decref(names);
    snprintf(top1, sizeof top1, "%.4f", eval->n ? 100.0 * eval->top1 / eval->n : 0.0);
    char settings_text[512];
    if (s->lbfgs)
        snprintf(settings_text, sizeof settings_text, "{\"solver\":\"lbfgs\",\"l2\":%g,\"standardize\":%d}", s->l2,
                 s->standardize);
    else
        snprintf(settings_text, sizeof settings_text,
                 "{\"solver\":\"sgd\",\"lr\":%g,\"momentum\":%g,\"wd\":%g,\"batch\":%lld,\"epochs\":%lld,"
                 "\"milestones\":\"%s\",\"seed\":%lld,\"standardize\":%d}",
                 s->lr, s->momentum, s->wd, (long long)s->batch, (long long)s->epochs, s->milestones,
                 (long long)s->seed, s->standardize);
    const char *keys[] = {"producer", "classes", "settings", has_val ? "val_top1" : "train_top1"};
    const char *values[] = {"moco-linear " MOCO_VERSION, classes ? classes : "[]", settings_text, top1};
    int rc = safetensors_write(path, t, n, keys, values, 4, err);
    free(classes);
    return rc;
}

/* ---- main ---- */

static int classes_agree(const stream_header *a, const stream_header *b)
{
    int n = stream_header_num_classes(a);
    if (!n || !stream_header_num_classes(b))
        return 1;
    if (n != stream_header_num_classes(b))
        return 0;
    for (int i = 0; i < n; i++)
        if (strcmp(stream_header_class(a, i), stream_header_class(b, i)))
            return 0;
    return 1;
}

int main(int argc, char **argv)
{
    cli_init("moco-linear");
    enum { O_VAL = 256, O_SOLVER, O_LR, O_MOM, O_WD, O_BATCH, O_EPOCHS, O_MILESTONES, O_SEED, O_STREAMING,
           O_IN_MEMORY, O_L2, O_MAX_ITER, O_TOL, O_STANDARDIZE, O_CLASSES, O_REPORT, O_CONFUSION, O_LOG, O_SAVE,
           O_THREADS, O_DEVICE, O_HOLDOUT, O_HELP, O_VERSION };
    static const struct option options[] = {
        {"val", required_argument, 0, O_VAL}, {"solver", required_argument, 0, O_SOLVER},
        {"lr", required_argument, 0, O_LR}, {"momentum", required_argument, 0, O_MOM},
        {"wd", required_argument, 0, O_WD}, {"batch", required_argument, 0, O_BATCH},
        {"epochs", required_argument, 0, O_EPOCHS}, {"milestones", required_argument, 0, O_MILESTONES},
        {"seed", required_argument, 0, O_SEED}, {"streaming", no_argument, 0, O_STREAMING},
        {"in-memory", no_argument, 0, O_IN_MEMORY}, {"l2", required_argument, 0, O_L2},
        {"max-iter", required_argument, 0, O_MAX_ITER}, {"tol", required_argument, 0, O_TOL},
        {"standardize", no_argument, 0, O_STANDARDIZE}, {"classes", required_argument, 0, O_CLASSES},
        {"report", required_argument, 0, O_REPORT}, {"confusion", no_argument, 0, O_CONFUSION},
        {"log", required_argument, 0, O_LOG}, {"save", required_argument, 0, O_SAVE},
        {"threads", required_argument, 0, O_THREADS}, {"device", required_argument, 0, O_DEVICE},
        {"holdout", required_argument, 0, O_HOLDOUT}, {"quiet", no_argument, 0, 'q'},
        {"help", no_argument, 0, O_HELP}, {"version", no_argument, 0, O_VERSION}, {0, 0, 0, 0},
    };
    settings s = {.lr = 30, .momentum = 0.9, .wd = 0, .batch = 256, .epochs = 100, .milestones = "60,80",
                  .l2 = 1e-4, .l2_list = {1e-4}, .l2_count = 1, .holdout = 0.1, .max_iter = 500, .tol = 1e-5, .threads = cli_default_threads(), .device = -1};
    int64_t status = 0;
    int c, holdout_given = 0;
    while ((c = getopt_long(argc, argv, "q", options, NULL)) != -1 && !status) {
        switch (c) {
        case O_VAL: s.val = optarg; break;
        case O_SOLVER:
            if (strcmp(optarg, "sgd") && strcmp(optarg, "lbfgs"))
                return cli_usage_error("--solver: '%s' is not sgd or lbfgs", optarg);
            s.lbfgs = !strcmp(optarg, "lbfgs");
            break;
        case O_LR: status = cli_real("--lr", optarg, 0, 1e6, &s.lr); break;
        case O_MOM: status = cli_real("--momentum", optarg, 0, 1, &s.momentum); break;
        case O_WD: status = cli_real("--wd", optarg, 0, 1, &s.wd); break;
        case O_BATCH: status = cli_int("--batch", optarg, 1, 1 << 20, &s.batch); break;
        case O_EPOCHS: status = cli_int("--epochs", optarg, 1, 1000000, &s.epochs); s.epochs_given = 1; break;
        case O_MILESTONES: s.milestones = optarg; break;
        case O_SEED: status = cli_int("--seed", optarg, 0, INT64_MAX, &s.seed); break;
        case O_STREAMING: s.mode = 1; break;
        case O_IN_MEMORY: s.mode = 2; break;
        case O_L2: /* the first value is the setting when only one is given */
            status = cli_real_list("--l2", optarg, L2_MAX, 0, 1e6, s.l2_list, &s.l2_count);
            s.l2 = s.l2_list[0];
            break;
        case O_HOLDOUT: status = cli_real("--holdout", optarg, 1e-6, 1 - 1e-6, &s.holdout), holdout_given = 1; break;
        case O_MAX_ITER: status = cli_int("--max-iter", optarg, 0, 100000000, &s.max_iter); break;
        case O_TOL: status = cli_real("--tol", optarg, 1e-12, 1, &s.tol); break;
        case O_STANDARDIZE: s.standardize = 1; break;
        case O_CLASSES: status = cli_int("--classes", optarg, 2, 1 << 20, &s.classes); break;
        case O_REPORT: s.report = optarg; break;
        case O_CONFUSION: s.confusion = 1; break;
        case O_LOG: s.log = optarg; break;
        case O_SAVE: s.save = optarg; break;
        case O_THREADS: status = cli_int("--threads", optarg, 1, 4096, &s.threads); break;
        case O_DEVICE: status = cli_device(optarg, &s.device, &s.device_given); break;
        case 'q': s.quiet = 1; break;
        case O_HELP: fputs(usage, stdout); return 0;
        case O_VERSION: return cli_version();
        default: return cli_usage_error("unknown option");
        }
    }
    if (status)
        return (int)status;
    if (argc - optind != 1)
        return cli_usage_error(argc == optind ? "no TRAIN samples given (- reads standard input)"
                                              : "one TRAIN input (concatenate streams with cat)");
    s.train = argv[optind];
    lr_schedule sched = {.kind = SCHEDULE_STEP, .base_lr = s.lr, .epochs = (int)s.epochs, .gamma = 0.1};
    moco_error err = {{0}};
    if (schedule_parse_milestones(&sched, s.milestones, &err))
        return cli_usage_error("--milestones: %s", err.msg);
    if (s.val && !strcmp(s.val, "-") && !strcmp(s.train, "-"))
        return cli_usage_error("--val - and TRAIN - cannot both be standard input");
    if (s.lbfgs && s.mode == 1)
        return cli_usage_error("--streaming is for --solver sgd: L-BFGS works on the whole train set at once");
    if (!s.lbfgs && s.l2_count > 1)
        return cli_usage_error("several --l2 values are for --solver lbfgs");
    if (holdout_given && s.l2_count < 2)
        return cli_usage_error("--holdout chooses among several --l2 values: give more than one");
    if (s.lbfgs && s.device >= 0)
        return cli_usage_error("--device cuda is for --solver sgd: L-BFGS runs on the CPU");
    if (s.log && s.report && !strcmp(s.log, "-") && !strcmp(s.report, "-"))
        return cli_usage_error("--log - and --report - cannot both be standard output");

    double t0 = progress_now();
    const gpu_api *gpu = NULL; /* --device cuda: the backend, loaded, and the classifier on it */
    gpu_linear *gl = NULL;
    linear_device device;
    if (!strcmp(s.train, "-"))
        stream_grow_pipe(STDIN_FILENO);
    feature_source *train_src = feature_source_open(s.train, &err), *val_src = NULL;
    if (!train_src)
        return cli_error("%s", err.msg);
    if (s.val && !(val_src = feature_source_open(s.val, &err))) {
        feature_source_close(train_src);
        return cli_error("%s", err.msg);
    }
    const stream_header *th = feature_source_header(train_src);
    int dim = feature_source_dim(train_src), status_code = 0;
    const char *tname = feature_source_name(train_src);
    run r = {.s = &s, .t0 = t0};
    feature_set set = {0};
    linear_scores train_sc = {0}, val_sc = {0};
    linear_lbfgs_result lb = {0};
    backend *be = NULL;
    int streaming = !s.lbfgs && (s.mode == 1 || (s.mode == 0 && feature_source_epochs(train_src) > 1));
    int64_t samples = feature_source_samples(train_src);
#define FAIL(...) do { status_code = cli_error(__VA_ARGS__); goto done; } while (0)
#define USAGE(...) do { status_code = cli_usage_error(__VA_ARGS__); goto done; } while (0)
    if (!dim)
        FAIL("%s: no samples", tname);
    if (val_src && feature_source_dim(val_src) && feature_source_dim(val_src) != dim)
        FAIL("%s has %d features per sample, %s has %d: they must come from the same encoder and view size", s.val,
             feature_source_dim(val_src), tname, dim);
    if (val_src && !feature_source_dim(val_src))
        FAIL("%s: no samples", s.val);
    if (val_src && !classes_agree(th, feature_source_header(val_src)))
        FAIL("%s and %s name different classes (%d and %d): make both from shards with the same class list "
             "(moco-shard --classes FILE)", tname, s.val, stream_header_num_classes(th),
             stream_header_num_classes(feature_source_header(val_src)));
    r.train_recipe = stream_header_get_str(th, "recipe", "");
    r.val_recipe = val_src ? stream_header_get_str(feature_source_header(val_src), "recipe", "") : "";
    r.classes = stream_header_num_classes(th);
    if (s.classes && r.classes && s.classes != r.classes)
        USAGE("--classes %lld: %s names %d classes", (long long)s.classes, tname, r.classes);
    if (!r.classes)
        r.classes = (int)s.classes;
    if (streaming) {
        if (s.standardize)
            USAGE("--standardize needs the whole train set before the first step: use --in-memory (or standardise "
                  "in the extractor)");
        if (samples < 1)
            FAIL("%s: the header gives no \"samples\" per epoch, which streaming needs (--in-memory loads it all)", tname);
        if (!r.classes)
            USAGE("%s names no classes: give --classes N for streaming", tname);
        if (stream_header_get_int(th, "first_epoch", 0) > 0)
            FAIL("%s starts at epoch %lld (moco-augment --first-epoch): the classifier trains from epoch 0", tname,
                 (long long)stream_header_get_int(th, "first_epoch", 0));
        int64_t have = feature_source_epochs(train_src);
        if (!s.epochs_given)
            s.epochs = have;
        else if (s.epochs > have)
            FAIL("%s holds %lld epoch(s) (header \"epochs\"); --epochs %lld asks for more", tname, (long long)have,
                 (long long)s.epochs);
    }
    if (!(be = backend_create((int)s.threads, &err)))
        FAIL("%s", err.msg);
    if (s.log && !(r.log = metrics_open(s.log, &err)))
        FAIL("%s", err.msg);

    if (!streaming) {
        if (feature_set_load(&set, train_src, &err))
            FAIL("%s", err.msg);
        if (!r.classes)
            r.classes = (int)set.max_label + 1;
        for (int64_t i = 0; i < set.n; i++)
            if (set.labels[i] >= r.classes)
                FAIL("%s: sample %lld: label %lld is outside the %d classes%s", tname, (long long)i + 1,
                     (long long)set.labels[i], r.classes, s.classes ? " of --classes" : " the header names");
        if (s.standardize) {
            if (standardizer_fit(&r.z, set.x, set.n, dim, &err))
                FAIL("%s", err.msg);
            standardizer_apply(&r.z, set.x, set.n);
            r.standardized = 1;
        }
    }
    if (classifier_init(&r.c, dim, r.classes, (uint64_t)s.seed, &err))
        FAIL("%s: %s", tname, err.msg);
    if (!(r.names = calloc((size_t)r.classes, sizeof *r.names)))
        FAIL("out of memory");
    for (int k = 0; k < r.classes; k++) {
        const char *name = stream_header_class(th, k);
        char num[32];
        snprintf(num, sizeof num, "%d", k);
        if (!(r.names[k] = strdup(name ? name : num)))
            FAIL("out of memory");
    }
    if (linear_scores_init(&train_sc, r.classes, &err) || linear_scores_init(&val_sc, r.classes, &err))
        FAIL("%s", err.msg);

    /* SGD: threads pay off only on big products: a step of the demo's probe (256 x 128 x 10) is over
     * before a second thread has woken, and on a busy machine each OpenMP barrier can cost a time
     * slice. L-BFGS spreads whole chunks of 1024 rows over the threads instead. */
    double macs = (double)s.batch * dim * r.classes;
#ifdef _OPENMP
    omp_set_num_threads(!s.lbfgs && macs < (1 << 24) ? 1 : (int)s.threads);
#endif
    (void)macs;
    int rc;
    if (s.lbfgs) {
        if (s.l2_count > 1) { /* lambda chosen on held-out samples, then the fit below on all of them */
            linear_lbfgs_options so = {.max_iter = (int)s.max_iter, .epsilon = s.tol, .memory = 10};
            int best;
            if (linear_lbfgs_select_l2(&r.c, &set, s.l2_list, s.l2_count, s.holdout, (uint64_t)s.seed, &so,
                                       s.l2_holdout_top1, &best, &err))
                FAIL("%s: %s", tname, err.msg);
            s.l2 = s.l2_list[best];
            if (!s.quiet)
                fprintf(stderr, "moco-linear: l2 %g has the best held-out top-1 (%.2f%%)\n", s.l2,
                        s.l2_holdout_top1[best]);
        }
        memset(r.c.param, 0, sizeof(float) * r.c.param_count); /* convex: start from zero, deterministic */
        linear_lbfgs_options lo = {.l2 = s.l2, .max_iter = (int)s.max_iter, .epsilon = s.tol, .memory = 10,
                                   .progress = lbfgs_progress, .ctx = &r};
        r.bar = progress_start("moco-linear", s.max_iter ? s.max_iter : -1, s.quiet);
        rc = linear_lbfgs(&r.c, set.x, set.labels, set.n, &lo, &lb, &r.err);
        progress_finish(r.bar);
        if (rc)
            FAIL("%s: %s", tname, r.err.msg);
        if (!strcmp(lb.stop, "cancelled")) /* by lbfgs_progress, when the log cannot be written */
            FAIL("%s", r.err.msg);
        if (!s.quiet && !isatty(STDERR_FILENO))
            fprintf(stderr, "moco-linear: L-BFGS %s after %d iterations (%d evaluations): objective %.6f, |grad| %.3g\n",
                    lb.stop, lb.iterations, lb.evaluations, lb.objective, lb.grad_norm);
        if (!strcmp(lb.stop, "max-iter"))
            cli_warn("L-BFGS stopped at --max-iter %lld before converging (|grad| %.3g); a larger --max-iter or "
                     "--l2 gets closer to the optimum", (long long)s.max_iter, lb.grad_norm);
    } else {
        linear_eval_init(&r.c, (uint64_t)s.seed);
        sched.epochs = (int)s.epochs;
        linear_sgd_options so = {.momentum = s.momentum, .weight_decay = s.wd, .batch = (int)s.batch,
                                 .epochs = (int)s.epochs, .schedule = &sched, .seed = (uint64_t)s.seed,
                                 .on_epoch = on_epoch, .on_step = on_step, .ctx = &r};
        if (s.device >= 0) { /* the steps on the GPU; the weights come back for each epoch's report */
            if (!(gpu = gpu_api_load(&err)) ||
                !(gl = gpu->linear_create(s.device, &r.c, s.momentum, s.wd, (int)s.batch, &err)))
                FAIL("%s", err.msg);
            if (!s.quiet)
                fprintf(stderr, "moco-linear: cuda:%d: %s\n", s.device, gpu->linear_describe(gl));
            device = (linear_device){.ctx = gl, .step = gpu->linear_step, .pull = gpu->linear_pull};
            so.device = &device;
        }
        r.bar = progress_start("moco-linear", s.epochs * (streaming ? samples : set.n), s.quiet);
        rc = streaming ? linear_sgd_stream(&r.c, train_src, samples, &so, &train_sc, &r.err)
                       : linear_sgd_train(&r.c, &set, &so, &r.err);
        progress_finish(r.bar);
        if (rc)
            FAIL("%s", r.err.msg);
    }
    double train_seconds = progress_now() - t0;
    if (!streaming && linear_scores_add_set(&train_sc, &r.c, &set, &r.err))
        FAIL("%s: %s", tname, r.err.msg);
    feature_set_free(&set);
    if (val_src && linear_scores_add_source(&val_sc, &r.c, val_src, r.standardized ? &r.z : NULL, &r.err))
        FAIL("%s", r.err.msg);
    const linear_scores *eval = val_src ? &val_sc : &train_sc;
    int64_t damaged = feature_source_damaged(train_src) + (val_src ? feature_source_damaged(val_src) : 0);
    if (damaged)
        cli_warn("%lld damaged record(s) skipped", (long long)damaged);
    double seconds = progress_now() - t0;
    const char *mode = streaming ? "streaming" : "in memory";
    if (s.save && save_classifier(&r, s.save, dim, eval, val_src != NULL, &err))
        FAIL("%s", err.msg);
    if (s.report) {
        json_t *o = report_json(&r, streaming ? "streaming" : "in-memory", &train_sc, eval, val_src != NULL, dim,
                                s.lbfgs ? &lb : NULL, seconds, train_seconds);
        status_code = write_json(o, s.report);
        json_decref(o);
    }
    if (!s.report || strcmp(s.report, "-"))
        print_text(&r, mode, &train_sc, eval, val_src != NULL, dim, seconds);
done:
    if (gl)
        gpu->linear_destroy(gl);
    if (r.log && metrics_close(r.log, status_code ? NULL : &err) && !status_code)
        status_code = cli_error("%s", err.msg);
    feature_set_free(&set);
    linear_scores_free(&train_sc);
    linear_scores_free(&val_sc);
    for (int k = 0; r.names && k < r.classes; k++)
        free(r.names[k]);
    free(r.names);
    standardizer_free(&r.z);
    classifier_free(&r.c);
    backend_destroy(be);
    feature_source_close(train_src);
    feature_source_close(val_src);
    return status_code;
}
