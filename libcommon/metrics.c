/* metrics.c — see metrics.h. */
#include "metrics.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct metrics_log {
    FILE *f;
    int own;
    char name[256];
};

metrics_log *metrics_open(const char *path, moco_error *err)
{
    metrics_log *log = calloc(1, sizeof *log);
    if (!log) {
        moco_fail(err, "out of memory");
        return NULL;
    }
    if (strcmp(path, "-") == 0) {
        log->f = stdout;
    } else {
        log->f = fopen(path, "a");
        log->own = 1;
    }
    snprintf(log->name, sizeof log->name, "%s", path);
    if (!log->f) {
        moco_fail(err, "%s: cannot open for appending: %s", path, strerror(errno));
        free(log);
        return NULL;
    }
    return log;
}

int metrics_write(metrics_log *log, json_t *obj, moco_error *err)
{
    if (!obj)
        return moco_fail(err, "%s: could not build the metrics object", log->name);
    int rc = json_dumpf(obj, log->f, JSON_COMPACT) != 0 || fputc('\n', log->f) == EOF ||
             fflush(log->f) != 0;
    json_decref(obj);
    return rc ? moco_fail(err, "%s: write failed: %s", log->name, strerror(errno)) : MOCO_OK;
}

int metrics_close(metrics_log *log, moco_error *err)
{
    int rc = MOCO_OK;
    if (log->own && fclose(log->f) != 0)
        rc = moco_fail(err, "%s: close failed: %s", log->name, strerror(errno));
    free(log);
    return rc;
}
