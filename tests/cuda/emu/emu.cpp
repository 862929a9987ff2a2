/* emu.cpp — the emulation emu.h declares: kernel launches, fibers, memory, graphs, cuDNN, cuBLAS, NCCL. */
#include "emu.h"
#include <cstdarg>
#include <map>
#include <memory>
#include <set>
#include <vector>
#include <ucontext.h>
#include <sys/mman.h>

namespace emu {
uint3 cur_tid, cur_bid;
dim3 cur_bdim, cur_gdim;
static cudaError_t last_error = cudaSuccess;
void set_error(cudaError_t e) { if (last_error == cudaSuccess) last_error = e; }
void fatal(const char *fmt, ...)
{
    va_list ap; va_start(ap, fmt);
    fprintf(stderr, "EMU FATAL: "); vfprintf(stderr, fmt, ap); fprintf(stderr, "\n");
    va_end(ap); fflush(stderr); abort();
}
static void warn(const char *fmt, ...)
{
    va_list ap; va_start(ap, fmt);
    fprintf(stderr, "EMU WARNING: "); vfprintf(stderr, fmt, ap); fprintf(stderr, "\n");
    va_end(ap);
}
static std::map<uintptr_t, size_t> dev, pinned;
static bool in_map(const std::map<uintptr_t, size_t> &m, const void *p, size_t bytes)
{
    uintptr_t a = (uintptr_t)p;
    auto it = m.upper_bound(a);
    if (it == m.begin()) return false;
    --it;
    return a >= it->first && a + bytes <= it->first + it->second;
}
bool is_device(const void *p) { return in_map(dev, p, 0); }
static bool is_dev_range(const void *p, size_t b) { return in_map(dev, p, b); }
static bool is_pinned(const void *p, size_t b) { return in_map(pinned, p, b); }

/* ---- streams and capture ---- */
struct stream { bool capturing = false; bool capture_broken = false; std::vector<std::function<void()>> rec, pending; };
static bool deferred = getenv("EMU_DEFER") != nullptr;
static std::set<cudaStream_t> streams;
static stream *S(cudaStream_t s) { return s ? (stream *)s : nullptr; }
static bool capturing(cudaStream_t s) { return s && S(s)->capturing; }
void submit(cudaStream_t s, std::function<void()> f)
{
    if (s && !streams.count(s)) fatal("work submitted to an unknown stream %p", (void *)s);
    if (capturing(s)) S(s)->rec.push_back(std::move(f));
    else if (deferred && s) S(s)->pending.push_back(std::move(f));
    else f();
}
static void flush(cudaStream_t s)
{
    if (!s || !streams.count(s)) return;
    std::vector<std::function<void()>> w;
    w.swap(S(s)->pending);
    for (auto &f : w) f();
}
static void flush_all() { for (auto s : streams) flush(s); }
static bool any_capturing()
{
    for (auto s : streams) if (S(s)->capturing) return true;
    return false;
}

/* ---- fibers ---- */
enum { STACK = 256 << 10 };
struct fiber { ucontext_t ctx; bool done; uint3 tid; };
static std::vector<fiber> fibers;
static std::vector<char *> stacks;
static ucontext_t sched_ctx;
static int cur_fiber = -1;
static const std::function<void()> *cur_body;
static bool fiber_mode, used_sync;
static unsigned nthreads, live;
static unsigned bar_arrived, bar_gen;
static unsigned warp_arrived[32], warp_gen[32], warp_live[32];
static uint64_t slots[1024];
static unsigned long long progress;
static std::map<const void *, bool> coop_known; /* false: no barrier seen in a first launch */

static void yield()
{
    int me = cur_fiber;
    swapcontext(&fibers[me].ctx, &sched_ctx);
    cur_fiber = me;
    cur_tid = fibers[me].tid;
}
static void fiber_main()
{
    (*cur_body)();
    fibers[cur_fiber].done = true;
    live--;
    unsigned t = (cur_tid.z * cur_bdim.y + cur_tid.y) * cur_bdim.x + cur_tid.x;
    warp_live[t / 32]--;
    progress++;
    if (bar_arrived && bar_arrived == live) { bar_arrived = 0; bar_gen++; }
    if (warp_arrived[t / 32] && warp_arrived[t / 32] == warp_live[t / 32]) { warp_arrived[t / 32] = 0; warp_gen[t / 32]++; }
    swapcontext(&fibers[cur_fiber].ctx, &sched_ctx);
}
static unsigned long long block_serial;
static std::map<void *, unsigned long long> poisoned;
void poison(void *p, size_t bytes)
{
    auto &last = poisoned[p];
    if (last == block_serial) return;
    last = block_serial;
    memset(p, 0xff, bytes); /* NaN floats, -1 ints: shared memory starts as garbage in every block */
}
unsigned linear() { return (cur_tid.z * cur_bdim.y + cur_tid.y) * cur_bdim.x + cur_tid.x; }
void syncthreads()
{
    used_sync = true;
    if (!fiber_mode) fatal("__syncthreads in a kernel first run without barriers");
    unsigned gen = bar_gen;
    progress++;
    if (++bar_arrived == live) { bar_arrived = 0; bar_gen++; return; }
    while (bar_gen == gen) yield();
}
static void warp_barrier(unsigned w)
{
    unsigned gen = warp_gen[w];
    progress++;
    if (++warp_arrived[w] == warp_live[w]) { warp_arrived[w] = 0; warp_gen[w]++; return; }
    while (warp_gen[w] == gen) yield();
}
uint64_t warp_exchange(uint64_t v, int kind, int arg, int width)
{
    used_sync = true;
    if (!fiber_mode) fatal("warp shuffle in a kernel first run without barriers");
    unsigned t = linear(), w = t / 32, lane = t % 32;
    if (warp_live[w] != (nthreads - w * 32 < 32 ? nthreads - w * 32 : 32))
        warn("shuffle with exited lanes in warp %u", w);
    slots[t] = v;
    warp_barrier(w);
    unsigned seg = lane & ~(unsigned)(width - 1), in = lane - seg, src = lane;
    if (kind == 0) src = seg + ((in ^ (unsigned)arg) & (width - 1));
    else if (kind == 1) src = in + arg < (unsigned)width ? lane + arg : lane;
    else if (kind == 2) src = in >= (unsigned)arg ? lane - arg : lane;
    else src = seg + ((unsigned)arg % width);
    unsigned s = w * 32 + src;
    uint64_t r = s < nthreads ? slots[s] : v;
    warp_barrier(w);
    return r;
}

void run_grid(const void *key, dim3 grid, dim3 block, const std::function<void()> &body)
{
    cur_gdim = grid, cur_bdim = block;
    nthreads = block.x * block.y * block.z;
    auto known = coop_known.find(key);
    fiber_mode = known == coop_known.end() || known->second;
    used_sync = false;
    if (fiber_mode) {
        if (fibers.size() < nthreads) fibers.resize(nthreads);
        while (stacks.size() < nthreads) {
            void *m = mmap(nullptr, STACK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            stacks.push_back((char *)m);
        }
    }
    for (unsigned bz = 0; bz < grid.z; bz++)
        for (unsigned by = 0; by < grid.y; by++)
            for (unsigned bx = 0; bx < grid.x; bx++) {
                static int rev = getenv("EMU_REVERSE") ? 1 : 0;
                cur_bid = rev ? uint3{grid.x - 1 - bx, grid.y - 1 - by, grid.z - 1 - bz} : uint3{bx, by, bz};
                block_serial++;
                if (!fiber_mode) {
                    for (unsigned z = 0; z < block.z; z++)
                        for (unsigned y = 0; y < block.y; y++)
                            for (unsigned x = 0; x < block.x; x++) { cur_tid = rev ? uint3{block.x - 1 - x, block.y - 1 - y, block.z - 1 - z} : uint3{x, y, z}; body(); }
                    continue;
                }
                cur_body = &body;
                live = nthreads, bar_arrived = 0;
                for (unsigned w = 0; w < 32; w++) {
                    warp_arrived[w] = 0;
                    warp_live[w] = nthreads > w * 32 ? (nthreads - w * 32 < 32 ? nthreads - w * 32 : 32) : 0;
                }
                unsigned i = 0;
                for (unsigned z = 0; z < block.z; z++)
                    for (unsigned y = 0; y < block.y; y++)
                        for (unsigned x = 0; x < block.x; x++, i++) {
                            fiber &f = fibers[i];
                            f.done = false, f.tid = {x, y, z};
                            if (rev) f.tid = {block.x - 1 - x, block.y - 1 - y, block.z - 1 - z};
                            getcontext(&f.ctx);
                            f.ctx.uc_stack.ss_sp = stacks[i], f.ctx.uc_stack.ss_size = STACK, f.ctx.uc_link = nullptr;
                            makecontext(&f.ctx, fiber_main, 0);
                        }
                while (live) {
                    unsigned long long before = progress;
                    for (unsigned k = 0; k < nthreads; k++) {
                        if (fibers[k].done) continue;
                        cur_fiber = k, cur_tid = fibers[k].tid;
                        swapcontext(&sched_ctx, &fibers[k].ctx);
                    }
                    if (live && progress == before) fatal("deadlock: %u threads wait at a barrier that never completes", live);
                }
            }
    if (known == coop_known.end()) coop_known[key] = used_sync;
    fiber_mode = false;
}
} // namespace emu
using namespace emu;

/* ---- runtime ---- */
cudaError_t cudaGetLastError(void) { cudaError_t e = last_error; last_error = cudaSuccess; return e; }
cudaError_t cudaPeekAtLastError(void) { return last_error; }
const char *cudaGetErrorString(cudaError_t e)
{
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorStreamCaptureUnsupported: return "operation not permitted when stream is capturing";
    default: return "unknown error";
    }
}
cudaError_t cudaMalloc(void **p, size_t bytes)
{
    if (any_capturing()) warn("cudaMalloc during a stream capture");
#ifdef EMU_EXACT_ALLOC
    *p = malloc(bytes ? bytes : 1); /* exact size: ASan sees overruns */
#else
    *p = aligned_alloc(256, (bytes + 255) / 256 * 256 + 256);
#endif
    if (!*p) return cudaErrorMemoryAllocation;
    memset(*p, 0xa5, bytes); /* garbage, as uninitialised device memory */
    dev[(uintptr_t)*p] = bytes;
    return cudaSuccess;
}
cudaError_t cudaFree(void *p)
{
    if (!p) return cudaSuccess;
    if (!dev.count((uintptr_t)p)) fatal("cudaFree of %p, not a cudaMalloc pointer", p);
    flush_all(); /* cudaFree synchronises the device */
    dev.erase((uintptr_t)p);
    free(p);
    return cudaSuccess;
}
cudaError_t cudaMallocHost(void **p, size_t bytes)
{
    *p = aligned_alloc(256, (bytes + 255) / 256 * 256 + 256);
    if (!*p) return cudaErrorMemoryAllocation;
    pinned[(uintptr_t)*p] = bytes;
    return cudaSuccess;
}
cudaError_t cudaFreeHost(void *p)
{
    if (!p) return cudaSuccess;
    if (!pinned.count((uintptr_t)p)) fatal("cudaFreeHost of %p, not a cudaMallocHost pointer", p);
    flush_all();
    pinned.erase((uintptr_t)p);
    free(p);
    return cudaSuccess;
}
static void check_copy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, const char *who)
{
    bool dd = is_dev_range(dst, bytes), sd = is_dev_range(src, bytes);
    bool dd0 = is_device(dst), sd0 = is_device(src);
    if (dd0 && !dd) fatal("%s: %zu bytes to %p overruns its device allocation", who, bytes, dst);
    if (sd0 && !sd) fatal("%s: %zu bytes from %p overruns its device allocation", who, bytes, src);
    if ((kind == cudaMemcpyHostToDevice && (!dd || sd)) || (kind == cudaMemcpyDeviceToHost && (dd || !sd)) ||
        (kind == cudaMemcpyDeviceToDevice && (!dd || !sd)) || (kind == cudaMemcpyHostToHost && (dd || sd)))
        fatal("%s: kind %d does not match dst %s, src %s", who, (int)kind, dd ? "device" : "host", sd ? "device" : "host");
}
cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind)
{
    if (any_capturing()) warn("synchronous cudaMemcpy during capture");
    check_copy(dst, src, bytes, kind, "cudaMemcpy");
    for (auto st : streams) if (!S(st)->pending.empty()) warn("synchronous cudaMemcpy (%zu bytes) while a non-blocking stream has %zu queued operations (no ordering between them)", bytes, S(st)->pending.size());
    if (bytes) memmove(dst, src, bytes);
    return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, cudaStream_t s)
{
    check_copy(dst, src, bytes, kind, "cudaMemcpyAsync");
    if (capturing(s)) {
        if ((!is_dev_range(dst, bytes) && !is_pinned(dst, bytes)) || (!is_dev_range(src, bytes) && !is_pinned(src, bytes)))
            warn("cudaMemcpyAsync of %zu bytes with pageable host memory during capture (%p <- %p)", bytes, dst, src);
    }
    bool host_src = !is_dev_range(src, bytes) && !is_pinned(src, bytes), host_dst = !is_dev_range(dst, bytes) && !is_pinned(dst, bytes);
    if (deferred && !capturing(s) && host_dst) { flush(s); memmove(dst, src, bytes); return cudaSuccess; } /* pageable D2H: synchronous */
    if (deferred && !capturing(s) && host_src && bytes) { /* pageable H2D: staged at the call */
        std::shared_ptr<std::vector<char>> snap = std::make_shared<std::vector<char>>((const char *)src, (const char *)src + bytes);
        submit(s, [=] { memmove(dst, snap->data(), bytes); });
        return cudaSuccess;
    }
    submit(s, [=] { if (bytes) memmove(dst, src, bytes); });
    return cudaSuccess;
}
cudaError_t cudaMemcpy2DAsync(void *dst, size_t dpitch, const void *src, size_t spitch, size_t width, size_t height,
                              cudaMemcpyKind kind, cudaStream_t s)
{
    if (width > dpitch || width > spitch) return cudaErrorInvalidValue;
    if (height) {
        check_copy(dst, src, 0, kind, "cudaMemcpy2DAsync");
        size_t dspan = dpitch * (height - 1) + width, sspan = spitch * (height - 1) + width;
        if (is_device(dst) && !is_dev_range(dst, dspan)) fatal("cudaMemcpy2DAsync: dst overrun");
        if (is_device(src) && !is_dev_range(src, sspan)) fatal("cudaMemcpy2DAsync: src overrun (%zu bytes from %p)", sspan, src);
    }
    submit(s, [=] {
        for (size_t r = 0; r < height; r++) memmove((char *)dst + r * dpitch, (const char *)src + r * spitch, width);
    });
    return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void *dst, int value, size_t bytes, cudaStream_t s)
{
    if (!is_dev_range(dst, bytes)) fatal("cudaMemsetAsync of %zu bytes at %p: not device memory", bytes, dst);
    submit(s, [=] { memset(dst, value, bytes); });
    return cudaSuccess;
}
cudaError_t cudaMemset(void *dst, int value, size_t bytes) { return cudaMemsetAsync(dst, value, bytes, 0); }
cudaError_t cudaStreamSynchronize(cudaStream_t s)
{
    if (capturing(s)) { S(s)->capture_broken = true; return cudaErrorStreamCaptureUnsupported; }
    flush(s);
    return cudaSuccess;
}
cudaError_t cudaStreamQuery(cudaStream_t s)
{
    if (capturing(s)) { S(s)->capture_broken = true; return cudaErrorStreamCaptureUnsupported; }
    if (s && streams.count(s) && !S(s)->pending.empty()) { flush(s); return cudaErrorNotReady; } /* done "later" */
    return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize(void) { flush_all(); return cudaSuccess; }
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned)
{
    *s = (cudaStream_t) new stream;
    streams.insert(*s);
    return cudaSuccess;
}
cudaError_t cudaStreamCreate(cudaStream_t *s) { return cudaStreamCreateWithFlags(s, 0); }
/* Events: a record is stream work that marks the event reached; a wait is work on the other stream
 * that, when it runs before the record has (EMU_DEFER), runs the recording stream's queue up to the
 * record first. */
