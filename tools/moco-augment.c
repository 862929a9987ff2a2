/* moco-augment — shards in, a stream of augmented views out: MoCo's two views per image for
 * pretraining, or one evaluation view for feature extraction.
 *
 * Per epoch: the part's shards in a shuffled order through a shuffle buffer (shard.h); samples are
 * taken in chunks, each sample decoded once (at a reduced DCT scale when its crops allow, unless
 * --exact) and its views made in parallel (augment.h), then written in order. Every random choice
 * is keyed by (seed, epoch, sample, view), so the bytes do not depend on --threads. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "augment.h"
#include "cli.h"
#include "progress.h"
#include "shard.h"

static const char usage[] =
    "Usage: moco-augment [OPTION]... SHARDS...\n"
    "Read shards (folders made by moco-shard, or shard files) and write a stream of augmented views:\n"
    "u8 tensors \"views\" (V,S,S,C) with each sample's label and id, to standard output or --out.\n"
    "\n"
    "  --recipe NAME        v2 (default: MoCo v2 aug+), v1, lincls (crop + flip), eval (resize + centre crop)\n"
    "  --size N             output side (default 224)\n"
    "  --views N            views per image (default 2; 1 for lincls and eval)\n"
    "  --epochs E           passes over the data, each in a fresh order (default 1)\n"
    "  --first-epoch E      start at epoch E (0-based) of the E passes: resuming a run\n"
    "  --seed S             seed of every random choice (default 0)\n"
    "  --shuffle-buffer N   samples mixed across shards (default 1000; 1 keeps shard order)\n"
    "  --part I/N           read only shards k with k mod N = I (one rank of N)\n"
    "  --threads N          worker threads (default: all cores); the output does not depend on it\n"
    "  --scale LO,HI        RandomResizedCrop area range (v2/v1 0.2,1; lincls 0.08,1)\n"
    "  --ratio LO,HI        RandomResizedCrop aspect range (default 0.75,1.3333)\n"
    "  --jitter B,C,S,H     ColorJitter strengths (v2 0.4,0.4,0.4,0.1; 0 turns one off)\n"
    "  --jitter-p P         probability of ColorJitter (v2 0.8)\n"
    "  --grayscale P        probability of RandomGrayscale (v2 0.2)\n"
    "  --blur P             probability of GaussianBlur (v2 0.5); --blur-sigma LO,HI (0.1,2)\n"
    "  --flip P             probability of a horizontal flip (0.5)\n"
    "  --resize N           eval: short side before the centre crop (default size*256/224)\n"
    "  --exact              decode at full size, as torchvision does (default: JPEGs whose crops allow it\n"
    "                       decode at 1/2, 1/4 or 1/8 scale first)\n"
    "  -o, --out FILE       write to FILE (atomically; a FIFO or device in place) instead of standard output\n"
    "  --level L            zstd level (default: 0, raw records, into a pipe, FIFO or device; 3 into a file)\n"
    "  --zero-copy          raw records into a pipe with vmsplice(2) (reader must read(2) it; see moco-stream(5))\n"
    "  --strict             stop at a damaged record instead of skipping it\n"
    "  -q, --quiet          no progress bar\n"
    "      --help, --version\n"
    "\n"
    "Examples:\n"
    "  moco-augment --epochs 200 shards/ | moco-pretrain --epochs 200 --out run/\n"
    "  moco-augment --recipe eval shards/ | moco-extract run/last.tsz > train.feat\n"
    "  moco-augment --size 28 --scale 0.2,1 --jitter 0.4,0.4,0,0 --blur 0 fmnist/ | moco-inspect --png v.png\n"
    "Exit status: 0 done (or the reader went away), 1 failure, 2 usage error, 3 done with damaged\n"
    "records skipped.\n";

typedef struct {
    shard_item item;
    uint8_t *views; /* V * S * S * C */
    int ok;
    moco_error err;
} job;

typedef struct {
    augment_recipe recipe;
    int views, strict;
    uint64_t seed;
    stream_writer *out;
    int64_t written, skipped;
} run;

