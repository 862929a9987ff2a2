/* resample.h — resizing u8 images exactly as Pillow 9.4 does (Resample.c), so views made here match
 * the PIL images torchvision transforms.
 *
 * Pillow's convolution resampling: for each output pixel a filter (box, bilinear, hamming,
 * bicubic, lanczos) is centred on the source position and its support widened by the shrink
 * factor, so shrinking averages every source pixel it covers (antialiasing) instead of skipping
 * them. Coefficients are normalised, turned into 22-bit fixed point, and applied in two passes,
 * horizontal then vertical, with rounding and clamping between them — bit-exact with Pillow.
 * `box` selects a source rectangle (x0, y0, x1, y1 in pixels, may be fractional), as
 * Image.resize(size, filter, box) does: crop and resize in one pass. */
#ifndef MOCO_RESAMPLE_H
#define MOCO_RESAMPLE_H

#include <stdint.h>

#include "error.h"

typedef enum {
    RESAMPLE_BOX,
    RESAMPLE_BILINEAR, /* torchvision's default for PIL images */
    RESAMPLE_HAMMING,
    RESAMPLE_BICUBIC,
    RESAMPLE_LANCZOS,
} resample_filter;

/* src: sh x sw x channels (HWC); dst: dh x dw x channels. box NULL = the whole source.
 * channels 1..4. Fails on bad sizes or a box outside the source. */
int resample(const uint8_t *src, int sh, int sw, int channels, const double box[4], uint8_t *dst, int dh,
             int dw, resample_filter filter, moco_error *err);

/* As resample, on a source whose rows are `stride` bytes apart: a window of a bigger image, as
 * torchvision's crop-then-resize sees it (the filter is clamped at the window's edges, not the
 * image's). */
int resample_window(const uint8_t *src, size_t stride, int sh, int sw, int channels, const double box[4],
                    uint8_t *dst, int dh, int dw, resample_filter filter, moco_error *err);

/* As resample_window, but when both axes change and rows shrink, the vertical pass runs first, so
 * the slower horizontal pass sees only the output's rows: about twice as fast for a
 * RandomResizedCrop. The intermediate is rounded at another point than Pillow rounds it: pixels
 * may differ from Pillow's by a grey level. */
int resample_window_fast(const uint8_t *src, size_t stride, int sh, int sw, int channels, const double box[4],
                         uint8_t *dst, int dh, int dw, resample_filter filter, moco_error *err);

/* torchvision's Resize(size) for an int size: the short side becomes `size`, the long side
 * int(size * long / short) (truncated, as torchvision 0.14 computes it). */
void resize_short_side(int height, int width, int size, int *out_height, int *out_width);

#endif
