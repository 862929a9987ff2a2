/* test_tensor.c — dtypes, shapes and the half-precision conversions. */
#include "tensor.h"
#include "test.h"

TEST(test_half_and_bfloat_conversions_round_to_nearest_even)
{
    CHECK(f32_to_f16(1.0f) == 0x3c00 && f16_to_f32(0x3c00) == 1.0f);
    CHECK(f32_to_f16(-2.5f) == 0xc100);
    CHECK(f32_to_f16(65504.0f) == 0x7bff && f32_to_f16(65520.0f) == 0x7c00);
    CHECK(f32_to_f16(5.9604645e-08f) == 0x0001 && f16_to_f32(0x0001) == 5.9604645e-08f);
    CHECK(f32_to_f16(1.0f + 1.0f / 2048) == 0x3c00);        /* tie: rounds to even */
    CHECK(f32_to_f16(1.0f + 3.0f / 2048) == 0x3c02);        /* tie: rounds up to even */
    CHECK(f32_to_bf16(1.0f) == 0x3f80 && bf16_to_f32(0x3f80) == 1.0f);
    CHECK(f32_to_bf16(1.0f + 1.0f / 256) == 0x3f80);        /* tie to even */
    CHECK(f32_to_bf16(1.0f + 3.0f / 256) == 0x3f82);
    for (int h = 0; h < 0x7c00; h++) /* every finite positive half survives a round trip */
        CHECK(f32_to_f16(f16_to_f32((uint16_t)h)) == h);
}

TEST(test_tensor_sizes_and_overflow)
{
    tensor t;
    moco_error err;
    int64_t dims[3] = {2, 224, 3};
    CHECK_OK(tensor_init(&t, "views", DTYPE_F16, 3, dims, &err), &err);
    CHECK(tensor_numel(&t) == 1344 && tensor_nbytes(&t) == 2688);
    char buf[64];
    CHECK(strcmp(tensor_describe(&t, buf, sizeof buf), "f16[2,224,3]") == 0);
    t.dims[0] = INT64_MAX / 100;
    CHECK(tensor_numel(&t) == -1 && tensor_nbytes(&t) == -1);
    CHECK(dtype_from_name("bf16") == DTYPE_BF16 && dtype_from_name("f64") == 0 && dtype_size(99) == 0);
    CHECK(tensor_init(&t, "", DTYPE_U8, 0, dims, &err) == MOCO_ERR);
}

int main(void)
{
    RUN(test_half_and_bfloat_conversions_round_to_nearest_even);
    RUN(test_tensor_sizes_and_overflow);
    TEST_EXIT();
}
