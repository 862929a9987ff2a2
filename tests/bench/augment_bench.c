/* augment_bench.c — MoCo v2 pairs per second on one core, and the share of it spent decoding.
 *
 *   augment_bench [--exact] [--seconds S] [--size N] IMAGE...
 * For each image in turn (held in memory, as the peer holds its blobs): draw two v2 views, decode
 * the JPEG once (at a reduced DCT scale when both crops allow, unless --exact), make both views.
 * Prints one JSON line: pairs_per_s, decode_share. The same work as
 * ../shared/peers/augment_torchvision.py, minus ToTensor/Normalize (our views stay u8). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "augment.h"
#include "cli.h"
#include "dataset.h"
#include "progress.h"

int main(int argc, char **argv)
{
    cli_init("augment_bench");
    int exact = 0, i = 1;
    int64_t size = 224;
    double seconds = 5;
    for (; i < argc && !strncmp(argv[i], "--", 2); i++) {
        if (!strcmp(argv[i], "--exact"))
            exact = 1;
        else if (!strcmp(argv[i], "--seconds") && i + 1 < argc && !cli_real("--seconds", argv[i + 1], 0.1, 1e6, &seconds))
            i++;
        else if (!strcmp(argv[i], "--size") && i + 1 < argc && !cli_int("--size", argv[i + 1], 8, 4096, &size))
            i++;
        else
            return cli_usage_error("usage: augment_bench [--exact] [--seconds S] [--size N] IMAGE...");
    }
    int n = argc - i;
    if (n < 1)
        return cli_usage_error("no images");
    uint8_t **blobs = calloc((size_t)n, sizeof *blobs);
    size_t *lens = calloc((size_t)n, sizeof *lens);
    int *hs = calloc((size_t)n, sizeof *hs), *ws = calloc((size_t)n, sizeof *ws);
    moco_error err;
    for (int k = 0; k < n; k++) {
        int c;
        if (dataset_read_file(argv[i + k], &blobs[k], &lens[k], 1 << 30, &err) ||
            image_probe(blobs[k], lens[k], &hs[k], &ws[k], &c, &err))
            return cli_error("%s", err.msg);
    }
    augment_recipe r;
    augment_recipe_named(&r, "v2", (int)size, &err);
    r.exact = exact;
    uint8_t *views = malloc((size_t)size * size * 3 * 2);
    double t0 = progress_now(), decode_s = 0;
    int64_t pairs = 0;
    while (progress_now() - t0 < seconds) {
        for (int k = 0; k < n; k++, pairs++) {
            view_params v[2];
            for (int j = 0; j < 2; j++) {
                rng g;
                rng_init(&g, 0, 0, (uint64_t)pairs, (uint32_t)j);
                augment_sample(&r, hs[k], ws[k], &g, &v[j]);
            }
            image_decode_options opt = {.channels = 3};
            if (!exact)
                augment_decode_plan(&r, v, 2, hs[k], ws[k], &opt);
            double d0 = progress_now();
            image img;
            image_origin at;
            if (image_decode_region(blobs[k], lens[k], &opt, &img, &at, &err))
                return cli_error("%s: %s", argv[i + k], err.msg);
            decode_s += progress_now() - d0;
            uint8_t *scratch = malloc(augment_scratch_bytes(&r, &img));
            for (int j = 0; j < 2; j++)
                if (augment_view(&r, &v[j], &img, at.scale, at.x, at.y, views + (size_t)j * size * size * 3, scratch,
                                 &err))
                    return cli_error("%s", err.msg);
            free(scratch);
            image_free(&img);
        }
    }
    double el = progress_now() - t0;
    printf("{\"tool\":\"augment_bench\",\"exact\":%d,\"size\":%lld,\"images\":%d,\"pairs\":%lld,\"seconds\":%.2f,"
           "\"pairs_per_s\":%.1f,\"decode_share\":%.3f}\n",
           exact, (long long)size, n, (long long)pairs, el, pairs / el, decode_s / el);
    return 0;
}
