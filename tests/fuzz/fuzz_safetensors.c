/* fuzz_safetensors.c — libFuzzer target for the safetensors reader: any bytes must give either a
 * reader whose every tensor lies inside the input, or an error message; never a crash, a read out
 * of bounds or a leak. Seeds in tests/fuzz/seeds/fuzz_safetensors/. */
#include <stdint.h>
#include <string.h>

#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    moco_error err;
    safetensors *st = safetensors_open_memory(data, size, "fuzz", &err);
    if (!st)
        return 0;
    volatile uint8_t sink = 0; /* read every byte, so ASan sees any tensor that escapes the input */
    for (int i = 0; i < safetensors_count(st); i++) {
        const tensor *t = safetensors_tensor(st, i);
        const uint8_t *p = t->data;
        for (int64_t b = 0; b < tensor_nbytes(t); b++)
            sink ^= p[b];
        if (safetensors_find(st, t->name) != t)
            __builtin_trap();
    }
    for (int i = 0; i < safetensors_metadata_count(st); i++) {
        const char *key = safetensors_metadata_key(st, i);
        const char *value = safetensors_metadata(st, key);
        sink ^= (uint8_t)strlen(value);
    }
    (void)sink;
    safetensors_close(st);
    return 0;
}
