/* image.c — JPEG (libjpeg-turbo) and PNG (libpng) decoding from memory, JPEG encoding to memory.
 *
 * What a decoded image looks like is said in image.h: the same bytes as PIL's
 * Image.open(f).convert("RGB" or "L"). How it is made: each decoder first gives the channels as
 * stored (grey, RGB, or CMYK turned into RGB) into one buffer sized for the larger of the stored and
 * the asked-for channel count, then converts in place (grey -> RGB, RGB -> grey as PIL's Convert.c).
 *
 * Both libraries report errors by longjmp. Each format has a small "reader" struct owned by the
 * caller's frame: the function that calls setjmp keeps nothing of its own that changes afterwards
 * (so nothing is clobbered), and every allocation lives in the reader, freed by the caller whether
 * the decode succeeded or jumped out. The reader also holds the final error message.
 *
 * One deliberate difference from PIL: a 16-bit grey PNG is reduced to its high byte (image.h), where
 * PIL 9.4 opens it as mode "I" and convert() clips the 16-bit values to 0..255. 16-bit RGB and
 * grey+alpha PNGs are reduced to the high byte by PIL too, so they match. */
#include "image.h"

#include <math.h>
#include <setjmp.h>
#include <stdio.h> /* jpeglib.h needs FILE */
#include <stdlib.h>
#include <string.h>

#include <jerror.h>
#include <jpeglib.h>
#include <png.h>

/* ---- pixel conversions (PIL's Convert.c) ---- */

/* ITU-R 601 luma in 16-bit fixed point, PIL's L24 macro (rgb2l). */
static inline uint8_t luma(const uint8_t *rgb)
{
    return (uint8_t)((19595 * rgb[0] + 38470 * rgb[1] + 7471 * rgb[2] + 0x8000) >> 16);
}

/* PIL's MULDIV255: a * b / 255, rounded, without a division. */
static inline int muldiv255(int a, int b)
{
    int tmp = a * b + 128;
    return ((tmp >> 8) + tmp) >> 8;
}

/* One row of Adobe-inverted CMYK (what libjpeg gives for every 4-component JPEG, PIL's "CMYK;I"
 * rawmode) to RGB, as PIL's Unpack.c copy4I then Convert.c cmyk2rgb. */
static void cmyk_inverted_to_rgb(const uint8_t *in, uint8_t *out, int width)
{
    for (int x = 0; x < width; x++, in += 4, out += 3) {
        int nk = in[3]; /* 255 - k, with k = 255 - in[3] */
        for (int c = 0; c < 3; c++) {
            int v = nk - muldiv255(255 - in[c], nk);
            out[c] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
        }
    }
}

/* Convert npix pixels in place from `from` to `to` channels (1 or 3); p holds room for the larger. */
static void convert_in_place(uint8_t *p, size_t npix, int from, int to)
{
    if (from == 1 && to == 3) /* backwards: pixel i moves to 3i >= i */
        for (size_t i = npix; i-- > 0;)
            p[3 * i] = p[3 * i + 1] = p[3 * i + 2] = p[i];
    else if (from == 3 && to == 1) /* forwards: pixel i moves to i <= 3i */
        for (size_t i = 0; i < npix; i++)
            p[i] = luma(p + 3 * i);
}

int image_convert_channels(image *img, int channels, moco_error *err)
{
    if (img->channels == channels)
        return MOCO_OK;
    if ((img->channels != 1 && img->channels != 3) || (channels != 1 && channels != 3))
        return moco_fail(err, "image: cannot convert %d channels to %d", img->channels, channels);
    size_t npix = (size_t)img->height * img->width;
    if (channels > img->channels) { /* room first: grey grows to three bytes a pixel */
        uint8_t *bigger = realloc(img->pixels, npix * 3);
        if (!bigger)
            return moco_fail(err, "image: out of memory converting %dx%d to RGB", img->width, img->height);
        img->pixels = bigger;
    }
    convert_in_place(img->pixels, npix, img->channels, channels);
    if (channels < img->channels) { /* give back the unused two thirds; keep the block if realloc says no */
        uint8_t *smaller = realloc(img->pixels, npix);
        if (smaller)
            img->pixels = smaller;
    }
    img->channels = channels;
    return MOCO_OK;
}

