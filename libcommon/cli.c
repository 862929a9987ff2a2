/* cli.c — see cli.h. */
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *tool_name = "moco";

void cli_init(const char *name)
{
    tool_name = name;
    signal(SIGPIPE, SIG_IGN);
}

const char *cli_tool(void) { return tool_name; }

static void vreport(const char *tag, const char *fmt, va_list ap)
{
    char msg[2048];
    vsnprintf(msg, sizeof msg, fmt, ap);
    fprintf(stderr, "%s: %s%s\n", tool_name, tag, msg);
}

int cli_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vreport("", fmt, ap);
    va_end(ap);
    return EXIT_FAILURE;
}

void cli_warn(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vreport("warning: ", fmt, ap);
    va_end(ap);
}

int cli_usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vreport("", fmt, ap);
    va_end(ap);
    fprintf(stderr, "Try '%s --help'.\n", tool_name);
    return EXIT_USAGE;
}

int cli_version(void)
{
    printf("%s (moco) %s\n", tool_name, MOCO_VERSION);
    return 0;
}

int cli_int(const char *option, const char *s, int64_t min, int64_t max, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < min || v > max)
        return cli_usage_error("%s: '%s' is not an integer in %lld..%lld", option, s, (long long)min,
                               (long long)max);
    *out = v;
    return 0;
}

int cli_real(const char *option, const char *s, double min, double max, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v) || v < min || v > max)
        return cli_usage_error("%s: '%s' is not a number in %g..%g", option, s, min, max);
    *out = v;
    return 0;
}

/* "a,b,c" into out[0..]: how many numbers (1 to most), or -1 when s is not such a list. */
static int parse_reals(const char *s, int most, double min, double max, double *out)
{
    const char *p = s;
    for (int i = 0; i < most; i++) {
        char *end;
        errno = 0;
        double v = strtod(p, &end);
        if (errno || end == p || !isfinite(v) || v < min || v > max || (*end != ',' && *end != '\0'))
            return -1;
        out[i] = v;
        if (*end == '\0')
            return i + 1;
        p = end + 1;
    }
    return -1;
}

int cli_reals(const char *option, const char *s, int n, double min, double max, double *out)
{
    if (parse_reals(s, n, min, max, out) != n)
        return cli_usage_error("%s: '%s' is not %d comma-separated numbers in %g..%g", option, s, n, min, max);
    return 0;
}

int cli_real_list(const char *option, const char *s, int most, double min, double max, double *out, int *count)
{
    if ((*count = parse_reals(s, most, min, max, out)) < 0)
        return cli_usage_error("%s: '%s' is not 1 to %d comma-separated numbers in %g..%g", option, s, most, min,
                               max);
    return 0;
}

int cli_part(const char *option, const char *s, int *part, int *parts)
{
    int i, n, end = 0;
    if (sscanf(s, "%d/%d%n", &i, &n, &end) != 2 || s[end] || n < 1 || i < 0 || i >= n)
        return cli_usage_error("%s: '%s' is not I/N with 0 <= I < N", option, s);
    *part = i;
    *parts = n;
    return 0;
}

int cli_device(const char *s, int *device, int *given)
{
    *given = 0;
    if (!strcmp(s, "cpu")) {
        *device = -1;
        return 0;
    }
    if (strncmp(s, "cuda", 4) || (s[4] && s[4] != ':'))
        return cli_usage_error("--device %s: expected cpu, cuda or cuda:N", s);
    int64_t v = 0;
    if (s[4] && cli_int("--device cuda:N", s + 5, 0, 1023, &v))
        return EXIT_USAGE;
    *device = (int)v, *given = s[4] != 0;
    return 0;
}

int cli_precision(const char *s, int *bf16)
{
    if (strcmp(s, "bf16") && strcmp(s, "f32"))
        return cli_usage_error("--precision %s: expected bf16 or f32", s);
    *bf16 = !strcmp(s, "bf16");
    return 0;
}

int cli_default_threads(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}
