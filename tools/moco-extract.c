/* moco-extract — a frozen encoder over a stream of views: one feature vector per view.
 *
 * Wiring: the model (a moco-pretrain checkpoint's query encoder, or a safetensors file with
 * torchvision's names) without its head, in evaluation mode; a batcher reading views ahead; the
 * globally average-pooled features out as a "features" stream, one record per sample with its label
 * and id, in input order. The header carries the classes, samples per epoch and epochs of the input,
 * so moco-linear can train on an epoch-by-epoch stream (the linear protocol's pipe). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "batcher.h"
#include "checkpoint.h"
#include "cli.h"
#include "progress.h"
#include "gpu_api.h"
#include "resnet.h"
#include "safetensors.h"

static const char usage[] =
    "Usage: moco-extract [OPTION]... MODEL [VIEWS]\n"
    "Run a frozen encoder over a stream of views (standard input when VIEWS is not given) and write\n"
    "its pooled features: a \"features\" stream, one f32 (or f16) vector per sample with its label.\n"
    "MODEL is a moco-pretrain checkpoint (its query encoder; the MLP head is dropped) or a safetensors\n"
    "file with torchvision's ResNet names (moco-export's output, or published weights).\n"
    "\n"
    "  --part NAME         the checkpoint's encoder: encoder_q (default) or encoder_k\n"
    "  --prefix P          safetensors: names start with P (default: none, or \"encoder_q.\" if present)\n"
    "  --view N            which view of each record (default 0)\n"
    "  --dtype f32|f16     feature type (default f32)\n"
    "  --batch N           views per forward pass (default 256)\n"
    "  --threads N         compute threads (default: all cores)\n"
    "  --direct-conv       CPU: direct convolution only (no Winograd; see moco-pretrain)\n"
    "  --device cpu|cuda[:N]  where the encoder runs (default cpu; cuda in builds with the CUDA backend)\n"
    "  --precision bf16|f32   GPU activations (default f32: features as the CPU computes them)\n"
    "  --mean a,b,c --std a,b,c   normalisation (default: the stream's header)\n"
    "  -o, --out FILE      write to FILE (atomically; a FIFO or device in place) instead of standard output\n"
    "  --level L           zstd level (default: 0 into a pipe, FIFO or device, 3 into a file)\n"
    "  -q, --quiet         no progress bar\n"
    "      --help, --version\n"
    "\n"
    "Examples:\n"
    "  moco-augment --recipe eval train/ | moco-extract run/last.tsz > train.feat\n"
    "  moco-augment --recipe lincls --epochs 100 train/ | moco-extract run/last.tsz |\n"
    "    moco-linear --epochs 100 --val val.feat -\n"
    "  moco-augment --recipe eval --size 28 --resize 28 fmnist/ | moco-extract run/last.tsz -o f.feat\n"
    "Exit status: 0 done (or the reader went away), 1 failure, 2 usage error.\n";

/* Whether the file at path starts like a tensor stream. */
static int looks_like_stream(const char *path)
{
    unsigned char first[4];
    FILE *f = fopen(path, "rb");
    if (!f)
        return 0;
    size_t n = fread(first, 1, sizeof first, f);
    fclose(f);
    return stream_magic(first, n);
}

