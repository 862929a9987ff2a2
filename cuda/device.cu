/* device.cu — see device.h. */
#include "device.h"

#include <cuda_runtime.h>
#include <cudnn.h>
#include <stdio.h>

extern "C" int cuda_device_count(void)
{
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

extern "C" int cuda_device_open(int index, char *buf, size_t len, moco_error *err)
{
    int n = cuda_device_count();
    if (index < 0 || index >= n)
        return moco_fail(err, "cuda:%d: no such device (%d visible)", index, n);
    cudaError_t rc = cudaSetDevice(index);
    if (rc != cudaSuccess)
        return moco_fail(err, "cudaSetDevice(%d): %s", index, cudaGetErrorString(rc));
    cudaDeviceProp p;
    rc = cudaGetDeviceProperties(&p, index);
    if (rc != cudaSuccess)
        return moco_fail(err, "cudaGetDeviceProperties(%d): %s", index, cudaGetErrorString(rc));
    size_t v = cudnnGetVersion();
    snprintf(buf, len, "%s (sm_%d%d, %.1f GiB, cuDNN %zu.%zu.%zu)", p.name, p.major, p.minor,
             (double)p.totalGlobalMem / (1 << 30), v / 10000, v / 100 % 100, v % 100);
    return MOCO_OK;
}