/* Give the decoded image the asked-for channel count and hand the buffer to `out`. */
static void finish_image(uint8_t *pixels, int height, int width, int stored, int want, image *out)
{
    size_t npix = (size_t)height * width;
    convert_in_place(pixels, npix, stored, want);
    if (want < stored) { /* give back the unused two thirds; keep the old block if realloc says no */
        uint8_t *smaller = realloc(pixels, npix * want);
        if (smaller)
            pixels = smaller;
    }
    out->height = height;
    out->width = width;
    out->channels = want;
    out->pixels = pixels;
}

/* ---- formats ---- */

image_format image_sniff(const uint8_t *data, size_t len)
{
    static const uint8_t png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    if (len >= 3 && data[0] == 0xff && data[1] == 0xd8 && data[2] == 0xff) /* SOI, then a marker */
        return IMAGE_JPEG;
    if (len >= 8 && memcmp(data, png_sig, 8) == 0)
        return IMAGE_PNG;
    return IMAGE_UNKNOWN;
}

const char *image_format_name(image_format f)
{
    switch (f) {
    case IMAGE_JPEG: return "JPEG";
    case IMAGE_PNG: return "PNG";
    default: return "unknown";
    }
}

static int fail_not_image(const uint8_t *data, size_t len, moco_error *err)
{
    if (len == 0)
        return moco_fail(err, "not a JPEG or PNG image (it is empty)");
    char hex[16] = "";
    for (size_t i = 0, at = 0; i < len && i < 4; i++)
        at += (size_t)snprintf(hex + at, sizeof hex - at, "%s%02x", i ? " " : "", data[i]);
    return moco_fail(err, "not a JPEG or PNG image (it starts with bytes %s)", hex);
}

static int too_many_pixels(char *msg, size_t size, int64_t width, int64_t height, int64_t max_pixels)
{
    snprintf(msg, size, "image of %lldx%lld pixels exceeds the limit of %lld", (long long)width,
             (long long)height, (long long)max_pixels);
    return MOCO_ERR;
}

int image_alloc(image *img, int height, int width, int channels, moco_error *err)
{
    memset(img, 0, sizeof *img);
    if (height < 1 || width < 1 || channels < 1 || channels > 4)
        return moco_fail(err, "image_alloc: bad shape (%d,%d,%d)", height, width, channels);
    size_t n = (size_t)height * width * channels;
    img->pixels = malloc(n);
    if (!img->pixels)
        return moco_fail(err, "out of memory for a %dx%dx%d image", width, height, channels);
    img->height = height;
    img->width = width;
    img->channels = channels;
    return MOCO_OK;
}

void image_free(image *img)
{
    if (!img)
        return;
    free(img->pixels);
    memset(img, 0, sizeof *img);
}

/* ---- JPEG ---- */

/* libjpeg's error manager, extended with where to jump and the message to report. */
typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    const char *what; /* "corrupt JPEG" or "JPEG encoding failed", before libjpeg's message */
    char msg[JMSG_LENGTH_MAX + 64];
} jpeg_errors;

static void jpeg_on_error(j_common_ptr cinfo)
{
    jpeg_errors *e = (jpeg_errors *)cinfo->err;
    char buf[JMSG_LENGTH_MAX];
    cinfo->err->format_message(cinfo, buf);
    snprintf(e->msg, sizeof e->msg, "%s: %s", e->what, buf);
    longjmp(e->jump, 1);
}

/* Warnings (level -1) are ignored, as PIL ignores them (ImageNet has many "extraneous bytes before
 * marker"), except running out of data: jpeg_mem_src then pretends an EOI and would hand back a
 * grey-filled image, where PIL raises "image file is truncated". Trace messages are ignored. */
static void jpeg_on_message(j_common_ptr cinfo, int level)
{
    jpeg_errors *e = (jpeg_errors *)cinfo->err;
    if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) {
        snprintf(e->msg, sizeof e->msg, "truncated JPEG");
        longjmp(e->jump, 1);
    }
}

static void jpeg_silent(j_common_ptr cinfo)
{
    (void)cinfo;
}