/* Decode one sample once and make its views. */
static int make_views(const run *r, int epoch, job *j)
{
    const augment_recipe *rc = &r->recipe;
    const shard_item *it = &j->item;
    view_params v[16];
    for (int k = 0; k < r->views; k++) {
        rng g;
        rng_init(&g, r->seed, (uint32_t)epoch, (uint64_t)it->sample_id, (uint32_t)k);
        augment_sample(rc, it->height, it->width, &g, &v[k]);
    }
    image src = {it->height, it->width, it->channels, it->data};
    image decoded = {0};
    image_origin origin = {0, 0, 1};
    if (it->is_jpeg) {
        image_decode_options opt = {.channels = it->channels};
        if (!rc->exact && !rc->eval)
            augment_decode_plan(rc, v, r->views, it->height, it->width, &opt);
        if (image_decode_region(it->data, it->len, &opt, &decoded, &origin, &j->err))
            return MOCO_ERR;
        src = decoded;
    }
    size_t view_bytes = (size_t)rc->size * rc->size * (size_t)it->channels;
    uint8_t *scratch = malloc(augment_scratch_bytes(rc, &src));
    j->views = malloc(view_bytes * (size_t)r->views);
    int status = scratch && j->views ? MOCO_OK : moco_fail(&j->err, "out of memory");
    for (int k = 0; k < r->views && !status; k++)
        status = augment_view(rc, &v[k], &src, origin.scale, origin.x, origin.y, j->views + (size_t)k * view_bytes,
                              scratch, &j->err);
    free(scratch);
    image_free(&decoded);
    return status;
}

static int flush(run *r, int epoch, job *jobs, int n, moco_error *err)
{
#pragma omp parallel for schedule(dynamic, 1)
    for (int i = 0; i < n; i++) {
        jobs[i].ok = make_views(r, epoch, &jobs[i]) == MOCO_OK;
        if (!jobs[i].ok)
            moco_prefix(&jobs[i].err, "%s", jobs[i].item.key);
    }
    int rc = MOCO_OK;
    for (int i = 0; i < n; i++) {
        job *j = &jobs[i];
        if (!rc && j->ok) {
            stream_record rec;
            stream_record_init(&rec, j->item.sample_id, j->item.label);
            int64_t dims[4] = {r->views, r->recipe.size, r->recipe.size, j->item.channels};
            rc = stream_record_add(&rec, "views", DTYPE_U8, 4, dims, j->views, err);
            if (!rc)
                rc = stream_write(r->out, &rec, err);
            r->written += rc == MOCO_OK;
        } else if (!rc) {
            if (r->strict)
                rc = moco_fail(err, "%s (--strict)", j->err.msg);
            else {
                cli_warn("%s (skipped; --strict to stop)", j->err.msg);
                r->skipped++;
            }
        }
        free(j->item.data);
        free(j->views);
        memset(j, 0, sizeof *j);
    }
    return rc;
}

static int parse_pair(const char *opt, const char *s, double lo, double hi, double out[2])
{
    char *end;
    out[0] = strtod(s, &end);
    if (*end != ',')
        return cli_usage_error("%s: '%s' is not LO,HI", opt, s);
    out[1] = strtod(end + 1, &end);
    if (*end || !(out[0] >= lo && out[1] <= hi && out[0] <= out[1]))
        return cli_usage_error("%s: '%s' is not LO,HI with %g <= LO <= HI <= %g", opt, s, lo, hi);
    return 0;
}

