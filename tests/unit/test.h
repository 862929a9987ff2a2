/* test.h — the unit-test harness: each tests/unit/test_*.c is one program of TEST functions run
 * from main with RUN(name). Every test prints one line, "PASS name" or "FAIL name: file:line: what",
 * which tests/run.sh counts into the final "N passed, N failed". A test stops at its first failed
 * CHECK. Tests read like specifications: test_stream_rejects_flipped_byte. */
#ifndef MOCO_TEST_H
#define MOCO_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

/* Largest |got - want| over the largest |want|: one figure per tensor, scale-free; NaN when either
 * side holds a NaN (fmax would drop it, and a kernel that writes NaN must not pass). */
static inline double rel_error(const float *got, const float *want, size_t count)
{
    double diff = 0, scale = 0;
    for (size_t i = 0; i < count; i++) {
        if (isnan(got[i]) || isnan(want[i]))
            return NAN;
        diff = fmax(diff, fabs((double)got[i] - want[i]));
        scale = fmax(scale, fabs((double)want[i]));
    }
    return scale > 0 ? diff / scale : diff;
}

static int test_failed_flag;
static int test_fail_count;
static char test_fail_where[512];

#define TEST(name) static void name(void)

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            snprintf(test_fail_where, sizeof test_fail_where, "%s:%d: %s", __FILE__, __LINE__, #cond); \
            test_failed_flag = 1;                                                                  \
            return;                                                                                \
        }                                                                                          \
    } while (0)

/* CHECK with the library's error message shown on failure. */
#define CHECK_OK(expr, errp)                                                                       \
    do {                                                                                           \
        if ((expr) != 0) {                                                                         \
            snprintf(test_fail_where, sizeof test_fail_where, "%s:%d: %s: %s", __FILE__, __LINE__, \
                     #expr, (errp)->msg);                                                          \
            test_failed_flag = 1;                                                                  \
            return;                                                                                \
        }                                                                                          \
    } while (0)

#define RUN(name)                                                                                  \
    do {                                                                                           \
        test_failed_flag = 0;                                                                      \
        name();                                                                                    \
        if (test_failed_flag) {                                                                    \
            printf("FAIL %s: %s\n", #name, test_fail_where);                                       \
            test_fail_count++;                                                                     \
        } else {                                                                                   \
            printf("PASS %s\n", #name);                                                            \
        }                                                                                          \
        fflush(stdout);                                                                            \
    } while (0)

#define TEST_EXIT() return test_fail_count ? 1 : 0

/* A whole file into a malloc'd buffer (NULL when it cannot be opened); *len gets its size. */
static inline unsigned char *test_slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc(n > 0 ? (size_t)n : 1);
    *len = buf ? fread(buf, 1, (size_t)(n > 0 ? n : 0), f) : 0;
    fclose(f);
    return buf;
}

/* Pixels against a fixture: `expected` is "crc32:XXXXXXXX" or the path of a raw file of exactly n
 * bytes; a raw mismatch prints how many bytes differ and by how much. */
static inline int test_matches_expected(const char *expected, const unsigned char *got, size_t n)
{
    if (strncmp(expected, "crc32:", 6) == 0)
        return strtoul(expected + 6, NULL, 16) == crc32(0, got, (uInt)n);
    size_t len;
    unsigned char *want = test_slurp(expected, &len);
    int same = want && len == n && memcmp(want, got, n) == 0;
    if (want && len == n && !same) {
        size_t diff = 0;
        int worst = 0;
        for (size_t i = 0; i < n; i++)
            if (want[i] != got[i]) {
                int d = abs(want[i] - got[i]);
                diff++;
                worst = d > worst ? d : worst;
            }
        printf("# %zu of %zu bytes differ, by up to %d\n", diff, n, worst);
    }
    free(want);
    return same;
}

#endif
