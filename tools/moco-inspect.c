/* moco-inspect — look inside a tensor stream: summary, header, records, values, contact sheet.
 *
 * Reads one stream (a file, or stdin) to its end, checking every record as any consumer would, so
 * it doubles as a verifier: exit 0 means the stream is whole. Output is text for people (or JSON
 * with --json); --png draws the image and view records as a grid. */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "contact_sheet.h"
#include "stream.h"

static const char usage[] =
    "Usage: moco-inspect [OPTION]... [FILE]\n"
    "Summarise a tensor stream (FILE, or standard input): its header, record count, tensors with\n"
    "dtypes and shapes, and label counts. Every record is checked; a damaged stream exits 1.\n"
    "\n"
    "  --header          print the stream header as JSON and stop\n"
    "  --head N          describe the first N records, one line each\n"
    "  --values NAME     print the values of tensor NAME in record --record (default 1)\n"
    "  --record I        the record --values prints (1-based)\n"
    "  --png FILE        draw the image/view records as a contact sheet (PNG)\n"
    "  --tensor NAME     the tensor --png draws (default: the first u8 tensor shaped like images)\n"
    "  --max-images N    images on the contact sheet (default 64)\n"
    "  --tile N          tile size in pixels (default 128)\n"
    "  --json            the summary as one JSON object\n"
    "  --max-record N    refuse records above N bytes (default 1 GiB)\n"
    "  -q, --quiet       print nothing but errors (just verify)\n"
    "      --help        this help\n"
    "      --version     version\n"
    "\n"
    "Example:\n"
    "  moco-augment --recipe v2 shards/ | moco-inspect --head 3 --png views.png\n"
    "Exit status: 0 the stream is whole, 1 it is damaged or unreadable, 2 usage error.\n";

/* Per tensor name: dtype, rank and the range of each dim seen across records. */
typedef struct {
    char name[TENSOR_MAX_NAME + 1];
    int dtype, rank, mixed;
    int64_t min[TENSOR_MAX_RANK], max[TENSOR_MAX_RANK];
    int64_t count;
} tensor_summary;

enum { MAX_SUMMARIES = 64, MAX_LABEL = 1 << 20 };

typedef struct {
    tensor_summary tensors[MAX_SUMMARIES];
    int ntensors;
    int64_t *label_counts; /* labels 0..MAX_LABEL-1 */
    int64_t label_max, unlabelled, other_labels;
    int64_t id_min, id_max;
} summary;

static void summarise(summary *s, const stream_record *rec)
{
    for (int i = 0; i < rec->ntensors; i++) {
        const tensor *t = &rec->tensors[i];
        tensor_summary *ts = NULL;
        for (int k = 0; k < s->ntensors && !ts; k++)
            if (strcmp(s->tensors[k].name, t->name) == 0)
                ts = &s->tensors[k];
        if (!ts && s->ntensors < MAX_SUMMARIES) {
            ts = &s->tensors[s->ntensors++];
            memcpy(ts->name, t->name, sizeof ts->name);
            ts->dtype = t->dtype;
            ts->rank = t->rank;
            for (int d = 0; d < t->rank; d++)
                ts->min[d] = ts->max[d] = t->dims[d];
        }
        if (!ts)
            continue;
        ts->count++;
        if (ts->dtype != (int)t->dtype || ts->rank != t->rank) {
            ts->mixed = 1;
            continue;
        }
        for (int d = 0; d < t->rank; d++) {
            if (t->dims[d] < ts->min[d])
                ts->min[d] = t->dims[d];
            if (t->dims[d] > ts->max[d])
                ts->max[d] = t->dims[d];
        }
    }
    if (rec->label < 0)
        s->unlabelled++;
    else if (rec->label < MAX_LABEL) {
        s->label_counts[rec->label]++;
        if (rec->label > s->label_max)
            s->label_max = rec->label;
    } else
        s->other_labels++;
    if (rec->sample_id >= 0) {
        if (s->id_min < 0 || rec->sample_id < s->id_min)
            s->id_min = rec->sample_id;
        if (rec->sample_id > s->id_max)
            s->id_max = rec->sample_id;
    }
}

