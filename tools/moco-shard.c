/* moco-shard — images from folders, archives, file lists or IDX files into checked shard files.
 *
 * Lists every input (dataset.h), plans which sample goes to which shard (shard.h), then prepares
 * samples in parallel chunks (decode, resize, re-encode or keep) and writes them in a fixed order,
 * so the shards are the same bytes whatever --threads is. A sample that cannot be decoded is
 * skipped with a warning naming it (fatal with --strict). */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "cli.h"
#include "dataset.h"
#include "progress.h"
#include "shard.h"

static const char usage[] =
    "Usage: moco-shard --out DIR [OPTION]... INPUT...\n"
    "Read images from INPUTs and write checked shard files DIR/shard-NNNNN.tsz with DIR/index.json.\n"
    "An INPUT is a class-per-folder tree (ImageFolder), a flat folder (labels from --labels), a file\n"
    "list (path<TAB>label lines), an IDX file (MNIST format, gzipped or not), or an archive (tar,\n"
    "tar.gz, ...: class folders, one tar per class as ImageNet's train tar, or WebDataset).\n"
    "\n"
    "  -o, --out DIR          output folder (created if missing)\n"
    "      --labels FILE      labels for a flat folder or IDX file: \"name label\" or one label per line\n"
    "      --classes FILE     fixed class names, one per line (index = line), so train and val agree\n"
    "      --store jpeg|raw   keep JPEG bytes (re-encoded only when changed) or raw pixels\n"
    "                         (default: raw for IDX inputs, jpeg otherwise)\n"
    "      --quality N        JPEG quality when re-encoding (default 90)\n"
    "      --short-side N     shrink so the short side is N (never enlarges)\n"
    "      --max-side N       shrink so the long side is at most N\n"
    "      --filter NAME      bilinear (default, as torchvision's Resize), box, hamming, bicubic, lanczos\n"
    "      --exact            resize from full-size decodes, bit-exact with PIL (default: JPEGs shrunk by\n"
    "                         half or more decode at a reduced DCT scale first, several times faster)\n"
    "      --channels 1|3     grey or RGB (default: grey when every input is grey, else RGB)\n"
    "      --shard-size N     records per shard (default 5000), or bytes with a K, M or G suffix\n"
    "      --shuffle          shuffle samples across shards (with --seed)\n"
    "      --seed S           seed for --shuffle (default 0)\n"
    "      --part I/N         write only the I-th of N interleaved parts of the shards (0-based)\n"
    "      --threads N        worker threads (default: all cores)\n"
    "      --level L          zstd level of the shard files (default 3; 0 raw)\n"
    "      --strict           stop at the first bad image instead of skipping it\n"
    "      --max-pixels N     refuse images larger than N pixels (default 268435456)\n"
    "  -q, --quiet            no progress or summary\n"
    "      --help, --version\n"
    "\n"
    "Examples:\n"
    "  moco-shard --out fmnist/train /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz\n"
    "  moco-shard --out imagenet/train --short-side 256 --shuffle ILSVRC2012_img_train.tar\n"
    "Exit status: 0 every sample written, 3 done but some inputs skipped, 1 failure, 2 usage error.\n";

enum { EXIT_SKIPPED = 3 };

typedef struct {
    int64_t sample;
    uint8_t *bytes; /* archive member bytes (owned), or NULL: read the file in the worker */
    size_t len;
    shard_sample out;
    int ok;
    moco_error err;
} job;

typedef struct {
    dataset *d;
    shard_plan plan;
    shard_set *set;
    shard_format fmt;
    job *jobs;
    int njobs, cap, strict;
    int64_t skipped, done, max_file;
    progress *prog;
} run;