/* The encoder of `path`, headless, ready for evaluation; NULL and err on failure. */
static resnet *load_model(backend *be, const char *path, const char *part, const char *prefix, moco_error *err)
{
    resnet_config cfg;
    resnet *net = NULL;
    stream_header *h = checkpoint_read_header(path, err);
    if (h) { /* a moco-pretrain checkpoint */
        moco_config mc;
        int rc = checkpoint_config(h, &cfg, &mc, err);
        stream_header_free(h);
        if (rc) {
            moco_prefix(err, "%s", path);
            return NULL;
        }
        cfg.head = RESNET_HEAD_NONE;
        char pre[64];
        snprintf(pre, sizeof pre, "%s.", part);
        if (!(net = resnet_create(be, &cfg, 0, err)) || checkpoint_load_encoder(path, pre, net, 1, err)) {
            resnet_destroy(net);
            return NULL;
        }
        return net;
    }
    if (looks_like_stream(path)) /* a damaged checkpoint: its own error says what is wrong */
        return NULL;
    moco_error serr;
    safetensors *st = safetensors_open(path, &serr);
    if (!st) {
        moco_fail(err, "%s: neither a checkpoint nor a safetensors file (%s)", path, serr.msg);
        return NULL;
    }
    if (!prefix) /* a whole MoCo state saved as safetensors keeps its encoders apart by prefix */
        prefix = safetensors_find(st, "conv1.weight") ? "" : safetensors_find(st, "encoder_q.conv1.weight") ? "encoder_q." : "";
    if (checkpoint_infer_config(st, prefix, &cfg, err)) {
        safetensors_close(st);
        moco_prefix(err, "%s", path);
        return NULL;
    }
    cfg.head = RESNET_HEAD_NONE;
    if (!(net = resnet_create(be, &cfg, 0, err)) || checkpoint_load_safetensors(st, prefix, net, 1, err)) {
        resnet_destroy(net);
        net = NULL;
        moco_prefix(err, "%s", path);
    }
    safetensors_close(st);
    return net;
}

