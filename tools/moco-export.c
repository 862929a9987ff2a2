/* moco-export — one encoder of a MoCo checkpoint as a safetensors file, with torchvision's names
 * (or detectron2's), for PyTorch users: safetensors.torch.load_file, then load_state_dict.
 *
 * Wiring: the checkpoint's header gives the encoder's configuration (checkpoint.h); the encoder is
 * loaded into a resnet of that configuration, which checks that every tensor is there with the right
 * shape; its tensors are then written under their torchvision names, renamed for detectron2 as MoCo's
 * own detection/convert-pretrain-to-detectron2.py renames them. Nothing is computed: values are
 * written bit for bit as the checkpoint holds them. */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "cli.h"
#include "safetensors.h"

static const char usage[] =
    "Usage: moco-export [OPTION]... CHECKPOINT -o OUT.safetensors\n"
    "Write one encoder of a moco-pretrain checkpoint as safetensors, named as torchvision's ResNet\n"
    "state_dict names it (conv1.weight, layer1.0.bn1.running_mean, ...), or as detectron2's backbone.\n"
    "\n"
    "  -o, --out FILE        the safetensors file (written under a temporary name, then renamed)\n"
    "      --part NAME       encoder_q (default: the query encoder, the one MoCo transfers) or encoder_k\n"
    "      --head drop|keep  drop (default): the backbone only, as MoCo's main_lincls.py loads it;\n"
    "                        keep: also the projection head (fc.0, fc.2 for the MLP; fc for v1's)\n"
    "      --detectron2      detectron2's names (stem.conv1.norm.weight, res2.0.shortcut.weight, ...)\n"
    "      --list            print the names and shapes that would be written; write nothing\n"
    "      --help, --version\n"
    "\n"
    "Examples:\n"
    "  moco-export run/last.tsz -o resnet50-moco.safetensors\n"
    "  moco-export --detectron2 run/last.tsz -o r50-moco-d2.safetensors\n"
    "  moco-export --list --part encoder_k run/last.tsz\n"
    "In PyTorch:\n"
    "  m = torchvision.models.resnet50()\n"
    "  m.load_state_dict(safetensors.torch.load_file(\"resnet50-moco.safetensors\"), strict=False)\n"
    "  # missing: fc.weight, fc.bias only (the new classifier)\n"
    "Exit status: 0 written (or listed), 1 failure (not a checkpoint, a part missing, a damaged\n"
    "file, a failed write), 2 usage error.\n";

/* Python's s.replace(from, to) in place; -1 when the result would not fit in TENSOR_MAX_NAME. */
static int replace_all(char *s, const char *from, const char *to)
{
    char out[TENSOR_MAX_NAME + 1];
    size_t flen = strlen(from), tlen = strlen(to), used = 0;
    for (const char *p = s; *p;) {
        int match = !strncmp(p, from, flen);
        size_t len = match ? tlen : 1;
        if (used + len > TENSOR_MAX_NAME)
            return -1;
        memcpy(out + used, match ? to : p, len);
        used += len;
        p += match ? flen : 1;
    }
    out[used] = 0;
    memcpy(s, out, used + 1);
    return 0;
}

/* detectron2's name for a torchvision one, step by step as convert-pretrain-to-detectron2.py: the
 * stem gets "stem.", layerN becomes res(N+1), bnN convN.norm, downsample.0/.1 shortcut/shortcut.norm.
 * The script also renames the head (stem.fc.0.weight, ...), which detectron2 then reports unused. */
static int detectron2_name(char name[TENSOR_MAX_NAME + 1])
{
    char from[16], to[16];
    int rc = 0;
    if (!strstr(name, "layer")) {
        if (strlen(name) + 5 > TENSOR_MAX_NAME)
            return -1;
        memmove(name + 5, name, strlen(name) + 1);
        memcpy(name, "stem.", 5);
    }
    for (int t = 1; t <= 4 && !rc; t++) {
        snprintf(from, sizeof from, "layer%d", t);
        snprintf(to, sizeof to, "res%d", t + 1);
        rc = replace_all(name, from, to);
    }
    for (int t = 1; t <= 3 && !rc; t++) {
        snprintf(from, sizeof from, "bn%d", t);
        snprintf(to, sizeof to, "conv%d.norm", t);
        rc = replace_all(name, from, to);
    }
    if (!rc)
        rc = replace_all(name, "downsample.0", "shortcut");
    if (!rc)
        rc = replace_all(name, "downsample.1", "shortcut.norm");
    return rc;
}

