/* resample.c — Pillow 9.4's convolution resampling (libImaging/Resample.c) for u8 HWC images.
 *
 * Bit-exact with Image.resize(size, filter, box) on "L" and "RGB" images: coefficients computed in
 * double as precompute_coeffs does (box corners in float, as PIL's argument parsing makes them),
 * turned into 22-bit fixed point as normalize_coeffs_8bpc does, then a horizontal pass over only the
 * source rows the vertical pass will read, then the vertical pass, each rounding and clamping to u8.
 * Not here: the 16/32-bit modes, NEAREST (an affine transform in Pillow) and the RGBA/LA
 * premultiplication Image.resize adds in Python: 2 and 4 channels are resampled as independent bands.
 *
 * All scratch memory (coefficients, bounds, the intermediate image, one accumulator row, the
 * horizontal pass's transposed block of rows) comes from one malloc per call. The vertical pass runs
 * row by row over an int32 accumulator rather than column by column as Pillow does, and the
 * horizontal pass over several rows at once; integer sums do not depend on order, so the bytes are
 * the same. */
#include "resample.h"

#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/* 8 bits of result and 2 bits of headroom for filters with negative lobes (Pillow's comment). */
#define PRECISION_BITS (32 - 8 - 2)
#define HALF (1 << (PRECISION_BITS - 1))

/* The five filters, as Pillow writes them (including its float constants 0.54f and 0.46f). */
static double box_filter(double x)
{
    return (x > -0.5 && x <= 0.5) ? 1.0 : 0.0;
}

static double bilinear_filter(double x)
{
    if (x < 0.0)
        x = -x;
    return x < 1.0 ? 1.0 - x : 0.0;
}

static double hamming_filter(double x)
{
    if (x < 0.0)
        x = -x;
    if (x == 0.0)
        return 1.0;
    if (x >= 1.0)
        return 0.0;
    x = x * M_PI;
    return sin(x) / x * (0.54f + 0.46f * cos(x));
}

static double bicubic_filter(double x)
{
    const double a = -0.5; /* Keys' cubic, as Pillow */
    if (x < 0.0)
        x = -x;
    if (x < 1.0)
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0)
        return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

static double sinc_filter(double x)
{
    if (x == 0.0)
        return 1.0;
    x = x * M_PI;
    return sin(x) / x;
}

static double lanczos_filter(double x)
{
    if (-3.0 <= x && x < 3.0) /* truncated sinc, a = 3 */
        return sinc_filter(x) * sinc_filter(x / 3);
    return 0.0;
}

typedef struct {
    double (*fn)(double x);
    double support;
} filter_def;

static const filter_def FILTERS[] = {
    [RESAMPLE_BOX] = {box_filter, 0.5},         [RESAMPLE_BILINEAR] = {bilinear_filter, 1.0},
    [RESAMPLE_HAMMING] = {hamming_filter, 1.0}, [RESAMPLE_BICUBIC] = {bicubic_filter, 2.0},
    [RESAMPLE_LANCZOS] = {lanczos_filter, 3.0},
};

/* Coefficients of one axis: out_size rows of ksize taps; output xx reads source pixels
 * bounds[2xx] .. bounds[2xx] + bounds[2xx+1] - 1 with weights kk[xx*ksize ...]. */
typedef struct {
    int ksize;
    int *bounds;
    int32_t *kk;
} axis_coeffs;

/* Pillow's precompute_coeffs: how many taps the widest output pixel needs. in0/in1 are floats
 * because Pillow receives the box as floats; (in1 - in0) is a float subtraction there too. */
static int coeff_ksize(float in0, float in1, int out_size, const filter_def *f)
{
    double filterscale = (double)(in1 - in0) / out_size;
    if (filterscale < 1.0)
        filterscale = 1.0;
    return (int)ceil(f->support * filterscale) * 2 + 1;
}

/* Pillow's precompute_coeffs followed by normalize_coeffs_8bpc; k is scratch for one row of
 * double weights (ksize of them). */
