/* test_augment.c — the augmentation against torchvision: the crop sampler's distribution, crops
 * and the eval transform to the byte, and parameters that depend only on their key. */
#include <math.h>

#include "augment.h"
#include "test.h"

#define FIX "tests/fixtures/augment/"
#define PHOTOS "../shared/data/photos/"

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

TEST(test_crop_sampler_matches_torchvision_distribution)
{
    FILE *f = fopen(FIX "crop_stats.txt", "r");
    CHECK(f != NULL);
    int h, w, lines = 0;
    double fallback_tv;
    enum { N = 20000 };
    static double area[N], logr[N];
    const double scale[2] = {0.2, 1.0}, ratio[2] = {3.0 / 4.0, 4.0 / 3.0};
    while (fscanf(f, "%d %d %lf", &h, &w, &fallback_tv) == 3) {
        double qa[19], qr[19];
        for (int i = 0; i < 19; i++)
            CHECK(fscanf(f, "%lf", &qa[i]) == 1);
        for (int i = 0; i < 19; i++)
            CHECK(fscanf(f, "%lf", &qr[i]) == 1);
        int falls = 0;
        for (int n = 0; n < N; n++) {
            rng g;
            rng_init(&g, 7, 0, (uint64_t)n, 0);
            int x, y, cw, ch;
            falls += !augment_crop_params(h, w, scale, ratio, &g, &x, &y, &cw, &ch);
            CHECK(x >= 0 && y >= 0 && x + cw <= w && y + ch <= h && cw > 0 && ch > 0);
            area[n] = (double)cw * ch / ((double)w * h);
            logr[n] = log((double)cw / ch);
        }
        qsort(area, N, sizeof *area, cmp_double);
        qsort(logr, N, sizeof *logr, cmp_double);
        for (int i = 0; i < 19; i++) {
            int k = (int)((i + 1) * 5 / 100.0 * N);
            /* 20000 draws each side: sampling noise of a quantile is about 0.005 here; small
             * images make the quantiles jump between the few crop sizes that exist */
            double tol = h * w < 1000 ? 0.04 : 0.015;
            CHECK(fabs(area[k] - qa[i]) <= tol);
            CHECK(fabs(logr[k] - qr[i]) <= 2 * tol);
        }
        CHECK(fabs((double)falls / N - fallback_tv) <= 0.015);
        lines++;
    }
    fclose(f);
    CHECK(lines == 5);
}

static int decode_photo(const char *name, image *img)
{
    char path[256];
    snprintf(path, sizeof path, PHOTOS "%s", name);
    size_t len;
    uint8_t *data = test_slurp(path, &len);
    moco_error err;
    image_decode_options opt = {.channels = 3};
    int rc = data ? image_decode(data, len, &opt, img, &err) : -1;
    free(data);
    return rc;
}

/* Make view v of img with recipe r (at full size) and compare it with a fixture file. */
static int view_matches(const augment_recipe *r, const view_params *v, const image *img, const char *file)
{
    size_t n = (size_t)r->size * r->size * 3;
    uint8_t *out = malloc(n), *scratch = malloc(augment_scratch_bytes(r, img));
    moco_error err;
    char path[256];
    snprintf(path, sizeof path, FIX "%s", file);
    int same = out && scratch && augment_view(r, v, img, 1.0, 0, 0, out, scratch, &err) == MOCO_OK &&
               test_matches_expected(path, out, n);
    free(out);
    free(scratch);
    return same;
}