/* The exporter's own metadata, then the checkpoint's header: every key of it (numbers and arrays as
 * compact JSON) but the stream's bookkeeping (format, version, kind), producer and args renamed so
 * they are not taken for the exporter's. Values are malloc'd (owned[i] says which keys are too).
 * Returns the count. */
enum { MAX_META = 128 };
static int metadata(const stream_header *h, const char *const own[][2], int nown, const char **keys,
                    char **vals, int *owned)
{
    int n = 0;
    for (int i = 0; i < nown; i++) {
        keys[n] = own[i][0], owned[n] = 0;
        if ((vals[n] = strdup(own[i][1])))
            n++;
    }
    char *text = stream_header_json(h, 0);
    json_t *root = text ? json_loads(text, 0, NULL) : NULL;
    free(text);
    const char *key;
    json_t *value;
    json_object_foreach(root, key, value) {
        const char *name = !strcmp(key, "producer") ? "checkpoint_producer" : !strcmp(key, "args") ? "checkpoint_args" : key;
        int skip = n == MAX_META || !strcmp(key, "format") || !strcmp(key, "version") || !strcmp(key, "kind") ||
                   json_is_null(value);
        for (int i = 0; i < nown && !skip; i++)
            skip = !strcmp(name, own[i][0]);
        if (skip)
            continue;
        owned[n] = name == key;
        keys[n] = owned[n] ? strdup(key) : name;
        vals[n] = json_is_string(value) ? strdup(json_string_value(value))
                                        : json_dumps(value, JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(15));
        if (keys[n] && vals[n]) {
            n++;
        } else {
            if (owned[n])
                free((char *)keys[n]);
            free(vals[n]);
        }
    }
    json_decref(root);
    return n;
}