static void coeff_compute(int in_size, float in0, float in1, int out_size, const filter_def *f,
                          axis_coeffs *a, double *k)
{
    double scale = (double)(in1 - in0) / out_size;
    double filterscale = scale < 1.0 ? 1.0 : scale; /* widen the filter when shrinking: antialias */
    double support = f->support * filterscale;
    double ss = 1.0 / filterscale;
    for (int xx = 0; xx < out_size; xx++) {
        double center = in0 + (xx + 0.5) * scale;
        double ww = 0.0;
        int xmin = (int)(center - support + 0.5); /* (int) truncates, as in Pillow */
        if (xmin < 0)
            xmin = 0;
        int xmax = (int)(center + support + 0.5);
        if (xmax > in_size)
            xmax = in_size;
        xmax -= xmin;
        for (int x = 0; x < xmax; x++) {
            k[x] = f->fn((x + xmin - center + 0.5) * ss);
            ww += k[x];
        }
        int32_t *kk = a->kk + (size_t)xx * a->ksize;
        for (int x = 0; x < a->ksize; x++) {
            double w = 0.0;
            if (x < xmax)
                w = ww != 0.0 ? k[x] / ww : k[x];
            /* normalize_coeffs_8bpc: round half away from zero into 22-bit fixed point */
            kk[x] = w < 0 ? (int32_t)(-0.5 + w * (1 << PRECISION_BITS))
                          : (int32_t)(0.5 + w * (1 << PRECISION_BITS));
        }
        a->bounds[2 * xx] = xmin;
        a->bounds[2 * xx + 1] = xmax;
    }
}

/* Pillow's clip8: the fixed-point sum back to a byte, clamped. */
static inline uint8_t clip8(int32_t v)
{
    v >>= PRECISION_BITS;
    /* two ifs rather than one ?: chain: GCC vectorises these into saturating packs and min/max */
    if (v < 0)
        v = 0;
    if (v > 255)
        v = 255;
    return (uint8_t)v;
}

/* The sums the horizontal pass keeps at once: a block of rows x the bytes a pixel takes there
 * (3 channels padded to 4). 32 int32 are four AVX2 registers. */
#define HLANES 32

/* Pixel `off` of four rows, side by side, pb bytes each (for 3 channels, the 4th byte is the next
 * pixel's red, ignored). A grey pixel goes through a word: GCC vectorises the shifts, not the
 * single-byte stores. */
static inline __attribute__((always_inline)) void four_pixels(uint8_t *restrict c, const uint8_t *const p[4],
                                                             size_t off, int pb)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    if (pb == 1) {
        uint32_t w = p[0][off] | p[1][off] << 8 | p[2][off] << 16 | (uint32_t)p[3][off] << 24;
        memcpy(c, &w, 4);
        return;
    }
#endif
    for (int i = 0; i < 4; i++)
        memcpy(c + i * pb, p[i] + off, pb);
}

/* ImagingResampleHorizontal_8bpc over `rows` source rows starting at row0, into tmp (rows x dw).
 * One row at a time, an output pixel is a loop over a few taps (3 to 5 for the usual shrinks)
 * whose channels interleave: nothing there for the vectoriser. So the pass takes a block of rows
 * (32 grey rows, 8 RGB rows) and first transposes the source columns they read into
 * cols[x][row][byte], pixels padded to 4 bytes for 3 channels. A tap then adds one weight times
 * HLANES contiguous bytes, a loop of compile-time length that vectorises as the vertical pass does,
 * and its weight is loaded once for all the rows. Each sum still runs from HALF over the taps in
 * Pillow's order, in int32: the same bytes. cols holds HLANES * sw bytes; sw is the source row's
 * width in pixels, past which no byte is read. Inlined with a constant `channels`. */
