/* idx.c — see idx.h. */
#include "idx.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

int idx_sniff(const uint8_t *buf, size_t len)
{
    if (len >= 2 && buf[0] == 0x1f && buf[1] == 0x8b)
        return 1; /* gzip: decided when decompressed */
    return len >= 4 && buf[0] == 0 && buf[1] == 0 && buf[2] == 0x08 && buf[3] >= 1 && buf[3] <= IDX_MAX_RANK;
}

/* Read the header from `head` (at least 4 + 4 * rank bytes); fills rank, dims, sizes. */
static int parse_header(const uint8_t *head, size_t len, const char *name, idx_array *a, size_t *header_len,
                        moco_error *err)
{
    if (len < 4 || head[0] != 0 || head[1] != 0)
        return moco_fail(err, "%s: not an IDX file (bad magic)", name);
    if (head[2] != 0x08)
        return moco_fail(err, "%s: IDX element type 0x%02x is not supported (only u8, 0x08)", name, head[2]);
    int rank = head[3];
    if (rank < 1 || rank > IDX_MAX_RANK)
        return moco_fail(err, "%s: IDX rank %d (1 to %d supported)", name, rank, IDX_MAX_RANK);
    if (len < 4 + 4 * (size_t)rank)
        return moco_fail(err, "%s: truncated IDX header", name);
    memset(a, 0, sizeof *a);
    a->rank = rank;
    int64_t total = 1;
    for (int i = 0; i < rank; i++) {
        a->dims[i] = be32(head + 4 + 4 * i);
        if (a->dims[i] > 0 && total > IDX_MAX_BYTES / a->dims[i])
            return moco_fail(err, "%s: IDX dims exceed the limit of %lld bytes", name, (long long)IDX_MAX_BYTES);
        total *= a->dims[i];
    }
    a->count = a->dims[0];
    a->item_bytes = a->count ? total / a->count : 0;
    if (a->count == 0)
        for (int i = 1; i < rank; i++)
            a->item_bytes = (i == 1 ? 1 : a->item_bytes) * a->dims[i];
    *header_len = 4 + 4 * (size_t)rank;
    return MOCO_OK;
}

int idx_parse(const uint8_t *buf, size_t len, const char *name, idx_array *out, moco_error *err)
{
    size_t hl;
    if (parse_header(buf, len, name, out, &hl, err))
        return MOCO_ERR;
    uint64_t want = (uint64_t)out->count * (uint64_t)out->item_bytes;
    if (len - hl != want)
        return moco_fail(err, "%s: IDX data is %zu bytes but its dims need %llu", name, len - hl,
                         (unsigned long long)want);
    out->data = malloc(want ? want : 1);
    if (!out->data)
        return moco_fail(err, "%s: out of memory (%llu bytes)", name, (unsigned long long)want);
    memcpy(out->data, buf + hl, want);
    return MOCO_OK;
}

int idx_load(const char *path, idx_array *out, moco_error *err)
{
    gzFile f = gzopen(path, "rb"); /* reads plain files too */
    if (!f)
        return moco_fail(err, "%s: cannot open: %s", path, strerror(errno ? errno : ENOMEM));
    uint8_t head[4 + 4 * IDX_MAX_RANK];
    int n = gzread(f, head, 4);
    size_t hl = 0;
    int rc = MOCO_OK;
    if (n != 4)
        rc = moco_fail(err, "%s: not an IDX file (too short)", path);
    else if (head[3] >= 1 && head[3] <= IDX_MAX_RANK && gzread(f, head + 4, 4u * head[3]) != 4 * head[3])
        rc = moco_fail(err, "%s: truncated IDX header", path);
    if (!rc)
        rc = parse_header(head, 4 + 4 * (size_t)(head[3] <= IDX_MAX_RANK ? head[3] : 0), path, out, &hl, err);
    if (rc) {
        gzclose(f);
        return rc;
    }
    uint64_t want = (uint64_t)out->count * (uint64_t)out->item_bytes;
    out->data = malloc(want ? want : 1);
    if (!out->data) {
        gzclose(f);
        return moco_fail(err, "%s: out of memory (%llu bytes)", path, (unsigned long long)want);
    }
    uint64_t got = 0;
    while (got < want) {
        unsigned chunk = want - got > (1u << 30) ? (1u << 30) : (unsigned)(want - got);
        int k = gzread(f, out->data + got, chunk);
        if (k <= 0)
            break;
        got += (uint64_t)k;
    }
    uint8_t extra;
    int errnum = 0;
    const char *zmsg = gzerror(f, &errnum);
    if (errnum != Z_OK && errnum != Z_BUF_ERROR)
        rc = moco_fail(err, "%s: corrupt gzip data: %s", path, zmsg);
    else if (got < want)
        rc = moco_fail(err, "%s: truncated IDX data (%llu of %llu bytes)", path, (unsigned long long)got,
                       (unsigned long long)want);
    else if (gzread(f, &extra, 1) == 1)
        rc = moco_fail(err, "%s: IDX file is longer than its dims say", path);
    gzclose(f);
    if (rc)
        idx_free(out);
    return rc;
}

void idx_free(idx_array *a)
{
    free(a->data);
    a->data = NULL;
}
