/* fuzz_image.c — libFuzzer target for the JPEG/PNG decoder and prober.
 *
 * The input is probed, then decoded as stored and, by the low bits of its last byte, to grey or
 * RGB as well, so the conversions see hostile data too. max_pixels is 4 Mpixel to keep memory
 * sane: a header may claim any size, and the limit must stop it before anything is allocated.
 * Every decoded pixel is read so that a short buffer shows up under AddressSanitizer, and each
 * decoded image is resampled with a size, box and filter taken from the input's first bytes.
 * Errors are expected and fine; crashes, leaks, hangs and huge allocations are not. */
#include <stdint.h>
#include <stdlib.h>

#include "image.h"
#include "resample.h"

static volatile uint64_t sink;

/* Resample img to at most 64x64 through a box chosen by the bytes p[0..7] (of the input's start,
 * so mutations move it); boxes outside the image must be refused, not read. */
static void resample_some(const image *img, const uint8_t *p)
{
    int dh = 1 + p[0] % 64, dw = 1 + p[1] % 64;
    double box[4] = {img->width * (p[2] / 255.0) * 0.5, img->height * (p[3] / 255.0) * 0.5,
                     img->width * (0.5 + p[4] / 510.0), img->height * (0.5 + p[5] / 510.0)};
    if (p[6] & 1) /* sometimes a box a little outside, to be refused */
        box[p[6] >> 6] += (p[6] & 2) ? 0.75 : -0.75 - box[p[6] >> 6];
    uint8_t *out = malloc((size_t)dh * dw * img->channels);
    moco_error err;
    if (!out)
        abort();
    if (resample(img->pixels, img->height, img->width, img->channels, box, out, dh, dw,
                 (resample_filter)(p[7] % 5), &err) == 0)
        for (int i = 0; i < dh * dw * img->channels; i++)
            sink += out[i];
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    moco_error err;
    int h, w, c;
    if (image_probe(data, size, &h, &w, &c, &err) == 0 && (h < 1 || w < 1 || (c != 1 && c != 3)))
        abort();
    int channels[2] = {0, size > 0 && (data[size - 1] & 1) ? 1 : 3};
    for (int i = 0; i < 2; i++) {
        image_decode_options opt = {.channels = channels[i], .max_pixels = (int64_t)1 << 22};
        image img;
        if (image_decode(data, size, &opt, &img, &err) != 0) {
            if (img.pixels || !err.msg[0])
                abort();
            continue;
        }
        if ((int64_t)img.height * img.width > opt.max_pixels ||
            (channels[i] && img.channels != channels[i]))
            abort();
        if (size >= 8)
            resample_some(&img, data);
        size_t n = (size_t)img.height * img.width * img.channels;
        uint64_t sum = 0;
        for (size_t k = 0; k < n; k++)
            sum += img.pixels[k];
        sink += sum;
        image_free(&img);
    }
    return 0;
}