int main(int argc, char **argv)
{
    cli_init("moco-augment");
    enum { O_RECIPE = 256, O_SIZE, O_VIEWS, O_EPOCHS, O_SEED, O_BUFFER, O_PART, O_THREADS, O_SCALE, O_RATIO,
           O_JITTER, O_JITTER_P, O_GRAY, O_BLUR, O_BLUR_SIGMA, O_FLIP, O_RESIZE, O_EXACT, O_LEVEL, O_ZERO_COPY,
           O_STRICT, O_FIRST_EPOCH, O_HELP, O_VERSION };
    static const struct option options[] = {
        {"recipe", required_argument, 0, O_RECIPE}, {"size", required_argument, 0, O_SIZE},
        {"views", required_argument, 0, O_VIEWS}, {"epochs", required_argument, 0, O_EPOCHS},
        {"seed", required_argument, 0, O_SEED}, {"shuffle-buffer", required_argument, 0, O_BUFFER},
        {"part", required_argument, 0, O_PART}, {"threads", required_argument, 0, O_THREADS},
        {"scale", required_argument, 0, O_SCALE}, {"ratio", required_argument, 0, O_RATIO},
        {"jitter", required_argument, 0, O_JITTER}, {"jitter-p", required_argument, 0, O_JITTER_P},
        {"grayscale", required_argument, 0, O_GRAY}, {"blur", required_argument, 0, O_BLUR},
        {"blur-sigma", required_argument, 0, O_BLUR_SIGMA}, {"flip", required_argument, 0, O_FLIP},
        {"resize", required_argument, 0, O_RESIZE}, {"exact", no_argument, 0, O_EXACT},
        {"out", required_argument, 0, 'o'}, {"level", required_argument, 0, O_LEVEL},
        {"zero-copy", no_argument, 0, O_ZERO_COPY}, {"strict", no_argument, 0, O_STRICT},
        {"first-epoch", required_argument, 0, O_FIRST_EPOCH},
        {"quiet", no_argument, 0, 'q'}, {"help", no_argument, 0, O_HELP}, {"version", no_argument, 0, O_VERSION},
        {0, 0, 0, 0},
    };
    /* First pass: the recipe and size, which set the defaults the other options change. */
    const char *recipe_name = "v2";
    int64_t size = 224, c;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--recipe") && i + 1 < argc)
            recipe_name = argv[i + 1];
        else if (!strncmp(argv[i], "--recipe=", 9))
            recipe_name = argv[i] + 9;
        if (!strcmp(argv[i], "--size") && i + 1 < argc && cli_int("--size", argv[i + 1], 8, 4096, &size))
            return EXIT_USAGE;
    }
    run r = {0};
    moco_error err;
    if (augment_recipe_named(&r.recipe, recipe_name, (int)size, &err))
        return cli_usage_error("--recipe: %s", err.msg);
    augment_recipe *rc = &r.recipe;
    int64_t views = rc->eval || !strcmp(recipe_name, "lincls") ? 1 : 2, epochs = 1, seed = 0, buffer = 1000;
    int64_t threads = cli_default_threads(), level = -1000, resize = 0, first_epoch = 0;
    int part = 0, parts = 1, zero_copy = 0, quiet = 0, status = 0;
    const char *out_path = NULL;
    double pair[2], p;
    while ((c = getopt_long(argc, argv, "o:q", options, NULL)) != -1 && !status) {
        switch (c) {
        case O_RECIPE: case O_SIZE: break;
        case O_VIEWS: status = cli_int("--views", optarg, 1, 16, &views); break;
        case O_EPOCHS: status = cli_int("--epochs", optarg, 1, 1000000, &epochs); break;
        case O_FIRST_EPOCH: status = cli_int("--first-epoch", optarg, 0, 999999, &first_epoch); break;
        case O_SEED: status = cli_int("--seed", optarg, 0, INT64_MAX, &seed); break;
        case O_BUFFER: status = cli_int("--shuffle-buffer", optarg, 1, 10000000, &buffer); break;
        case O_PART: status = cli_part("--part", optarg, &part, &parts); break;
        case O_THREADS: status = cli_int("--threads", optarg, 1, 4096, &threads); break;
        case O_SCALE: status = parse_pair("--scale", optarg, 1e-6, 1, rc->scale); break;
        case O_RATIO: status = parse_pair("--ratio", optarg, 1e-3, 1e3, rc->ratio); break;
        case O_JITTER: {
            float j[4];
            if (sscanf(optarg, "%f,%f,%f,%f", &j[0], &j[1], &j[2], &j[3]) != 4 || j[0] < 0 || j[1] < 0 ||
                j[2] < 0 || j[3] < 0 || j[3] > 0.5f)
                status = cli_usage_error("--jitter: '%s' is not B,C,S,H (each >= 0, H <= 0.5)", optarg);
            rc->brightness = j[0], rc->contrast = j[1], rc->saturation = j[2], rc->hue = j[3];
            break;
        }
        case O_JITTER_P: status = cli_real("--jitter-p", optarg, 0, 1, &rc->jitter_p); break;
        case O_GRAY: status = cli_real("--grayscale", optarg, 0, 1, &rc->grayscale_p); break;
        case O_BLUR: status = cli_real("--blur", optarg, 0, 1, &p); rc->blur_p = p;
            if (!status && p > 0 && rc->blur_sigma[1] == 0)
                rc->blur_sigma[0] = 0.1, rc->blur_sigma[1] = 2.0;
            break;
        case O_BLUR_SIGMA: status = parse_pair("--blur-sigma", optarg, 0.01, 100, pair);
            rc->blur_sigma[0] = pair[0], rc->blur_sigma[1] = pair[1];
            break;
        case O_FLIP: status = cli_real("--flip", optarg, 0, 1, &rc->flip_p); break;
        case O_RESIZE: status = cli_int("--resize", optarg, 1, 65536, &resize); break;
        case O_EXACT: rc->exact = 1; break;
        case 'o': out_path = optarg; break;
        case O_LEVEL: status = cli_int("--level", optarg, -7, 22, &level); break;
        case O_ZERO_COPY: zero_copy = 1; break;
        case O_STRICT: r.strict = 1; break;
        case 'q': quiet = 1; break;
        case O_HELP: fputs(usage, stdout); return 0;
        case O_VERSION: return cli_version();
        default: return cli_usage_error("unknown option");
        }
    }
    if (status)
        return status;
    if (optind == argc)
        return cli_usage_error("no shards given");
    if (first_epoch >= epochs)
        return cli_usage_error("--first-epoch %lld: the run has only %lld epochs", (long long)first_epoch, (long long)epochs);
    if (resize) {
        if (!rc->eval)
            return cli_usage_error("--resize is for --recipe eval");
        rc->resize = (int)resize;
    }
    if (rc->eval && rc->resize < rc->size)
        return cli_usage_error("--resize %d is smaller than --size %d", rc->resize, rc->size);
    r.views = (int)views;
    r.seed = (uint64_t)seed;