static void jpeg_errors_init(jpeg_errors *e, const char *what)
{
    jpeg_std_error(&e->pub);
    e->pub.error_exit = jpeg_on_error;
    e->pub.emit_message = jpeg_on_message;
    e->pub.output_message = jpeg_silent; /* libcommon never prints */
    e->what = what;
    e->msg[0] = '\0';
}

typedef struct {
    struct jpeg_decompress_struct cinfo;
    jpeg_errors errors;
    int created;
    int height, width, stored; /* stored: 1 grey, 3 RGB (CMYK becomes RGB) */
    uint8_t *pixels;           /* the image being decoded (height * width * max(stored, want)) */
    uint8_t *cmyk;             /* CMYK rows from libjpeg before conversion */
    int scale_num;             /* decoded at scale_num/8 */
    int x0, y0;                /* first decoded column and row, in scaled pixels */
} jpeg_reader;

enum { JPEG_ROWS_AT_ONCE = 16 };

/* Read the header and, when `want` is not -1, decode into r->pixels. Returns MOCO_ERR with r's
 * message set; the caller cleans up (jpeg_reader_free). */
/* The largest reduction 8/M (M = 8, 4, 2, 1: the scales with SIMD IDCTs in libjpeg-turbo) that
 * keeps the decoded image at least min_h x min_w; libjpeg rounds scaled sizes up. The other
 * scales (3/8 .. 7/8) run a plain-C IDCT: measured no faster than a full-size decode. */
static int jpeg_scale(int height, int width, int min_h, int min_w)
{
    int m = 8;
    while (m > 1 && (height * (m / 2) + 7) / 8 >= min_h && (width * (m / 2) + 7) / 8 >= min_w)
        m /= 2;
    return m;
}