static void format_shape(const tensor_summary *ts, char *buf, size_t len)
{
    size_t used = (size_t)snprintf(buf, len, "%s[", dtype_name(ts->dtype));
    for (int d = 0; d < ts->rank && used < len; d++) {
        if (ts->min[d] == ts->max[d])
            used += (size_t)snprintf(buf + used, len - used, "%s%lld", d ? "," : "", (long long)ts->min[d]);
        else
            used += (size_t)snprintf(buf + used, len - used, "%s%lld..%lld", d ? "," : "",
                                     (long long)ts->min[d], (long long)ts->max[d]);
    }
    if (used < len)
        snprintf(buf + used, len - used, "]%s", ts->mixed ? " (dtype or rank varies)" : "");
}

static void describe_record(int64_t index, const stream_record *rec, const stream_header *h)
{
    printf("record %lld: sample %lld", (long long)index, (long long)rec->sample_id);
    if (rec->label >= 0) {
        const char *cls = stream_header_class(h, (int)rec->label);
        printf(", label %lld%s%s%s", (long long)rec->label, cls ? " (" : "", cls ? cls : "", cls ? ")" : "");
    }
    for (int i = 0; i < rec->ntensors; i++) {
        char shape[128];
        printf("%s %s %s", i ? "," : ":", rec->tensors[i].name, tensor_describe(&rec->tensors[i], shape, sizeof shape));
    }
    printf("\n");
}

static void print_values(const tensor *t)
{
    int64_t n = tensor_numel(t);
    int64_t row = t->rank > 0 ? t->dims[t->rank - 1] : 1;
    for (int64_t i = 0; i < n; i++) {
        double v = tensor_get(t, i);
        if (t->dtype == DTYPE_U8 || t->dtype == DTYPE_I32 || t->dtype == DTYPE_I64)
            printf("%.0f", v);
        else
            printf("%.9g", v);
        putchar(row > 0 && (i + 1) % row == 0 ? '\n' : ' ');
    }
    if (n == 0)
        printf("(empty: %lld elements)\n", (long long)n);
}

/* A tensor that looks like images: u8, (H,W), (H,W,C) or (V,H,W,C) with C 1 or 3. */
static int is_image_like(const tensor *t)
{
    if (t->dtype != DTYPE_U8)
        return 0;
    if (t->rank == 2)
        return 1;
    int64_t c = t->rank >= 3 ? t->dims[t->rank - 1] : 0;
    return (t->rank == 3 || t->rank == 4) && (c == 1 || c == 3);
}

static int draw(contact_sheet *sheet, const stream_record *rec, const char *name, moco_error *err)
{
    const tensor *t = NULL;
    for (int i = 0; i < rec->ntensors && !t; i++)
        if (name ? strcmp(rec->tensors[i].name, name) == 0 : is_image_like(&rec->tensors[i]))
            t = &rec->tensors[i];
    if (!t)
        return 0;
    if (!is_image_like(t))
        return moco_fail(err, "tensor '%s' is not an image (want u8 HxW, HxWxC or VxHxWxC, C = 1 or 3)", t->name);
    int views = t->rank == 4 ? (int)t->dims[0] : 1;
    int h = (int)t->dims[t->rank == 4], w = (int)t->dims[(t->rank == 4) + 1];
    int c = t->rank == 2 ? 1 : (int)t->dims[t->rank - 1];
    for (int v = 0; v < views; v++) {
        const uint8_t *px = (const uint8_t *)t->data + (size_t)v * (size_t)h * (size_t)w * (size_t)c;
        int rc = contact_sheet_add(sheet, px, h, w, c, err);
        if (rc)
            return rc < 0 ? rc : 0;
    }
    return 0;
}

