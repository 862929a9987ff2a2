/* cudnn.h — stands for the real header when cuda/ is built against the CPU emulation (emu.h). */
#include "emu.h"
