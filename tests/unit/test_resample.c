/* test_resample.c — resample() against PIL 9.4's Image.resize, byte for byte, and torchvision's
 * Resize size rule. The expectations are tests/fixtures/image/resample.txt and the files it names,
 * written by tests/parity/make_image_fixtures.py; the tests run from the repository root. */
#include <math.h>
#include <stdint.h>
#include <zlib.h>

#include "image.h"
#include "resample.h"
#include "test.h"

static int filter_from_name(const char *name)
{
    static const char *names[] = {"box", "bilinear", "hamming", "bicubic", "lanczos"};
    static const resample_filter filters[] = {RESAMPLE_BOX, RESAMPLE_BILINEAR, RESAMPLE_HAMMING,
                                              RESAMPLE_BICUBIC, RESAMPLE_LANCZOS};
    for (int i = 0; i < 5; i++)
        if (strcmp(name, names[i]) == 0)
            return (int)filters[i];
    return -1;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* The source of a case: a raw HWC file, or a photo decoded to `channels` (its decode is checked
 * against PIL in test_image). */
static uint8_t *load_source(const char *path, int sh, int sw, int channels)
{
    size_t len;
    uint8_t *data = test_slurp(path, &len);
    if (!data)
        return NULL;
    if (!ends_with(path, ".jpg") && !ends_with(path, ".png"))
        return len == (size_t)sh * sw * channels ? data : (free(data), NULL);
    image img;
    moco_error err;
    image_decode_options opt = {.channels = channels};
    int rc = image_decode(data, len, &opt, &img, &err);
    free(data);
    if (rc != 0 || img.height != sh || img.width != sw)
        return image_free(&img), NULL;
    return img.pixels;
}

TEST(test_resample_matches_pil_every_fixture_case)
{
    FILE *f = fopen("tests/fixtures/image/resample.txt", "r");
    CHECK(f != NULL);
    char line[1024];
    int cases = 0, failed = 0;
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#' || line[0] == '\n')
            continue;
        char src[512], fname[32], expected[512];
        int sh, sw, c, dh, dw;
        double box[4];
        if (sscanf(line, "%511s %d %d %d %d %d %31s %lf %lf %lf %lf %511s", src, &sh, &sw, &c, &dh, &dw,
                   fname, &box[0], &box[1], &box[2], &box[3], expected) != 12) {
            failed++;
            printf("# unparsable line: %s", line);
            continue;
        }
        cases++;
        uint8_t *in = load_source(src, sh, sw, c);
        uint8_t *out = malloc((size_t)dh * dw * c);
        moco_error err = {{0}};
        int ok = in && out && filter_from_name(fname) >= 0 &&
                 resample(in, sh, sw, c, box, out, dh, dw, (resample_filter)filter_from_name(fname), &err) == 0 &&
                 test_matches_expected(expected, out, (size_t)dh * dw * c);
        if (!ok) {
            failed++;
            printf("# differs from PIL: %s%s%s", line, err.msg[0] ? "#   " : "", err.msg[0] ? err.msg : "");
        }
        free(in);
        free(out);
    }
    fclose(f);
    CHECK(cases >= 60);
    CHECK(failed == 0);
}

TEST(test_resample_rejects_bad_boxes_and_sizes)
{
    uint8_t src[4 * 6 * 3] = {0}, dst[64 * 3];
    moco_error err;
    const double outside[][4] = {
        {-0.5, 0, 6, 4}, {0, -1, 6, 4}, {0, 0, 6.5, 4}, {0, 0, 6, 4.01}, {3, 0, 2, 4}, {0, 3, 6, 2},
        {NAN, 0, 6, 4},  {0, 0, INFINITY, 4},
    };
    for (size_t i = 0; i < sizeof outside / sizeof outside[0]; i++) {
        CHECK(resample(src, 4, 6, 3, outside[i], dst, 2, 3, RESAMPLE_BILINEAR, &err) == MOCO_ERR);
        CHECK(strstr(err.msg, "box") != NULL);
    }
    CHECK(resample(src, 4, 6, 3, NULL, dst, 0, 3, RESAMPLE_BILINEAR, &err) == MOCO_ERR);
    CHECK(resample(src, 0, 6, 3, NULL, dst, 2, 3, RESAMPLE_BILINEAR, &err) == MOCO_ERR);
    CHECK(resample(src, 4, 6, 0, NULL, dst, 2, 3, RESAMPLE_BILINEAR, &err) == MOCO_ERR);
    CHECK(resample(src, 4, 6, 5, NULL, dst, 2, 3, RESAMPLE_BILINEAR, &err) == MOCO_ERR);
    CHECK(resample(src, 4, 6, 3, NULL, dst, 2, 3, (resample_filter)42, &err) == MOCO_ERR);
    const double whole[4] = {0, 0, 6, 4};
    CHECK_OK(resample(src, 4, 6, 3, whole, dst, 2, 3, RESAMPLE_LANCZOS, &err), &err);
}

TEST(test_resample_keeps_a_flat_image_flat)
{
    /* Normalised coefficients sum to 1 within fixed-point rounding, so a flat image stays flat:
     * exactly, for the values and sizes tried here (as in PIL). */
    uint8_t src[40 * 50], dst[97 * 13];
    moco_error err;
    for (int v = 0; v < 256; v += 51) {
        memset(src, v, sizeof src);
        for (int f = RESAMPLE_BOX; f <= RESAMPLE_LANCZOS; f++) {
            CHECK_OK(resample(src, 40, 50, 1, NULL, dst, 13, 97, (resample_filter)f, &err), &err);
            for (size_t i = 0; i < sizeof dst; i++)
                CHECK(abs(dst[i] - v) <= 1);
        }
    }
}

TEST(test_resize_short_side_follows_torchvision)
{
    /* (h, w, size) -> torchvision 0.14 Resize(size) output (h, w): the short side becomes size, the
     * long one int(size * long / short). */
    const int cases[][5] = {
        {375, 500, 256, 256, 341}, {500, 375, 256, 341, 256}, {427, 640, 256, 256, 383},
        {512, 512, 224, 224, 224}, {300, 451, 256, 256, 384}, {1, 1000, 3, 3, 3000},
        {872, 1000, 256, 256, 293}, {3, 10, 3, 3, 10},       {333, 500, 256, 256, 384},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int h, w;
        resize_short_side(cases[i][0], cases[i][1], cases[i][2], &h, &w);
        CHECK(h == cases[i][3]);
        CHECK(w == cases[i][4]);
    }
}

int main(void)
{
    RUN(test_resample_matches_pil_every_fixture_case);
    RUN(test_resample_rejects_bad_boxes_and_sizes);
    RUN(test_resample_keeps_a_flat_image_flat);
    RUN(test_resize_short_side_follows_torchvision);
    TEST_EXIT();
}