static inline __attribute__((always_inline)) void
horizontal_pass(const uint8_t *src, size_t stride, int row0, int rows, int sw, const axis_coeffs *a,
                uint8_t *tmp, int dw, uint8_t *restrict cols, const int channels)
{
    const int pb = channels == 3 ? 4 : channels; /* bytes a pixel takes in cols */
    const int block_rows = HLANES / pb;
    /* the source columns x0 .. x1 - 1 that some output pixel reads */
    int x0 = a->bounds[0], x1 = x0;
    for (int xx = 0; xx < dw; xx++) {
        if (x0 > a->bounds[2 * xx])
            x0 = a->bounds[2 * xx];
        if (x1 < a->bounds[2 * xx] + a->bounds[2 * xx + 1])
            x1 = a->bounds[2 * xx] + a->bounds[2 * xx + 1];
    }
    /* 3 channels are copied 4 bytes at a time (the 4th is the next pixel's red, ignored), except
     * the row's last pixel, which has no next one */
    int x_wide = channels == 3 && x1 == sw ? x1 - 1 : x1;
    size_t out_stride = (size_t)dw * channels;
    for (int y = 0; y < rows; y += block_rows) {
        int block = rows - y < block_rows ? rows - y : block_rows;
        if (block < block_rows) /* the rows a last, partial block lacks are zeros, not garbage */
            memset(cols, 0, (size_t)(x1 - x0) * HLANES);
        for (int r = 0; r < block; r += 4) {
            /* four rows at a time, the loop GCC vectorises best (a group past the block's end
             * repeats its last row) */
            const uint8_t *p[4];
            for (int i = 0; i < 4; i++)
                p[i] = src + (size_t)(row0 + y + (r + i < block ? r + i : block - 1)) * stride;
            uint8_t *restrict c = cols + (size_t)r * pb;
            for (int x = x0; x < x_wide; x++, c += HLANES)
                four_pixels(c, p, (size_t)x * channels, pb);
            if (channels == 3 && x_wide < x1)
                for (int i = 0; i < 4; i++) {
                    memcpy(c + i * pb, p[i] + (size_t)x_wide * channels, channels);
                    c[i * pb + 3] = 0;
                }
        }
        for (int xx = 0; xx < dw; xx++) {
            const uint8_t *q = cols + (size_t)(a->bounds[2 * xx] - x0) * HLANES;
            const int32_t *k = a->kk + (size_t)xx * a->ksize;
            int n = a->bounds[2 * xx + 1];
            int32_t acc[HLANES];
            uint8_t px[HLANES];
            for (int j = 0; j < HLANES; j++)
                acc[j] = HALF;
            for (int t = 0; t < n; t++, q += HLANES)
                for (int j = 0; j < HLANES; j++)
                    acc[j] += q[j] * k[t];
            for (int j = 0; j < HLANES; j++)
                px[j] = clip8(acc[j]);
            /* 3 channels are stored 4 bytes at a time too, the 4th overwritten by the next pixel,
             * except in the last one; a full block's stores unroll */
            uint8_t *o = tmp + ((size_t)y * dw + xx) * channels;
            if (block == block_rows && (channels != 3 || xx + 1 < dw))
                for (int r = 0; r < block_rows; r++)
                    memcpy(o + r * out_stride, px + r * pb, pb);
            else
                for (int r = 0; r < block; r++)
                    memcpy(o + r * out_stride, px + r * pb, channels);
        }
    }
}

/* ImagingResampleVertical_8bpc: in has rows of `width` bytes (all channels); for each output row,
 * accumulate the weighted source rows it covers into acc, then clip. */
static inline __attribute__((always_inline)) void
vertical_pass(const uint8_t *in, size_t in_stride, size_t width, const axis_coeffs *a, int dh, uint8_t *dst,
              int32_t *restrict acc)
{
    for (int yy = 0; yy < dh; yy++) {
        const int32_t *k = a->kk + (size_t)yy * a->ksize;
        const uint8_t *rows = in + (size_t)a->bounds[2 * yy] * in_stride;
        int n = a->bounds[2 * yy + 1];
        for (size_t i = 0; i < width; i++)
            acc[i] = HALF;
        for (int y = 0; y < n; y++) {
            const uint8_t *restrict row = rows + (size_t)y * in_stride;
            int32_t ky = k[y];
            /* blocks of 16: GCC's -O2 vectorizer only takes loops whose trip count it knows */
            size_t i = 0;
            for (; i + 16 <= width; i += 16)
                for (int j = 0; j < 16; j++)
                    acc[i + j] += row[i + j] * ky;
            for (; i < width; i++)
                acc[i] += row[i] * ky;
        }
        uint8_t *out = dst + (size_t)yy * width;
        for (size_t i = 0; i < width; i++)
            out[i] = clip8(acc[i]);
    }
}

static size_t align16(size_t n)
{
    return (n + 15) & ~(size_t)15;
}