static int jpeg_run(jpeg_reader *r, const uint8_t *data, size_t len, int want, int64_t max_pixels,
                    const image_decode_options *opt)
{
    int min_h = opt ? opt->min_height : 0, min_w = opt ? opt->min_width : 0;
    struct jpeg_decompress_struct *ci = &r->cinfo;
    if (setjmp(r->errors.jump))
        return MOCO_ERR;
    jpeg_create_decompress(ci);
    r->created = 1;
    jpeg_mem_src(ci, data, (unsigned long)len);
    jpeg_read_header(ci, TRUE);
    r->height = (int)ci->image_height;
    r->width = (int)ci->image_width;
    /* PIL's JpegImagePlugin (SOF handler): 1 layer is "L", 3 "RGB", 4 "CMYK"; others refused. */
    int nc = ci->num_components;
    if (nc != 1 && nc != 3 && nc != 4) {
        snprintf(r->errors.msg, sizeof r->errors.msg, "JPEG with %d components is not supported", nc);
        return MOCO_ERR;
    }
    r->stored = nc == 1 ? 1 : 3;
    if (want < 0)
        return MOCO_OK;
    if ((int64_t)r->width * r->height > max_pixels)
        return too_many_pixels(r->errors.msg, sizeof r->errors.msg, r->width, r->height, max_pixels);

    /* JpegDecode.c: RGB for 3 components (libjpeg converts from YCbCr), CMYK for 4 (libjpeg
     * converts from YCCK), libjpeg's default (grey) for 1; islow DCT and fancy upsampling. */
    ci->out_color_space = nc == 1 ? JCS_GRAYSCALE : nc == 3 ? JCS_RGB : JCS_CMYK;
    r->scale_num = 8;
    if (min_h > 0 && min_w > 0) {
        r->scale_num = jpeg_scale(r->height, r->width, min_h, min_w);
        ci->scale_num = (unsigned)r->scale_num;
        ci->scale_denom = 8;
        jpeg_calc_output_dimensions(ci);
        r->height = (int)ci->output_height;
        r->width = (int)ci->output_width;
    }
    /* A region: the scaled rows [y0, y1) and columns [x0, x1) that cover it. */
    int y1 = r->height, x1 = r->width;
    if (opt && opt->region_w > 0 && opt->region_h > 0) {
        double s = r->scale_num / 8.0;
        r->x0 = (int)floor(opt->region_x * s), r->y0 = (int)floor(opt->region_y * s);
        x1 = (int)ceil((opt->region_x + opt->region_w) * s), y1 = (int)ceil((opt->region_y + opt->region_h) * s);
        r->x0 = r->x0 < 0 ? 0 : r->x0 > r->width - 1 ? r->width - 1 : r->x0;
        r->y0 = r->y0 < 0 ? 0 : r->y0 > r->height - 1 ? r->height - 1 : r->y0;
        x1 = x1 > r->width ? r->width : x1 <= r->x0 ? r->x0 + 1 : x1;
        y1 = y1 > r->height ? r->height : y1 <= r->y0 ? r->y0 + 1 : y1;
    }
    jpeg_start_decompress(ci);
    if ((int)ci->output_width != r->width || (int)ci->output_height != r->height ||
        ci->output_components != (nc == 4 ? 4 : r->stored)) {
        snprintf(r->errors.msg, sizeof r->errors.msg, "corrupt JPEG: unexpected output shape");
        return MOCO_ERR;
    }
    int full_height = r->height;
    if (r->x0 > 0 || x1 < r->width) {
        JDIMENSION xoff = (JDIMENSION)r->x0, cw = (JDIMENSION)(x1 - r->x0);
        jpeg_crop_scanline(ci, &xoff, &cw); /* widened to whole iMCUs */
        r->x0 = (int)xoff;
        r->width = (int)cw;
    }
    r->height = y1 - r->y0;
    size_t row_bytes = (size_t)r->width * r->stored;
    r->pixels = malloc((size_t)r->height * r->width * (want > r->stored ? want : r->stored));
    if (nc == 4)
        r->cmyk = malloc((size_t)r->width * 4 * JPEG_ROWS_AT_ONCE);
    if (!r->pixels || (nc == 4 && !r->cmyk)) {
        snprintf(r->errors.msg, sizeof r->errors.msg, "out of memory for a %dx%d JPEG", r->width,
                 r->height);
        return MOCO_ERR;
    }
    if (r->y0 > 0 && (int)jpeg_skip_scanlines(ci, (JDIMENSION)r->y0) != r->y0) {
        snprintf(r->errors.msg, sizeof r->errors.msg, "corrupt JPEG: cannot skip to row %d", r->y0);
        return MOCO_ERR;
    }
    for (int row = 0; row < r->height;) {
        int n = r->height - row < JPEG_ROWS_AT_ONCE ? r->height - row : JPEG_ROWS_AT_ONCE;
        JSAMPROW rows[JPEG_ROWS_AT_ONCE];
        for (int i = 0; i < n; i++)
            rows[i] = nc == 4 ? r->cmyk + (size_t)i * r->width * 4 : r->pixels + (size_t)(row + i) * row_bytes;
        int got = (int)jpeg_read_scanlines(ci, rows, (JDIMENSION)n);
        if (got <= 0) { /* cannot happen with a memory source; never loop forever */
            snprintf(r->errors.msg, sizeof r->errors.msg, "corrupt JPEG: no progress at row %d", r->y0 + row);
            return MOCO_ERR;
        }
        if (nc == 4)
            for (int i = 0; i < got; i++)
                cmyk_inverted_to_rgb(rows[i], r->pixels + (size_t)(row + i) * row_bytes, r->width);
        row += got;
    }
    if (r->y0 + r->height < full_height)
        jpeg_abort_decompress(ci); /* the rows below the region are not needed */
    else
        jpeg_finish_decompress(ci); /* reads to EOI: a file cut after the last scan is truncated too */
    return MOCO_OK;
}

static void jpeg_reader_free(jpeg_reader *r)
{
    if (r->created)
        jpeg_destroy_decompress(&r->cinfo);
    free(r->pixels);
    free(r->cmyk);
}

static int jpeg_decode(const uint8_t *data, size_t len, int want, int64_t max_pixels,
                       const image_decode_options *opt, image *out, image_origin *origin, moco_error *err)
{
    jpeg_reader r;
    memset(&r, 0, sizeof r);
    r.cinfo.err = &r.errors.pub;
    jpeg_errors_init(&r.errors, "corrupt JPEG");
    int rc = jpeg_run(&r, data, len, want, max_pixels, opt);
    if (rc == MOCO_OK) {
        finish_image(r.pixels, r.height, r.width, r.stored, want ? want : r.stored, out);
        r.pixels = NULL;
        double scale = r.scale_num / 8.0;
        *origin = (image_origin){r.x0 / scale, r.y0 / scale, scale};
    } else {
        moco_fail(err, "%s", r.errors.msg);
    }
    jpeg_reader_free(&r);
    return rc;
}

