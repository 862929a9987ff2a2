/* test_enhance.c — enhance.h against torchvision 0.14 on PIL 9.4 images, byte for byte, and the
 * properties a reader would expect of it. The expectations are tests/fixtures/enhance/cases.txt and
 * the files it names, written by tests/parity/make_enhance_fixtures.py; the tests run from the
 * repository root. Every case must match exactly: no operation here needs DESIGN's one grey level. */
#include <math.h>
#include <stdint.h>
#include <zlib.h>

#include "enhance.h"
#include "test.h"

#define FIXTURES "tests/fixtures/enhance/"

/* The 4096x4096 image holding every colour once: pixel i = (i >> 16, (i >> 8) & 255, i & 255). */
static uint8_t *all_rgb(void)
{
    uint8_t *p = malloc((size_t)3 << 24);
    if (p)
        for (size_t i = 0; i < (size_t)1 << 24; i++) {
            p[3 * i] = (uint8_t)(i >> 16);
            p[3 * i + 1] = (uint8_t)(i >> 8);
            p[3 * i + 2] = (uint8_t)i;
        }
    return p;
}

/* Run one named operation in place; factor is the fixture's float32 value. */
static int apply(const char *op, float factor, uint8_t *px, int h, int w, int c)
{
    moco_error err = {{0}};
    if (strcmp(op, "flip") == 0) {
        enhance_flip(px, h, w, c);
        return 0;
    }
    if (strcmp(op, "blur") == 0) {
        int rc = enhance_gaussian_blur(px, h, w, c, factor, NULL, &err);
        if (rc != 0)
            printf("# %s\n", err.msg);
        return rc;
    }
    if (strcmp(op, "brightness") == 0 && c == 1)
        enhance_brightness_channels(px, h, w, 1, factor);
    else if (strcmp(op, "contrast") == 0 && c == 1)
        enhance_contrast_channels(px, h, w, 1, factor);
    else if (c != 3)
        return -1;
    else if (strcmp(op, "brightness") == 0)
        enhance_brightness(px, h, w, factor);
    else if (strcmp(op, "contrast") == 0)
        enhance_contrast(px, h, w, factor);
    else if (strcmp(op, "saturation") == 0)
        enhance_saturation(px, h, w, factor);
    else if (strcmp(op, "hue") == 0)
        enhance_hue(px, h, w, factor);
    else if (strcmp(op, "grayscale") == 0)
        enhance_grayscale(px, h, w);
    else
        return -1;
    return 0;
}

TEST(test_enhance_matches_pil_every_fixture_case)
{
    FILE *f = fopen(FIXTURES "cases.txt", "r");
    CHECK(f != NULL);
    uint8_t *every_colour = NULL;
    char line[1024];
    int cases = 0, failed = 0;
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#' || line[0] == '\n')
            continue;
        char op[32], factor_text[64], src[512], expected[512];
        int h, w, c;
        if (sscanf(line, "%31s %63s %511s %d %d %d %511s", op, factor_text, src, &h, &w, &c, expected) != 7) {
            failed++;
            printf("# unparsable line: %s", line);
            continue;
        }
        cases++;
        float factor = strcmp(factor_text, "-") == 0 ? 0.0f : (float)strtod(factor_text, NULL);
        size_t n = (size_t)h * w * c, len = 0;
        uint8_t *px;
        if (strcmp(src, "allrgb") == 0) {
            if (!every_colour)
                every_colour = all_rgb();
            px = malloc(n);
            if (px && every_colour && n == (size_t)3 << 24)
                memcpy(px, every_colour, n);
            else
                free(px), px = NULL;
        } else {
            px = test_slurp(src, &len);
            if (px && len != n)
                free(px), px = NULL;
        }
        if (!px || apply(op, factor, px, h, w, c) != 0 || !test_matches_expected(expected, px, n)) {
            failed++;
            printf("# differs from PIL: %s", line);
        }
        free(px);
    }
    fclose(f);
    free(every_colour);
    CHECK(cases >= 180);
    CHECK(failed == 0);
}

/* One of the fixtures' source images, which must be exactly `want` bytes. */
static uint8_t *fixture_image(const char *name, size_t want)
{
    size_t len;
    uint8_t *p = test_slurp(name, &len);
    if (p && len != want)
        free(p), p = NULL;
    return p;
}