struct event { cudaStream_t s = nullptr; long recorded = 0, reached = 0; };
static event *E(cudaEvent_t e) { return (event *)e; }
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned) { *e = (cudaEvent_t) new event; return cudaSuccess; }
cudaError_t cudaEventDestroy(cudaEvent_t e) { delete E(e); return cudaSuccess; }
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s)
{
    if (capturing(s)) fatal("cudaEventRecord during a capture (not emulated)");
    event *ev = E(e);
    long n = ++ev->recorded;
    ev->s = s;
    submit(s, [ev, n] { ev->reached = n; });
    return cudaSuccess;
}
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned)
{
    if (capturing(s)) fatal("cudaStreamWaitEvent during a capture (not emulated)");
    event *ev = E(e);
    long n = ev->recorded;
    cudaStream_t from = ev->s;
    submit(s, [ev, n, from] {
        /* run the recording stream's queue up to the record, no further: past it that stream may
         * itself wait for work still queued behind this wait */
        while (ev->reached < n && from && streams.count(from) && !S(from)->pending.empty()) {
            auto f = std::move(S(from)->pending.front());
            S(from)->pending.erase(S(from)->pending.begin());
            f();
        }
        if (ev->reached < n) fatal("a stream waits for an event its stream never reaches");
    });
    return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t e) { flush(E(e)->s); return cudaSuccess; }
