/* mkfeatures — write a synthetic feature stream (kind "features", as moco-extract's) for the tool tests
 * of moco-linear (not installed).
 *
 *   mkfeatures [--samples N] [--dim F] [--classes K] [--seed S] [--split I] [--sep X] [--f16] [--bf16]
 *              [--epochs E] [--shuffle-seed S] [--no-names] [--no-samples] [--nan-at R] [--bad-label R]
 *              [--stop-after R] [--tensor NAME] [--level L] [--npy PREFIX] [--reference PREFIX] > out.feat
 *
 * Sample i of split I: label i mod K, features centre[label] + N(0, 1), the class centres N(0, X^2)
 * drawn from --seed alone (so a train split 0 and a val split 1 share them). --epochs E writes the
 * samples E times; with --shuffle-seed S epoch e comes in linear_eval_permutation(S, e) order, the
 * order moco-linear's in-memory mode draws with --seed S, so a streamed run can be compared with an
 * in-memory one. --nan-at / --bad-label spoil record R (0-based); --stop-after R writes only the first R records
 * (a header promising more); --tensor renames "features".
 * --npy PREFIX writes PREFIX-x.npy (N,F) f32 and PREFIX-y.npy (N) i64 of the first epoch's samples in
 * natural order; --reference PREFIX writes PREFIX-perm.npy (E,N) i64, the orders of --epochs epochs
 * for --shuffle-seed (default 0), and PREFIX-w0.npy (K,F) f32, moco-linear's initial weights for that
 * seed: what a PyTorch reference needs to run the very same SGD. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "classifier.h"
#include "cli.h"
#include "linear_eval.h"
#include "rng.h"
#include "stream.h"

static int write_npy(const char *path, const char *descr, int rank, const int64_t *dims, const void *data,
                     size_t bytes)
{
    char header[256], shape[96] = "";
    for (int i = 0; i < rank; i++)
        snprintf(shape + strlen(shape), sizeof shape - strlen(shape), "%lld,%s", (long long)dims[i],
                 i + 1 < rank ? " " : "");
    int n = snprintf(header, sizeof header, "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }", descr, shape);
    int total = (10 + n + 1 + 63) / 64 * 64; /* magic, version, length, header, newline: a multiple of 64 */
    memset(header + n, ' ', (size_t)(total - 10 - n - 1));
    header[total - 10 - 1] = '\n';
    FILE *f = fopen(path, "wb");
    if (!f)
        return cli_error("%s: cannot open", path);
    unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)((total - 10) & 255),
                             (unsigned char)((total - 10) >> 8)};
    int bad = fwrite(pre, 1, 10, f) != 10 || fwrite(header, 1, (size_t)(total - 10), f) != (size_t)(total - 10) ||
              fwrite(data, 1, bytes, f) != bytes;
    bad |= fclose(f) != 0;
    return bad ? cli_error("%s: cannot write", path) : 0;
}