TEST(test_factor_one_leaves_the_image_as_it_is)
{
    /* ImagingBlend's alpha == 1 returns a copy of the image (ImageEnhance's documented identity). */
    const size_t n = 32 * 40 * 3;
    uint8_t *orig = fixture_image(FIXTURES "chelsea.rgb", n), *px = malloc(n);
    CHECK(orig && px);
    void (*ops[])(uint8_t *, int, int, float) = {enhance_brightness, enhance_contrast, enhance_saturation};
    for (int i = 0; i < 3; i++) {
        memcpy(px, orig, n);
        ops[i](px, 32, 40, 1.0f);
        CHECK(memcmp(px, orig, n) == 0);
    }
    memcpy(px, orig, n); /* the same bytes as one "L" image three times as wide */
    enhance_brightness_channels(px, 32, 120, 1, 1.0f);
    enhance_contrast_channels(px, 32, 120, 1, 1.0f);
    CHECK(memcmp(px, orig, n) == 0);
    free(orig);
    free(px);
}

TEST(test_blend_factors_far_out_clip_and_nan_gives_the_degenerate)
{
    /* Blend.c's extrapolation: with a huge factor every byte above its degenerate (for saturation
     * the pixel's L) goes to 255, every byte below to 0, and the equal ones stay. A NaN factor
     * (undefined in Pillow's C) gives the degenerate image, here black. */
    const size_t n = 32 * 40 * 3;
    uint8_t *orig = fixture_image(FIXTURES "chelsea.rgb", n), *px = malloc(n);
    CHECK(orig && px);
    memcpy(px, orig, n);
    enhance_saturation(px, 32, 40, 3e30f);
    for (size_t i = 0; i < n; i += 3) {
        int l = (orig[i] * 19595 + orig[i + 1] * 38470 + orig[i + 2] * 7471 + 0x8000) >> 16;
        for (int c = 0; c < 3; c++)
            CHECK(px[i + c] == (orig[i + c] > l ? 255 : orig[i + c] < l ? 0 : l));
    }
    memcpy(px, orig, n);
    enhance_brightness(px, 32, 40, NAN);
    for (size_t i = 0; i < n; i++)
        CHECK(px[i] == 0);
    free(orig);
    free(px);
}

TEST(test_hue_zero_is_pils_lossy_hsv_round_trip)
{
    /* adjust_hue(img, 0) is not the identity: PIL's 8-bit HSV loses precision, and only about 17.5%
     * of all colours come back unchanged (the fixtures check every colour). Greys and the pure
     * primaries do; these colours come back as PIL gives them. */
    uint8_t px[] = {0, 0, 0, 128, 128, 128, 255, 255, 255, 255, 0, 0, 0, 255, 0, 0, 0, 255, /* unchanged */
                    37, 235, 140, 203, 133, 79, 252, 134, 25, 178, 20, 254, 139, 252, 234};
    const uint8_t want[] = {0, 0, 0, 128, 128, 128, 255, 255, 255, 255, 0, 0, 0, 255, 0, 0, 0, 255,
                            38, 235, 140, 203, 132, 80, 252, 132, 26, 174, 21, 254, 139, 252, 232};
    enhance_hue(px, 1, 11, 0.0f);
    for (size_t i = 0; i < sizeof px; i++)
        CHECK(px[i] == want[i]);
}

/* The reference for the next test: Convert.c's rgb2hsv_row and hsv2rgb (Pillow 9.4) restated with
 * their C types (float variables, double constants, C's round and fmod), as enhance.c's comments
 * describe them; enhance.c computes the same bytes in single precision. */
static void reference_rgb_to_hsv(const uint8_t *rgb, int *h, int *s, int *v)
{
    int r = rgb[0], g = rgb[1], b = rgb[2];
    int maxc = r > g ? (r > b ? r : b) : (g > b ? g : b);
    int minc = r < g ? (r < b ? r : b) : (g < b ? g : b);
    *v = maxc;
    *h = *s = 0;
    if (maxc == minc)
        return;
    float cr = (float)(maxc - minc), sat = cr / (float)maxc;
    float rc = (float)(maxc - r) / cr, gc = (float)(maxc - g) / cr, bc = (float)(maxc - b) / cr;
    float hue = r == maxc ? bc - gc : g == maxc ? (float)(2.0 + rc - bc) : (float)(4.0 + gc - rc);
    hue = (float)fmod(hue / 6.0 + 1.0, 1.0);
    *h = (int)(hue * 255.0);
    *s = (int)(sat * 255.0);
}

