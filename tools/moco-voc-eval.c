/* moco-voc-eval — score detections on Pascal VOC as the MoCo paper reports them: AP (mean over IoU
 * 0.50:0.95), AP50 and AP75, exactly as detectron2's PascalVOCDetectionEvaluator computes them.
 *
 * This file only wires things: options, libcommon/voc (annotations, detections, the metric), the
 * per-class table and the JSON report. The detector itself is not here; its output comes in as
 * devkit result files or a "detections" tensor stream (man 1 moco-voc-eval). */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "voc.h"

static const char usage[] =
    "Usage: moco-voc-eval [OPTION]... [--devkit] DIR (--results PREFIX | --detections FILE)\n"
    "Evaluate detections on a Pascal VOC image set as detectron2's PascalVOCDetectionEvaluator does:\n"
    "per-class AP at IoU 0.50, 0.55, ..., 0.95 (difficult objects ignored, +1 pixel boxes), and\n"
    "AP (the mean over those thresholds), AP50 and AP75, in percent.\n"
    "\n"
    "  --devkit DIR         the VOC tree: DIR/Annotations/*.xml, DIR/ImageSets/Main/SET.txt\n"
    "                       (or the same under DIR/VOC<year>)\n"
    "  --year Y             2007 (default: the 11-point metric) to 2012 (2010 on: area under the curve)\n"
    "  --set NAME           the image set (default test)\n"
    "  --results PREFIX     devkit result files PREFIX<class>.txt, lines\n"
    "                       'image_id score xmin ymin xmax ymax'\n"
    "  --detections FILE    a detections tensor stream ('-': standard input)\n"
    "  --classes FILE       class names, one a line (default: the 20 VOC classes)\n"
    "  --metric M           11point or area (default: by --year)\n"
    "  --skip-empty         leave classes with no positives out of the means (default: an error)\n"
    "  --strict             detections of images not in the set are an error (default: skipped)\n"
    "  --exact              stream scores and boxes as they are, not rounded to what detectron2's\n"
    "                       result files hold (%.3f scores, %.1f coordinates)\n"
    "  --write-stream FILE  also write the detections read as a detections stream ('-': standard\n"
    "                       output, in place of the table)\n"
    "  --report FILE        the results as JSON ('-': on standard output instead of the table)\n"
    "  -q, --quiet          no table, only errors and warnings\n"
    "      --help           this help\n"
    "      --version        version\n"
    "\n"
    "Example:\n"
    "  moco-voc-eval --devkit VOCdevkit/VOC2007 --results results/comp4_det_test_ --report voc.json\n"
    "Exit status: 0 evaluated, 1 bad or missing input, 2 usage error.\n";

static const char *metric_name(voc_metric m) { return m == VOC_METRIC_AREA ? "area" : "11point"; }

static int is_dir_with_set(const char *dir, const char *set)
{
    char path[4096];
    struct stat st;
    snprintf(path, sizeof path, "%s/ImageSets/Main/%s.txt", dir, set);
    return stat(path, &st) == 0;
}

/* A class's AP over thresholds: the mean of its row, summed as numpy would. */
static double class_ap(const voc_result *res, int c)
{
    return voc_pairwise_sum(res->ap + (size_t)c * VOC_NUM_THRESHOLDS, VOC_NUM_THRESHOLDS) / VOC_NUM_THRESHOLDS;
}

static void print_table(const voc_dataset *ds, const voc_result *res, int year, const char *set, voc_metric metric)
{
    printf("# VOC%d %s: %d images, %d of %d classes evaluated, %s metric, IoU 0.50:0.95\n", year, set,
           ds->nimages, res->nevaluated, res->nclasses, metric == VOC_METRIC_AREA ? "area" : "11-point");
    printf("%-16s %9s %9s %10s %8s %8s %8s\n", "class", "positives", "difficult", "detections", "AP", "AP50", "AP75");
    for (int c = 0; c < res->nclasses; c++) {
        printf("%-16s %9lld %9lld %10lld", ds->classes[c], (long long)res->positives[c],
               (long long)res->difficult[c], (long long)res->detections[c]);
        if (res->evaluated[c])
            printf(" %8.3f %8.3f %8.3f\n", class_ap(res, c), res->ap[(size_t)c * VOC_NUM_THRESHOLDS],
                   res->ap[(size_t)c * VOC_NUM_THRESHOLDS + 5]);
        else
            printf(" %8s %8s %8s\n", "-", "-", "-");
    }
    printf("%-16s %9s %9s %10s %8.3f %8.3f %8.3f\n", "mean", "", "", "", res->AP, res->AP50, res->AP75);
    printf("AP %.4f AP50 %.4f AP75 %.4f\n", res->AP, res->AP50, res->AP75);
}

static json_t *reals(const double *v, int n)
{
    json_t *a = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(a, json_real(v[i]));
    return a;
}

