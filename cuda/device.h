/* device.h — the CUDA backend's device handling: choosing a GPU and describing it.
 *
 * This is the first piece of cuda/ (the backend itself arrives with the CUDA backend issue); it
 * fixes the error convention every CUDA call follows: the status is checked and turned into a
 * moco_error naming the call, never printed or exited on here. Declared extern "C" so the C tools
 * link it. */
#ifndef MOCO_CUDA_DEVICE_H
#define MOCO_CUDA_DEVICE_H

#include <stddef.h>

#include "error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Number of visible CUDA devices (0 when there is no driver or no GPU: not an error). */
int cuda_device_count(void);

/* Select device `index` and write "NVIDIA H200 (sm_90, 139.8 GiB, cuDNN 9.14.0)" into buf. */
int cuda_device_open(int index, char *buf, size_t len, moco_error *err);

#ifdef __cplusplus
}
#endif

#endif