static int jpeg_probe(const uint8_t *data, size_t len, int *height, int *width, int *channels,
                      moco_error *err)
{
    jpeg_reader r;
    memset(&r, 0, sizeof r);
    r.cinfo.err = &r.errors.pub;
    jpeg_errors_init(&r.errors, "corrupt JPEG");
    int rc = jpeg_run(&r, data, len, -1, 0, NULL);
    if (rc == MOCO_OK) {
        *height = r.height;
        *width = r.width;
        *channels = r.stored;
    } else {
        moco_fail(err, "%s", r.errors.msg);
    }
    jpeg_reader_free(&r);
    return rc;
}

/* A growing malloc'd output buffer for libjpeg. Not jpeg_mem_dest: after an error it leaves its
 * latest buffer unreachable (it reports the buffer only when compression ends). */
typedef struct {
    struct jpeg_destination_mgr pub;
    uint8_t *buf;
    size_t cap;
} jpeg_memory_dest;

static void dest_init(j_compress_ptr cinfo)
{
    jpeg_memory_dest *d = (jpeg_memory_dest *)cinfo->dest;
    d->cap = 1 << 16;
    d->buf = malloc(d->cap);
    if (!d->buf)
        ERREXIT1(cinfo, JERR_OUT_OF_MEMORY, 0);
    d->pub.next_output_byte = d->buf;
    d->pub.free_in_buffer = d->cap;
}

static boolean dest_grow(j_compress_ptr cinfo)
{
    /* libjpeg calls this when the whole buffer is full */
    jpeg_memory_dest *d = (jpeg_memory_dest *)cinfo->dest;
    uint8_t *bigger = realloc(d->buf, d->cap * 2);
    if (!bigger)
        ERREXIT1(cinfo, JERR_OUT_OF_MEMORY, 1);
    d->buf = bigger;
    d->pub.next_output_byte = d->buf + d->cap;
    d->pub.free_in_buffer = d->cap;
    d->cap *= 2;
    return TRUE;
}

static void dest_term(j_compress_ptr cinfo)
{
    (void)cinfo; /* the length is cap - free_in_buffer, read by the caller */
}

typedef struct {
    struct jpeg_compress_struct cinfo;
    jpeg_errors errors;
    jpeg_memory_dest dest;
    int created;
} jpeg_writer;

static int jpeg_write_run(jpeg_writer *w, const image *img, int quality)
{
    struct jpeg_compress_struct *ci = &w->cinfo;
    if (setjmp(w->errors.jump))
        return MOCO_ERR;
    jpeg_create_compress(ci);
    w->created = 1;
    w->dest.pub.init_destination = dest_init;
    w->dest.pub.empty_output_buffer = dest_grow;
    w->dest.pub.term_destination = dest_term;
    ci->dest = &w->dest.pub;
    ci->image_width = (JDIMENSION)img->width;
    ci->image_height = (JDIMENSION)img->height;
    ci->input_components = img->channels;
    ci->in_color_space = img->channels == 3 ? JCS_RGB : JCS_GRAYSCALE;
    /* As PIL's JpegEncode.c by default: libjpeg's defaults (YCbCr 4:2:0 for RGB, JFIF), the quality
     * tables forced to baseline, Huffman tables not optimised. */
    jpeg_set_defaults(ci);
    jpeg_set_quality(ci, quality, TRUE);
    ci->optimize_coding = FALSE;
    jpeg_start_compress(ci, TRUE);
    size_t row_bytes = (size_t)img->width * img->channels;
    while (ci->next_scanline < ci->image_height) {
        JSAMPROW row = img->pixels + (size_t)ci->next_scanline * row_bytes;
        jpeg_write_scanlines(ci, &row, 1);
    }
    jpeg_finish_compress(ci);
    return MOCO_OK;
}