int main(int argc, char **argv)
{
    cli_init("moco-extract");
    enum { O_PART = 256, O_PREFIX, O_VIEW, O_DTYPE, O_BATCH, O_THREADS, O_DEVICE, O_PRECISION, O_MEAN, O_STD, O_LEVEL,
           O_DIRECT, O_HELP, O_VERSION };
    static const struct option options[] = {
        {"part", required_argument, 0, O_PART}, {"prefix", required_argument, 0, O_PREFIX},
        {"view", required_argument, 0, O_VIEW}, {"dtype", required_argument, 0, O_DTYPE},
        {"batch", required_argument, 0, O_BATCH}, {"threads", required_argument, 0, O_THREADS},
        {"device", required_argument, 0, O_DEVICE}, {"precision", required_argument, 0, O_PRECISION},
        {"mean", required_argument, 0, O_MEAN}, {"direct-conv", no_argument, 0, O_DIRECT},
        {"std", required_argument, 0, O_STD}, {"out", required_argument, 0, 'o'},
        {"level", required_argument, 0, O_LEVEL}, {"quiet", no_argument, 0, 'q'},
        {"help", no_argument, 0, O_HELP}, {"version", no_argument, 0, O_VERSION}, {0, 0, 0, 0},
    };
    const char *part = "encoder_q", *prefix = NULL, *out_path = NULL;
    int64_t view = 0, batch_size = 256, threads = cli_default_threads(), level = -1000, c, status = 0;
    int f16 = 0, quiet = 0, direct_conv = 0, have_mean = 0, have_std = 0, device = -1, device_given = 0, bf16 = 0;
    double mean[3], std[3];
    while ((c = getopt_long(argc, argv, "o:q", options, NULL)) != -1 && !status) {
        switch (c) {
        case O_PART:
            if (strcmp(optarg, "encoder_q") && strcmp(optarg, "encoder_k"))
                return cli_usage_error("--part: '%s' is not encoder_q or encoder_k", optarg);
            part = optarg;
            break;
        case O_PREFIX: prefix = optarg; break;
        case O_VIEW: status = cli_int("--view", optarg, 0, BATCHER_MAX_VIEWS - 1, &view); break;
        case O_DTYPE:
            if (strcmp(optarg, "f32") && strcmp(optarg, "f16"))
                return cli_usage_error("--dtype: '%s' is not f32 or f16", optarg);
            f16 = !strcmp(optarg, "f16");
            break;
        case O_BATCH: status = cli_int("--batch", optarg, 1, 1 << 20, &batch_size); break;
        case O_THREADS: status = cli_int("--threads", optarg, 1, 4096, &threads); break;
        case O_DEVICE: status = cli_device(optarg, &device, &device_given); break;
        case O_PRECISION: status = cli_precision(optarg, &bf16); break;
        case O_DIRECT: direct_conv = 1; break;
        case O_MEAN: status = cli_reals("--mean", optarg, 3, -1e9, 1e9, mean); have_mean = 1; break;
        case O_STD: status = cli_reals("--std", optarg, 3, 1e-12, 1e9, std); have_std = 1; break;
        case 'o': out_path = optarg; break;
        case O_LEVEL: status = cli_int("--level", optarg, -7, 22, &level); break;
        case 'q': quiet = 1; break;
        case O_HELP: fputs(usage, stdout); return 0;
        case O_VERSION: return cli_version();
        default: return cli_usage_error("unknown option");
        }
    }
    if (status)
        return (int)status;
    if (optind == argc)
        return cli_usage_error("no model given (a moco-pretrain checkpoint or a safetensors file)");
    if (argc - optind > 2)
        return cli_usage_error("one model and one view stream at most");
    const char *model_path = argv[optind], *in_path = optind + 1 < argc ? argv[optind + 1] : "-";

    moco_error err = {{0}};
    backend *be = backend_create((int)threads, &err);
    if (!be)
        return cli_error("%s", err.msg);
    backend_set_winograd(be, !direct_conv);
    resnet *net = load_model(be, model_path, part, prefix, &err);
    stream_reader *in = net ? stream_reader_open(in_path, NULL, &err) : NULL;
    if (!in) {
        resnet_destroy(net);
        backend_destroy(be);
        return cli_error("%s", err.msg);
    }
    stream_grow_pipe(STDIN_FILENO);
    const stream_header *ih = stream_reader_header(in);
    const char *name = strcmp(in_path, "-") ? in_path : "standard input";
    int size = (int)stream_header_get_int(ih, "size", 0), channels = (int)stream_header_get_int(ih, "channels", 3);
    int views = (int)stream_header_get_int(ih, "views", 1);
    int bad = 0;
    if (strcmp(stream_header_kind(ih), "views"))
        bad = cli_error("%s: a \"%s\" stream; moco-extract reads views (moco-augment --recipe eval; for small raw "
                        "images --recipe eval --size S --resize S)", name, stream_header_kind(ih));
    else if (channels != net->cfg.in_channels)
        bad = cli_error("%s: views have %d channel(s), the encoder of %s takes %d", name, channels, model_path,
                        net->cfg.in_channels);
    else if (view >= views)
        bad = cli_error("%s: --view %lld, but records hold %d view(s)", name, (long long)view, views);
    else if (size < (net->cfg.cifar_stem ? 8 : 32))
        bad = cli_error("%s: %dx%d views are too small for this encoder's %s stem", name, size, size,
                        net->cfg.cifar_stem ? "CIFAR" : "ImageNet");
    if (bad) {
        stream_reader_close(in);
        resnet_destroy(net);
        backend_destroy(be);
        return bad;
    }
    batcher_normalisation(ih, have_mean, mean, have_std, std);

    /* the output header: what moco-linear needs to schedule and label */
    stream_header *oh = stream_header_new("features", "moco-extract " MOCO_VERSION);
    stream_header_set_args(oh, argc, argv);
    int nclasses = stream_header_num_classes(ih);
    const char **names = calloc((size_t)nclasses + 1, sizeof *names);
    for (int i = 0; names && i < nclasses; i++)
        names[i] = stream_header_class(ih, i);
    stream_header_set_classes(oh, nclasses, names);
    free(names);
    int64_t samples = stream_header_get_int(ih, "samples", -1);
    int64_t epochs = stream_header_get_int(ih, "epochs", 1) - stream_header_get_int(ih, "first_epoch", 0);
    stream_header_set_int(oh, "dim", net->feature_dim);
    stream_header_set_str(oh, "dtype", f16 ? "f16" : "f32");
    stream_header_set_int(oh, "samples", samples);
    stream_header_set_int(oh, "epochs", epochs);
    stream_header_set_str(oh, "recipe", stream_header_get_str(ih, "recipe", "unknown"));
    stream_header_set_str(oh, "model", model_path);
    char arch[16];
    snprintf(arch, sizeof arch, "resnet%d", net->cfg.depth);
    stream_header_set_str(oh, "arch", arch);
    stream_options so = STREAM_OPTIONS_DEFAULT;
    so.level = level != -1000 ? (int)level : stream_default_level(out_path);
    stream_writer *out = stream_writer_open(out_path, &so, oh, &err);
    stream_header_free(oh);
    if (!out) {
        stream_reader_close(in);
        resnet_destroy(net);
        backend_destroy(be);
        return cli_error("%s", err.msg);
    }

    batcher_options bo = {.batch = (int)batch_size, .views = (int)view + 1, .size = size, .channels = channels,
                          .keep_last = 1, .raw = device >= 0};
    memcpy(bo.mean, mean, sizeof mean);
    memcpy(bo.std, std, sizeof std);
    batcher *feed = batcher_open(in, name, &bo, &err);
    if (!feed) {
        stream_writer_abort(out);
        resnet_destroy(net);
        backend_destroy(be);
        return cli_error("%s", err.msg);
    }
    int dim = net->feature_dim;
    uint16_t *half = malloc(sizeof(uint16_t) * dim);
    int rc = half ? MOCO_OK : moco_fail(&err, "out of memory");
    float *features = NULL; /* the GPU's, brought back: (batch, dim) */
    const gpu_api *gpu = NULL; /* --device cuda: the backend, loaded */
    gpu_extractor *gx = NULL;
    (void)device_given; /* one process: cuda is cuda:0 */
    if (!rc && device >= 0) {
        if (!(features = malloc(sizeof(float) * batch_size * dim)))
            rc = moco_fail(&err, "out of memory");
        else if (!(gpu = gpu_api_load(&err)) ||
                 !(gx = gpu->extractor_create(device, bf16 ? GPU_BF16 : GPU_F32, net, (int)batch_size, size, channels,
                                              mean, std, &err)))
            rc = MOCO_ERR;
        else if (!quiet)
            fprintf(stderr, "moco-extract: cuda:%d: %s\n", device, gpu->extractor_describe(gx));
    }
    progress *bar = progress_start("moco-extract", samples > 0 ? samples * epochs : -1, quiet);
    int64_t done = 0;
    batch b;
    while (!rc && (rc = batcher_next(feed, &b, NULL, &err)) == 1) {
        if (gx)
            rc = gpu->extractor_run(gx, b.raw[view], b.n, features, &err);
        else
            rc = resnet_forward(net, b.views[view], b.n, size, size, 0, 1, &err);
        for (int i = 0; !rc && i < b.n; i++) {
            const float *f = (features ? features : net->pooled) + (size_t)i * dim;
            stream_record rec;
            stream_record_init(&rec, b.sample_ids[i], b.labels[i]);
            int64_t dims[1] = {dim};
            if (f16)
                for (int k = 0; k < dim; k++)
                    half[k] = f32_to_f16(f[k]);
            rc = stream_record_add(&rec, "features", f16 ? DTYPE_F16 : DTYPE_F32, 1, dims, f16 ? (void *)half : (void *)f,
                                   &err);
            if (!rc)
                rc = stream_write(out, &rec, &err);
        }
        batcher_release(feed);
        done += b.n;
        progress_update(bar, done);
    }
    progress_finish(bar);
    const char *damage;
    int64_t damaged = batcher_damaged(feed, &damage);
    if (damaged)
        cli_warn("%lld damaged record(s) skipped, the first: %s", (long long)damaged, damage);
    batcher_close(feed);
    free(half);
    free(features);
    if (gx)
        gpu->extractor_destroy(gx);
    resnet_destroy(net);
    backend_destroy(be);
    if (rc == MOCO_EPIPE) {
        stream_writer_abort(out);
        return 0;
    }
    if (rc < 0) {
        stream_writer_abort(out);
        return cli_error("%s", err.msg);
    }
    rc = stream_writer_close(out, &err);
    if (rc == MOCO_EPIPE)
        return 0;
    return rc ? cli_error("%s", err.msg) : 0;
}
