/* ckpt_helper — moco's side of the export tests (tests/tools/t0800-export.sh; not installed).
 *
 *   ckpt_helper forward CHECKPOINT PREFIX INPUT.f32 N H W OUT.f32 [--no-head]
 *       Load one encoder (PREFIX "encoder_q." or "encoder_k.") with checkpoint_load_encoder, run it
 *       in evaluation mode on INPUT, raw f32 (N,H,W,C) with C the checkpoint's in_channels, and write
 *       raw f32 to OUT: the pooled features (N,F), then the head's output (N,dim) unless --no-head.
 *   ckpt_helper strip CHECKPOINT OUT.tsz PREFIX
 *       Copy a checkpoint without the records whose tensor name starts with PREFIX (a file with a
 *       part missing). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "cli.h"

static int forward(int argc, char **argv)
{
    if (argc < 9)
        return cli_usage_error("forward CHECKPOINT PREFIX INPUT.f32 N H W OUT.f32 [--no-head]");
    int64_t n, h, w;
    if (cli_int("N", argv[5], 1, 4096, &n) || cli_int("H", argv[6], 1, 4096, &h) || cli_int("W", argv[7], 1, 4096, &w))
        return EXIT_USAGE;
    int no_head = argc > 9 && !strcmp(argv[9], "--no-head");
    moco_error err;
    resnet_config enc;
    moco_config mc;
    stream_header *hd = checkpoint_read_header(argv[2], &err);
    if (!hd || checkpoint_config(hd, &enc, &mc, &err))
        return cli_error("%s", err.msg);
    stream_header_free(hd);
    if (no_head)
        enc.head = RESNET_HEAD_NONE;
    backend *be = backend_create(1, &err);
    resnet *net = be ? resnet_create(be, &enc, 0, &err) : NULL;
    if (!net || checkpoint_load_encoder(argv[2], argv[3], net, no_head, &err))
        return cli_error("%s", err.msg);
    size_t count = (size_t)(n * h * w * enc.in_channels);
    float *x = malloc(sizeof(float) * count);
    FILE *f = fopen(argv[4], "rb");
    if (!x || !f || fread(x, sizeof(float), count, f) != count)
        return cli_error("%s: cannot read %zu floats", argv[4], count);
    fclose(f);
    if (resnet_forward(net, x, (int)n, (int)h, (int)w, 0, 1, &err))
        return cli_error("%s", err.msg);
    FILE *o = fopen(argv[8], "wb");
    int ok = o && fwrite(net->pooled, sizeof(float), (size_t)(n * net->feature_dim), o) == (size_t)(n * net->feature_dim);
    if (ok && !no_head)
        ok = fwrite(net->output, sizeof(float), (size_t)(n * enc.out_dim), o) == (size_t)(n * enc.out_dim);
    if (!o || fclose(o) || !ok)
        return cli_error("%s: write failed", argv[8]);
    free(x);
    resnet_destroy(net);
    backend_destroy(be);
    return 0;
}

static int strip(int argc, char **argv)
{
    if (argc != 5)
        return cli_usage_error("strip CHECKPOINT OUT.tsz PREFIX");
    moco_error err;
    stream_reader *r = stream_reader_open(argv[2], NULL, &err);
    stream_writer *w = r ? stream_writer_open(argv[3], NULL, stream_reader_header(r), &err) : NULL;
    if (!w)
        return cli_error("%s", err.msg);
    stream_record rec;
    int rc;
    size_t plen = strlen(argv[4]);
    while ((rc = stream_read(r, &rec, &err)) == 1)
        if (!(rec.ntensors == 1 && !strncmp(rec.tensors[0].name, argv[4], plen)) && stream_write(w, &rec, &err))
            break;
    stream_reader_close(r);
    if (rc != 0) {
        stream_writer_abort(w);
        return cli_error("%s", err.msg);
    }
    return stream_writer_close(w, &err) ? cli_error("%s", err.msg) : 0;
}

int main(int argc, char **argv)
{
    cli_init("ckpt_helper");
    if (argc > 1 && !strcmp(argv[1], "forward"))
        return forward(argc, argv);
    if (argc > 1 && !strcmp(argv[1], "strip"))
        return strip(argc, argv);
    return cli_usage_error("forward ... | strip ... (see the comment at the top of ckpt_helper.c)");
}
