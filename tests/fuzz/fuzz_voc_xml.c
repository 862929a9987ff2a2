/* fuzz_voc_xml.c — libFuzzer target for the VOC annotation parser (and the result-file parser).
 *
 * The input is parsed as one annotation of an image in a dataset with the 20 VOC classes; the same
 * bytes are then read as the lines of a result file for class 0 of image "000001". Whatever objects
 * and detections come out are scored, so hostile coordinates reach the metric too. Errors are
 * expected and fine; crashes, leaks, hangs and huge allocations are not. */
#include <stdint.h>
#include <stdlib.h>

#include "voc.h"

static volatile double sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    voc_dataset ds;
    voc_detections d = {0};
    voc_result res;
    moco_error err;
    if (voc_dataset_init(&ds, VOC_NUM_CLASSES, voc_default_classes, &err) ||
        voc_dataset_add_image(&ds, "000001", &err) != 0)
        abort();
    voc_parse_annotation(&ds, 0, (const char *)data, size, "fuzz.xml", &err);
    voc_parse_results(&ds, 0, (const char *)data, size, "fuzz.txt", NULL, &d, &err);
    const voc_image *im = &ds.images[0];
    for (int k = 0; k < im->nobjects && k < 64; k++) /* each object also found, by a detection */
        voc_detections_add(&d, 0, im->objects[k].cls, (double)k, im->objects[k].box, &err);
    voc_eval_options opt = {.metric = size & 1 ? VOC_METRIC_AREA : VOC_METRIC_11POINT, .skip_empty = 1};
    if (voc_evaluate(&ds, &d, &opt, &res, &err) == MOCO_OK) {
        sink += res.AP + res.AP50 + res.AP75;
        voc_result_free(&res);
    }
    voc_detections_free(&d);
    voc_dataset_free(&ds);
    return 0;
}