static void reference_hsv_to_rgb(int h, int s, int v, uint8_t *rgb)
{
    if (s == 0) {
        rgb[0] = rgb[1] = rgb[2] = (uint8_t)v;
        return;
    }
    int i = (int)floor((float)h * 6.0 / 255.0);
    float f = (float)((float)h * 6.0 / 255.0 - (float)i), fs = (float)((float)s / 255.0);
    int p = (int)round((float)v * (1.0 - fs)), q = (int)round((float)v * (1.0 - fs * f));
    int t = (int)round((float)v * (1.0 - fs * (1.0 - f)));
    const int by_sector[6][3] = {{v, t, p}, {q, v, p}, {p, v, t}, {p, q, v}, {t, p, v}, {v, p, q}};
    for (int c = 0; c < 3; c++)
        rgb[c] = (uint8_t)by_sector[i % 6][c];
}

TEST(test_hue_equals_pillows_arithmetic_at_every_shift)
{
    /* All 256 hue shifts, each on 8192 colours spread over the cube (a different set per shift).
     * A development run checked all 2^24 colours at every shift; the fixtures check all colours
     * against PIL itself at seven factors. */
    enum { COLOURS = 8192 };
    uint8_t *px = malloc(COLOURS * 3), *orig = malloc(COLOURS * 3);
    CHECK(px && orig);
    for (int shift = 0; shift < 256; shift++) {
        for (uint32_t j = 0; j < COLOURS; j++) {
            uint32_t i = (j * 2654435761u + (uint32_t)shift * 40503u) & 0xffffffu;
            orig[3 * j] = (uint8_t)(i >> 16);
            orig[3 * j + 1] = (uint8_t)(i >> 8);
            orig[3 * j + 2] = (uint8_t)i;
        }
        memcpy(px, orig, COLOURS * 3);
        enhance_hue(px, 1, COLOURS, ((float)shift + 0.5f) / 255.0f); /* np.uint8 of it: shift */
        for (int j = 0; j < COLOURS; j++) {
            int h, s, v;
            uint8_t want[3];
            reference_rgb_to_hsv(orig + 3 * j, &h, &s, &v);
            reference_hsv_to_rgb((h + shift) & 255, s, v, want);
            CHECK(memcmp(px + 3 * j, want, 3) == 0);
        }
    }
    free(px);
    free(orig);
}

TEST(test_hue_negative_shift_truncates_toward_zero_then_wraps)
{
    /* np.uint8(-0.1 * 255) = np.uint8(-25.5) = 231 (C truncation, then modulo 256), so -0.1 turns the
     * hue as far as a factor whose product truncates to 231; and anything above -1/255 does nothing. */
    const size_t n = 32 * 40 * 3;
    uint8_t *a = fixture_image(FIXTURES "chelsea.rgb", n), *b = malloc(n), *c = malloc(n);
    CHECK(a && b && c);
    memcpy(b, a, n);
    memcpy(c, a, n);
    enhance_hue(a, 32, 40, -0.1f);
    enhance_hue(b, 32, 40, 231.5f / 255.0f);
    CHECK(memcmp(a, b, n) == 0);
    memcpy(a, c, n);
    memcpy(b, c, n);
    enhance_hue(a, 32, 40, -0.9f / 255.0f);
    enhance_hue(b, 32, 40, 0.0f);
    CHECK(memcmp(a, b, n) == 0);
    free(a);
    free(b);
    free(c);
}

TEST(test_flip_twice_is_the_identity)
{
    uint8_t px[7 * 5 * 4], orig[sizeof px];
    for (size_t i = 0; i < sizeof px; i++)
        orig[i] = (uint8_t)(i * 37 + 11);
    for (int c = 1; c <= 4; c++)
        for (int w = 1; w <= 5; w++) {
            memcpy(px, orig, sizeof px);
            enhance_flip(px, 7, w, c);
            CHECK(w == 1 || memcmp(px, orig, (size_t)7 * w * c) != 0);
            CHECK(memcmp(px + c * (w - 1), orig, (size_t)c) == 0); /* first pixel now last */
            enhance_flip(px, 7, w, c);
            CHECK(memcmp(px, orig, sizeof px) == 0);
        }
}

