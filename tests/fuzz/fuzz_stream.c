/* fuzz_stream.c — libFuzzer target for the tensor stream reader.
 *
 * The input is read as a stream to its end, from memory or (when the first byte is odd) through a
 * file descriptor, so both input paths see hostile bytes; every tensor's bytes and the header are
 * touched so an out-of-bounds pointer shows up under AddressSanitizer. Errors are expected and
 * fine; crashes, leaks, hangs and huge allocations are not. */
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "stream.h"

static volatile uint64_t sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    moco_error err;
    stream_read_options opt = {.max_record_bytes = 64 << 20};
    stream_reader *r;
    int fd = -1;
    if (size > 0 && (data[0] & 1)) {
        fd = memfd_create("fuzz", 0);
        if (fd < 0 || write(fd, data, size) != (ssize_t)size || lseek(fd, 0, SEEK_SET) != 0)
            abort();
        r = stream_reader_open_fd(fd, "fuzz", &opt, &err);
    } else {
        r = stream_reader_open_memory(data, size, "fuzz", &opt, &err);
    }
    if (r) {
        const stream_header *h = stream_reader_header(r);
        char *json = stream_header_json(h, 0);
        sink += json ? json[0] : 0;
        free(json);
        for (int i = 0; i < stream_header_num_classes(h); i++)
            sink += (uint64_t)stream_header_class(h, i)[0];
        stream_record rec;
        while (stream_read(r, &rec, &err) == 1)
            for (int t = 0; t < rec.ntensors; t++) {
                int64_t n = tensor_nbytes(&rec.tensors[t]);
                const uint8_t *p = rec.tensors[t].data;
                if (n > 0)
                    sink += p[0] + p[n - 1];
            }
        stream_reader_close(r);
    }
    if (fd >= 0)
        close(fd);
    return 0;
}
