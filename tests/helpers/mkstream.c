/* mkstream — write small tensor streams for the tool tests (not installed).
 *
 *   mkstream [--kind K] [--records N] [--level L] [--zero-copy] [--views] [--classes a,b,c]
 *            [--no-end] [PNG...] > out.tsz
 * With PNG files, each becomes one record holding "image" u8 (H,W,3), labelled by its position
 * modulo the class count. Without, records hold a small gradient "image" u8 (8,8,3) and "feat"
 * f32 [4]; --views makes them "views" u8 (2,32,32,3) as moco-augment's pairs. --no-end stops
 * without the end record, as a killed writer would. */
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "stream.h"

int main(int argc, char **argv)
{
    cli_init("mkstream");
    const char *kind = "images", *classes = "a,b,c";
    int64_t records = 10, level = 3;
    int views = 0, no_end = 0, zero_copy = 0, i;
    for (i = 1; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
        int rc = 0;
        if (!strcmp(argv[i], "--views")) views = 1;
        else if (!strcmp(argv[i], "--no-end")) no_end = 1;
        else if (!strcmp(argv[i], "--zero-copy")) zero_copy = 1;
        else if (i + 1 >= argc) return cli_usage_error("%s needs a value", argv[i]);
        else if (!strcmp(argv[i], "--kind")) kind = argv[++i];
        else if (!strcmp(argv[i], "--classes")) classes = argv[++i];
        else if (!strcmp(argv[i], "--records")) rc = cli_int("--records", argv[++i], 0, INT64_MAX, &records);
        else if (!strcmp(argv[i], "--level")) rc = cli_int("--level", argv[++i], -7, 22, &level);
        else return cli_usage_error("unknown option %s", argv[i]);
        if (rc)
            return rc;
    }
    char *names[64], *copy = strdup(classes);
    int nclasses = 0;
    for (char *tok = strtok(copy, ","); tok && nclasses < 64; tok = strtok(NULL, ","))
        names[nclasses++] = tok;
    stream_header *h = stream_header_new(kind, "mkstream " MOCO_VERSION);
    stream_header_set_args(h, argc, argv);
    stream_header_set_classes(h, nclasses, (const char *const *)names);
    int npng = argc - i;
    stream_header_set_int(h, "samples", npng ? npng : records);
    moco_error err;
    stream_options opt = STREAM_OPTIONS_DEFAULT;
    opt.level = (int)level;
    opt.zero_copy = zero_copy;
    stream_writer *w = stream_writer_open("-", &opt, h, &err);
    stream_header_free(h);
    if (!w)
        return cli_error("%s", err.msg);
    int rc = 0;
    if (npng) {
        for (int k = 0; k < npng && !rc; k++) {
            png_image img;
            memset(&img, 0, sizeof img);
            img.version = PNG_IMAGE_VERSION;
            if (!png_image_begin_read_from_file(&img, argv[i + k]))
                return cli_error("%s: %s", argv[i + k], img.message);
            img.format = PNG_FORMAT_RGB;
            uint8_t *px = malloc(PNG_IMAGE_SIZE(img));
            if (!px || !png_image_finish_read(&img, NULL, px, 0, NULL))
                return cli_error("%s: cannot decode", argv[i + k]);
            stream_record r;
            stream_record_init(&r, k, nclasses ? k % nclasses : -1);
            int64_t dims[3] = {img.height, img.width, 3};
            rc = stream_record_add(&r, "image", DTYPE_U8, 3, dims, px, &err);
            if (!rc)
                rc = stream_write(w, &r, &err);
            free(px);
        }
    } else {
        static uint8_t pixels[2 * 32 * 32 * 3];
        float feat[4];
        for (int64_t k = 0; k < records && !rc; k++) {
            for (size_t p = 0; p < sizeof pixels; p++)
                pixels[p] = (uint8_t)(p * 3 + (size_t)k * 17);
            for (int f = 0; f < 4; f++)
                feat[f] = (float)k + 0.5f * (float)f;
            stream_record r;
            stream_record_init(&r, k, nclasses ? k % nclasses : -1);
            int64_t vd[4] = {2, 32, 32, 3}, id[3] = {8, 8, 3}, fd[1] = {4};
            if (views)
                rc = stream_record_add(&r, "views", DTYPE_U8, 4, vd, pixels, &err);
            else if (!(rc = stream_record_add(&r, "image", DTYPE_U8, 3, id, pixels, &err)))
                rc = stream_record_add(&r, "feat", DTYPE_F32, 1, fd, feat, &err);
            if (!rc)
                rc = stream_write(w, &r, &err);
        }
    }
    free(copy);
    if (rc == MOCO_EPIPE) { /* the reader is done: stop quietly */
        stream_writer_abort(w);
        return 0;
    }
    if (rc)
        return cli_error("%s", err.msg);
    if (no_end) {
        stream_flush(w, &err);
        stream_writer_abort(w);
        return 0;
    }
    rc = stream_writer_close(w, &err);
    return rc == MOCO_EPIPE ? 0 : rc ? cli_error("%s", err.msg) : 0;
}
