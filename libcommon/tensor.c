/* tensor.c — see tensor.h. */
#include "tensor.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static const struct {
    const char *name;
    size_t size;
} dtype_info[] = {
    [DTYPE_U8] = {"u8", 1},   [DTYPE_I32] = {"i32", 4},   [DTYPE_I64] = {"i64", 8},
    [DTYPE_F16] = {"f16", 2}, [DTYPE_BF16] = {"bf16", 2}, [DTYPE_F32] = {"f32", 4},
};

size_t dtype_size(int dtype)
{
    return dtype >= DTYPE_U8 && dtype <= DTYPE_F32 ? dtype_info[dtype].size : 0;
}

const char *dtype_name(int dtype)
{
    return dtype >= DTYPE_U8 && dtype <= DTYPE_F32 ? dtype_info[dtype].name : NULL;
}

int dtype_from_name(const char *name)
{
    for (int d = DTYPE_U8; d <= DTYPE_F32; d++)
        if (strcmp(name, dtype_info[d].name) == 0)
            return d;
    return 0;
}

int tensor_init(tensor *t, const char *name, tensor_dtype dtype, int rank, const int64_t *dims,
                moco_error *err)
{
    memset(t, 0, sizeof *t);
    size_t n = strlen(name);
    if (n == 0 || n > TENSOR_MAX_NAME)
        return moco_fail(err, "tensor name '%.40s' must have 1 to %d bytes", name, TENSOR_MAX_NAME);
    if (rank < 0 || rank > TENSOR_MAX_RANK)
        return moco_fail(err, "tensor '%s': rank %d (at most %d)", name, rank, TENSOR_MAX_RANK);
    if (!dtype_size(dtype))
        return moco_fail(err, "tensor '%s': unknown dtype %d", name, dtype);
    memcpy(t->name, name, n + 1);
    t->dtype = dtype;
    t->rank = rank;
    for (int i = 0; i < rank; i++)
        t->dims[i] = dims[i];
    return MOCO_OK;
}

int64_t tensor_numel(const tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->rank; i++) {
        if (t->dims[i] < 0 || (t->dims[i] > 0 && n > INT64_MAX / t->dims[i]))
            return -1;
        n *= t->dims[i];
    }
    return n;
}

int64_t tensor_nbytes(const tensor *t)
{
    int64_t n = tensor_numel(t);
    int64_t size = (int64_t)dtype_size(t->dtype);
    if (n < 0 || size == 0 || n > INT64_MAX / size)
        return -1;
    return n * size;
}

char *tensor_describe(const tensor *t, char *buf, size_t len)
{
    const char *dn = dtype_name(t->dtype);
    size_t used = (size_t)snprintf(buf, len, "%s[", dn ? dn : "?");
    for (int i = 0; i < t->rank && used < len; i++)
        used += (size_t)snprintf(buf + used, len - used, i ? ",%lld" : "%lld", (long long)t->dims[i]);
    if (used < len)
        snprintf(buf + used, len - used, "]");
    return buf;
}

/* IEEE half: 1 sign, 5 exponent (bias 15), 10 mantissa bits. */
float f16_to_f32(uint16_t h)
{
    int exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    float v;
    if (exp == 0)
        v = ldexpf((float)mant, -24); /* subnormal */
    else if (exp == 31)
        v = mant ? NAN : INFINITY;
    else
        v = ldexpf((float)(mant | 0x400), exp - 25);
    return (h & 0x8000) ? -v : v;
}

float bf16_to_f32(uint16_t b)
{
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffff) > 0x7f800000)
        return (uint16_t)((u >> 16) | 0x40); /* keep NaN a (quiet) NaN */
    u += 0x7fff + ((u >> 16) & 1);            /* round to nearest even */
    return (uint16_t)(u >> 16);
}

uint16_t f32_to_f16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    uint32_t abs = u & 0x7fffffff;
    if (abs > 0x7f800000)
        return sign | 0x7e00;                 /* NaN */
    if (abs >= 0x477ff000)                    /* rounds to >= 65520: overflow to inf */
        return sign | 0x7c00;
    if (abs < 0x38800000) {                   /* below the smallest normal half, 2^-14 */
        float a;
        memcpy(&a, &abs, 4);
        /* Subnormal halves are multiples of 2^-24; rintf rounds half to even. */
        return sign | (uint16_t)rintf(a * 16777216.0f);
    }
    /* Normal: rebias the exponent (127 -> 15) and round the 23-bit mantissa to 10 bits. */
    uint32_t rounded = abs + 0xfff + ((abs >> 13) & 1);
    return sign | (uint16_t)((rounded - 0x38000000) >> 13);
}

double tensor_get(const tensor *t, int64_t i)
{
    const void *p = t->data;
    switch (t->dtype) {
    case DTYPE_U8: return ((const uint8_t *)p)[i];
    case DTYPE_I32: { int32_t v; memcpy(&v, (const char *)p + 4 * i, 4); return v; }
    case DTYPE_I64: { int64_t v; memcpy(&v, (const char *)p + 8 * i, 8); return (double)v; }
    case DTYPE_F16: { uint16_t v; memcpy(&v, (const char *)p + 2 * i, 2); return f16_to_f32(v); }
    case DTYPE_BF16: { uint16_t v; memcpy(&v, (const char *)p + 2 * i, 2); return bf16_to_f32(v); }
    case DTYPE_F32: { float v; memcpy(&v, (const char *)p + 4 * i, 4); return v; }
    }
    return NAN;
}
