/* enhance.c — the photometric operations of the MoCo augmentation (enhance.h), bit-exact with
 * torchvision 0.14's functional_pil over Pillow 9.4:
 *   brightness, contrast, saturation   ImageEnhance.{Brightness,Contrast,Color} -> Blend.c ImagingBlend
 *   hue                                functional_pil.adjust_hue -> Convert.c rgb2hsv, hsv2rgb
 *   grayscale                          Convert.c rgb2l (the L24 luma), replicated into 3 channels
 *   gaussian blur                      ImageFilter.GaussianBlur -> BoxBlur.c ImagingGaussianBlur
 *   flip                               Image.transpose(FLIP_LEFT_RIGHT)
 *
 * Pillow's expressions are kept with their C types (float, double, int), so every rounding happens
 * where Pillow's does; they are written without per-pixel branches or calls, so GCC vectorises the
 * loops (#pragma omp simd, and an AVX2 clone picked at load time, as in resample.c). An IEEE float
 * operation gives the same bits in a vector lane as in a scalar register, and the build's -std=c11
 * turns off FMA contraction, so the vector code rounds exactly as Pillow's scalar code. Where a
 * Pillow expression is replaced by a cheaper one (fmod, floor, round, a division), a comment says
 * why it is the same; test_enhance checks every colour against PIL.
 *
 * Images are u8 HWC, changed in place. Nothing here allocates, except enhance_gaussian_blur when it
 * is given no scratch buffer. */
#include "enhance.h"

#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/* Compiled three times, for x86-64-v4 (AVX-512), for AVX2 and for any x86-64, and picked when the
 * program loads: the loops vectorise over 64- or 32-byte registers where the CPU has them (the
 * AVX-512 clone takes 10-20% off blur, hue and contrast). All clones compute the same IEEE and
 * integer operations (-std=c11 keeps FMA contraction off even where v4 has FMA), so they give the
 * same bytes. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define MULTIVERSION
#endif

/* GCC's -O2 vectoriser only takes loops it can prove cheap; "omp simd" (the build has -fopenmp)
 * asks for these, whose iterations are independent. Helpers are inlined into each clone. */
#ifdef _OPENMP
#define SIMD _Pragma("omp simd")
#else
#define SIMD
#endif
#define INLINE static inline __attribute__((always_inline))

/* ---- L: Convert.c rgb2l ---- */