/* Compiled three times, for x86-64-v4 (AVX-512), AVX2 and any x86-64, and picked when the program
 * loads: the two passes vectorise over 64- or 32-byte registers where the CPU has them (AVX2 about
 * 1.3x faster than plain x86-64 here, AVX-512 a few percent more), and the same binary still runs
 * everywhere. The arithmetic is integer, so all give the same bytes. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#endif
static int resample_impl(const uint8_t *src, size_t stride, int sh, int sw, int channels, const double box[4],
                         uint8_t *dst, int dh, int dw, resample_filter filter, int fast, moco_error *err)
{
    if (sh < 1 || sw < 1 || dh < 1 || dw < 1)
        return moco_fail(err, "resample: bad size %dx%d -> %dx%d", sw, sh, dw, dh);
    if (channels < 1 || channels > 4)
        return moco_fail(err, "resample: %d channels (1 to 4 supported)", channels);
    if ((unsigned)filter >= sizeof FILTERS / sizeof FILTERS[0])
        return moco_fail(err, "resample: unknown filter %d", (int)filter);
    /* PIL's _resize receives the box as C floats; the same rounding makes the same coefficients. */
    float b[4] = {0.0f, 0.0f, (float)sw, (float)sh};
    if (box)
        for (int i = 0; i < 4; i++)
            b[i] = (float)box[i];
    /* _resize's checks, written so that NaN fails them */
    if (!(b[0] >= 0 && b[1] >= 0 && b[2] <= sw && b[3] <= sh && b[2] - b[0] >= 0 && b[3] - b[1] >= 0))
        return moco_fail(err, "resample: box (%g, %g, %g, %g) is not inside the %dx%d source", b[0], b[1],
                         b[2], b[3], sw, sh);
    size_t row_bytes = (size_t)dw * channels;

    /* _resize: an integral box of the output's size is a plain crop (ImagingCrop). */
    if (b[0] - (int)b[0] == 0 && b[2] - b[0] == dw && b[1] - (int)b[1] == 0 && b[3] - b[1] == dh) {
        for (int y = 0; y < dh; y++)
            memcpy(dst + (size_t)y * row_bytes,
                   src + (size_t)((int)b[1] + y) * stride + (size_t)(int)b[0] * channels, row_bytes);
        return MOCO_OK;
    }

    /* ImagingResampleInner: a pass is skipped when its axis is unchanged and the box covers it. */
    const filter_def *f = &FILTERS[filter];
    int need_horizontal = dw != sw || b[0] != 0 || b[2] != dw;
    int need_vertical = dh != sh || b[1] != 0 || b[3] != dh;
    axis_coeffs h = {coeff_ksize(b[0], b[2], dw, f), NULL, NULL};
    axis_coeffs v = {coeff_ksize(b[1], b[3], dh, f), NULL, NULL};
    /* ksize grows with the shrink factor (at most ~6 * source size / output size + 3), so the
     * coefficient tables stay O(source + output) in size; the tmp image is at most dw x sh. */
    size_t n_kh = (size_t)dw * h.ksize, n_kv = (size_t)dh * v.ksize;
    size_t k_row = (size_t)(h.ksize > v.ksize ? h.ksize : v.ksize);
    /* fast: shrink the rows first when that leaves the (slower) horizontal pass fewer rows */
    int vertical_first = fast && need_horizontal && need_vertical && sh > dh;
    size_t src_row_bytes = (size_t)sw * channels;
    size_t tmp_bytes = !(need_horizontal && need_vertical) ? 0
                       : vertical_first ? (size_t)dh * src_row_bytes : (size_t)sh * row_bytes;
    size_t acc_len = vertical_first && src_row_bytes > row_bytes ? src_row_bytes : row_bytes;
    size_t off_kv = align16(n_kh * sizeof(int32_t));
    size_t off_bh = off_kv + align16(n_kv * sizeof(int32_t));
    size_t off_bv = off_bh + align16((size_t)dw * 2 * sizeof(int));
    size_t off_k = off_bv + align16((size_t)dh * 2 * sizeof(int));
    size_t off_acc = off_k + align16(k_row * sizeof(double));
    size_t off_cols = off_acc + align16(acc_len * sizeof(int32_t));
    size_t off_tmp = off_cols + align16(need_horizontal ? (size_t)HLANES * sw : 0);
    uint8_t *scratch = malloc(off_tmp + tmp_bytes);
    if (!scratch)
        return moco_fail(err, "resample: out of memory for %dx%d -> %dx%d", sw, sh, dw, dh);
    h.kk = (int32_t *)scratch;
    v.kk = (int32_t *)(scratch + off_kv);
    h.bounds = (int *)(scratch + off_bh);
    v.bounds = (int *)(scratch + off_bv);
    double *k = (double *)(scratch + off_k);
    int32_t *acc = (int32_t *)(scratch + off_acc);
    uint8_t *cols = scratch + off_cols;
    uint8_t *tmp = scratch + off_tmp;

    coeff_compute(sh, b[1], b[3], dh, f, &v, k);
    /* Only the source rows the vertical pass reads go through the horizontal pass. */
    int ybox_first = v.bounds[0];
    int ybox_last = v.bounds[2 * dh - 2] + v.bounds[2 * dh - 1];

    if (vertical_first) {
        coeff_compute(sw, b[0], b[2], dw, f, &h, k);
        vertical_pass(src, stride, src_row_bytes, &v, dh, tmp, acc);
        switch (channels) {
        case 1: horizontal_pass(tmp, src_row_bytes, 0, dh, sw, &h, dst, dw, cols, 1); break;
        case 2: horizontal_pass(tmp, src_row_bytes, 0, dh, sw, &h, dst, dw, cols, 2); break;
        case 3: horizontal_pass(tmp, src_row_bytes, 0, dh, sw, &h, dst, dw, cols, 3); break;
        default: horizontal_pass(tmp, src_row_bytes, 0, dh, sw, &h, dst, dw, cols, 4); break;
        }
        free(scratch);
        return MOCO_OK;
    }
    const uint8_t *in = src; /* what the vertical pass reads: the source or the tmp image */
    size_t in_stride = stride;
    if (need_horizontal) {
        coeff_compute(sw, b[0], b[2], dw, f, &h, k);
        uint8_t *out = need_vertical ? tmp : dst;
        int rows = need_vertical ? ybox_last - ybox_first : dh;
        int row0 = need_vertical ? ybox_first : 0;
        for (int i = 0; i < dh; i++)
            v.bounds[2 * i] -= ybox_first;
        switch (channels) {
        case 1: horizontal_pass(src, stride, row0, rows, sw, &h, out, dw, cols, 1); break;
        case 2: horizontal_pass(src, stride, row0, rows, sw, &h, out, dw, cols, 2); break;
        case 3: horizontal_pass(src, stride, row0, rows, sw, &h, out, dw, cols, 3); break;
        default: horizontal_pass(src, stride, row0, rows, sw, &h, out, dw, cols, 4); break;
        }
        in = tmp;
        in_stride = row_bytes;
    }
    if (need_vertical)
        vertical_pass(in, in_stride, row_bytes, &v, dh, dst, acc);
    else if (!need_horizontal) /* both axes unchanged (Pillow copies) */
        for (int y = 0; y < dh; y++)
            memcpy(dst + (size_t)y * row_bytes, src + (size_t)y * stride, row_bytes);
    free(scratch);
    return MOCO_OK;
}

