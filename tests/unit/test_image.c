/* test_image.c — JPEG/PNG decoding against PIL 9.4 byte for byte, bad input of every kind, and the
 * JPEG encoder. Expectations: tests/fixtures/image/decode.txt and the files it names, written by
 * tests/parity/make_image_fixtures.py; photos from ../shared/data/photos. Run from the repository
 * root. */
#include <dirent.h>
#include <stdint.h>
#include <zlib.h>

#include "image.h"
#include "test.h"

#define FIXTURES "tests/fixtures/image/"
#define PHOTOS "../shared/data/photos/"

/* Decode the file at `path` to `channels` (0 = as stored); returns the status, fills img and err. */
static int decode_file(const char *path, int channels, image *img, moco_error *err)
{
    size_t len;
    uint8_t *data = test_slurp(path, &len);
    if (!data) {
        memset(img, 0, sizeof *img);
        return moco_fail(err, "cannot read %s", path);
    }
    image_decode_options opt = {.channels = channels};
    int rc = image_decode(data, len, &opt, img, err);
    free(data);
    return rc;
}

TEST(test_decode_matches_pil_for_every_fixture)
{
    FILE *f = fopen(FIXTURES "decode.txt", "r");
    CHECK(f != NULL);
    char line[1024];
    int files = 0, failed = 0;
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#' || line[0] == '\n')
            continue;
        char path[512], rgb[512], lum[512];
        int stored, h, w;
        if (sscanf(line, "%511s %d %d %d %511s %511s", path, &stored, &h, &w, rgb, lum) != 6) {
            failed++;
            printf("# unparsable line: %s", line);
            continue;
        }
        files++;
        size_t len;
        uint8_t *data = test_slurp(path, &len);
        moco_error err = {{0}};
        int ph = 0, pw = 0, pc = 0;
        const char *what = NULL;
        if (!data)
            what = "cannot read the file";
        else if (image_probe(data, len, &ph, &pw, &pc, &err) != 0 || ph != h || pw != w || pc != stored)
            what = "image_probe";
        for (int c = 0; c <= 3 && !what; c++) {
            if (c == 2)
                continue;
            image img;
            image_decode_options opt = {.channels = c};
            if (image_decode(data, len, &opt, &img, &err) != 0)
                what = "image_decode";
            else if (img.height != h || img.width != w || img.channels != (c ? c : stored))
                what = "decoded shape";
            else if (c == 3 && !test_matches_expected(rgb, img.pixels, (size_t)h * w * 3))
                what = "RGB pixels differ from PIL's convert(\"RGB\")";
            else if (c == 1 && !test_matches_expected(lum, img.pixels, (size_t)h * w))
                what = "grey pixels differ from PIL's convert(\"L\")";
            image_free(&img);
        }
        if (what) {
            failed++;
            printf("# %s: %s %s\n", path, what, err.msg);
        }
        free(data);
    }
    fclose(f);
    CHECK(files >= 30);
    CHECK(failed == 0);
}

TEST(test_decode_says_truncated_jpeg)
{
    image img;
    moco_error err;
    CHECK(decode_file(PHOTOS "truncated.jpg", 0, &img, &err) == MOCO_ERR);
    CHECK(strcmp(err.msg, "truncated JPEG") == 0);
    CHECK(img.pixels == NULL);
}