static json_t *report_json(const voc_dataset *ds, const voc_detections *d, const voc_result *res,
                           const char *dir, int year, const char *set, voc_metric metric)
{
    json_t *o = json_object(), *classes = json_array();
    json_object_set_new(o, "tool", json_string("moco-voc-eval " MOCO_VERSION));
    json_object_set_new(o, "devkit", json_string(dir));
    json_object_set_new(o, "year", json_integer(year));
    json_object_set_new(o, "set", json_string(set));
    json_object_set_new(o, "metric", json_string(metric_name(metric)));
    json_object_set_new(o, "images", json_integer(ds->nimages));
    json_object_set_new(o, "detections", json_integer((json_int_t)d->n));
    json_object_set_new(o, "skipped_detections", json_integer(d->skipped));
    json_object_set_new(o, "AP", json_real(res->AP));
    json_object_set_new(o, "AP50", json_real(res->AP50));
    json_object_set_new(o, "AP75", json_real(res->AP75));
    json_object_set_new(o, "thresholds", reals(res->thresholds, VOC_NUM_THRESHOLDS));
    json_object_set_new(o, "mAP", reals(res->map, VOC_NUM_THRESHOLDS));
    for (int c = 0; c < res->nclasses; c++) {
        json_t *k = json_pack("{s:s,s:I,s:I,s:I,s:b}", "name", ds->classes[c], "positives",
                              (json_int_t)res->positives[c], "difficult", (json_int_t)res->difficult[c],
                              "detections", (json_int_t)res->detections[c], "evaluated", res->evaluated[c]);
        if (res->evaluated[c]) {
            const double *row = res->ap + (size_t)c * VOC_NUM_THRESHOLDS;
            json_object_set_new(k, "AP", json_real(class_ap(res, c)));
            json_object_set_new(k, "AP50", json_real(row[0]));
            json_object_set_new(k, "AP75", json_real(row[5]));
            json_object_set_new(k, "ap", reals(row, VOC_NUM_THRESHOLDS));
        }
        json_array_append_new(classes, k);
    }
    json_object_set_new(o, "classes", classes);
    return o;
}

static int write_report(json_t *o, const char *path)
{
    int to_stdout = strcmp(path, "-") == 0;
    FILE *f = to_stdout ? stdout : fopen(path, "w");
    if (!f)
        return cli_error("%s: cannot open: %m", path);
    int bad = json_dumpf(o, f, JSON_INDENT(2) | JSON_REAL_PRECISION(17)) != 0 || fputc('\n', f) == EOF;
    bad |= to_stdout ? fflush(f) != 0 : fclose(f) != 0;
    return bad ? cli_error("%s: cannot write the report: %m", path) : 0;
}