TEST(test_exact_crop_matches_torchvision_resized_crop)
{
    FILE *f = fopen(FIX "resized_crop.txt", "r");
    CHECK(f != NULL);
    char photo[64], file[128];
    int i, j, h, w, s, cases = 0;
    while (fscanf(f, "%63s %d %d %d %d %d %127s", photo, &i, &j, &h, &w, &s, file) == 7) {
        image img;
        CHECK(decode_photo(photo, &img) == 0);
        augment_recipe r;
        moco_error err;
        CHECK_OK(augment_recipe_named(&r, "lincls", s, &err), &err);
        r.exact = 1;
        view_params v = {.x = j, .y = i, .w = w, .h = h, .brightness = 1, .contrast = 1, .saturation = 1};
        int same = view_matches(&r, &v, &img, file);
        image_free(&img);
        CHECK(same);
        cases++;
    }
    fclose(f);
    CHECK(cases == 4);
}

TEST(test_eval_view_matches_resize_and_centre_crop)
{
    FILE *f = fopen(FIX "eval.txt", "r");
    CHECK(f != NULL);
    char photo[64], file[128];
    int resize, s, cases = 0;
    while (fscanf(f, "%63s %d %d %127s", photo, &resize, &s, file) == 4) {
        image img;
        CHECK(decode_photo(photo, &img) == 0);
        augment_recipe r;
        moco_error err;
        CHECK_OK(augment_recipe_named(&r, "eval", s, &err), &err);
        r.resize = resize;
        view_params v;
        rng g;
        rng_init(&g, 1, 0, 0, 0);
        augment_sample(&r, img.height, img.width, &g, &v);
        int same = view_matches(&r, &v, &img, file);
        image_free(&img);
        CHECK(same);
        cases++;
    }
    fclose(f);
    CHECK(cases == 3);
}

TEST(test_view_params_depend_only_on_their_key)
{
    augment_recipe r;
    moco_error err;
    CHECK_OK(augment_recipe_named(&r, "v2", 224, &err), &err);
    int differ = 0, jitter = 0, gray = 0, blur = 0, flip = 0;
    for (int n = 0; n < 2000; n++) {
        rng a, b, c;
        rng_init(&a, 3, 5, (uint64_t)n, 0);
        rng_init(&b, 3, 5, (uint64_t)n, 0);
        rng_init(&c, 3, 5, (uint64_t)n, 1);
        view_params va, vb, vc;
        augment_sample(&r, 375, 500, &a, &va);
        augment_sample(&r, 375, 500, &b, &vb);
        augment_sample(&r, 375, 500, &c, &vc);
        CHECK(memcmp(&va, &vb, sizeof va) == 0);
        differ += memcmp(&va, &vc, sizeof va) != 0;
        jitter += va.jitter, gray += va.grayscale, blur += va.blur, flip += va.flip;
        if (va.jitter) {
            CHECK(va.brightness >= 0.6f && va.brightness <= 1.4f && va.hue >= -0.1f && va.hue <= 0.1f);
            int seen[4] = {0};
            for (int k = 0; k < 4; k++)
                seen[va.order[k]]++;
            CHECK(seen[0] == 1 && seen[1] == 1 && seen[2] == 1 && seen[3] == 1);
        }
        if (va.blur)
            CHECK(va.sigma >= 0.1f && va.sigma <= 2.0f);
    }
    CHECK(differ == 2000);
    /* probabilities of the recipe, within sampling noise of 2000 draws */
    CHECK(abs(jitter - 1600) < 80 && abs(gray - 400) < 70 && abs(blur - 1000) < 90 && abs(flip - 1000) < 90);
}

TEST(test_unknown_recipe_is_refused)
{
    augment_recipe r;
    moco_error err;
    CHECK(augment_recipe_named(&r, "v3", 224, &err) == MOCO_ERR);
    CHECK(strstr(err.msg, "unknown recipe 'v3'") != NULL);
}

int main(void)
{
    RUN(test_crop_sampler_matches_torchvision_distribution);
    RUN(test_exact_crop_matches_torchvision_resized_crop);
    RUN(test_eval_view_matches_resize_and_centre_crop);
    RUN(test_view_params_depend_only_on_their_key);
    RUN(test_unknown_recipe_is_refused);
    TEST_EXIT();
}
