/* output.c — see output.h. */
#include "output.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int output_begin(output *o, const char *path, moco_error *err)
{
    struct stat st;
    o->in_place = stat(path, &st) == 0 && !S_ISREG(st.st_mode);
    size_t n = strlen(path) + 32;
    o->path = strdup(path), o->write_to = malloc(n);
    if (!o->path || !o->write_to) {
        free(o->path), free(o->write_to);
        o->path = o->write_to = NULL;
        return moco_fail(err, "%s: out of memory", path);
    }
    if (o->in_place)
        snprintf(o->write_to, n, "%s", path);
    else
        snprintf(o->write_to, n, "%s.tmp.%ld", path, (long)getpid());
    return MOCO_OK;
}

/* After a rename, the directory entry itself must reach the disk. Best effort: some file systems
 * refuse fsync on a directory. */
static void sync_directory_of(const char *path)
{
    char *dir = strdup(path);
    if (!dir)
        return;
    char *slash = strrchr(dir, '/');
    if (slash)
        slash[slash == dir ? 1 : 0] = '\0';
    int fd = open(slash ? dir : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    free(dir);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
}

int output_commit(output *o, moco_error *err)
{
    int rc = MOCO_OK;
    if (!o->in_place && rename(o->write_to, o->path) != 0) {
        rc = moco_fail(err, "%s: cannot rename %s into place: %s", o->path, o->write_to, strerror(errno));
        unlink(o->write_to);
    } else if (!o->in_place) {
        sync_directory_of(o->path);
    }
    free(o->write_to), free(o->path);
    o->write_to = o->path = NULL;
    return rc;
}

void output_discard(output *o)
{
    if (o->write_to && !o->in_place)
        unlink(o->write_to);
    free(o->write_to), free(o->path);
    o->write_to = o->path = NULL;
}
