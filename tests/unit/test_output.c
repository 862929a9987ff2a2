/* test_output.c — output files appear whole or not at all, and a path that is a device or FIFO is
 * written in place, never replaced (a stream writer once renamed its temporary over /dev/null). */
#include <fcntl.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include "output.h"
#include "stream.h"
#include "test.h"

static char dir[64];

static int is_fifo(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISFIFO(st.st_mode);
}

TEST(test_output_renames_a_complete_file_into_place)
{
    moco_error err;
    char path[128];
    snprintf(path, sizeof path, "%s/out.json", dir);
    output o;
    CHECK_OK(output_begin(&o, path, &err), &err);
    CHECK(!o.in_place && strcmp(o.write_to, path) != 0);
    FILE *f = fopen(o.write_to, "w");
    CHECK(f && fputs("{}\n", f) >= 0 && fclose(f) == 0);
    CHECK(access(path, F_OK) != 0); /* not visible before the commit */
    CHECK_OK(output_commit(&o, &err), &err);
    CHECK(access(path, F_OK) == 0);
    unlink(path);
}

TEST(test_output_discard_leaves_nothing)
{
    moco_error err;
    char path[128];
    snprintf(path, sizeof path, "%s/gone.json", dir);
    output o;
    CHECK_OK(output_begin(&o, path, &err), &err);
    char tmp[256];
    snprintf(tmp, sizeof tmp, "%s", o.write_to);
    FILE *f = fopen(o.write_to, "w");
    CHECK(f && fclose(f) == 0);
    output_discard(&o);
    CHECK(access(tmp, F_OK) != 0 && access(path, F_OK) != 0);
}

/* a reader at the other end of a FIFO, on a thread: counts what the writer sends */
static void *drain(void *path)
{
    static long total;
    int fd = open(path, O_RDONLY);
    char buf[4096];
    ssize_t n;
    total = 0;
    while (fd >= 0 && (n = read(fd, buf, sizeof buf)) > 0)
        total += n;
    if (fd >= 0)
        close(fd);
    return &total;
}

TEST(test_stream_writer_writes_a_fifo_in_place)
{
    moco_error err;
    char path[128];
    snprintf(path, sizeof path, "%s/fifo", dir);
    CHECK(mkfifo(path, 0600) == 0);
    pthread_t reader;
    CHECK(pthread_create(&reader, NULL, drain, path) == 0);
    stream_header *h = stream_header_new("views", "test_output");
    stream_options opt = STREAM_OPTIONS_DEFAULT;
    opt.level = 0;
    stream_writer *w = stream_writer_open(path, &opt, h, &err);
    stream_header_free(h);
    int closed = w ? stream_writer_close(w, &err) : -1;
    int still_fifo = is_fifo(path);
    if (!still_fifo || closed) /* renamed over, or failed: the reader may wait for a writer forever */
        pthread_cancel(reader);
    void *got;
    pthread_join(reader, &got);
    CHECK_OK(closed, &err);
    CHECK(still_fifo);         /* the FIFO is still one */
    CHECK(*(long *)got > 0);   /* and the stream went through it */
    output o;                  /* discarding an output in place never removes the path */
    CHECK_OK(output_begin(&o, path, &err), &err);
    CHECK(o.in_place && !strcmp(o.write_to, path));
    output_discard(&o);
    CHECK(is_fifo(path));
    unlink(path);
}

int main(void)
{
    snprintf(dir, sizeof dir, "/tmp/test_output.%d", (int)getpid());
    if (mkdir(dir, 0700) != 0) {
        printf("FAIL test_output: cannot make %s\n", dir);
        return 1;
    }
    RUN(test_output_renames_a_complete_file_into_place);
    RUN(test_output_discard_leaves_nothing);
    RUN(test_stream_writer_writes_a_fifo_in_place);
    rmdir(dir);
    TEST_EXIT();
}
