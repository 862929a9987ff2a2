/* metrics.h — JSON-lines metrics (--log FILE): one compact JSON object per line, flushed as it is
 * written, so `tail -f`, jq and plotting scripts read a run while it goes.
 *
 * Objects are built with jansson, e.g. metrics_write(log, json_pack("{s:I,s:f}", "step", step,
 * "loss", loss), &err); metrics_write takes ownership of the object. */
#ifndef MOCO_METRICS_H
#define MOCO_METRICS_H

#include <jansson.h>

#include "error.h"

typedef struct metrics_log metrics_log;

/* Append to path ("-": stdout). A resumed run keeps the earlier lines. */
metrics_log *metrics_open(const char *path, moco_error *err);
/* Write obj as one line and flush; steals the reference (obj may be NULL: an error). */
int metrics_write(metrics_log *log, json_t *obj, moco_error *err);
int metrics_close(metrics_log *log, moco_error *err);

#endif
