/* test_rng.c — the counter-based generator: known answers and independence of streams. */
#include "rng.h"
#include "test.h"

TEST(test_rng_philox_matches_random123_known_answers)
{
    uint32_t out[4];
    philox4x32_10((uint32_t[]){0, 0, 0, 0}, (uint32_t[]){0, 0}, out);
    CHECK(out[0] == 0x6627e8d5u && out[1] == 0xe169c58du && out[2] == 0xbc57ac4cu && out[3] == 0x9b00dbd8u);
    philox4x32_10((uint32_t[]){~0u, ~0u, ~0u, ~0u}, (uint32_t[]){~0u, ~0u}, out);
    CHECK(out[0] == 0x408f276du && out[1] == 0x41c83b0eu && out[2] == 0xa20bc7c6u && out[3] == 0x6d5451fdu);
    philox4x32_10((uint32_t[]){0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
                  (uint32_t[]){0xa4093822, 0x299f31d0}, out);
    CHECK(out[0] == 0xd16cfe09u && out[1] == 0x94fdccebu && out[2] == 0x5001e420u && out[3] == 0x24126ea1u);
}

TEST(test_rng_streams_depend_only_on_their_key)
{
    rng a, b, c;
    rng_init(&a, 42, 3, 1234567, 1);
    rng_init(&b, 42, 3, 1234567, 1);
    rng_init(&c, 42, 3, 1234567, 0);
    int same = 1, differ = 0;
    for (int i = 0; i < 100; i++) {
        uint32_t x = rng_u32(&a), y = rng_u32(&b), z = rng_u32(&c);
        same &= x == y;
        differ += x != z;
    }
    CHECK(same && differ > 95);
    double sum = 0, sq = 0;
    int below_ok = 1;
    for (int i = 0; i < 20000; i++) {
        double u = rng_uniform(&a);
        CHECK(u >= 0 && u < 1);
        double n = rng_normal(&a);
        sum += n;
        sq += n * n;
        below_ok &= rng_below(&a, 7) < 7;
    }
    CHECK(below_ok);
    CHECK(sum / 20000 > -0.05 && sum / 20000 < 0.05);
    CHECK(sq / 20000 > 0.95 && sq / 20000 < 1.05);
}

int main(void)
{
    RUN(test_rng_philox_matches_random123_known_answers);
    RUN(test_rng_streams_depend_only_on_their_key);
    TEST_EXIT();
}