int image_encode_jpeg(const image *img, int quality, uint8_t **out, size_t *out_len, moco_error *err)
{
    *out = NULL;
    *out_len = 0;
    if (!img || !img->pixels || (img->channels != 1 && img->channels != 3) || img->height < 1 ||
        img->width < 1)
        return moco_fail(err, "JPEG encoding: need a 1- or 3-channel image");
    if (img->height > JPEG_MAX_DIMENSION || img->width > JPEG_MAX_DIMENSION)
        return moco_fail(err, "JPEG encoding: %dx%d exceeds JPEG's limit of %d pixels a side",
                         img->width, img->height, (int)JPEG_MAX_DIMENSION);
    if (quality < 1 || quality > 100)
        return moco_fail(err, "JPEG encoding: quality %d is not in 1..100", quality);
    jpeg_writer w;
    memset(&w, 0, sizeof w);
    w.cinfo.err = &w.errors.pub;
    jpeg_errors_init(&w.errors, "JPEG encoding failed");
    int rc = jpeg_write_run(&w, img, quality);
    if (rc == MOCO_OK) {
        *out = w.dest.buf;
        *out_len = w.dest.cap - w.dest.pub.free_in_buffer;
        w.dest.buf = NULL;
    } else {
        moco_fail(err, "%s", w.errors.msg);
    }
    if (w.created)
        jpeg_destroy_compress(&w.cinfo);
    free(w.dest.buf);
    return rc;
}

/* ---- PNG ---- */

typedef struct {
    png_structp png;
    png_infop info;
    const uint8_t *data;
    size_t len, pos;
    int height, width, stored; /* stored: 1 grey (+alpha), 3 palette or RGB (+alpha) */
    uint8_t *pixels;
    char msg[300];
} png_reader;

static void png_on_error(png_structp png, png_const_charp what)
{
    png_reader *r = png_get_error_ptr(png);
    if (!r->msg[0]) /* the read callback may have set "truncated PNG" already */
        snprintf(r->msg, sizeof r->msg, "corrupt PNG: %s", what);
    png_longjmp(png, 1);
}

static void png_on_warning(png_structp png, png_const_charp what)
{
    (void)png; /* libpng's warnings (bad CRC on an ancillary chunk, ...) are ignored as PIL does */
    (void)what;
}

static void png_read_memory(png_structp png, png_bytep out, size_t n)
{
    png_reader *r = png_get_io_ptr(png);
    if (n > r->len - r->pos) {
        snprintf(r->msg, sizeof r->msg, "truncated PNG");
        png_error(png, "truncated PNG");
    }
    memcpy(out, r->data + r->pos, n);
    r->pos += n;
}

/* Read the header and, when `want` is not -1, decode into r->pixels (see jpeg_run). */
static int png_run(png_reader *r, int want, int64_t max_pixels)
{
    png_structp png = r->png;
    png_infop info = r->info;
    if (setjmp(png_jmpbuf(png)))
        return MOCO_ERR;
    png_set_read_fn(png, r, png_read_memory);
    /* No side may be longer than the whole pixel budget; the product is checked below. */
    png_uint_32 side_max = max_pixels > (int64_t)PNG_UINT_31_MAX ? PNG_UINT_31_MAX : (png_uint_32)max_pixels;
    png_set_user_limits(png, side_max, side_max);
    png_read_info(png, info);
    png_uint_32 w, h;
    int depth, color, interlace;
    png_get_IHDR(png, info, &w, &h, &depth, &color, &interlace, NULL, NULL);
    r->width = (int)w;
    r->height = (int)h;
    /* PIL's PngImagePlugin: palette and RGB(A) open as "P"/"RGB"/"RGBA", grey(+alpha) as "1"/"L"/
     * "LA"/"I"; convert() then gives 3 or 1 channel. The palette type has the colour bit set. */
    r->stored = (color & PNG_COLOR_MASK_COLOR) ? 3 : 1;
    if (want < 0)
        return MOCO_OK;
    if ((int64_t)w * h > max_pixels)
        return too_many_pixels(r->msg, sizeof r->msg, w, h, max_pixels);

    png_set_expand(png);      /* palette -> RGB, 1/2/4-bit grey -> 8 bits (scaled), tRNS -> alpha */
    png_set_strip_16(png);    /* 16 -> 8 bits: the high byte, as PIL's ;16B unpackers */
    png_set_strip_alpha(png); /* dropped, not composited: convert("RGB") drops it */
    int passes = png_set_interlace_handling(png);
    png_read_update_info(png, info);
    size_t row_bytes = (size_t)w * r->stored;
    if (png_get_channels(png, info) != r->stored || png_get_bit_depth(png, info) != 8 ||
        png_get_rowbytes(png, info) != row_bytes) {
        snprintf(r->msg, sizeof r->msg, "corrupt PNG: unexpected layout after expansion");
        return MOCO_ERR;
    }
    r->pixels = malloc((size_t)h * w * (want > r->stored ? want : r->stored));
    if (!r->pixels) {
        snprintf(r->msg, sizeof r->msg, "out of memory for a %ux%u PNG", (unsigned)w, (unsigned)h);
        return MOCO_ERR;
    }
    /* png_read_image without its array of row pointers: every pass visits every row. */
    for (int pass = 0; pass < passes; pass++)
        for (png_uint_32 y = 0; y < h; y++)
            png_read_row(png, r->pixels + (size_t)y * row_bytes, NULL);
    /* Read on to IEND so that a cut-off file fails. Stricter than PIL, which stops after the
     * image data and so accepts a PNG whose last chunks are missing. */
    png_read_end(png, NULL);
    return MOCO_OK;
}