int main(int argc, char **argv)
{
    cli_init("moco-voc-eval");
    enum { OPT_DEVKIT = 256, OPT_YEAR, OPT_SET, OPT_RESULTS, OPT_DETECTIONS, OPT_CLASSES, OPT_METRIC,
           OPT_SKIP_EMPTY, OPT_STRICT, OPT_EXACT, OPT_WRITE_STREAM, OPT_REPORT, OPT_HELP, OPT_VERSION };
    static const struct option options[] = {
        {"devkit", required_argument, 0, OPT_DEVKIT},   {"year", required_argument, 0, OPT_YEAR},
        {"set", required_argument, 0, OPT_SET},         {"results", required_argument, 0, OPT_RESULTS},
        {"detections", required_argument, 0, OPT_DETECTIONS}, {"classes", required_argument, 0, OPT_CLASSES},
        {"metric", required_argument, 0, OPT_METRIC},   {"skip-empty", no_argument, 0, OPT_SKIP_EMPTY},
        {"strict", no_argument, 0, OPT_STRICT},         {"exact", no_argument, 0, OPT_EXACT},
        {"write-stream", required_argument, 0, OPT_WRITE_STREAM}, {"report", required_argument, 0, OPT_REPORT},
        {"quiet", no_argument, 0, 'q'},                 {"help", no_argument, 0, OPT_HELP},
        {"version", no_argument, 0, OPT_VERSION},       {0, 0, 0, 0},
    };
    const char *dir = NULL, *set = "test", *results = NULL, *detections = NULL, *classes_file = NULL;
    const char *write_stream = NULL, *report = NULL;
    int64_t year = 2007;
    int metric = -1, quiet = 0, c, rc;
    voc_read_options ropt = {0};
    voc_eval_options eopt = {0};
    while ((c = getopt_long(argc, argv, "q", options, NULL)) != -1) {
        rc = 0;
        switch (c) {
        case OPT_DEVKIT: dir = optarg; break;
        case OPT_YEAR: rc = cli_int("--year", optarg, 2007, 2012, &year); break;
        case OPT_SET: set = optarg; break;
        case OPT_RESULTS: results = optarg; break;
        case OPT_DETECTIONS: detections = optarg; break;
        case OPT_CLASSES: classes_file = optarg; break;
        case OPT_METRIC:
            if (strcmp(optarg, "11point") == 0)
                metric = VOC_METRIC_11POINT;
            else if (strcmp(optarg, "area") == 0)
                metric = VOC_METRIC_AREA;
            else
                rc = cli_usage_error("--metric: '%s' is not 11point or area", optarg);
            break;
        case OPT_SKIP_EMPTY: eopt.skip_empty = 1; break;
        case OPT_STRICT: ropt.strict = 1; break;
        case OPT_EXACT: ropt.exact = 1; break;
        case OPT_WRITE_STREAM: write_stream = optarg; break;
        case OPT_REPORT: report = optarg; break;
        case 'q': quiet = 1; break;
        case OPT_HELP: fputs(usage, stdout); return 0;
        case OPT_VERSION: return cli_version();
        default: return cli_usage_error("unknown option");
        }
        if (rc)
            return rc;
    }
    if (optind < argc && dir)
        return cli_usage_error("the devkit is given twice: --devkit %s and %s", dir, argv[optind]);
    if (optind < argc)
        dir = argv[optind++];
    if (optind < argc)
        return cli_usage_error("one devkit directory at a time ('%s' is extra)", argv[optind]);
    if (!dir)
        return cli_usage_error("no devkit directory (--devkit DIR)");
    if (!results == !detections)
        return cli_usage_error("give the detections as either --results PREFIX or --detections FILE");
    int stream_on_stdout = write_stream && strcmp(write_stream, "-") == 0;
    int report_on_stdout = report && strcmp(report, "-") == 0;
    if (stream_on_stdout && report_on_stdout)
        return cli_usage_error("--write-stream - and --report - cannot both have standard output");
    if (!*set || strchr(set, '/'))
        return cli_usage_error("--set: '%s' is not an image set name", set);
    /* The VOC2010 devkit switched to the area; detectron2 uses 11 points for 2007 only. */
    eopt.metric = metric >= 0 ? (voc_metric)metric : year < 2010 ? VOC_METRIC_11POINT : VOC_METRIC_AREA;

    char tree[4096];
    snprintf(tree, sizeof tree, "%s/VOC%d", dir, (int)year);
    if (!is_dir_with_set(dir, set) && is_dir_with_set(tree, set))
        dir = tree;

    moco_error err;
    voc_dataset ds;
    voc_detections d = {0};
    voc_result res = {0};
    char **names = NULL;
    int nnames = 0, status = 1;
    if (classes_file && voc_read_classes(classes_file, &names, &nnames, &err))
        return cli_error("%s", err.msg);
    rc = classes_file ? voc_dataset_init(&ds, nnames, (const char *const *)names, &err)
                      : voc_dataset_init(&ds, VOC_NUM_CLASSES, voc_default_classes, &err);
    voc_free_classes(names, nnames);
    if (rc)
        return cli_error("%s", err.msg);
    if (voc_load(&ds, dir, set, &err)) {
        cli_error("%s", err.msg);
        goto done;
    }
    rc = results ? voc_read_results(&ds, results, &ropt, &d, &err) : voc_read_stream(&ds, detections, &ropt, &d, &err);
    if (rc) {
        cli_error("%s", err.msg);
        goto done;
    }
    if (d.skipped)
        cli_warn("%lld detection%s of images not in %s/ImageSets/Main/%s.txt skipped (first: %s; --strict to stop)",
                 (long long)d.skipped, d.skipped == 1 ? "" : "s", dir, set, d.first_skipped);
    if (write_stream && voc_write_stream(&ds, &d, write_stream, "moco-voc-eval " MOCO_VERSION, argc, argv, &err)) {
        cli_error("%s", err.msg);
        goto done;
    }
    if (voc_evaluate(&ds, &d, &eopt, &res, &err)) {
        cli_error("%s", err.msg);
        goto done;
    }
    for (int k = 0; k < res.nclasses; k++)
        if (!res.evaluated[k])
            cli_warn("class '%s' has no positives in the set: left out of the means (--skip-empty)", ds.classes[k]);
    if (!quiet && !report_on_stdout && !stream_on_stdout) /* stdout carries something else */
        print_table(&ds, &res, (int)year, set, eopt.metric);
    if (report) {
        json_t *o = report_json(&ds, &d, &res, dir, (int)year, set, eopt.metric);
        if (!o) {
            cli_error("out of memory");
            goto done;
        }
        rc = write_report(o, report);
        json_decref(o);
        if (rc)
            goto done;
    }
    if (fflush(stdout) != 0) {
        cli_error("standard output: %m");
        goto done;
    }
    status = 0;
done:
    voc_result_free(&res);
    voc_detections_free(&d);
    voc_dataset_free(&ds);
    return status;
}