int main(int argc, char **argv)
{
    cli_init("mkfeatures");
    int64_t samples = 200, dim = 16, classes = 4, seed = 0, split = 0, epochs = 1, level = 3;
    int64_t shuffle_seed = -1, nan_at = -1, bad_label = -1, stop_after = -1;
    double sep = 3;
    int f16 = 0, bf16 = 0, no_names = 0, no_samples = 0, i;
    const char *tensor_name = "features", *npy = NULL, *reference = NULL;
    for (i = 1; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
        int rc = 0;
        const char *a = argv[i];
        if (!strcmp(a, "--f16")) f16 = 1;
        else if (!strcmp(a, "--bf16")) bf16 = 1;
        else if (!strcmp(a, "--no-names")) no_names = 1;
        else if (!strcmp(a, "--no-samples")) no_samples = 1;
        else if (i + 1 >= argc) return cli_usage_error("%s needs a value", a);
        else if (!strcmp(a, "--samples")) rc = cli_int(a, argv[++i], 0, 1 << 24, &samples);
        else if (!strcmp(a, "--dim")) rc = cli_int(a, argv[++i], 1, 1 << 20, &dim);
        else if (!strcmp(a, "--classes")) rc = cli_int(a, argv[++i], 1, 1 << 16, &classes);
        else if (!strcmp(a, "--seed")) rc = cli_int(a, argv[++i], 0, INT64_MAX, &seed);
        else if (!strcmp(a, "--split")) rc = cli_int(a, argv[++i], 0, 1000, &split);
        else if (!strcmp(a, "--sep")) rc = cli_real(a, argv[++i], 0, 1e38, &sep);
        else if (!strcmp(a, "--epochs")) rc = cli_int(a, argv[++i], 1, 100000, &epochs);
        else if (!strcmp(a, "--shuffle-seed")) rc = cli_int(a, argv[++i], 0, INT64_MAX, &shuffle_seed);
        else if (!strcmp(a, "--nan-at")) rc = cli_int(a, argv[++i], 0, INT64_MAX, &nan_at);
        else if (!strcmp(a, "--bad-label")) rc = cli_int(a, argv[++i], 0, INT64_MAX, &bad_label);
        else if (!strcmp(a, "--stop-after")) rc = cli_int(a, argv[++i], 0, INT64_MAX, &stop_after);
        else if (!strcmp(a, "--level")) rc = cli_int(a, argv[++i], -7, 22, &level);
        else if (!strcmp(a, "--tensor")) tensor_name = argv[++i];
        else if (!strcmp(a, "--npy")) npy = argv[++i];
        else if (!strcmp(a, "--reference")) reference = argv[++i];
        else return cli_usage_error("unknown option %s", a);
        if (rc)
            return rc;
    }
    if (i != argc)
        return cli_usage_error("no operands expected");

    /* the samples, in natural order */
    float *centres = malloc(sizeof(float) * (size_t)(classes * dim));
    float *x = malloc(sizeof(float) * (size_t)(samples * dim + 1));
    int64_t *y = malloc(sizeof(int64_t) * (size_t)(samples + 1));
    uint16_t *half = malloc(sizeof(uint16_t) * (size_t)dim);
    if (!centres || !x || !y || !half)
        return cli_error("out of memory");
    for (int64_t k = 0; k < classes; k++) {
        rng r;
        rng_init(&r, (uint64_t)seed, 1, (uint64_t)k, 0);
        for (int64_t j = 0; j < dim; j++)
            centres[k * dim + j] = (float)(sep * rng_normal(&r));
    }
    for (int64_t s = 0; s < samples; s++) {
        rng r;
        rng_init(&r, (uint64_t)seed, (uint32_t)(100 + split), (uint64_t)s, 0);
        y[s] = s % classes;
        for (int64_t j = 0; j < dim; j++)
            x[s * dim + j] = centres[y[s] * dim + j] + (float)rng_normal(&r);
    }
    if (npy) {
        char path[4096];
        int64_t xd[2] = {samples, dim}, yd[1] = {samples};
        snprintf(path, sizeof path, "%s-x.npy", npy);
        if (write_npy(path, "<f4", 2, xd, x, sizeof(float) * (size_t)(samples * dim)))
            return 1;
        snprintf(path, sizeof path, "%s-y.npy", npy);
        if (write_npy(path, "<i8", 1, yd, y, sizeof(int64_t) * (size_t)samples))
            return 1;
    }
    int64_t *perm = malloc(sizeof(int64_t) * (size_t)(samples * epochs + 1));
    if (!perm)
        return cli_error("out of memory");
    for (int64_t e = 0; e < epochs; e++) {
        if (shuffle_seed >= 0 || reference)
            linear_eval_permutation((uint64_t)(shuffle_seed >= 0 ? shuffle_seed : 0), (int)e, samples, perm + e * samples);
        else
            for (int64_t s = 0; s < samples; s++)
                perm[e * samples + s] = s;
    }
    if (reference) {
        char path[4096];
        int64_t pd[2] = {epochs, samples}, wd[2] = {classes, dim};
        snprintf(path, sizeof path, "%s-perm.npy", reference);
        if (write_npy(path, "<i8", 2, pd, perm, sizeof(int64_t) * (size_t)(samples * epochs)))
            return 1;
        classifier c;
        moco_error err;
        if (classifier_init(&c, (int)dim, (int)classes, 0, &err))
            return cli_error("%s", err.msg);
        linear_eval_init(&c, (uint64_t)(shuffle_seed >= 0 ? shuffle_seed : 0));
        snprintf(path, sizeof path, "%s-w0.npy", reference);
        if (write_npy(path, "<f4", 2, wd, classifier_weight(&c), sizeof(float) * (size_t)(classes * dim)))
            return 1;
        classifier_free(&c);
    }
    if (shuffle_seed < 0) /* natural order when streaming without a shuffle */
        for (int64_t e = 0; e < epochs; e++)
            for (int64_t s = 0; s < samples; s++)
                perm[e * samples + s] = s;

    stream_header *h = stream_header_new("features", "mkfeatures " MOCO_VERSION);
    stream_header_set_args(h, argc, argv);
    if (!no_names) {
        char **names = malloc(sizeof(char *) * (size_t)classes);
        for (int64_t k = 0; names && k < classes; k++) {
            names[k] = malloc(32);
            snprintf(names[k], 32, "class-%lld", (long long)k);
        }
        stream_header_set_classes(h, (int)classes, (const char *const *)names);
        for (int64_t k = 0; names && k < classes; k++)
            free(names[k]);
        free(names);
    }
    stream_header_set_int(h, "dim", dim);
    if (!no_samples)
        stream_header_set_int(h, "samples", samples);
    stream_header_set_int(h, "epochs", epochs);
    stream_header_set_str(h, "recipe", "synthetic");
    moco_error err;
    stream_options opt = STREAM_OPTIONS_DEFAULT;
    opt.level = (int)level;
    stream_writer *w = stream_writer_open("-", &opt, h, &err);
    stream_header_free(h);
    if (!w)
        return cli_error("%s", err.msg);
    int rc = 0;
    for (int64_t r = 0; r < samples * epochs && r != stop_after && !rc; r++) {
        int64_t s = perm[r];
        float *v = x + s * dim;
        float saved = v[0];
        if (r == nan_at)
            v[0] = NAN;
        stream_record rec;
        stream_record_init(&rec, s, r == bad_label ? classes : y[s]);
        int64_t d[1] = {dim};
        if (f16 || bf16) {
            for (int64_t j = 0; j < dim; j++)
                half[j] = f16 ? f32_to_f16(v[j]) : f32_to_bf16(v[j]);
            rc = stream_record_add(&rec, tensor_name, f16 ? DTYPE_F16 : DTYPE_BF16, 1, d, half, &err);
        } else {
            rc = stream_record_add(&rec, tensor_name, DTYPE_F32, 1, d, v, &err);
        }
        if (!rc)
            rc = stream_write(w, &rec, &err);
        v[0] = saved;
    }
    free(centres);
    free(x);
    free(y);
    free(half);
    free(perm);
    if (rc == MOCO_EPIPE) {
        stream_writer_abort(w);
        return 0;
    }
    if (rc)
        return cli_error("%s", err.msg);
    rc = stream_writer_close(w, &err);
    return rc == MOCO_EPIPE ? 0 : rc ? cli_error("%s", err.msg) : 0;
}