TEST(test_decode_every_photo)
{
    DIR *d = opendir(PHOTOS);
    CHECK(d != NULL);
    struct dirent *e;
    int decoded = 0, failed = 0;
    while ((e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (n < 5 || (strcmp(e->d_name + n - 4, ".jpg") && strcmp(e->d_name + n - 4, ".png")) ||
            strcmp(e->d_name, "truncated.jpg") == 0)
            continue;
        char path[600];
        snprintf(path, sizeof path, PHOTOS "%s", e->d_name);
        image img;
        moco_error err;
        if (decode_file(path, 3, &img, &err) != 0 || img.channels != 3 || img.height < 100) {
            failed++;
            printf("# %s: %s\n", path, err.msg);
        }
        decoded++;
        image_free(&img);
    }
    closedir(d);
    CHECK(decoded >= 10);
    CHECK(failed == 0);
}

/* Every proper prefix of a valid file must fail cleanly: no crash, no image, a message. */
static int every_prefix_fails(const char *path)
{
    size_t len;
    uint8_t *data = test_slurp(path, &len);
    if (!data)
        return 0;
    int ok = 1;
    for (size_t n = 0; n < len && ok; n++) {
        /* a copy of exactly n bytes, so AddressSanitizer sees any read past the end */
        uint8_t *cut = malloc(n ? n : 1);
        memcpy(cut, data, n);
        image img;
        moco_error err = {{0}};
        if (image_decode(cut, n, NULL, &img, &err) == 0 || img.pixels || !err.msg[0]) {
            printf("# %s cut to %zu bytes: decoded\n", path, n);
            ok = 0;
            image_free(&img);
        }
        free(cut);
    }
    free(data);
    return ok;
}

TEST(test_decode_fails_on_every_truncation)
{
    CHECK(every_prefix_fails(FIXTURES "q90_420.jpg"));
    CHECK(every_prefix_fails(FIXTURES "progressive.jpg"));
    CHECK(every_prefix_fails(FIXTURES "cmyk.jpg"));
    CHECK(every_prefix_fails(FIXTURES "rgb.png"));
    CHECK(every_prefix_fails(FIXTURES "interlaced_rgb.png"));
    CHECK(every_prefix_fails(FIXTURES "palette.png"));
}

TEST(test_decode_names_truncation_of_each_format)
{
    size_t len;
    uint8_t *jpg = test_slurp(FIXTURES "q90_420.jpg", &len);
    CHECK(jpg != NULL);
    image img;
    moco_error err;
    CHECK(image_decode(jpg, len - 100, NULL, &img, &err) == MOCO_ERR);
    CHECK(strcmp(err.msg, "truncated JPEG") == 0);
    CHECK(image_decode(jpg, len - 1, NULL, &img, &err) == MOCO_ERR); /* half of the EOI marker */
    CHECK(strcmp(err.msg, "truncated JPEG") == 0);
    free(jpg);
    uint8_t *png = test_slurp(FIXTURES "rgb.png", &len);
    CHECK(png != NULL);
    CHECK(image_decode(png, len / 2, NULL, &img, &err) == MOCO_ERR);
    CHECK(strcmp(err.msg, "truncated PNG") == 0);
    CHECK(image_decode(png, len - 4, NULL, &img, &err) == MOCO_ERR); /* IEND's CRC missing */
    CHECK(strcmp(err.msg, "truncated PNG") == 0);
    free(png);
}

/* Big-endian 32-bit store. */
static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

TEST(test_decode_refuses_hostile_png_size_before_allocating)
{
    size_t len;
    uint8_t *png = test_slurp(FIXTURES "rgb.png", &len);
    CHECK(png != NULL);
    /* IHDR is the first chunk: length at 8, "IHDR" at 12, width at 16, height at 20, CRC at 29. */
    CHECK(memcmp(png + 12, "IHDR", 4) == 0);
    put_be32(png + 16, 100000);
    put_be32(png + 20, 100000);
    put_be32(png + 29, (uint32_t)crc32(0, png + 12, 17));
    image img;
    moco_error err;
    int h, w, c;
    CHECK_OK(image_probe(png, len, &h, &w, &c, &err), &err); /* the header alone is fine */
    CHECK(h == 100000 && w == 100000 && c == 3);
    /* 30 GB would fail as "out of memory" if it were allocated; the limit is met first */
    CHECK(image_decode(png, len, NULL, &img, &err) == MOCO_ERR);
    CHECK(strcmp(err.msg, "image of 100000x100000 pixels exceeds the limit of 268435456") == 0);
    CHECK(img.pixels == NULL);
    free(png);
}

TEST(test_decode_refuses_hostile_jpeg_size_before_allocating)
{
    size_t len;
    uint8_t *jpg = test_slurp(FIXTURES "q90_420.jpg", &len);
    CHECK(jpg != NULL);
    size_t sof = 0;
    for (size_t i = 2; i + 9 < len && !sof; i++)
        if (jpg[i] == 0xff && jpg[i + 1] == 0xc0)
            sof = i;
    CHECK(sof != 0);
    /* SOF0: marker, length (2), precision (1), height (2), width (2) */
    jpg[sof + 5] = 65000 >> 8;
    jpg[sof + 6] = 65000 & 0xff;
    jpg[sof + 7] = 65000 >> 8;
    jpg[sof + 8] = 65000 & 0xff;
    image img;
    moco_error err;
    CHECK(image_decode(jpg, len, NULL, &img, &err) == MOCO_ERR);
    CHECK(strcmp(err.msg, "image of 65000x65000 pixels exceeds the limit of 268435456") == 0);
    free(jpg);
}

TEST(test_decode_max_pixels_is_inclusive)
{
    size_t len;
    uint8_t *jpg = test_slurp(FIXTURES "q90_420.jpg", &len); /* 48x32 = 1536 pixels */
    CHECK(jpg != NULL);
    image img;
    moco_error err;
    image_decode_options opt = {.channels = 3, .max_pixels = 1535};
    CHECK(image_decode(jpg, len, &opt, &img, &err) == MOCO_ERR);
    CHECK(strcmp(err.msg, "image of 48x32 pixels exceeds the limit of 1535") == 0);
    opt.max_pixels = 1536;
    CHECK_OK(image_decode(jpg, len, &opt, &img, &err), &err);
    image_free(&img);
    free(jpg);
}

TEST(test_decode_names_what_is_not_an_image)
{
    image img;
    moco_error err;
    CHECK(image_decode((const uint8_t *)"%PDF-1.4", 8, NULL, &img, &err) == MOCO_ERR);
    CHECK(strcmp(err.msg, "not a JPEG or PNG image (it starts with bytes 25 50 44 46)") == 0);
    CHECK(image_decode((const uint8_t *)"\xff", 1, NULL, &img, &err) == MOCO_ERR);
    CHECK(strcmp(err.msg, "not a JPEG or PNG image (it starts with bytes ff)") == 0);
    CHECK(image_decode((const uint8_t *)"", 0, NULL, &img, &err) == MOCO_ERR);
    CHECK(strcmp(err.msg, "not a JPEG or PNG image (it is empty)") == 0);
    int h, w, c;
    CHECK(image_probe((const uint8_t *)"GIF89a", 6, &h, &w, &c, &err) == MOCO_ERR);
    CHECK(strstr(err.msg, "47 49 46 38") != NULL);
    image_decode_options opt = {.channels = 2};
    CHECK(image_decode((const uint8_t *)"\xff\xd8\xff", 3, &opt, &img, &err) == MOCO_ERR);
}

TEST(test_decode_reports_corrupt_data)
{
    size_t len;
    uint8_t *png = test_slurp(FIXTURES "rgb.png", &len);
    CHECK(png != NULL);
    png[40] ^= 0x55; /* inside the IDAT data: its CRC no longer matches */
    image img;
    moco_error err;
    CHECK(image_decode(png, len, NULL, &img, &err) == MOCO_ERR);
    CHECK(strncmp(err.msg, "corrupt PNG: ", 13) == 0);
    free(png);
    uint8_t *jpg = test_slurp(FIXTURES "q90_420.jpg", &len);
    CHECK(jpg != NULL);
    uint8_t *sof = memmem(jpg, len, "\xff\xc0", 2);
    CHECK(sof != NULL);
    sof[4] = 7; /* sample precision 7 bits */
    CHECK(image_decode(jpg, len, NULL, &img, &err) == MOCO_ERR);
    CHECK(strcmp(err.msg, "corrupt JPEG: Unsupported JPEG data precision 7") == 0);
    free(jpg);
}

TEST(test_sniff_by_content)
{
    CHECK(image_sniff((const uint8_t *)"\xff\xd8\xff\xe0", 4) == IMAGE_JPEG);
    CHECK(image_sniff((const uint8_t *)"\x89PNG\r\n\x1a\n", 8) == IMAGE_PNG);
    CHECK(image_sniff((const uint8_t *)"\x89PNG\r\n\x1a", 7) == IMAGE_UNKNOWN);
    CHECK(image_sniff((const uint8_t *)"BM", 2) == IMAGE_UNKNOWN);
    CHECK(strcmp(image_format_name(IMAGE_JPEG), "JPEG") == 0);
    CHECK(strcmp(image_format_name(IMAGE_PNG), "PNG") == 0);
}

static double mean_abs_diff(const image *a, const image *b)
{
    double sum = 0;
    size_t n = (size_t)a->height * a->width * a->channels;
    for (size_t i = 0; i < n; i++)
        sum += abs(a->pixels[i] - b->pixels[i]);
    return sum / (double)n;
}

TEST(test_encode_then_decode_is_close)
{
    image img, back;
    moco_error err;
    CHECK_OK(decode_file(PHOTOS "chelsea.png", 3, &img, &err), &err);
    uint8_t *jpg;
    size_t len;
    CHECK_OK(image_encode_jpeg(&img, 95, &jpg, &len, &err), &err);
    CHECK(image_sniff(jpg, len) == IMAGE_JPEG);
    CHECK_OK(image_decode(jpg, len, NULL, &back, &err), &err);
    CHECK(back.height == img.height && back.width == img.width && back.channels == 3);
    double mad95 = mean_abs_diff(&img, &back);
    printf("# chelsea.png at quality 95: %zu bytes, mean abs error %.2f\n", len, mad95);
    CHECK(mad95 < 2.0);
    image_free(&back);
    free(jpg);
    /* lower quality: smaller and less exact, still recognisable */
    size_t len95 = len;
    CHECK_OK(image_encode_jpeg(&img, 30, &jpg, &len, &err), &err);
    CHECK_OK(image_decode(jpg, len, NULL, &back, &err), &err);
    CHECK(len < len95);
    double mad30 = mean_abs_diff(&img, &back);
    CHECK(mad30 > mad95 && mad30 < 8.0);
    image_free(&back);
    free(jpg);
    image_free(&img);
}

TEST(test_encode_keeps_grey_grey)
{
    image img, back;
    moco_error err;
    CHECK_OK(decode_file(PHOTOS "brick.png", 0, &img, &err), &err);
    CHECK(img.channels == 1);
    uint8_t *jpg;
    size_t len;
    CHECK_OK(image_encode_jpeg(&img, 90, &jpg, &len, &err), &err);
    int h, w, c;
    CHECK_OK(image_probe(jpg, len, &h, &w, &c, &err), &err);
    CHECK(h == img.height && w == img.width && c == 1);
    CHECK_OK(image_decode(jpg, len, NULL, &back, &err), &err);
    CHECK(back.channels == 1);
    CHECK(mean_abs_diff(&img, &back) < 3.0);
    image_free(&back);
    free(jpg);
    image_free(&img);
}

TEST(test_encode_refuses_bad_arguments)
{
    image img;
    moco_error err;
    uint8_t *jpg;
    size_t len;
    CHECK_OK(image_alloc(&img, 8, 8, 3, &err), &err);
    memset(img.pixels, 128, 8 * 8 * 3);
    CHECK(image_encode_jpeg(&img, 0, &jpg, &len, &err) == MOCO_ERR);
    CHECK(image_encode_jpeg(&img, 101, &jpg, &len, &err) == MOCO_ERR);
    CHECK(jpg == NULL && len == 0);
    CHECK_OK(image_encode_jpeg(&img, 1, &jpg, &len, &err), &err);
    free(jpg);
    image_free(&img);
    CHECK(image_alloc(&img, 0, 8, 3, &err) == MOCO_ERR);
    CHECK(img.pixels == NULL);
}

TEST(test_probe_agrees_with_decode_on_photos)
{
    const char *photos[] = {PHOTOS "china.jpg", PHOTOS "brick.png", PHOTOS "coffee.png",
                            PHOTOS "hubble_deep_field.jpg"};
    for (size_t i = 0; i < sizeof photos / sizeof photos[0]; i++) {
        size_t len;
        uint8_t *data = test_slurp(photos[i], &len);
        CHECK(data != NULL);
        int h, w, c;
        image img;
        moco_error err;
        CHECK_OK(image_probe(data, len, &h, &w, &c, &err), &err);
        CHECK_OK(image_decode(data, len, NULL, &img, &err), &err);
        CHECK(img.height == h && img.width == w && img.channels == c);
        image_free(&img);
        free(data);
    }
}

/* A region decode holds the same pixels as a full decode at the same scale, away from its edges
 * (where chroma upsampling meets the cut), and says where it lies. */
TEST(test_region_decode_matches_full_decode_inside)
{
    size_t len;
    uint8_t *data = test_slurp(PHOTOS "china.jpg", &len); /* 640x427, 4:2:0 */
    CHECK(data != NULL);
    for (int min = 0; min <= 1; min++) {
        image_decode_options full_opt = {.channels = 3, .min_height = min ? 200 : 0, .min_width = min ? 300 : 0};
        image_decode_options opt = full_opt;
        opt.region_x = 101, opt.region_y = 77, opt.region_w = 250, opt.region_h = 190;
        image full, part;
        image_origin at, at_full;
        moco_error err;
        CHECK_OK(image_decode_region(data, len, &full_opt, &full, &at_full, &err), &err);
        CHECK_OK(image_decode_region(data, len, &opt, &part, &at, &err), &err);
        CHECK(at_full.x == 0 && at_full.y == 0);
        CHECK(at.scale == (min ? 0.5 : 1.0) && at_full.scale == at.scale);
        int ox = (int)(at.x * at.scale), oy = (int)(at.y * at.scale);
        /* the region covers what was asked, in decoded pixels */
        CHECK(ox <= 101 * at.scale && oy <= 77 * at.scale);
        CHECK(ox + part.width >= (101 + 250) * at.scale && oy + part.height >= (77 + 190) * at.scale);
        CHECK(part.height < full.height); /* rows outside were skipped */
        int same = 1;
        for (int y = 4; y < part.height - 4; y++)
            for (int x = 16; x < part.width - 16; x++)
                for (int c = 0; c < 3; c++)
                    same &= part.pixels[((size_t)y * part.width + x) * 3 + c] ==
                            full.pixels[((size_t)(oy + y) * full.width + ox + x) * 3 + c];
        CHECK(same);
        image_free(&full);
        image_free(&part);
    }
    free(data);
}

int main(void)
{
    RUN(test_decode_matches_pil_for_every_fixture);
    RUN(test_decode_says_truncated_jpeg);
    RUN(test_decode_every_photo);
    RUN(test_decode_fails_on_every_truncation);
    RUN(test_decode_names_truncation_of_each_format);
    RUN(test_decode_refuses_hostile_png_size_before_allocating);
    RUN(test_decode_refuses_hostile_jpeg_size_before_allocating);
    RUN(test_decode_max_pixels_is_inclusive);
    RUN(test_decode_names_what_is_not_an_image);
    RUN(test_decode_reports_corrupt_data);
    RUN(test_sniff_by_content);
    RUN(test_encode_then_decode_is_close);
    RUN(test_encode_keeps_grey_grey);
    RUN(test_encode_refuses_bad_arguments);
    RUN(test_probe_agrees_with_decode_on_photos);
    RUN(test_region_decode_matches_full_decode_inside);
    TEST_EXIT();
}