cudaError_t cudaStreamDestroy(cudaStream_t s)
{
    if (!streams.count(s)) fatal("cudaStreamDestroy of an unknown stream");
    flush(s);
    streams.erase(s);
    delete S(s);
    return cudaSuccess;
}
cudaError_t cudaGetDeviceCount(int *c) { *c = 1; return cudaSuccess; }
cudaError_t cudaSetDeviceFlags(unsigned) { return cudaSuccess; } /* no scheduling to choose */
cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : cudaErrorInvalidValue; }
cudaError_t cudaGetDevice(int *d) { *d = 0; return cudaSuccess; }
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int d)
{
    if (d) return cudaErrorInvalidValue;
    memset(p, 0, sizeof *p);
    strcpy(p->name, "Emulated H200");
    p->major = 9, p->minor = 0, p->totalGlobalMem = (size_t)140 << 30, p->multiProcessorCount = 132;
    return cudaSuccess;
}
cudaError_t cudaPointerGetAttributes(cudaPointerAttributes *a, const void *p)
{
    memset(a, 0, sizeof *a);
    if (is_device(p)) a->type = cudaMemoryTypeDevice, a->devicePointer = (void *)p;
    else if (is_pinned(p, 0)) a->type = cudaMemoryTypeHost, a->hostPointer = (void *)p, a->devicePointer = (void *)p;
    else a->type = cudaMemoryTypeUnregistered;
    return cudaSuccess;
}
struct graph { std::vector<std::function<void()>> work; };
static int graphs_live, execs_live;
cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode)
{
    if (!s || capturing(s)) return cudaErrorInvalidValue;
    S(s)->capturing = true, S(s)->capture_broken = false, S(s)->rec.clear();
    return cudaSuccess;
}
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *g)
{
    if (!capturing(s)) return cudaErrorInvalidValue;
    S(s)->capturing = false;
    if (S(s)->capture_broken) { *g = nullptr; S(s)->rec.clear(); return cudaErrorStreamCaptureUnsupported; }
    graph *gr = new graph;
    gr->work.swap(S(s)->rec);
    graphs_live++;
    *g = (cudaGraph_t)gr;
    fprintf(stderr, "EMU: captured a graph of %zu operations\n", gr->work.size());
    return cudaSuccess;
}
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *e, cudaGraph_t g, unsigned long long)
{
    if (!g) return cudaErrorInvalidValue;
    graph *x = new graph(*(graph *)g);
    execs_live++;
    *e = (cudaGraphExec_t)x;
    return cudaSuccess;
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t s)
{
    if (!e) return cudaErrorInvalidValue;
    for (auto &f : ((graph *)e)->work) submit(s, f);
    return cudaSuccess;
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e) { if (e) { execs_live--; delete (graph *)e; } return cudaSuccess; }
cudaError_t cudaGraphDestroy(cudaGraph_t g) { if (g) { graphs_live--; delete (graph *)g; } return cudaSuccess; }