int main(int argc, char **argv)
{
    cli_init("moco-export");
    enum { O_PART = 256, O_HEAD, O_D2, O_LIST, O_HELP, O_VERSION };
    static const struct option options[] = {
        {"out", required_argument, 0, 'o'},    {"part", required_argument, 0, O_PART},
        {"head", required_argument, 0, O_HEAD}, {"detectron2", no_argument, 0, O_D2},
        {"list", no_argument, 0, O_LIST},      {"help", no_argument, 0, O_HELP},
        {"version", no_argument, 0, O_VERSION}, {0, 0, 0, 0},
    };
    const char *out = NULL, *part = "encoder_q";
    int keep_head = 0, d2 = 0, list = 0, c;
    while ((c = getopt_long(argc, argv, "o:", options, NULL)) != -1) {
        switch (c) {
        case 'o': out = optarg; break;
        case O_PART:
            if (strcmp(optarg, "encoder_q") && strcmp(optarg, "encoder_k"))
                return cli_usage_error("--part: '%s' is not encoder_q or encoder_k", optarg);
            part = optarg;
            break;
        case O_HEAD:
            if (strcmp(optarg, "keep") && strcmp(optarg, "drop"))
                return cli_usage_error("--head: '%s' is not keep or drop", optarg);
            keep_head = !strcmp(optarg, "keep");
            break;
        case O_D2: d2 = 1; break;
        case O_LIST: list = 1; break;
        case O_HELP: fputs(usage, stdout); return 0;
        case O_VERSION: return cli_version();
        default: return cli_usage_error("unknown option");
        }
    }
    if (argc - optind != 1)
        return cli_usage_error(argc == optind ? "no CHECKPOINT given" : "one CHECKPOINT at a time");
    const char *path = argv[optind];
    if (!strcmp(path, "-"))
        return cli_usage_error("CHECKPOINT must be a file (it is read twice: header, then tensors)");
    if (!out && !list)
        return cli_usage_error("-o OUT.safetensors is required (or --list)");
    if (out && !strcmp(out, "-"))
        return cli_usage_error("-o -: safetensors goes to a file (written under a temporary name, then renamed)");

    /* the model the checkpoint describes; loading into it checks every name and shape */
    moco_error err = {{0}};
    resnet_config enc;
    moco_config mcfg;
    stream_header *h = checkpoint_read_header(path, &err);
    if (!h)
        return cli_error("%s", err.msg);
    if (checkpoint_config(h, &enc, &mcfg, &err)) {
        stream_header_free(h);
        return cli_error("%s: %s", path, err.msg);
    }
    if (!keep_head)
        enc.head = RESNET_HEAD_NONE;
    char prefix[16];
    snprintf(prefix, sizeof prefix, "%s.", part);
    backend *be = backend_create(1, &err);
    resnet *net = be ? resnet_create(be, &enc, 0, &err) : NULL;
    if (!net || checkpoint_load_encoder(path, prefix, net, !keep_head, &err)) {
        resnet_destroy(net);
        backend_destroy(be);
        stream_header_free(h);
        return cli_error("%s", err.msg);
    }

    /* one tensor per state_dict entry, torchvision's num_batches_tracked after each running_var */
    int cap = 2 * net->ntensors, n = 0, rc = 0;
    tensor *ts = calloc((size_t)cap, sizeof *ts);
    for (int i = 0; ts && i < net->ntensors && !rc; i++) {
        const resnet_tensor *e = &net->tensors[i];
        float *base = e->buffer ? net->buffer : net->param;
        rc = tensor_init(&ts[n], e->name, DTYPE_F32, e->rank, e->dims, &err);
        ts[n++].data = base + e->offset;
        size_t len = strlen(e->name);
        if (!rc && len > 12 && !strcmp(e->name + len - 12, ".running_var")) {
            char name[TENSOR_MAX_NAME + 1];
            snprintf(name, sizeof name, "%.*s.num_batches_tracked", (int)(len - 12), e->name);
            rc = tensor_init(&ts[n], name, DTYPE_I64, 0, NULL, &err);
            ts[n++].data = &net->num_batches_tracked;
        }
    }
    if (!ts)
        rc = moco_fail(&err, "out of memory");
    for (int i = 0; i < n && d2 && !rc; i++)
        if (detectron2_name(ts[i].name))
            rc = moco_fail(&err, "%s: name too long for detectron2's", ts[i].name);

    if (!rc && list) {
        char shape[96];
        for (int i = 0; i < n; i++)
            printf("%s %s\n", ts[i].name, tensor_describe(&ts[i], shape, sizeof shape));
        if ((fflush(stdout) || ferror(stdout)) && errno != EPIPE) /* | head is not a failure */
            rc = moco_fail(&err, "standard output: %s", strerror(errno));
    } else if (!rc) {
        /* "format": "pt" as safetensors.torch.save_file writes it (transformers checks it) */
        const char *const own[][2] = {{"format", "pt"}, {"producer", "moco-export " MOCO_VERSION}, {"source", path},
                                      {"part", part}, {"naming", d2 ? "detectron2" : "torchvision"},
                                      {"export_head", keep_head ? "keep" : "drop"}};
        const char *keys[MAX_META];
        char *vals[MAX_META];
        int owned[MAX_META];
        int nmeta = metadata(h, own, (int)(sizeof own / sizeof own[0]), keys, vals, owned);
        rc = safetensors_write(out, ts, n, keys, (const char *const *)vals, nmeta, &err);
        for (int i = 0; i < nmeta; i++) {
            if (owned[i])
                free((char *)keys[i]);
            free(vals[i]);
        }
    }
    free(ts);
    resnet_destroy(net);
    backend_destroy(be);
    stream_header_free(h);
    if (rc)
        return cli_error("%s", err.msg);
    return 0;
}