/* L24: ITU-R 601-2 luma in 16-bit fixed point, rounded: (19595 R + 38470 G + 7471 B + 0x8000) >> 16. */
INLINE int luma(int r, int g, int b)
{
    return (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16;
}

/* ---- Blend.c ImagingBlend ---- */

/* One byte of Image.blend(in1, in2, alpha), in1 the degenerate image, in2 the image, alpha a C
 * float (Image.blend passes the Python float through "d" and ImagingBlend takes a float):
 *   0 <= alpha <= 1:  out = (UINT8)((int)in1 + alpha * ((int)in2 - (int)in1))
 *   otherwise:        the same float, 0 if <= 0, 255 if >= 255, else truncated.
 * The int difference converts to float exactly, so the product and the sum round as Pillow's.
 * Truncating first and clipping the int after gives the same bytes (a float in (-1, 0) truncates
 * to 0, one in [255, 256) to 255), and vectorises to plain integer min/max. Inside [0, 1] the sum
 * lies between in1 and in2, so the one form serves both branches, and Pillow's shortcuts too
 * (alpha 0 copies in1, alpha 1 copies in2: the float gives the same). */
INLINE uint8_t blend_byte(float in1, float in2, float alpha)
{
    int t = (int)(in1 + alpha * (in2 - in1));
    t = t < 0 ? 0 : t;
    return (uint8_t)(t > 255 ? 255 : t);
}

/* A factor beyond +-2^16 takes every byte that differs from the degenerate past 0 or 255 (clipped
 * the same way) and leaves the others, so bounding it changes nothing and keeps the float well
 * inside an int. NaN, undefined behaviour in Pillow's C, counts as 0 here: the degenerate image. */
static float bounded_factor(float alpha)
{
    if (alpha != alpha)
        return 0.0f;
    return alpha > 65536.0f ? 65536.0f : alpha < -65536.0f ? -65536.0f : alpha;
}

/* Blend every byte with one grey level (Brightness: black; Contrast: the mean grey). */
INLINE void blend_constant(uint8_t *bytes, size_t n, int degenerate, float alpha)
{
    float in1 = (float)degenerate;
    alpha = bounded_factor(alpha);
    SIMD for (size_t i = 0; i < n; i++)
        bytes[i] = blend_byte(in1, bytes[i], alpha);
}

MULTIVERSION void enhance_brightness_channels(uint8_t *pixels, int height, int width, int channels, float factor)
{
    if (factor == 1.0f) /* ImagingBlend's shortcut: a copy of the image */
        return;
    blend_constant(pixels, (size_t)height * width * channels, 0, factor);
}

void enhance_brightness(uint8_t *rgb, int height, int width, float factor)
{
    enhance_brightness_channels(rgb, height, width, 3, factor);
}

MULTIVERSION void enhance_contrast_channels(uint8_t *pixels, int height, int width, int channels, float factor)
{
    size_t count = (size_t)height * width;
    if (factor == 1.0f || count == 0)
        return;
    /* ImageStat.Stat(image.convert("L")).mean[0]: the histogram's sum of i * count[i], kept in a
     * Python float (exact: the sum stays below 2^53), over the pixel count. The L sum of one row
     * fits 32 bits for any width below 2^24. */
    uint64_t sum = 0;
    for (int y = 0; y < height; y++) {
        const uint8_t *row = pixels + (size_t)y * width * channels;
        uint32_t row_sum = 0;
        if (channels == 3) {
            SIMD for (int x = 0; x < width; x++)
                row_sum += (uint32_t)luma(row[3 * x], row[3 * x + 1], row[3 * x + 2]);
        } else {
            SIMD for (int x = 0; x < width; x++)
                row_sum += row[x];
        }
        sum += row_sum;
    }
    double mean = (double)sum / (double)count;
    int grey = (int)(mean + 0.5); /* ImageEnhance.Contrast: int(mean + 0.5) */
    blend_constant(pixels, count * channels, grey, factor);
}

void enhance_contrast(uint8_t *rgb, int height, int width, float factor)
{
    enhance_contrast_channels(rgb, height, width, 3, factor);
}

MULTIVERSION void enhance_saturation(uint8_t *rgb, int height, int width, float factor)
{
    if (factor == 1.0f)
        return;
    /* ImageEnhance.Color: the degenerate is image.convert("L").convert("RGB"), L in all channels. */
    factor = bounded_factor(factor);
    size_t pixels = (size_t)height * width;
    SIMD for (size_t i = 0; i < pixels; i++) {
        uint8_t *p = rgb + 3 * i;
        float l = (float)luma(p[0], p[1], p[2]);
        uint8_t r = blend_byte(l, p[0], factor), g = blend_byte(l, p[1], factor), b = blend_byte(l, p[2], factor);
        p[0] = r;
        p[1] = g;
        p[2] = b;
    }
}

MULTIVERSION void enhance_grayscale(uint8_t *rgb, int height, int width)
{
    size_t pixels = (size_t)height * width;
    SIMD for (size_t i = 0; i < pixels; i++) {
        uint8_t *p = rgb + 3 * i;
        uint8_t l = (uint8_t)luma(p[0], p[1], p[2]);
        p[0] = l;
        p[1] = l;
        p[2] = l;
    }
}

/* ---- Hue: Convert.c rgb2hsv_row and hsv2rgb ---- */

/* Pillow computes the hue round trip in a mix of float and double (below); the single-precision
 * forms here give the same bytes. That was checked against Pillow's arithmetic over the whole
 * domain during development: hsv_of_rgb for all 2^24 colours, hsv2rgb_terms for all 2^24 (h, s, v),
 * and enhance_hue for all colours at all 256 shifts. test_enhance checks all colours against PIL
 * itself at seven hue factors, and a sample of colours at every shift against the arithmetic. */

/* Convert.c rgb2hsv_row ("following colorsys.py") for one pixel: v = max, and for max > min
 *   s = (float)(max - min) / (float)max,           S = (int)(s * 255.0)
 *   rc, gc, bc = (float)(max - c) / (float)(max - min)
 *   h = bc - gc (r is max) | 2.0 + rc - bc (g is max) | 4.0 + gc - rc (b is max)
 *   h = fmod(h / 6.0 + 1.0, 1.0),                  H = (int)(h * 255.0)
 * with h and s C floats and the constants doubles; H = S = 0 for a grey. A channel equal to the
 * max gives exactly 0 and one equal to the min exactly 1, so each branch is base + c or base - c
 * with c = (max - mid) / (max - min), e.g. r max and g min: h = bc - 1. Pillow's expression is
 * exact before its one rounding to float (a float subtraction, or a double sum stored into a
 * float), and so is base +- c in float: the same h. Then h / 6 in float, plus 1 when negative
 * (fmod), and the products by 255 in float give Pillow's H and S. */
INLINE void hsv_of_rgb(int r, int g, int b, int32_t *hue, int32_t *sat, int32_t *val)
{
    int maxc = r > g ? r : g;
    maxc = maxc > b ? maxc : b;
    int minc = r < g ? r : g;
    minc = minc < b ? minc : b;
    int mid = r + g + b - maxc - minc;
    int grey = maxc == minc;
    int base = r == maxc ? (g == minc ? -1 : 1) : g == maxc ? (b == minc ? 1 : 3) : (r == minc ? 3 : 5);
    int rising = r == maxc ? g == minc : g == maxc ? b == minc : r == minc; /* base + c, else base - c */
    /* Every float operation runs unconditionally (a grey divides by 1 and its result is masked
     * off): GCC does not vectorise a float operation that it has to leave inside a branch. */
    float cr = (float)(maxc - minc + grey);
    float c = (float)(maxc - mid) / cr;
    float h6 = ((float)base + (float)(2 * rising - 1) * c) / 6.0f;
    /* fmod: add 1 to a negative h6. A negative h is at most -1/255, so h6 + 1 < 1 then, and its
     * integer part is 0 exactly when h6 < 0 (written without a comparison, which GCC would turn
     * back into a branch around the addition). */
    h6 -= (float)((int)(h6 + 1.0f) - 1);
    float s = cr / (float)(maxc + grey);
    int keep = grey - 1; /* all ones, or 0 for a grey */
    *hue = (int)(h6 * 255.0f) & keep;
    *sat = (int)(s * 255.0f) & keep;
    *val = maxc;
}

/* The arithmetic of Convert.c hsv2rgb ("following colorsys.py") for s > 0:
 *   i = floor((float)h * 6.0 / 255.0), f = (float)h * 6.0 / 255.0 - (float)i (a float)
 *   fs = (float)s / 255.0 (a float)
 *   p = round(v * (1.0 - fs)), q = round(v * (1.0 - fs * f)), t = round(v * (1.0 - fs * (1.0 - f)))
 * with fs * f a float product and the rest double. The same bytes in float: i = 6h / 255 as an
 * integer, n = 6h - 255i, f = n / 255 and 1 - f = (255 - n) / 255 as products by 1/255, rounding
 * half up by adding 0.5 (all values are >= 0). A pixel needs p and one of q (odd i) or t (even i),
 * so qt is whichever its sector uses. */
INLINE void hsv2rgb_terms(int h, int s, int v, int32_t *sector, int32_t *p, int32_t *qt)
{
    int i = (h * 193) >> 13; /* (6h) / 255 for 0 <= h <= 255; 6 for h = 255, which is sector 0 */
    int n = 6 * h - 255 * i;
    int odd = i & 1;
    float fs = (float)s * (1.0f / 255.0f);
    int m = 255 - n + odd * (2 * n - 255); /* odd ? n : 255 - n, as arithmetic: GCC would move the
                                            * conversion below into two branches */
    float frac = (float)m * (1.0f / 255.0f);
    float vf = (float)v;
    *sector = i == 6 ? 0 : i;
    *p = (int)(vf * (1.0f - fs) + 0.5f);
    *qt = (int)(vf * (1.0f - fs * frac) + 0.5f);
}

/* hsv2rgb's switch on the sector k gives (r, g, b) = (v, t, p) (q, v, p) (p, v, t) (p, q, v)
 * (t, p, v) (v, p, q). Per channel that is v, q or t, p by a distance d = 0, 1, 2, which for
 * k = 0..5 is 0 1 2 2 1 0 (red), 1 0 0 1 2 2 (green), 2 2 1 0 0 1 (blue): the closed forms below.
 * The choice is made with masks; as ?: chains GCC turned them into branches and masked stores.
 * A grey needs no case of its own: s = 0 makes p = q = t = v, as Pillow's "if (s == 0)" does. */
INLINE int hsv2rgb_pick(int d, int v, int p, int qt)
{
    return (v & -(d == 0)) | (qt & -(d == 1)) | (p & -(d == 2));
}

INLINE int abs_int(int x)
{
    return x < 0 ? -x : x;
}

MULTIVERSION void enhance_hue(uint8_t *rgb, int height, int width, float hue_factor)
{
    /* adjust_hue adds np.uint8(hue_factor * 255) to the hue byte; hue_factor * 255 is a double
     * product there (ColorJitter's factor is a float32 value held in a Python float, so the float
     * argument loses nothing). numpy 1.24 converts a negative double to uint8 by C truncation toward
     * zero, then wraps modulo 256: np.uint8(-25.5) == 231, np.uint8(-127.5) == 129,
     * np.uint8(-0.9) == 0, np.uint8(12.75) == 12. The uint8 addition wraps modulo 256 too. */
    unsigned shift = (unsigned)(int)((double)hue_factor * 255.0) & 255u;
    size_t pixels = (size_t)height * width;
    /* Loops over a block of pixels, each storing all it computes (in one loop GCC moves the float
     * work into the branches of the final selection and then cannot vectorise it); the bytes are
     * widened and narrowed in loops of their own, so the float loops run 8 pixels to an AVX2
     * register rather than 32 pixels spread over many. */
    enum { BLOCK = 256 };
    int32_t r[BLOCK], g[BLOCK], b[BLOCK], hue[BLOCK], sat[BLOCK], val[BLOCK], sector[BLOCK], p[BLOCK], qt[BLOCK];
    for (size_t i0 = 0; i0 < pixels; i0 += BLOCK) {
        int n = pixels - i0 < BLOCK ? (int)(pixels - i0) : BLOCK;
        uint8_t *px = rgb + 3 * i0;
        SIMD for (int i = 0; i < n; i++) {
            r[i] = px[3 * i];
            g[i] = px[3 * i + 1];
            b[i] = px[3 * i + 2];
        }
        SIMD for (int i = 0; i < n; i++) {
            hsv_of_rgb(r[i], g[i], b[i], &hue[i], &sat[i], &val[i]);
            hue[i] = (int32_t)(((unsigned)hue[i] + shift) & 255u); /* torchvision's uint8 addition */
        }
        SIMD for (int i = 0; i < n; i++)
            hsv2rgb_terms(hue[i], sat[i], val[i], &sector[i], &p[i], &qt[i]);
        SIMD for (int i = 0; i < n; i++) {
            int k2 = 2 * sector[i], v = val[i];
            int d_red = 2 - abs_int(k2 - 5) / 2, d_green = abs_int(k2 - 3) / 2, d_blue = abs_int(k2 - 7) / 2;
            r[i] = hsv2rgb_pick(d_red, v, p[i], qt[i]);
            g[i] = hsv2rgb_pick(d_green < 2 ? d_green : 2, v, p[i], qt[i]);
            b[i] = hsv2rgb_pick(d_blue < 2 ? d_blue : 2, v, p[i], qt[i]);
        }
        SIMD for (int i = 0; i < n; i++) {
            px[3 * i] = (uint8_t)r[i];
            px[3 * i + 1] = (uint8_t)g[i];
            px[3 * i + 2] = (uint8_t)b[i];
        }
    }
}

/* ---- Gaussian blur: BoxBlur.c ---- */

/* ImagingGaussianBlur (Pillow 9.4): the radius of the extended box filter whose `passes` passes
 * have the variance sigma^2 (Gwosdek et al., SSVM 2011, equations 7, 11, 14), in Pillow's mix of
 * float variables and double constants. */
static float box_radius(float sigma, int passes)
{
    float sigma2 = sigma * sigma / passes;
    float L = (float)sqrt(12.0 * sigma2 + 1.0);
    float l = (float)floor((L - 1.0) / 2.0);
    float a = (2 * l + 1) * (l * (l + 1) - 3 * sigma2);
    a /= 6 * (sigma2 - (l + 1) * (l + 1));
    return l + a;
}

/* ImagingHorizontalBoxBlur's weights, 8.24 fixed point: ww for each of the 2r + 1 whole taps, fw
 * for each of the two fractional taps at distance r + 1. ww * (2r + 1) + 2 fw <= 2^24, so every
 * sum below stays under 2^32. */
typedef struct {
    int r;
    uint32_t ww, fw;
} box_weights;

static box_weights box_weights_of(float radius)
{
    box_weights w;
    w.r = (int)radius;
    w.ww = (uint32_t)((float)(1u << 24) / (radius * 2 + 1));
    w.fw = ((1u << 24) - (uint32_t)(w.r * 2 + 1) * w.ww) / 2;
    return w;
}

/* SAVE(ADD_FAR(...)): acc is the sum of the 2r + 1 whole taps, far the two fractional taps. */
INLINE uint8_t box_save(uint32_t acc, uint32_t far, uint32_t ww, uint32_t fw)
{
    return (uint8_t)((acc * ww + far * fw + (1u << 23)) >> 24);
}

INLINE int clamp_index(int i, int last)
{
    return i < 0 ? 0 : i > last ? last : i;
}

/* Pillow's three loops (edgeA, edgeB) and its starting acc amount to this: at every position x the
 * window x - r .. x + r and the fractional taps x +- (r + 1), each index clamped to the line, which
 * is how the first and last pixels are repeated. So every output is a function of its taps alone,
 * and the order the outputs are computed in does not matter. */

/* One output pixel of a horizontal pass with every tap index clamped: the ends of a row. */
INLINE void box_pixel_clamped(const uint8_t *in, uint8_t *out, int n, const int c, int r, int x, uint32_t ww,
                              uint32_t fw)
{
    for (int ch = 0; ch < c; ch++) {
        uint32_t acc = 0;
        for (int k = -r; k <= r; k++)
            acc += in[clamp_index(x + k, n - 1) * c + ch];
        uint32_t far = (uint32_t)in[clamp_index(x - r - 1, n - 1) * c + ch] +
                       in[clamp_index(x + r + 1, n - 1) * c + ch];
        out[x * c + ch] = box_save(acc, far, ww, fw);
    }
}

/* One horizontal pass over one row of n pixels of c channels, for r <= 1 (sigma < 2.45, so all of
 * the recipe's sigma <= 2): the window summed directly, vectorised over the bytes of the row's interior;
 * the pixels whose taps reach past an end are done one by one. r and c are constants after
 * inlining, so the window sum unrolls. */
INLINE void box_row_direct(const uint8_t *restrict in, uint8_t *restrict out, int n, const int c, const int r,
                           uint32_t ww, uint32_t fw)
{
    int edge = r + 1 < n ? r + 1 : n; /* pixels 0 .. edge-1 and n-edge .. n-1 reach past an end */
    for (int x = 0; x < edge; x++)
        box_pixel_clamped(in, out, n, c, r, x, ww, fw);
    for (int x = n - edge > edge ? n - edge : edge; x < n; x++)
        box_pixel_clamped(in, out, n, c, r, x, ww, fw);
    const int reach = (r + 1) * c;
    SIMD for (int j = edge * c; j < (n - edge) * c; j++) {
        uint32_t acc = 0;
        for (int k = -r; k <= r; k++)
            acc += in[j + k * c];
        out[j] = box_save(acc, (uint32_t)in[j - reach] + in[j + reach], ww, fw);
    }
}

enum { SWEEP_MAX_R = 16 }; /* window sums up to 33 * 255 fit 16 bits */

/* The same for 2 <= r <= SWEEP_MAX_R: the interior's window sums built one tap at a time, each a
 * vectorised sweep over a block of the row into 16-bit sums. */
INLINE void box_row_sweep(const uint8_t *restrict in, uint8_t *restrict out, int n, const int c, int r,
                          uint32_t ww, uint32_t fw)
{
    enum { BLOCK = 2048 };
    uint16_t acc[BLOCK];
    int edge = r + 1 < n ? r + 1 : n;
    for (int x = 0; x < edge; x++)
        box_pixel_clamped(in, out, n, c, r, x, ww, fw);
    for (int x = n - edge > edge ? n - edge : edge; x < n; x++)
        box_pixel_clamped(in, out, n, c, r, x, ww, fw);
    const int reach = (r + 1) * c;
    for (int j0 = edge * c; j0 < (n - edge) * c; j0 += BLOCK) {
        int m = (n - edge) * c - j0 < BLOCK ? (n - edge) * c - j0 : BLOCK;
        const uint8_t *mid = in + j0;
        SIMD for (int j = 0; j < m; j++)
            acc[j] = mid[j - r * c];
        for (int k = -r + 1; k <= r; k++)
            SIMD for (int j = 0; j < m; j++)
                acc[j] = (uint16_t)(acc[j] + mid[j + k * c]);
        SIMD for (int j = 0; j < m; j++)
            out[j0 + j] = box_save(acc[j], (uint32_t)mid[j - reach] + mid[j + reach], ww, fw);
    }
}

/* ImagingLineBoxBlur8/32 as Pillow runs it, a running window sum along the row, for any r. */
INLINE void box_row_running(const uint8_t *restrict in, uint8_t *restrict out, int n, const int c, int r,
                            uint32_t ww, uint32_t fw)
{
    int last = n - 1;
    for (int ch = 0; ch < c; ch++) {
        uint32_t acc = in[ch] * (uint32_t)(r + 1); /* the window of x = -1 */
        for (int k = 0; k < r; k++)
            acc += in[clamp_index(k, last) * c + ch];
        for (int x = 0; x < n; x++) {
            uint32_t sub = in[clamp_index(x - r - 1, last) * c + ch];
            acc += in[clamp_index(x + r, last) * c + ch] - sub;
            out[x * c + ch] = box_save(acc, sub + in[clamp_index(x + r + 1, last) * c + ch], ww, fw);
        }
    }
}

INLINE void box_row(const uint8_t *in, uint8_t *out, int n, const int c, box_weights w)
{
    if (w.r == 0)
        box_row_direct(in, out, n, c, 0, w.ww, w.fw);
    else if (w.r == 1)
        box_row_direct(in, out, n, c, 1, w.ww, w.fw);
    else if (w.r <= SWEEP_MAX_R)
        box_row_sweep(in, out, n, c, w.r, w.ww, w.fw);
    else
        box_row_running(in, out, n, c, w.r, w.ww, w.fw);
}

/* One vertical pass (Pillow: transpose, a horizontal pass, transpose back) over `rows` rows of n
 * bytes, src into dst: the running window sum down every column, vectorised across the columns,
 * a block of columns at a time so the sums stay on the stack. */
INLINE void box_columns(const uint8_t *restrict src, uint8_t *restrict dst, int rows, size_t n, box_weights w)
{
    enum { BLOCK = 1024 };
    uint32_t acc[BLOCK];
    int r = w.r, last = rows - 1;
    uint32_t ww = w.ww, fw = w.fw;
    for (size_t j0 = 0; j0 < n; j0 += BLOCK) {
        size_t m = n - j0 < BLOCK ? n - j0 : BLOCK;
        const uint8_t *first = src + j0;
        SIMD for (size_t j = 0; j < m; j++)
            acc[j] = first[j] * (uint32_t)(r + 1);
        for (int k = 0; k < r; k++) {
            const uint8_t *row = src + (size_t)clamp_index(k, last) * n + j0;
            SIMD for (size_t j = 0; j < m; j++)
                acc[j] += row[j];
        }
        for (int y = 0; y < rows; y++) {
            const uint8_t *sub = src + (size_t)clamp_index(y - r - 1, last) * n + j0;
            const uint8_t *add = src + (size_t)clamp_index(y + r, last) * n + j0;
            const uint8_t *far = src + (size_t)clamp_index(y + r + 1, last) * n + j0;
            uint8_t *out = dst + (size_t)y * n + j0;
            SIMD for (size_t j = 0; j < m; j++) {
                uint32_t a = acc[j] + add[j] - sub[j];
                acc[j] = a;
                out[j] = box_save(a, (uint32_t)sub[j] + far[j], ww, fw);
            }
        }
    }
}

/* The same pass for r <= 1, with the window summed directly from its rows: no sums to keep. */
INLINE void box_columns_direct(const uint8_t *restrict src, uint8_t *restrict dst, int rows, size_t n, const int r,
                               uint32_t ww, uint32_t fw)
{
    int last = rows - 1;
    for (int y = 0; y < rows; y++) {
        const uint8_t *above = src + (size_t)clamp_index(y - r - 1, last) * n;
        const uint8_t *below = src + (size_t)clamp_index(y + r + 1, last) * n;
        const uint8_t *up = src + (size_t)clamp_index(y - 1, last) * n; /* r = 1 only */
        const uint8_t *centre = src + (size_t)y * n;
        const uint8_t *down = src + (size_t)clamp_index(y + 1, last) * n; /* r = 1 only */
        uint8_t *out = dst + (size_t)y * n;
        if (r == 0) {
            SIMD for (size_t j = 0; j < n; j++)
                out[j] = box_save(centre[j], (uint32_t)above[j] + below[j], ww, fw);
        } else {
            SIMD for (size_t j = 0; j < n; j++)
                out[j] = box_save((uint32_t)up[j] + centre[j] + down[j], (uint32_t)above[j] + below[j], ww, fw);
        }
    }
}

INLINE void box_pass_columns(const uint8_t *src, uint8_t *dst, int rows, size_t n, box_weights w)
{
    if (w.r == 0)
        box_columns_direct(src, dst, rows, n, 0, w.ww, w.fw);
    else if (w.r == 1)
        box_columns_direct(src, dst, rows, n, 1, w.ww, w.fw);
    else
        box_columns(src, dst, rows, n, w);
}

/* ImagingBoxBlur(radius, 3 passes): three horizontal passes, then three vertical ones, each
 * rounding to bytes. The horizontal passes go row by row (pixels -> scratch -> pixels -> scratch:
 * a row's passes need only that row), the vertical ones over the whole image (scratch -> pixels
 * -> scratch -> pixels). */
INLINE void box_blur3(uint8_t *pixels, uint8_t *scratch, int height, int width, const int c, box_weights w)
{
    size_t row_bytes = (size_t)width * c;
    for (int y = 0; y < height; y++) {
        uint8_t *a = pixels + (size_t)y * row_bytes, *b = scratch + (size_t)y * row_bytes;
        box_row(a, b, width, c, w);
        box_row(b, a, width, c, w);
        box_row(a, b, width, c, w);
    }
    box_pass_columns(scratch, pixels, height, row_bytes, w);
    box_pass_columns(pixels, scratch, height, row_bytes, w);
    box_pass_columns(scratch, pixels, height, row_bytes, w);
}

MULTIVERSION int enhance_gaussian_blur(uint8_t *pixels, int height, int width, int channels, float sigma,
                                       uint8_t *scratch, moco_error *err)
{
    if (height < 1 || width < 1)
        return moco_fail(err, "gaussian blur: bad size %dx%d", width, height);
    if (channels != 1 && channels != 3)
        return moco_fail(err, "gaussian blur: %d channels (1 or 3 supported)", channels);
    /* Pillow takes any sigma (only its square counts). Past 10^5 (a box radius near 10^5, a blur
     * to the mean colour of any image long before) we refuse, which keeps the window sums and the
     * tap indices far inside 32 bits. */
    if (!(fabsf(sigma) < 1e5f))
        return moco_fail(err, "gaussian blur: sigma %g out of range", (double)sigma);
    box_weights w = box_weights_of(box_radius(sigma, 3));
    if (w.r == 0 && w.fw == 0) /* sigma 0: ww = 2^24, every pass a copy */
        return MOCO_OK;
    uint8_t *owned = NULL;
    if (!scratch) {
        owned = scratch = malloc((size_t)height * width * channels);
        if (!owned)
            return moco_fail(err, "gaussian blur: out of memory for %dx%dx%d scratch", width, height, channels);
    }
    if (channels == 3)
        box_blur3(pixels, scratch, height, width, 3, w);
    else
        box_blur3(pixels, scratch, height, width, 1, w);
    free(owned);
    return MOCO_OK;
}

/* ---- Flip ---- */

/* Mirror one row of n pixels of c bytes, through tmp (a copy of the row, plus one byte). For 3
 * bytes a pixel, each pixel moves as one 4-byte load and store, in increasing order: the fourth
 * byte stored is overwritten by the next pixel, and the last pixel is copied as 3 bytes so nothing
 * is written past the row. */
INLINE void flip_row(uint8_t *row, uint8_t *tmp, int n, const int c)
{
    memcpy(tmp, row, (size_t)n * c);
    if (c == 3) {
        tmp[3 * n] = 0; /* read, never used, by the first 4-byte load */
        for (int x = 0; x < n - 1; x++)
            memcpy(row + 3 * x, tmp + 3 * (n - 1 - x), 4);
        memcpy(row + 3 * (n - 1), tmp, 3);
    } else {
        for (int x = 0; x < n; x++)
            memcpy(row + c * x, tmp + c * (n - 1 - x), c);
    }
}

/* Rows too long for the buffer: swap pixels from both ends. */
INLINE void flip_row_swapping(uint8_t *row, int n, const int c)
{
    for (int x = 0, x2 = n - 1; x < x2; x++, x2--)
        for (int ch = 0; ch < c; ch++) {
            uint8_t t = row[x * c + ch];
            row[x * c + ch] = row[x2 * c + ch];
            row[x2 * c + ch] = t;
        }
}

INLINE void flip_rows(uint8_t *pixels, int height, int width, const int c)
{
    enum { ROW_MAX = 4096 };
    uint8_t tmp[ROW_MAX + 1];
    size_t row_bytes = (size_t)width * c;
    for (int y = 0; y < height; y++) {
        if (row_bytes <= ROW_MAX)
            flip_row(pixels + y * row_bytes, tmp, width, c);
        else
            flip_row_swapping(pixels + y * row_bytes, width, c);
    }
}

MULTIVERSION void enhance_flip(uint8_t *pixels, int height, int width, int channels)
{
    switch (channels) {
    case 1: flip_rows(pixels, height, width, 1); break;
    case 2: flip_rows(pixels, height, width, 2); break;
    case 3: flip_rows(pixels, height, width, 3); break;
    default: flip_rows(pixels, height, width, 4); break;
    }
}