/* Create libpng's structs, run, clean up: shared by decode and probe (want = -1). */
static int png_start(const uint8_t *data, size_t len, int want, int64_t max_pixels, png_reader *r,
                     moco_error *err)
{
    memset(r, 0, sizeof *r);
    r->data = data;
    r->len = len;
    r->png = png_create_read_struct(PNG_LIBPNG_VER_STRING, r, png_on_error, png_on_warning);
    if (r->png)
        r->info = png_create_info_struct(r->png);
    if (!r->png || !r->info) {
        png_destroy_read_struct(r->png ? &r->png : NULL, NULL, NULL);
        return moco_fail(err, "out of memory for the PNG reader");
    }
    int rc = png_run(r, want, max_pixels);
    png_destroy_read_struct(&r->png, &r->info, NULL);
    if (rc != MOCO_OK) {
        free(r->pixels);
        r->pixels = NULL;
        return moco_fail(err, "%s", r->msg);
    }
    return MOCO_OK;
}

/* ---- entry points ---- */

int image_probe(const uint8_t *data, size_t len, int *height, int *width, int *channels, moco_error *err)
{
    switch (image_sniff(data, len)) {
    case IMAGE_JPEG: return jpeg_probe(data, len, height, width, channels, err);
    case IMAGE_PNG: {
        png_reader r;
        if (png_start(data, len, -1, IMAGE_DEFAULT_MAX_PIXELS, &r, err) != MOCO_OK)
            return MOCO_ERR;
        *height = r.height;
        *width = r.width;
        *channels = r.stored;
        return MOCO_OK;
    }
    default: return fail_not_image(data, len, err);
    }
}

int image_decode_region(const uint8_t *data, size_t len, const image_decode_options *opt, image *out,
                        image_origin *origin, moco_error *err)
{
    memset(out, 0, sizeof *out);
    *origin = (image_origin){0, 0, 1};
    int want = opt ? opt->channels : 0;
    int64_t max_pixels = opt && opt->max_pixels > 0 ? opt->max_pixels : IMAGE_DEFAULT_MAX_PIXELS;
    if (want != 0 && want != 1 && want != 3)
        return moco_fail(err, "image_decode: %d channels asked for (0, 1 or 3)", want);
    switch (image_sniff(data, len)) {
    case IMAGE_JPEG: return jpeg_decode(data, len, want, max_pixels, opt, out, origin, err);
    case IMAGE_PNG: {
        png_reader r;
        if (png_start(data, len, want, max_pixels, &r, err) != MOCO_OK)
            return MOCO_ERR;
        finish_image(r.pixels, r.height, r.width, r.stored, want ? want : r.stored, out);
        return MOCO_OK;
    }
    default: return fail_not_image(data, len, err);
    }
}

int image_decode(const uint8_t *data, size_t len, const image_decode_options *opt, image *out,
                 moco_error *err)
{
    image_origin origin;
    return image_decode_region(data, len, opt, out, &origin, err);
}
