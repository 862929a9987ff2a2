/* image.h — decoding and encoding images: JPEG through libjpeg-turbo, PNG through libpng.
 *
 * Formats are recognised by content, never by file name (ImageNet has a PNG named .JPEG). Decoded
 * images are u8 HWC, 1 channel (grey) or 3 (RGB), rows packed; the pixels are malloc'd and owned
 * by the image (image_free). Decoding follows what PIL's Image.open(f).convert("RGB" or "L") gives,
 * because the reference MoCo pipeline feeds PIL images to torchvision:
 *   - JPEG: libjpeg's default (islow DCT, fancy upsampling); CMYK/YCCK (Adobe, inverted) converted
 *     to RGB as PIL's cmyk2rgb does; a truncated file is an error (PIL refuses it too), while
 *     libjpeg's other warnings (extraneous bytes before a marker, common in ImageNet) are not.
 *   - PNG: palette and low-bit grey expanded, 16-bit reduced to the high byte, alpha dropped (not
 *     composited: convert("RGB") drops it).
 *   - grey to RGB replicates; RGB to grey is ITU-R 601 luma, (19595 R + 38470 G + 7471 B + 2^15) >> 16.
 * Hostile sizes are refused before any pixel buffer is allocated (image_decode_options.max_pixels). */
#ifndef MOCO_IMAGE_H
#define MOCO_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

typedef struct {
    int height, width, channels; /* channels: 1 or 3 */
    uint8_t *pixels;             /* height * width * channels bytes, HWC */
} image;

typedef enum { IMAGE_UNKNOWN = 0, IMAGE_JPEG = 1, IMAGE_PNG = 2 } image_format;

typedef struct {
    int channels;       /* 0: as stored (grey stays grey), 1: grey, 3: RGB */
    int64_t max_pixels; /* 0: IMAGE_DEFAULT_MAX_PIXELS */
    /* When > 0, a JPEG may be decoded at a reduced DCT scale (1/2, 1/4 or 1/8: libjpeg-turbo's SIMD
     * scaled IDCT) as long as the result stays at least this high and wide: far less work when the
     * image is shrunk afterwards anyway. The pixels then differ from PIL's, which decodes at full
     * size before resizing; 0 keeps PIL's exact result. PNGs are unaffected. */
    int min_height, min_width;
    /* When region_w > 0, a JPEG may be decoded over that rectangle only (full-size pixels): rows
     * outside it are skipped (jpeg_skip_scanlines), columns cut to whole iMCUs around it
     * (jpeg_crop_scanline); what a crop needs, for much less work. Pixels at the rectangle's edges
     * may differ from a full decode's (chroma upsampling meets the edge). Use image_decode_region to
     * learn where the decoded pixels lie. PNGs always decode whole. */
    int region_x, region_y, region_w, region_h;
} image_decode_options;

/* Where a decode lies in the full-size image: decoded pixel (0, 0) is full-size pixel (x, y), and
 * full-size distances times scale are decoded distances (scale < 1 after a DCT-scaled decode). */
typedef struct {
    double x, y, scale;
} image_origin;

#define IMAGE_DEFAULT_MAX_PIXELS ((int64_t)1 << 28) /* 268 Mpixel: far above any photo dataset */

/* What the first bytes say the data is. */
image_format image_sniff(const uint8_t *data, size_t len);
const char *image_format_name(image_format f);

/* Height, width and channels as stored (1 or 3) from the header alone. */
int image_probe(const uint8_t *data, size_t len, int *height, int *width, int *channels, moco_error *err);

/* Decode a whole JPEG or PNG. Messages say what is wrong ("truncated JPEG", "not a JPEG or PNG
 * image (starts with ...)", "corrupt PNG: ..."); the caller adds the file name. opt may be NULL. */
int image_decode(const uint8_t *data, size_t len, const image_decode_options *opt, image *out,
                 moco_error *err);

/* image_decode, also saying where the decoded pixels lie (see region_* and min_* above). */
int image_decode_region(const uint8_t *data, size_t len, const image_decode_options *opt, image *out,
                        image_origin *origin, moco_error *err);

/* Encode as baseline JPEG (4:2:0 for RGB, as PIL's default) at quality 1..100 into a malloc'd
 * buffer (*out, *out_len). */
int image_encode_jpeg(const image *img, int quality, uint8_t **out, size_t *out_len, moco_error *err);

/* Grey <-> RGB in place, as PIL's convert does (replicate, or ITU-R 601 luma); the buffer is
 * reallocated to fit. A no-op when img already has `channels`. */
int image_convert_channels(image *img, int channels, moco_error *err);

/* Allocate an image of the given shape (pixels uninitialised). */
int image_alloc(image *img, int height, int width, int channels, moco_error *err);
void image_free(image *img);

#endif