/* ---- cuDNN ---- */
struct cudnnContext { cudaStream_t s = 0; };
struct emu_tensor_desc { bool set = false; cudnnTensorFormat_t f; cudnnDataType_t t; int n, c, h, w; };
struct emu_filter_desc { bool set = false; cudnnTensorFormat_t f; cudnnDataType_t t; int k, c, h, w; };
struct emu_conv_desc { bool set = false; int ph, pw, u, v, dh, dw; cudnnConvolutionMode_t mode; cudnnDataType_t t; cudnnMathType_t math = CUDNN_DEFAULT_MATH; };
cudnnStatus_t cudnnCreate(cudnnHandle_t *h) { *h = new cudnnContext; return CUDNN_STATUS_SUCCESS; }
cudnnStatus_t cudnnDestroy(cudnnHandle_t h) { delete h; return CUDNN_STATUS_SUCCESS; }
cudnnStatus_t cudnnSetStream(cudnnHandle_t h, cudaStream_t s) { h->s = s; return CUDNN_STATUS_SUCCESS; }
size_t cudnnGetVersion(void) { return 90100; }
const char *cudnnGetErrorString(cudnnStatus_t s)
{
    switch (s) { case CUDNN_STATUS_SUCCESS: return "CUDNN_STATUS_SUCCESS"; case CUDNN_STATUS_BAD_PARAM: return "CUDNN_STATUS_BAD_PARAM";
    case CUDNN_STATUS_NOT_SUPPORTED: return "CUDNN_STATUS_NOT_SUPPORTED"; default: return "CUDNN_STATUS_?"; }
}
cudnnStatus_t cudnnCreateTensorDescriptor(cudnnTensorDescriptor_t *d) { *d = new emu_tensor_desc; return CUDNN_STATUS_SUCCESS; }
cudnnStatus_t cudnnDestroyTensorDescriptor(cudnnTensorDescriptor_t d) { delete d; return CUDNN_STATUS_SUCCESS; }
cudnnStatus_t cudnnSetTensor4dDescriptor(cudnnTensorDescriptor_t d, cudnnTensorFormat_t f, cudnnDataType_t t, int n, int c, int h, int w)
{
    if (n < 1 || c < 1 || h < 1 || w < 1) return CUDNN_STATUS_BAD_PARAM;
    d->set = true, d->f = f, d->t = t, d->n = n, d->c = c, d->h = h, d->w = w;
    return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnCreateFilterDescriptor(cudnnFilterDescriptor_t *d) { *d = new emu_filter_desc; return CUDNN_STATUS_SUCCESS; }
cudnnStatus_t cudnnDestroyFilterDescriptor(cudnnFilterDescriptor_t d) { delete d; return CUDNN_STATUS_SUCCESS; }
cudnnStatus_t cudnnSetFilter4dDescriptor(cudnnFilterDescriptor_t d, cudnnDataType_t t, cudnnTensorFormat_t f, int k, int c, int h, int w)
{
    if (k < 1 || c < 1 || h < 1 || w < 1) return CUDNN_STATUS_BAD_PARAM;
    d->set = true, d->f = f, d->t = t, d->k = k, d->c = c, d->h = h, d->w = w;
    return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnCreateConvolutionDescriptor(cudnnConvolutionDescriptor_t *d) { *d = new emu_conv_desc; return CUDNN_STATUS_SUCCESS; }
cudnnStatus_t cudnnDestroyConvolutionDescriptor(cudnnConvolutionDescriptor_t d) { delete d; return CUDNN_STATUS_SUCCESS; }
cudnnStatus_t cudnnSetConvolution2dDescriptor(cudnnConvolutionDescriptor_t d, int ph, int pw, int u, int v, int dh, int dw,
                                              cudnnConvolutionMode_t mode, cudnnDataType_t t)
{
    if (ph < 0 || pw < 0 || u < 1 || v < 1 || dh < 1 || dw < 1) return CUDNN_STATUS_BAD_PARAM;
    d->set = true, d->ph = ph, d->pw = pw, d->u = u, d->v = v, d->dh = dh, d->dw = dw, d->mode = mode, d->t = t;
    return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetConvolutionMathType(cudnnConvolutionDescriptor_t d, cudnnMathType_t m) { d->math = m; return CUDNN_STATUS_SUCCESS; }
cudnnStatus_t cudnnGetConvolutionForwardAlgorithmMaxCount(cudnnHandle_t, int *n) { *n = 8; return CUDNN_STATUS_SUCCESS; }
cudnnStatus_t cudnnGetConvolutionBackwardDataAlgorithmMaxCount(cudnnHandle_t, int *n) { *n = 6; return CUDNN_STATUS_SUCCESS; }
cudnnStatus_t cudnnGetConvolutionBackwardFilterAlgorithmMaxCount(cudnnHandle_t, int *n) { *n = 7; return CUDNN_STATUS_SUCCESS; }

/* check that x, w, y agree; NHWC only */
static cudnnStatus_t shapes(const emu_tensor_desc *x, const emu_filter_desc *w, const emu_conv_desc *c, const emu_tensor_desc *y,
                            const char *who)
{
    if (!x->set || !w->set || !c->set || !y->set) { warn("%s: descriptor not set", who); return CUDNN_STATUS_BAD_PARAM; }
    if (x->f != CUDNN_TENSOR_NHWC || y->f != CUDNN_TENSOR_NHWC || w->f != CUDNN_TENSOR_NHWC) { warn("%s: not NHWC", who); return CUDNN_STATUS_NOT_SUPPORTED; }
    if (x->t != y->t || x->t != w->t) { warn("%s: data types differ", who); return CUDNN_STATUS_BAD_PARAM; }
    if (x->c != w->c || y->c != w->k || x->n != y->n) { warn("%s: channels/batch mismatch", who); return CUDNN_STATUS_BAD_PARAM; }
    int oh = (x->h + 2 * c->ph - c->dh * (w->h - 1) - 1) / c->u + 1, ow = (x->w + 2 * c->pw - c->dw * (w->w - 1) - 1) / c->v + 1;
    if (oh != y->h || ow != y->w) { warn("%s: output %dx%d, descriptor says %dx%d", who, oh, ow, y->h, y->w); return CUDNN_STATUS_BAD_PARAM; }
    if (c->mode != CUDNN_CROSS_CORRELATION) warn("%s: true convolution mode (filter flipped) not emulated", who);
    return CUDNN_STATUS_SUCCESS;
}
#define FIND(FN, PERF, A1, A2, A3, A4, XS, WS, YS)                                                                 \
    cudnnStatus_t FN(cudnnHandle_t, A1 a1, A2 a2, cudnnConvolutionDescriptor_t cd, A4 a4, int req, int *ret, PERF *p) \
    {                                                                                                              \
        cudnnStatus_t st = shapes(XS, WS, cd, YS, #FN);                                                            \
        if (st) return st;                                                                                         \
        if (req < 1) return CUDNN_STATUS_BAD_PARAM;                                                                \
        memset(p, 0, sizeof *p);                                                                                   \
        p->algo = 1, p->status = CUDNN_STATUS_SUCCESS, p->time = 0.5f, p->memory = 4096;                           \
        p->determinism = CUDNN_DETERMINISTIC, p->mathType = cd->math;                                              \
        *ret = 1;                                                                                                  \
        return CUDNN_STATUS_SUCCESS;                                                                               \
    }
FIND(cudnnFindConvolutionForwardAlgorithm, cudnnConvolutionFwdAlgoPerf_t, cudnnTensorDescriptor_t, cudnnFilterDescriptor_t, , cudnnTensorDescriptor_t, a1, a2, a4)
FIND(cudnnFindConvolutionBackwardDataAlgorithm, cudnnConvolutionBwdDataAlgoPerf_t, cudnnFilterDescriptor_t, cudnnTensorDescriptor_t, , cudnnTensorDescriptor_t, a4, a1, a2)
FIND(cudnnFindConvolutionBackwardFilterAlgorithm, cudnnConvolutionBwdFilterAlgoPerf_t, cudnnTensorDescriptor_t, cudnnTensorDescriptor_t, , cudnnFilterDescriptor_t, a1, a4, a2)
cudnnStatus_t cudnnGetConvolutionForwardWorkspaceSize(cudnnHandle_t, cudnnTensorDescriptor_t x, cudnnFilterDescriptor_t w,
    cudnnConvolutionDescriptor_t c, cudnnTensorDescriptor_t y, cudnnConvolutionFwdAlgo_t, size_t *b)
{ cudnnStatus_t st = shapes(x, w, c, y, "fwd ws"); *b = 8192; return st; }
cudnnStatus_t cudnnGetConvolutionBackwardDataWorkspaceSize(cudnnHandle_t, cudnnFilterDescriptor_t w, cudnnTensorDescriptor_t dy,
    cudnnConvolutionDescriptor_t c, cudnnTensorDescriptor_t dx, cudnnConvolutionBwdDataAlgo_t, size_t *b)
{ cudnnStatus_t st = shapes(dx, w, c, dy, "bwd data ws"); *b = 8192; return st; }
cudnnStatus_t cudnnGetConvolutionBackwardFilterWorkspaceSize(cudnnHandle_t, cudnnTensorDescriptor_t x, cudnnTensorDescriptor_t dy,
    cudnnConvolutionDescriptor_t c, cudnnFilterDescriptor_t dw, cudnnConvolutionBwdFilterAlgo_t, size_t *b)
{ cudnnStatus_t st = shapes(x, dw, c, dy, "bwd filter ws"); *b = 8192; return st; }

static float ld(const void *p, size_t i, cudnnDataType_t t)
{ return t == CUDNN_DATA_BFLOAT16 ? __bfloat162float(((const __nv_bfloat16 *)p)[i]) : ((const float *)p)[i]; }
static void st(void *p, size_t i, cudnnDataType_t t, float v)
{ if (t == CUDNN_DATA_BFLOAT16) ((__nv_bfloat16 *)p)[i] = __float2bfloat16(v); else ((float *)p)[i] = v; }
static size_t esz(cudnnDataType_t t) { return t == CUDNN_DATA_BFLOAT16 ? sizeof(__nv_bfloat16) : 4; }
static void check_buf(const void *p, size_t bytes, const char *who, const char *what)
{ if (!is_dev_range(p, bytes)) fatal("%s: %s (%p, %zu bytes) is not (all) device memory", who, what, p, bytes); }
static void check_ws(void *ws, size_t wsb, const char *who)
{ if (wsb < 8192) fatal("%s: workspace %zu bytes, fewer than asked for", who, wsb); check_buf(ws, wsb, who, "workspace"); }

/* the 7-deep loop over (n, oy, ox, k, r, s, c), calling f(xi, wi, yi) */
template <typename F> static void conv_loop(const emu_tensor_desc *x, const emu_filter_desc *w, const emu_conv_desc *c,
                                            const emu_tensor_desc *y, F f)
{
    for (int n = 0; n < y->n; n++)
        for (int oy = 0; oy < y->h; oy++)
            for (int ox = 0; ox < y->w; ox++)
                for (int k = 0; k < y->c; k++) {
                    size_t yi = (((size_t)n * y->h + oy) * y->w + ox) * y->c + k;
                    for (int r = 0; r < w->h; r++) {
                        int iy = oy * c->u - c->ph + r * c->dh;
                        if (iy < 0 || iy >= x->h) continue;
                        for (int s = 0; s < w->w; s++) {
                            int ix = ox * c->v - c->pw + s * c->dw;
                            if (ix < 0 || ix >= x->w) continue;
                            size_t xb = (((size_t)n * x->h + iy) * x->w + ix) * x->c, wb = (((size_t)k * w->h + r) * w->w + s) * w->c;
                            for (int ch = 0; ch < x->c; ch++) f(xb + ch, wb + ch, yi);
                        }
                    }
                }
}
static size_t tcount(const emu_tensor_desc *d) { return (size_t)d->n * d->c * d->h * d->w; }
static size_t fcount(const emu_filter_desc *d) { return (size_t)d->k * d->c * d->h * d->w; }

cudnnStatus_t cudnnConvolutionForward(cudnnHandle_t h, const void *alpha, cudnnTensorDescriptor_t xd, const void *x,
    cudnnFilterDescriptor_t wd, const void *w, cudnnConvolutionDescriptor_t cd, cudnnConvolutionFwdAlgo_t algo, void *ws, size_t wsb,
    const void *beta, cudnnTensorDescriptor_t yd, void *y)
{
    cudnnStatus_t s = shapes(xd, wd, cd, yd, "cudnnConvolutionForward");
    if (s) return s;
    if (algo != 1) fatal("forward with algo %d, not the one Find returned", algo);
    check_ws(ws, wsb, "forward");
    cudnnDataType_t t = xd->t;
    check_buf(x, tcount(xd) * esz(t), "forward", "x"), check_buf(w, fcount(wd) * esz(t), "forward", "w"), check_buf(y, tcount(yd) * esz(t), "forward", "y");
    float a = *(const float *)alpha, b = *(const float *)beta;
    emu_tensor_desc X = *xd, Y = *yd; emu_filter_desc W = *wd; emu_conv_desc C = *cd;
    submit(h->s, [=] {
        std::vector<float> acc(tcount(&Y), 0.f), xf(tcount(&X)), wf(fcount(&W));
        for (size_t i = 0; i < xf.size(); i++) xf[i] = ld(x, i, t);
        for (size_t i = 0; i < wf.size(); i++) wf[i] = ld(w, i, t);
        conv_loop(&X, &W, &C, &Y, [&](size_t xi, size_t wi, size_t yi) { acc[yi] = fmaf(xf[xi], wf[wi], acc[yi]); });
        for (size_t i = 0; i < acc.size(); i++) st(y, i, t, a * acc[i] + (b != 0 ? b * ld(y, i, t) : 0.f));
    });
    return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnConvolutionBackwardData(cudnnHandle_t h, const void *alpha, cudnnFilterDescriptor_t wd, const void *w,
    cudnnTensorDescriptor_t dyd, const void *dy, cudnnConvolutionDescriptor_t cd, cudnnConvolutionBwdDataAlgo_t algo, void *ws,
    size_t wsb, const void *beta, cudnnTensorDescriptor_t dxd, void *dx)
{
    cudnnStatus_t s = shapes(dxd, wd, cd, dyd, "cudnnConvolutionBackwardData");
    if (s) return s;
    if (algo != 1) fatal("backward data with algo %d", algo);
    check_ws(ws, wsb, "backward data");
    cudnnDataType_t t = dxd->t;
    check_buf(dx, tcount(dxd) * esz(t), "bwd data", "dx"), check_buf(w, fcount(wd) * esz(t), "bwd data", "w"), check_buf(dy, tcount(dyd) * esz(t), "bwd data", "dy");
    float a = *(const float *)alpha, b = *(const float *)beta;
    emu_tensor_desc X = *dxd, Y = *dyd; emu_filter_desc W = *wd; emu_conv_desc C = *cd;
    submit(h->s, [=] {
        std::vector<float> acc(tcount(&X), 0.f), yf(tcount(&Y)), wf(fcount(&W));
        for (size_t i = 0; i < yf.size(); i++) yf[i] = ld(dy, i, t);
        for (size_t i = 0; i < wf.size(); i++) wf[i] = ld(w, i, t);
        conv_loop(&X, &W, &C, &Y, [&](size_t xi, size_t wi, size_t yi) { acc[xi] = fmaf(yf[yi], wf[wi], acc[xi]); });
        for (size_t i = 0; i < acc.size(); i++) st(dx, i, t, a * acc[i] + (b != 0 ? b * ld(dx, i, t) : 0.f));
    });
    return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnConvolutionBackwardFilter(cudnnHandle_t h, const void *alpha, cudnnTensorDescriptor_t xd, const void *x,
    cudnnTensorDescriptor_t dyd, const void *dy, cudnnConvolutionDescriptor_t cd, cudnnConvolutionBwdFilterAlgo_t algo, void *ws,
    size_t wsb, const void *beta, cudnnFilterDescriptor_t dwd, void *dw)
{
    cudnnStatus_t s = shapes(xd, dwd, cd, dyd, "cudnnConvolutionBackwardFilter");
    if (s) return s;
    if (algo != 1) fatal("backward filter with algo %d", algo);
    check_ws(ws, wsb, "backward filter");
    cudnnDataType_t t = xd->t;
    check_buf(x, tcount(xd) * esz(t), "bwd filter", "x"), check_buf(dw, fcount(dwd) * esz(t), "bwd filter", "dw"), check_buf(dy, tcount(dyd) * esz(t), "bwd filter", "dy");
    float a = *(const float *)alpha, b = *(const float *)beta;
    emu_tensor_desc X = *xd, Y = *dyd; emu_filter_desc W = *dwd; emu_conv_desc C = *cd;
    submit(h->s, [=] {
        std::vector<float> acc(fcount(&W), 0.f), yf(tcount(&Y)), xf(tcount(&X));
        for (size_t i = 0; i < yf.size(); i++) yf[i] = ld(dy, i, t);
        for (size_t i = 0; i < xf.size(); i++) xf[i] = ld(x, i, t);
        conv_loop(&X, &W, &C, &Y, [&](size_t xi, size_t wi, size_t yi) { acc[wi] = fmaf(yf[yi], xf[xi], acc[wi]); });
        for (size_t i = 0; i < acc.size(); i++) st(dw, i, t, a * acc[i] + (b != 0 ? b * ld(dw, i, t) : 0.f));
    });
    return CUDNN_STATUS_SUCCESS;
}

/* ---- cuBLAS ---- */
struct cublasContext { cudaStream_t s = 0; void *ws = nullptr; size_t wsb = 0; };
cublasStatus_t cublasCreate(cublasHandle_t *h) { *h = new cublasContext; return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasDestroy(cublasHandle_t h) { delete h; return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s) { h->s = s; return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetMathMode(cublasHandle_t, cublasMath_t) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetWorkspace(cublasHandle_t h, void *ws, size_t b)
{ if (b && !is_dev_range(ws, b)) fatal("cublasSetWorkspace: not device memory"); h->ws = ws, h->wsb = b; return CUBLAS_STATUS_SUCCESS; }
const char *cublasGetStatusString(cublasStatus_t s) { return s == CUBLAS_STATUS_SUCCESS ? "CUBLAS_STATUS_SUCCESS" : "CUBLAS_STATUS_INVALID_VALUE"; }
cublasStatus_t cublasSgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const float *alpha,
    const float *A, int lda, const float *B, int ldb, const float *beta, float *C, int ldc)
{
    if (m < 0 || n < 0 || k < 0) return CUBLAS_STATUS_INVALID_VALUE;
    int arows = ta == CUBLAS_OP_N ? m : k, acols = ta == CUBLAS_OP_N ? k : m;
    int brows = tb == CUBLAS_OP_N ? k : n, bcols = tb == CUBLAS_OP_N ? n : k;
    if (lda < (arows > 1 ? arows : 1) || ldb < (brows > 1 ? brows : 1) || ldc < (m > 1 ? m : 1)) {
        warn("cublasSgemm: bad leading dimension (m %d n %d k %d lda %d ldb %d ldc %d)", m, n, k, lda, ldb, ldc);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    if (m && n) {
        if (k) check_buf(A, ((size_t)(acols - 1) * lda + arows) * 4, "cublasSgemm", "A"), check_buf(B, ((size_t)(bcols - 1) * ldb + brows) * 4, "cublasSgemm", "B");
        check_buf(C, ((size_t)(n - 1) * ldc + m) * 4, "cublasSgemm", "C");
    }
    float a = *alpha, b = *beta;
    submit(h->s, [=] {
        for (int j = 0; j < n; j++)
            for (int i = 0; i < m; i++) {
                float acc = 0;
                for (int l = 0; l < k; l++) {
                    float av = ta == CUBLAS_OP_N ? A[i + (size_t)l * lda] : A[l + (size_t)i * lda];
                    float bv = tb == CUBLAS_OP_N ? B[l + (size_t)j * ldb] : B[j + (size_t)l * ldb];
                    acc = fmaf(av, bv, acc);
                }
                float &c = C[i + (size_t)j * ldc];
                c = b != 0 ? a * acc + b * c : a * acc;
            }
    });
    return CUBLAS_STATUS_SUCCESS;
}

/* ---- NCCL ---- */
struct ncclComm { int ranks; bool aborted; };
static size_t nsz(ncclDataType_t t) { switch (t) { case ncclInt8: case ncclUint8: return 1; case ncclFloat16: case ncclBfloat16: return 2;
    case ncclInt64: case ncclUint64: case ncclFloat64: return 8; default: return 4; } }
ncclResult_t ncclGetUniqueId(ncclUniqueId *id) { memset(id, 0, sizeof *id); strcpy(id->internal, "emu-nccl"); return ncclSuccess; }
ncclResult_t ncclCommInitRank(ncclComm_t *c, int nranks, ncclUniqueId id, int rank)
{
    if (nranks != 1 || rank != 0) { warn("ncclCommInitRank: %d ranks, rank %d: only one rank emulated", nranks, rank); return ncclInvalidUsage; }
    if (strcmp(id.internal, "emu-nccl")) return ncclInvalidArgument;
    *c = new ncclComm{1, false};
    return ncclSuccess;
}
ncclResult_t ncclAllReduce(const void *s, void *r, size_t count, ncclDataType_t t, ncclRedOp_t, ncclComm_t c, cudaStream_t st)
{
    if (!c || c->aborted) return ncclInvalidArgument;
    check_buf(s, count * nsz(t), "ncclAllReduce", "send"), check_buf(r, count * nsz(t), "ncclAllReduce", "recv");
    submit(st, [=] { if (s != r) memmove(r, s, count * nsz(t)); });
    return ncclSuccess;
}
ncclResult_t ncclAllGather(const void *s, void *r, size_t count, ncclDataType_t t, ncclComm_t c, cudaStream_t st)
{
    if (!c || c->aborted) return ncclInvalidArgument;
    check_buf(s, count * nsz(t), "ncclAllGather", "send"), check_buf(r, count * nsz(t) * c->ranks, "ncclAllGather", "recv");
    submit(st, [=] { if (s != r) memmove(r, s, count * nsz(t)); });
    return ncclSuccess;
}
ncclResult_t ncclCommGetAsyncError(ncclComm_t c, ncclResult_t *e) { *e = ncclSuccess; return c ? ncclSuccess : ncclInvalidArgument; }
ncclResult_t ncclCommAbort(ncclComm_t c) { delete c; return ncclSuccess; }
ncclResult_t ncclCommDestroy(ncclComm_t c) { delete c; return ncclSuccess; }
const char *ncclGetErrorString(ncclResult_t r) { return r == ncclSuccess ? "no error" : "emulated NCCL error"; }
