/* gpu_api.c — loading the CUDA backend on demand (see gpu_api.h). */
#include "gpu_api.h"

#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* The library beside the running tool (build/bin -> build/lib, PREFIX/bin -> PREFIX/lib), else
 * wherever the dynamic loader finds it. */
static void *open_library(char *why, size_t len)
{
    char exe[PATH_MAX], path[PATH_MAX + 32];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = 0;
        char *slash = strrchr(exe, '/');
        if (slash) {
            *slash = 0;
            snprintf(path, sizeof path, "%s/../lib/libmoco_cuda.so", exe);
            void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
            if (h)
                return h;
            snprintf(why, len, "%s", dlerror());
        }
    }
    void *h = dlopen("libmoco_cuda.so", RTLD_NOW | RTLD_LOCAL);
    if (!h && !why[0])
        snprintf(why, len, "%s", dlerror());
    return h;
}

const gpu_api *gpu_api_load(moco_error *err)
{
    static const gpu_api *api;
    if (api)
        return api;
    char why[512] = "";
    void *lib = open_library(why, sizeof why);
    if (!lib) {
        moco_fail(err, "no CUDA backend to load (%s): this build or this machine has the CPU backend only", why);
        return NULL;
    }
    const gpu_api *(*entry)(void);
    *(void **)&entry = dlsym(lib, "moco_cuda_api");
    const gpu_api *table = entry ? entry() : NULL;
    if (!table || table->version != GPU_API_VERSION) {
        moco_fail(err, "libmoco_cuda.so is not this build's CUDA backend (%s)", entry ? "another version" : dlerror());
        dlclose(lib);
        return NULL;
    }
    return api = table; /* kept open for the life of the process */
}
