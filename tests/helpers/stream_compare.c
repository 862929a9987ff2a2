/* stream_compare — compare two tensor streams tensor by tensor, for tests (not installed): a GPU
 * run's checkpoint or features against the CPU's (tests/cuda/device-check.sh), two runs that
 * should agree (tests/tools).
 *
 *   stream_compare A B TOLERANCE [OUTLIERS LIMIT]
 * Records are read in step; each must hold the same tensors (names, dtypes, shapes) in both. For
 * every tensor name the error is the largest |a - b| over the largest |b|, over all records holding
 * it (a checkpoint has one record per tensor; a features stream one "features" per sample).
 * Prints the worst name's error, and every name above TOLERANCE. With OUTLIERS and LIMIT, up to
 * OUTLIERS names may pass TOLERANCE if none passes LIMIT: float32 training runs whose sums add in
 * another order may see a pre-ReLU value within a rounding of zero take the other sign, which moves
 * that element's whole gradient and the few tensors it feeds. Exit status 0: all within; 1: some
 * above; 2: the streams differ in structure or cannot be read. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "stream.h"

typedef struct {
    char name[TENSOR_MAX_NAME + 1];
    double diff, scale;
} measure;

static measure *find_measure(measure **all, int *count, const char *name)
{
    for (int i = 0; i < *count; i++)
        if (!strcmp((*all)[i].name, name))
            return &(*all)[i];
    measure *grown = realloc(*all, sizeof *grown * (*count + 1));
    if (!grown)
        return NULL;
    *all = grown;
    measure *m = &grown[(*count)++];
    snprintf(m->name, sizeof m->name, "%s", name);
    m->diff = m->scale = 0;
    return m;
}

enum { STRUCTURE = 2 }; /* the exit status when the streams cannot be compared */

int main(int argc, char **argv)
{
    cli_init("stream_compare");
    double tol, limit = 0, outliers = 0;
    if (argc != 4 && argc != 6)
        return cli_usage_error("usage: stream_compare A B TOLERANCE [OUTLIERS LIMIT]");
    if (cli_real("TOLERANCE", argv[3], 0, 1e9, &tol) ||
        (argc == 6 && (cli_real("OUTLIERS", argv[4], 0, 1e9, &outliers) || cli_real("LIMIT", argv[5], 0, 1e9, &limit))))
        return STRUCTURE;
    moco_error err;
    stream_reader *a = stream_reader_open(argv[1], NULL, &err), *b = a ? stream_reader_open(argv[2], NULL, &err) : NULL;
    if (!a || !b) {
        cli_error("%s", err.msg);
        return 2;
    }
    measure *all = NULL;
    int count = 0, status = 0;
    for (int64_t record = 0; !status; record++) {
        stream_record ra, rb;
        int ga = stream_read(a, &ra, &err), gb = ga < 0 ? 0 : stream_read(b, &rb, &err);
        if (ga < 0 || gb < 0) {
            cli_error("%s", err.msg);
            status = STRUCTURE;
            break;
        }
        if (!ga || !gb) {
            if (ga != gb) {
                cli_error("record %lld: %s ends first", (long long)record, ga ? argv[2] : argv[1]);
                status = STRUCTURE;
            }
            break;
        }
        if (ra.ntensors != rb.ntensors) {
            cli_error("record %lld: %d tensors against %d", (long long)record, ra.ntensors, rb.ntensors);
            status = STRUCTURE;
            break;
        }
        for (int t = 0; t < ra.ntensors && !status; t++) {
            const tensor *x = &ra.tensors[t], *y = stream_record_find(&rb, x->name);
            int64_t n = tensor_numel(x);
            if (!y || y->dtype != x->dtype || tensor_numel(y) != n) {
                cli_error("record %lld: tensor %s differs in name, dtype or size", (long long)record, x->name);
                status = STRUCTURE;
                break;
            }
            measure *m = find_measure(&all, &count, x->name);
            if (!m) {
                cli_error("out of memory");
                status = STRUCTURE;
                break;
            }
            for (int64_t i = 0; i < n; i++) {
                double u = tensor_get(x, i), v = tensor_get(y, i);
                m->diff = fmax(m->diff, isnan(u) != isnan(v) ? INFINITY : fabs(u - v));
                m->scale = fmax(m->scale, fabs(v));
            }
        }
    }
    if (!status) {
        double worst = -1;
        const char *worst_name = "(no tensors)";
        int above = 0;
        for (int i = 0; i < count; i++) {
            double e = all[i].scale > 0 ? all[i].diff / all[i].scale : all[i].diff;
            if (e > tol) {
                printf("# %s: relative error %.3g\n", all[i].name, e);
                above++;
                status |= !(e <= limit); /* NaN passes no limit */
            }
            if (e > worst)
                worst = e, worst_name = all[i].name;
        }
        status |= above > outliers;
        printf("worst relative error %.3g (%s) over %d tensors", worst < 0 ? 0 : worst, worst_name, count);
        if (argc == 6)
            printf(", %d above %g (at most %g allowed, each within %g)", above, tol, outliers, limit);
        printf("\n");
    }
    free(all);
    stream_reader_close(a);
    stream_reader_close(b);
    return status;
}
