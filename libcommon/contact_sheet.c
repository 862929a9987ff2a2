/* contact_sheet.c — see contact_sheet.h. */
#include "contact_sheet.h"
#include "output.h"

#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { GAP = 2, BACKGROUND = 40 };

struct contact_sheet {
    int tile, max_images, count;
    uint8_t *tiles; /* max_images tiles of tile x tile RGB, background-filled */
};

contact_sheet *contact_sheet_new(int tile, int max_images, moco_error *err)
{
    if (tile < 1 || tile > 4096 || max_images < 1 || max_images > 65536) {
        moco_fail(err, "contact sheet: tile %d or image count %d out of range", tile, max_images);
        return NULL;
    }
    contact_sheet *s = calloc(1, sizeof *s);
    size_t bytes = (size_t)tile * (size_t)tile * 3 * (size_t)max_images;
    if (!s || !(s->tiles = malloc(bytes))) {
        free(s);
        moco_fail(err, "contact sheet: out of memory (%zu bytes)", bytes);
        return NULL;
    }
    memset(s->tiles, BACKGROUND, bytes);
    s->tile = tile;
    s->max_images = max_images;
    return s;
}

void contact_sheet_free(contact_sheet *s)
{
    if (s) {
        free(s->tiles);
        free(s);
    }
}

int contact_sheet_count(const contact_sheet *s) { return s->count; }

int contact_sheet_add(contact_sheet *s, const uint8_t *pixels, int height, int width, int channels,
                      moco_error *err)
{
    if (s->count == s->max_images)
        return 1;
    if (height < 1 || width < 1 || (channels != 1 && channels != 3))
        return moco_fail(err, "contact sheet: cannot show a %dx%dx%d image (need HxWx1 or HxWx3)", height,
                         width, channels);
    /* Integer shrink factor so the image fits its tile; box-average each factor x factor block. */
    int big = height > width ? height : width;
    int f = (big + s->tile - 1) / s->tile;
    int oh = height / f, ow = width / f;
    if (oh < 1)
        oh = 1;
    if (ow < 1)
        ow = 1;
    uint8_t *dst = s->tiles + (size_t)s->count * (size_t)s->tile * (size_t)s->tile * 3;
    int oy = (s->tile - oh) / 2, ox = (s->tile - ow) / 2; /* centred in the tile */
    for (int y = 0; y < oh; y++)
        for (int x = 0; x < ow; x++)
            for (int c = 0; c < 3; c++) {
                int sum = 0, n = 0;
                for (int dy = 0; dy < f && y * f + dy < height; dy++)
                    for (int dx = 0; dx < f && x * f + dx < width; dx++) {
                        size_t i = ((size_t)(y * f + dy) * (size_t)width + (size_t)(x * f + dx)) * (size_t)channels;
                        sum += pixels[i + (channels == 3 ? (size_t)c : 0)];
                        n++;
                    }
                dst[((size_t)(oy + y) * (size_t)s->tile + (size_t)(ox + x)) * 3 + (size_t)c] =
                    (uint8_t)((sum + n / 2) / n);
            }
    s->count++;
    return 0;
}

int contact_sheet_write_png(const contact_sheet *s, const char *path, moco_error *err)
{
    if (s->count == 0)
        return moco_fail(err, "%s: no images to draw", path);
    int cols = 1;
    while (cols * cols < s->count)
        cols++;
    int rows = (s->count + cols - 1) / cols;
    int W = cols * (s->tile + GAP) + GAP, H = rows * (s->tile + GAP) + GAP;
    uint8_t *img = malloc((size_t)W * (size_t)H * 3);
    if (!img)
        return moco_fail(err, "%s: out of memory", path);
    memset(img, BACKGROUND / 2, (size_t)W * (size_t)H * 3);
    for (int i = 0; i < s->count; i++) {
        int x0 = GAP + (i % cols) * (s->tile + GAP), y0 = GAP + (i / cols) * (s->tile + GAP);
        const uint8_t *t = s->tiles + (size_t)i * (size_t)s->tile * (size_t)s->tile * 3;
        for (int y = 0; y < s->tile; y++)
            memcpy(img + ((size_t)(y0 + y) * (size_t)W + (size_t)x0) * 3, t + (size_t)y * (size_t)s->tile * 3,
                   (size_t)s->tile * 3);
    }
    png_image pi;
    memset(&pi, 0, sizeof pi);
    pi.version = PNG_IMAGE_VERSION;
    pi.width = (png_uint_32)W;
    pi.height = (png_uint_32)H;
    pi.format = PNG_FORMAT_RGB;
    output out;
    int rc = output_begin(&out, path, err);
    if (!rc && !png_image_write_to_file(&pi, out.write_to, 0, img, 0, NULL)) {
        rc = moco_fail(err, "%s: cannot write PNG: %s", path, pi.message);
        output_discard(&out);
    } else if (!rc) {
        rc = output_commit(&out, err);
    }
    free(img);
    return rc;
}
