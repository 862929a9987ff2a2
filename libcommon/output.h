/* output.h — output files that appear whole or not at all.
 *
 * A tool writes its output under a temporary name beside the path ("PATH.tmp.PID") and renames it
 * into place once complete, so a killed run never leaves a file that looks whole. Not where the
 * path exists and is not a regular file (/dev/null, /dev/stdout, a FIFO, a terminal): a rename would
 * replace the device with a regular file, so such a path is written in place. */
#ifndef MOCO_OUTPUT_H
#define MOCO_OUTPUT_H
#include "error.h"

typedef struct {
    char *path;       /* where the output goes (a copy) */
    char *write_to;   /* what to open and write: the temporary name, or path itself in place */
    int in_place;
} output;

/* Choose the name to write to. MOCO_ERR (out of memory) with err set. */
int output_begin(output *o, const char *path, moco_error *err);
/* The output is complete (and, for durability, already fsync'ed by the caller): rename it into
 * place and sync the directory entry (nothing to do in place). MOCO_ERR with err set; the
 * temporary is then removed. Frees what output_begin made either way. */
int output_commit(output *o, moco_error *err);
/* Give up: remove the temporary (never the path written in place) and free. */
void output_discard(output *o);

#endif