void resize_short_side(int height, int width, int size, int *out_height, int *out_width)
{
    /* torchvision 0.14 _compute_resized_output_size: new_long = int(size * long / short) with
     * Python's true division; both operands are exact in double, so the quotient rounds the same. */
    int short_side = width <= height ? width : height;
    int long_side = width <= height ? height : width;
    int new_long = (int)((double)((int64_t)size * long_side) / short_side);
    if (width <= height) {
        *out_width = size;
        *out_height = new_long;
    } else {
        *out_width = new_long;
        *out_height = size;
    }
}

int resample_window(const uint8_t *src, size_t stride, int sh, int sw, int channels, const double box[4],
                    uint8_t *dst, int dh, int dw, resample_filter filter, moco_error *err)
{
    return resample_impl(src, stride, sh, sw, channels, box, dst, dh, dw, filter, 0, err);
}

int resample_window_fast(const uint8_t *src, size_t stride, int sh, int sw, int channels, const double box[4],
                         uint8_t *dst, int dh, int dw, resample_filter filter, moco_error *err)
{
    return resample_impl(src, stride, sh, sw, channels, box, dst, dh, dw, filter, 1, err);
}

int resample(const uint8_t *src, int sh, int sw, int channels, const double box[4], uint8_t *dst, int dh,
             int dw, resample_filter filter, moco_error *err)
{
    return resample_window(src, (size_t)sw * (size_t)(channels > 0 ? channels : 1), sh, sw, channels, box, dst,
                           dh, dw, filter, err);
}
