/* api.cu — the table of entry points the tools load with dlopen (libcommon/gpu_api.h): the one
 * symbol libmoco_cuda.so exports for them, filled from gpu.h's functions so the compiler checks
 * that both headers agree. */
#include "gpu_internal.h"

extern "C" __attribute__((visibility("default"))) const gpu_api *moco_cuda_api(void)
{
    static const gpu_api api = {
        GPU_API_VERSION,
        gpu_trainer_create,
        gpu_trainer_use_graph,
        gpu_trainer_graph_failed,
        gpu_trainer_join,
        gpu_trainer_step,
        gpu_trainer_upload_next,
        gpu_trainer_download,
        gpu_trainer_host_alloc,
        gpu_trainer_host_free,
        gpu_trainer_describe,
        gpu_trainer_peak_bytes,
        gpu_trainer_destroy,
        gpu_ranks_id,
        gpu_extractor_create,
        gpu_extractor_run,
        gpu_extractor_describe,
        gpu_extractor_destroy,
        gpu_linear_create,
        gpu_linear_step,
        gpu_linear_pull,
        gpu_linear_describe,
        gpu_linear_destroy,
    };
    return &api;
}