/* Prepare the chunk's samples in parallel, then write them in order. */
static int flush_jobs(run *r, moco_error *err)
{
#pragma omp parallel for schedule(dynamic, 1)
    for (int i = 0; i < r->njobs; i++) {
        job *j = &r->jobs[i];
        const dataset_item *it = &r->d->items[j->sample];
        const dataset_input *in = &r->d->inputs[it->input];
        if (in->kind == INPUT_IDX) {
            const idx_array *a = &in->images;
            image px = {(int)a->dims[1], (int)a->dims[2], a->rank == 4 ? (int)a->dims[3] : 1,
                        a->data + it->member * a->item_bytes};
            j->ok = shard_sample_prepare(&r->fmt, NULL, 0, &px, &j->out, &j->err) == 0;
        } else {
            if (!j->bytes && dataset_read_file(it->key, &j->bytes, &j->len, r->max_file, &j->err)) {
                j->ok = 0;
                continue;
            }
            j->ok = shard_sample_prepare(&r->fmt, j->bytes, j->len, NULL, &j->out, &j->err) == 0;
            if (!j->ok)
                moco_prefix(&j->err, "%s", it->key);
        }
    }
    int rc = MOCO_OK;
    for (int i = 0; i < r->njobs; i++) {
        job *j = &r->jobs[i];
        const dataset_item *it = &r->d->items[j->sample];
        int64_t shard = shard_of(&r->plan, j->sample);
        if (!rc && j->ok) {
            stream_record rec;
            int64_t bytes = shard_sample_record(&j->out, it->key, j->sample, it->label, &rec, err);
            rc = bytes < 0 ? MOCO_ERR : shard_set_write(r->set, shard, &rec, bytes, err);
        } else if (!rc) {
            if (r->strict) {
                rc = moco_fail(err, "%s (--strict)", j->err.msg);
            } else {
                cli_warn("%s (skipped; --strict to stop)", j->err.msg);
                r->skipped++;
            }
        }
        if (!rc)
            rc = shard_set_position_done(r->set, shard, err);
        shard_sample_free(&j->out);
        free(j->bytes);
        r->done++;
    }
    r->njobs = 0;
    progress_update(r->prog, r->done);
    return rc;
}

static int add_job(run *r, int64_t sample, const uint8_t *data, size_t len, moco_error *err)
{
    job *j = &r->jobs[r->njobs];
    memset(j, 0, sizeof *j);
    j->sample = sample;
    if (data) {
        if (!(j->bytes = malloc(len ? len : 1)))
            return moco_fail(err, "out of memory");
        memcpy(j->bytes, data, len);
        j->len = len;
    }
    return ++r->njobs == r->cap ? flush_jobs(r, err) : MOCO_OK;
}

typedef struct {
    run *r;
    int64_t first_item;
} archive_ctx;

static int want_member(void *ctx, int64_t member)
{
    archive_ctx *a = ctx;
    return shard_owned(&a->r->plan, shard_of(&a->r->plan, a->first_item + member));
}

static int take_member(void *ctx, int64_t member, const char *key, const uint8_t *data, size_t len, moco_error *err)
{
    (void)key;
    archive_ctx *a = ctx;
    return add_job(a->r, a->first_item + member, data, len, err);
}

/* Samples in shard order when every input can be read in any order; otherwise inputs in their own
 * order (archives stream), each sample going to its planned shard. */
static int write_all(run *r, int has_archive, moco_error *err)
{
    int rc = MOCO_OK;
    if (!has_archive) {
        for (int64_t p = 0; p < r->plan.samples && !rc; p++)
            if (shard_owned(&r->plan, p / r->plan.per_shard))
                rc = add_job(r, r->plan.sample[p], NULL, 0, err);
    } else {
        for (int i = 0; i < r->d->ninputs && !rc; i++) {
            dataset_input *in = &r->d->inputs[i];
            if (in->kind == INPUT_ARCHIVE) {
                archive_ctx a = {r, in->first_item};
                rc = dataset_walk_archive(in->path, want_member, take_member, &a, r->max_file, err);
                continue;
            }
            for (int64_t s = in->first_item; s < in->first_item + in->items && !rc; s++)
                if (shard_owned(&r->plan, shard_of(&r->plan, s)))
                    rc = add_job(r, s, NULL, 0, err);
        }
    }
    return rc ? rc : flush_jobs(r, err);
}

/* Grey unless some input is colour: IDX files say so in their shape; images are probed from their
 * headers, stopping at the first colour one. */