TEST(test_flip_mirrors_rows_longer_than_its_row_buffer)
{
    /* Rows past 4096 bytes take the pixel-swapping path. */
    enum { W = 1501, H = 2, C = 3 };
    uint8_t *px = malloc(W * H * C);
    CHECK(px != NULL);
    for (int i = 0; i < W * H * C; i++)
        px[i] = (uint8_t)(i * 7 + i / 251);
    enhance_flip(px, H, W, C);
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            for (int ch = 0; ch < C; ch++) {
                int i = (y * W + (W - 1 - x)) * C + ch;
                CHECK(px[(y * W + x) * C + ch] == (uint8_t)(i * 7 + i / 251));
            }
    free(px);
}

TEST(test_blur_keeps_a_flat_image_flat)
{
    /* ww * (2r + 1) + 2 fw is 2^24 minus at most 2, and the rounding adds 2^23: a flat image stays
     * flat at every level, for any size (the clamped edges repeat the same value). */
    const float sigmas[] = {0.1f, 0.5f, 1.0f, 1.37f, 2.0f, 3.3f, 5.0f, 40.0f};
    const int sizes[][2] = {{1, 1}, {1, 9}, {9, 1}, {13, 17}, {64, 3}};
    uint8_t px[64 * 17 * 3], scratch[sizeof px];
    moco_error err;
    for (int v = 0; v < 256; v += 15)
        for (size_t s = 0; s < sizeof sigmas / sizeof sigmas[0]; s++)
            for (size_t z = 0; z < sizeof sizes / sizeof sizes[0]; z++)
                for (int c = 1; c <= 3; c += 2) {
                    size_t n = (size_t)sizes[z][0] * sizes[z][1] * c;
                    memset(px, v, n);
                    CHECK_OK(enhance_gaussian_blur(px, sizes[z][0], sizes[z][1], c, sigmas[s], (s & 1) ? scratch : NULL,
                                                   &err),
                             &err);
                    for (size_t i = 0; i < n; i++)
                        CHECK(px[i] == v);
                }
}

TEST(test_blur_with_scratch_equals_blur_without)
{
    const size_t n = 32 * 40 * 3;
    uint8_t *a = fixture_image(FIXTURES "astronaut.rgb", n), *b = malloc(n), *scratch = malloc(n);
    moco_error err;
    CHECK(a && b && scratch);
    memcpy(b, a, n);
    CHECK_OK(enhance_gaussian_blur(a, 32, 40, 3, 1.7f, NULL, &err), &err);
    CHECK_OK(enhance_gaussian_blur(b, 32, 40, 3, 1.7f, scratch, &err), &err);
    CHECK(memcmp(a, b, n) == 0);
    free(a);
    free(b);
    free(scratch);
}

TEST(test_blur_rejects_bad_arguments)
{
    uint8_t px[4 * 4 * 3] = {0};
    moco_error err;
    CHECK(enhance_gaussian_blur(px, 4, 4, 2, 1.0f, NULL, &err) == MOCO_ERR);
    CHECK(strstr(err.msg, "channels") != NULL);
    CHECK(enhance_gaussian_blur(px, 0, 4, 3, 1.0f, NULL, &err) == MOCO_ERR);
    CHECK(enhance_gaussian_blur(px, 4, 4, 3, NAN, NULL, &err) == MOCO_ERR);
    CHECK(enhance_gaussian_blur(px, 4, 4, 3, INFINITY, NULL, &err) == MOCO_ERR);
    CHECK_OK(enhance_gaussian_blur(px, 4, 4, 3, 0.0f, NULL, &err), &err);
}

int main(void)
{
    RUN(test_enhance_matches_pil_every_fixture_case);
    RUN(test_factor_one_leaves_the_image_as_it_is);
    RUN(test_blend_factors_far_out_clip_and_nan_gives_the_degenerate);
    RUN(test_hue_zero_is_pils_lossy_hsv_round_trip);
    RUN(test_hue_equals_pillows_arithmetic_at_every_shift);
    RUN(test_hue_negative_shift_truncates_toward_zero_then_wraps);
    RUN(test_flip_twice_is_the_identity);
    RUN(test_flip_mirrors_rows_longer_than_its_row_buffer);
    RUN(test_blur_keeps_a_flat_image_flat);
    RUN(test_blur_with_scratch_equals_blur_without);
    RUN(test_blur_rejects_bad_arguments);
    TEST_EXIT();
}