#ifdef _OPENMP
    omp_set_num_threads((int)threads);
#endif

    shard_source *src = shard_source_open(argc - optind, argv + optind, part, parts, &err);
    if (!src)
        return cli_error("%s", err.msg);
    const stream_header *sh = shard_source_header(src);
    stream_header *h = stream_header_new("views", "moco-augment " MOCO_VERSION);
    stream_header_set_args(h, argc, argv);
    int nclasses = stream_header_num_classes(sh);
    const char **names = calloc((size_t)nclasses + 1, sizeof *names);
    for (int i = 0; names && i < nclasses; i++)
        names[i] = stream_header_class(sh, i);
    stream_header_set_classes(h, nclasses, names);
    free(names);
    stream_header_set_str(h, "recipe", rc->name);
    stream_header_set_int(h, "size", rc->size);
    stream_header_set_int(h, "channels", stream_header_get_int(sh, "channels", 3));
    stream_header_set_int(h, "views", r.views);
    stream_header_set_int(h, "samples", shard_source_samples(src)); /* per epoch, this part */
    stream_header_set_int(h, "epochs", epochs);
    stream_header_set_int(h, "first_epoch", first_epoch);
    stream_header_set_int(h, "seed", seed);
    stream_header_set_int(h, "part", part);
    stream_header_set_int(h, "parts", parts);
    /* what the consumer normalises with (ImageNet's statistics, as the recipe uses) */
    const double mean[3] = {0.485, 0.456, 0.406}, std[3] = {0.229, 0.224, 0.225};
    stream_header_set_reals(h, "mean", 3, mean);
    stream_header_set_reals(h, "std", 3, std);

    stream_options sopt = STREAM_OPTIONS_DEFAULT;
    sopt.level = level != -1000 ? (int)level : stream_default_level(out_path);
    sopt.zero_copy = zero_copy;
    r.out = stream_writer_open(out_path, &sopt, h, &err);
    stream_header_free(h);
    if (!r.out) {
        shard_source_close(src);
        return cli_error("%s", err.msg);
    }
    int chunk = (int)(threads * 8 < 1024 ? threads * 8 : 1024);
    job *jobs = calloc((size_t)chunk, sizeof *jobs);
    progress *prog = progress_start("moco-augment", shard_source_samples(src) * (epochs - first_epoch), quiet);
    int rcode = jobs ? MOCO_OK : moco_fail(&err, "out of memory");
    for (int epoch = (int)first_epoch; epoch < epochs && !rcode; epoch++) {
        rcode = shard_source_begin_epoch(src, (uint64_t)seed, epoch, (int)buffer, &err);
        int n = 0;
        while (!rcode) {
            int got = shard_source_next(src, &jobs[n].item, &err);
            if (got == STREAM_DAMAGED) {
                if (r.strict) {
                    rcode = MOCO_ERR;
                    break;
                }
                cli_warn("%s (skipped; --strict to stop)", err.msg);
                r.skipped++;
                continue;
            }
            if (got < 0) {
                rcode = MOCO_ERR;
                break;
            }
            if (got == 1 && ++n < chunk)
                continue;
            rcode = flush(&r, epoch, jobs, n, &err);
            n = 0;
            progress_update(prog, r.written + r.skipped);
            if (got == 0)
                break;
        }
        for (int i = 0; i < n; i++) /* left over after an error */
            free(jobs[i].item.data);
    }
    progress_finish(prog);
    free(jobs);
    shard_source_close(src);
    if (rcode == MOCO_EPIPE) { /* the consumer has what it wanted */
        stream_writer_abort(r.out);
        return 0;
    }
    if (rcode) {
        stream_writer_abort(r.out);
        return cli_error("%s", err.msg);
    }
    rcode = stream_writer_close(r.out, &err);
    if (rcode == MOCO_EPIPE)
        return 0;
    if (rcode)
        return cli_error("%s", err.msg);
    return r.skipped ? 3 : 0;
}