static int all_grey(const dataset *d, int64_t max_file)
{
    for (int i = 0; i < d->ninputs; i++)
        if (d->inputs[i].kind == INPUT_IDX && d->inputs[i].images.rank == 4 && d->inputs[i].images.dims[3] == 3)
            return 0;
    for (int64_t s = 0; s < d->count; s++) {
        const dataset_input *in = &d->inputs[d->items[s].input];
        if (in->kind == INPUT_IDX)
            continue;
        if (in->kind == INPUT_ARCHIVE)
            return 0; /* probing would mean reading the archive twice; --channels 1 to keep grey */
        uint8_t *buf;
        size_t len;
        moco_error err;
        int h, w, c = 3;
        if (dataset_read_file(d->items[s].key, &buf, &len, max_file, &err) == 0) {
            if (image_probe(buf, len, &h, &w, &c, &err) != 0)
                c = 1; /* unreadable: decided (and reported) when it is read for real */
            free(buf);
        }
        if (c == 3)
            return 0;
    }
    return 1;
}

static int parse_size(const char *s, int64_t *records, int64_t *bytes)
{
    char *end;
    double v = strtod(s, &end);
    int64_t mult = 0;
    if (end == s || v <= 0)
        return 0;
    if (!*end)
        mult = 0;
    else if (!strcmp(end, "K") || !strcmp(end, "k"))
        mult = 1 << 10;
    else if (!strcmp(end, "M"))
        mult = 1 << 20;
    else if (!strcmp(end, "G"))
        mult = 1 << 30;
    else
        return 0;
    if (mult)
        *bytes = (int64_t)(v * (double)mult), *records = 0;
    else if (v != (double)(int64_t)v)
        return 0;
    else
        *records = (int64_t)v, *bytes = 0;
    return 1;
}