static void print_summary(const char *file, stream_reader *r, const summary *s, int as_json)
{
    const stream_header *h = stream_reader_header(r);
    if (as_json) {
        json_t *o = json_object(), *ts = json_array(), *labels = json_object();
        json_object_set_new(o, "file", json_string(file));
        json_object_set_new(o, "kind", json_string(stream_header_kind(h)));
        json_object_set_new(o, "producer", json_string(stream_header_get_str(h, "producer", "")));
        json_object_set_new(o, "encoding", json_string(stream_reader_encoding(r)));
        json_object_set_new(o, "parts", json_integer(stream_reader_parts(r)));
        json_object_set_new(o, "records", json_integer(stream_reader_records(r)));
        for (int i = 0; i < s->ntensors; i++) {
            char shape[256];
            format_shape(&s->tensors[i], shape, sizeof shape);
            json_array_append_new(ts, json_pack("{s:s,s:s,s:I}", "name", s->tensors[i].name, "shape", shape,
                                                "records", (json_int_t)s->tensors[i].count));
        }
        json_object_set_new(o, "tensors", ts);
        for (int64_t l = 0; l <= s->label_max; l++)
            if (s->label_counts[l]) {
                char key[32];
                snprintf(key, sizeof key, "%lld", (long long)l);
                json_object_set_new(labels, key, json_integer(s->label_counts[l]));
            }
        json_object_set_new(o, "labels", labels);
        json_object_set_new(o, "unlabelled", json_integer(s->unlabelled));
        char *header = stream_header_json(h, 0);
        json_object_set_new(o, "header", json_loads(header, 0, NULL));
        free(header);
        char *text = json_dumps(o, JSON_COMPACT);
        printf("%s\n", text);
        free(text);
        json_decref(o);
        return;
    }
    printf("%s: %s stream from %s, %s, %d part%s, %lld records\n", file, stream_header_kind(h),
           stream_header_get_str(h, "producer", "?"), stream_reader_encoding(r), stream_reader_parts(r),
           stream_reader_parts(r) == 1 ? "" : "s", (long long)stream_reader_records(r));
    int64_t samples = stream_header_get_int(h, "samples", -1);
    if (samples >= 0)
        printf("  header says %lld samples\n", (long long)samples);
    for (int i = 0; i < s->ntensors; i++) {
        char shape[256];
        format_shape(&s->tensors[i], shape, sizeof shape);
        printf("  tensor %-24s %s in %lld records\n", s->tensors[i].name, shape, (long long)s->tensors[i].count);
    }
    if (s->id_min >= 0)
        printf("  sample ids %lld..%lld\n", (long long)s->id_min, (long long)s->id_max);
    int64_t labelled = stream_reader_records(r) - s->unlabelled;
    if (labelled > 0) {
        int shown = 0;
        printf("  labels:");
        for (int64_t l = 0; l <= s->label_max; l++) {
            if (!s->label_counts[l])
                continue;
            if (shown++ == 20) {
                printf(" ...");
                break;
            }
            const char *cls = stream_header_class(h, (int)l);
            printf(" %lld%s%s%s=%lld", (long long)l, cls ? "(" : "", cls ? cls : "", cls ? ")" : "",
                   (long long)s->label_counts[l]);
        }
        printf("\n");
    }
}

