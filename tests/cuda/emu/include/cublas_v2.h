/* cublas_v2.h — stands for the real header when cuda/ is built against the CPU emulation (emu.h). */
#include "emu.h"