int main(int argc, char **argv)
{
    cli_init("moco-shard");
    enum { O_LABELS = 256, O_CLASSES, O_STORE, O_QUALITY, O_SHORT, O_MAX_SIDE, O_FILTER, O_CHANNELS, O_SHARD_SIZE,
           O_SHUFFLE, O_SEED, O_PART, O_THREADS, O_LEVEL, O_STRICT, O_MAX_PIXELS, O_EXACT, O_HELP, O_VERSION };
    static const struct option options[] = {
        {"out", required_argument, 0, 'o'},          {"labels", required_argument, 0, O_LABELS},
        {"classes", required_argument, 0, O_CLASSES}, {"store", required_argument, 0, O_STORE},
        {"quality", required_argument, 0, O_QUALITY}, {"short-side", required_argument, 0, O_SHORT},
        {"max-side", required_argument, 0, O_MAX_SIDE}, {"filter", required_argument, 0, O_FILTER},
        {"channels", required_argument, 0, O_CHANNELS}, {"shard-size", required_argument, 0, O_SHARD_SIZE},
        {"shuffle", no_argument, 0, O_SHUFFLE},      {"seed", required_argument, 0, O_SEED},
        {"part", required_argument, 0, O_PART},      {"threads", required_argument, 0, O_THREADS},
        {"level", required_argument, 0, O_LEVEL},    {"strict", no_argument, 0, O_STRICT},
        {"max-pixels", required_argument, 0, O_MAX_PIXELS}, {"quiet", no_argument, 0, 'q'},
        {"exact", no_argument, 0, O_EXACT},
        {"help", no_argument, 0, O_HELP},            {"version", no_argument, 0, O_VERSION},
        {0, 0, 0, 0},
    };
    const char *out = NULL, *labels = NULL, *classes = NULL, *store = NULL, *filter = "bilinear";
    int64_t quality = 90, short_side = 0, max_side = 0, channels = 0, per_shard = 5000, max_bytes = 0, seed = 0;
    int64_t threads = cli_default_threads(), level = 3, max_pixels = IMAGE_DEFAULT_MAX_PIXELS;
    int shuffle = 0, strict = 0, quiet = 0, part = 0, parts = 1, exact = 0;
    int c, rc = 0;
    while ((c = getopt_long(argc, argv, "o:q", options, NULL)) != -1 && !rc) {
        switch (c) {
        case 'o': out = optarg; break;
        case O_LABELS: labels = optarg; break;
        case O_CLASSES: classes = optarg; break;
        case O_STORE: store = optarg; break;
        case O_QUALITY: rc = cli_int("--quality", optarg, 1, 100, &quality); break;
        case O_SHORT: rc = cli_int("--short-side", optarg, 1, 1 << 16, &short_side); break;
        case O_MAX_SIDE: rc = cli_int("--max-side", optarg, 1, 1 << 16, &max_side); break;
        case O_FILTER: filter = optarg; break;
        case O_CHANNELS: rc = cli_int("--channels", optarg, 1, 3, &channels); break;
        case O_SHARD_SIZE:
            if (!parse_size(optarg, &per_shard, &max_bytes))
                rc = cli_usage_error("--shard-size: '%s' is not a record count or a size like 512M", optarg);
            break;
        case O_SHUFFLE: shuffle = 1; break;
        case O_SEED: rc = cli_int("--seed", optarg, 0, INT64_MAX, &seed); break;
        case O_PART: rc = cli_part("--part", optarg, &part, &parts); break;
        case O_THREADS: rc = cli_int("--threads", optarg, 1, 4096, &threads); break;
        case O_LEVEL: rc = cli_int("--level", optarg, -7, 22, &level); break;
        case O_STRICT: strict = 1; break;
        case O_EXACT: exact = 1; break;
        case O_MAX_PIXELS: rc = cli_int("--max-pixels", optarg, 1, INT64_MAX, &max_pixels); break;
        case 'q': quiet = 1; break;
        case O_HELP: fputs(usage, stdout); return 0;
        case O_VERSION: return cli_version();
        default: return cli_usage_error("unknown option");
        }
    }
    if (rc)
        return rc;
    if (!out)
        return cli_usage_error("--out DIR is required");
    if (optind == argc)
        return cli_usage_error("no input given");
    if (channels == 2)
        return cli_usage_error("--channels: 1 (grey) or 3 (RGB)");
    static const char *const filters[] = {"box", "bilinear", "hamming", "bicubic", "lanczos"};
    int filter_id = -1;
    for (int i = 0; i < 5; i++)
        if (!strcmp(filter, filters[i]))
            filter_id = i;
    if (filter_id < 0)
        return cli_usage_error("--filter: '%s' is not box, bilinear, hamming, bicubic or lanczos", filter);
    if (store && strcmp(store, "jpeg") && strcmp(store, "raw"))
        return cli_usage_error("--store: jpeg or raw, not '%s'", store);
#ifdef _OPENMP
    omp_set_num_threads((int)threads);
#endif
    double t0 = progress_now();
    moco_error err;
    dataset d;
    dataset_init(&d);
    if (classes && dataset_set_classes_file(&d, classes, &err))
        return cli_error("%s", err.msg);
    int has_archive = 0, all_idx = 1;
    for (int i = optind; i < argc; i++) {
        if (dataset_add(&d, argv[i], labels, &err)) {
            dataset_free(&d);
            return cli_error("%s", err.msg);
        }
        has_archive |= d.inputs[d.ninputs - 1].kind == INPUT_ARCHIVE;
        all_idx &= d.inputs[d.ninputs - 1].kind == INPUT_IDX;
    }
    if (dataset_finish(&d, &err)) {
        dataset_free(&d);
        return cli_error("%s", err.msg);
    }
    if (d.count == 0) {
        dataset_free(&d);
        return cli_error("no images found in the inputs");
    }
    if (max_bytes > 0 && (parts > 1 || (shuffle && has_archive))) {
        dataset_free(&d);
        return cli_usage_error("--shard-size in bytes cuts shards as they fill: it cannot be combined with "
                               "--part%s; give a record count", shuffle && has_archive ? " or with --shuffle of archives" : "");
    }
    const int64_t max_file = (int64_t)1 << 30;
    run r = {.d = &d, .strict = strict, .max_file = max_file};
    r.fmt.store = store ? (!strcmp(store, "jpeg") ? STORE_JPEG : STORE_RAW) : (all_idx ? STORE_RAW : STORE_JPEG);
    r.fmt.quality = (int)quality;
    r.fmt.channels = channels ? (int)channels : all_grey(&d, max_file) ? 1 : 3;
    r.fmt.short_side = (int)short_side;
    r.fmt.max_side = (int)max_side;
    r.fmt.filter = (resample_filter)filter_id;
    r.fmt.max_pixels = max_pixels;
    r.fmt.exact = exact;
    if (shard_plan_make(&r.plan, d.count, max_bytes > 0 ? d.count : per_shard, shuffle, (uint64_t)seed, part, parts, &err)) {
        dataset_free(&d);
        return cli_error("%s", err.msg);
    }

    stream_header *h = stream_header_new("images", "moco-shard " MOCO_VERSION);
    stream_header_set_args(h, argc, argv);
    stream_header_set_classes(h, d.nclasses, (const char *const *)d.classes);
    stream_header_set_str(h, "store", r.fmt.store == STORE_JPEG ? "jpeg" : "raw");
    stream_header_set_int(h, "channels", r.fmt.channels);
    stream_header_set_int(h, "dataset_samples", d.count);
    stream_options sopt = STREAM_OPTIONS_DEFAULT;
    sopt.level = (int)level;
    r.set = shard_set_open(out, &r.plan, h, &sopt, d.nclasses, max_bytes, &err);
    stream_header_free(h);
    r.cap = (int)(threads * 16 < 4096 ? threads * 16 : 4096);
    r.jobs = calloc((size_t)r.cap, sizeof *r.jobs);
    if (!r.set || !r.jobs) {
        shard_plan_free(&r.plan);
        dataset_free(&d);
        return cli_error("%s", r.set ? "out of memory" : err.msg);
    }
    int64_t owned = 0;
    for (int64_t k = 0; k < r.plan.nshards; k++)
        owned += shard_owned(&r.plan, k) ? shard_size(&r.plan, k) : 0;
    r.prog = progress_start("moco-shard", owned, quiet);

    rc = write_all(&r, has_archive, &err);
    progress_finish(r.prog);
    int64_t written = shard_set_written(r.set), files = 0;
    if (rc) {
        shard_set_abort(r.set);
        cli_error("%s", err.msg);
    } else {
        json_t *index = json_pack("{s:s,s:i,s:s,s:o,s:I,s:I,s:I,s:i,s:i}", "format", "moco-shards", "version", 1,
                                  "producer", "moco-shard " MOCO_VERSION, "args", json_array(), "samples",
                                  (json_int_t)d.count, "skipped", (json_int_t)r.skipped, "ignored",
                                  (json_int_t)d.ignored, "part", part, "parts", parts);
        for (int i = 0; i < argc; i++)
            json_array_append_new(json_object_get(index, "args"), json_string(argv[i]));
        json_t *names = json_array();
        for (int i = 0; i < d.nclasses; i++)
            json_array_append_new(names, json_string(d.classes[i]));
        json_object_set_new(index, "classes", names);
        json_object_set_new(index, "options",
                            json_pack("{s:s,s:i,s:i,s:i,s:i,s:s,s:b,s:I,s:I,s:b,s:I}", "store",
                                      r.fmt.store == STORE_JPEG ? "jpeg" : "raw", "quality", (int)quality, "channels",
                                      r.fmt.channels, "short_side", (int)short_side, "max_side", (int)max_side,
                                      "filter", filter, "exact", exact, "shard_size", (json_int_t)per_shard, "shard_bytes",
                                      (json_int_t)max_bytes, "shuffle", shuffle, "seed", (json_int_t)seed));
        rc = shard_set_close(r.set, index, &files, &err);
        if (rc)
            cli_error("%s", err.msg);
    }
    if (!rc && !quiet)
        fprintf(stderr, "moco-shard: %lld samples in %lld shard%s in %s (%lld skipped, %lld files ignored) in %.1f s\n",
                (long long)written, (long long)files, files == 1 ? "" : "s", out,
                (long long)r.skipped, (long long)d.ignored, progress_now() - t0);
    free(r.jobs);
    shard_plan_free(&r.plan);
    dataset_free(&d);
    if (rc)
        return 1;
    return r.skipped ? EXIT_SKIPPED : 0;
}
