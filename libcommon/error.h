/* error.h — how libcommon reports failure.
 *
 * Library functions never print and never exit: they return a status and, on failure, fill a
 * moco_error with a message that carries its context (file, record, op, shape). Tools print it
 * and choose the exit code. Status values are shared by every module:
 *   MOCO_OK (0) success, MOCO_ERR (-1) failure with a message, MOCO_EPIPE (-2) the reader of our
 *   output has gone away (a producer then stops quietly with status 0, DESIGN §6). */
#ifndef MOCO_ERROR_H
#define MOCO_ERROR_H

#include <stddef.h>

enum { MOCO_OK = 0, MOCO_ERR = -1, MOCO_EPIPE = -2 };

typedef struct {
    char msg[1024];
} moco_error;

/* Set the message (printf-style) and return MOCO_ERR, so `return moco_fail(e, ...)` reads well.
 * e may be NULL. */
int moco_fail(moco_error *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Put "context: " in front of an existing message (e.g. the file name) and return MOCO_ERR. */
int moco_prefix(moco_error *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