int main(int argc, char **argv)
{
    cli_init("moco-inspect");
    enum { OPT_HEADER = 256, OPT_HEAD, OPT_VALUES, OPT_RECORD, OPT_PNG, OPT_TENSOR, OPT_MAX_IMAGES, OPT_TILE,
           OPT_JSON, OPT_MAX_RECORD, OPT_HELP, OPT_VERSION };
    static const struct option options[] = {
        {"header", no_argument, 0, OPT_HEADER},      {"head", required_argument, 0, OPT_HEAD},
        {"values", required_argument, 0, OPT_VALUES}, {"record", required_argument, 0, OPT_RECORD},
        {"png", required_argument, 0, OPT_PNG},       {"tensor", required_argument, 0, OPT_TENSOR},
        {"max-images", required_argument, 0, OPT_MAX_IMAGES}, {"tile", required_argument, 0, OPT_TILE},
        {"json", no_argument, 0, OPT_JSON},          {"max-record", required_argument, 0, OPT_MAX_RECORD},
        {"quiet", no_argument, 0, 'q'},              {"help", no_argument, 0, OPT_HELP},
        {"version", no_argument, 0, OPT_VERSION},    {0, 0, 0, 0},
    };
    int header_only = 0, as_json = 0, quiet = 0;
    int64_t head = 0, record = 1, max_images = 64, tile = 128, max_record = 0;
    const char *values = NULL, *png = NULL, *tensor_name = NULL;
    int c, rc;
    while ((c = getopt_long(argc, argv, "q", options, NULL)) != -1) {
        rc = 0;
        switch (c) {
        case OPT_HEADER: header_only = 1; break;
        case OPT_HEAD: rc = cli_int("--head", optarg, 0, INT64_MAX, &head); break;
        case OPT_VALUES: values = optarg; break;
        case OPT_RECORD: rc = cli_int("--record", optarg, 1, INT64_MAX, &record); break;
        case OPT_PNG: png = optarg; break;
        case OPT_TENSOR: tensor_name = optarg; break;
        case OPT_MAX_IMAGES: rc = cli_int("--max-images", optarg, 1, 65536, &max_images); break;
        case OPT_TILE: rc = cli_int("--tile", optarg, 8, 1024, &tile); break;
        case OPT_JSON: as_json = 1; break;
        case OPT_MAX_RECORD: rc = cli_int("--max-record", optarg, 1024, INT64_MAX, &max_record); break;
        case 'q': quiet = 1; break;
        case OPT_HELP: fputs(usage, stdout); return 0;
        case OPT_VERSION: return cli_version();
        default: return cli_usage_error("unknown option");
        }
        if (rc)
            return rc;
    }
    if (argc - optind > 1)
        return cli_usage_error("one stream at a time (to read several as one: cat a b | moco-inspect)");
    const char *file = optind < argc ? argv[optind] : "-";

    moco_error err;
    stream_read_options ropt = {.max_record_bytes = max_record};
    stream_reader *r = stream_reader_open(file, &ropt, &err);
    if (!r)
        return cli_error("%s", err.msg);
    const stream_header *h = stream_reader_header(r);
    if (header_only) {
        char *text = stream_header_json(h, 2);
        printf("%s\n", text); /* a closed stdout (| head) is not a failure: SIGPIPE is ignored */
        free(text);
        stream_reader_close(r);
        return 0;
    }
    contact_sheet *sheet = png ? contact_sheet_new((int)tile, (int)max_images, &err) : NULL;
    summary *s = calloc(1, sizeof *s);
    if ((png && !sheet) || !s || !(s->label_counts = calloc(MAX_LABEL, sizeof *s->label_counts)))
        return cli_error("%s", png && !sheet ? err.msg : "out of memory");
    s->id_min = -1;
    s->label_max = -1;

    stream_record rec;
    int64_t index = 0;
    int status = 0, found_values = 0;
    int64_t damaged = 0;
    while ((rc = stream_read(r, &rec, &err)) == 1 || rc == STREAM_DAMAGED) {
        index++;
        if (rc == STREAM_DAMAGED) { /* report it, check the rest */
            status = cli_error("%s", err.msg);
            damaged++;
            continue;
        }
        summarise(s, &rec);
        if (!quiet && index <= head)
            describe_record(index, &rec, h);
        if (values && index == record) {
            const tensor *t = stream_record_find(&rec, values);
            if (!t) {
                status = cli_error("%s: record %lld has no tensor '%s'", file, (long long)index, values);
            } else {
                found_values = 1;
                if (!quiet)
                    print_values(t);
            }
        }
        if (sheet && draw(sheet, &rec, tensor_name, &err)) {
            status = cli_error("%s: record %lld: %s", file, (long long)index, err.msg);
            contact_sheet_free(sheet);
            sheet = NULL;
        }
    }
    if (rc < 0)
        status = cli_error("%s", err.msg);
    if (values && !found_values && rc == 0 && status == 0)
        status = cli_error("%s: no record %lld (the stream has %lld)", file, (long long)record, (long long)index);
    if (rc == 0 && !quiet && !values && !head)
        print_summary(file, r, s, as_json);
    if (damaged)
        cli_error("%s: %lld damaged record%s", file, (long long)damaged, damaged == 1 ? "" : "s");
    if (sheet) {
        if (contact_sheet_count(sheet) == 0)
            status = cli_error("%s: no image records to draw%s%s", file, tensor_name ? " in tensor " : "",
                               tensor_name ? tensor_name : "");
        else if (contact_sheet_write_png(sheet, png, &err))
            status = cli_error("%s", err.msg);
        else if (!quiet)
            fprintf(stderr, "%s: %d images drawn to %s\n", cli_tool(), contact_sheet_count(sheet), png);
    }
    fflush(stdout);
    contact_sheet_free(sheet);
    free(s->label_counts);
    free(s);
    stream_reader_close(r);
    return status;
}
