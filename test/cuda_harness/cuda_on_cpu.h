// cuda_on_cpu.h: run CUDA kernel source unchanged as plain C++ on the CPU (tests only).
//
// Purpose
//   CI has no GPU. This header lets a `.cu` file that contains only `__global__`/`__device__` code
//   (no #include of CUDA headers, no host API calls) compile with
//       g++ -std=c++20 -O2 -pthread -ffp-contract=off
//   so that the kernels can be executed and compared with the CPU reference implementation.
//   `test/cuda_harness/__init__.py::build()` prepends this header, includes the `.cu` file and appends a
//   small C++ wrapper that calls `launch(...)` in the same sequence as the CuPy host code.
//
// Execution model (what is and is not faithful)
//   * One std::thread per CUDA thread of a block. The threads of a launch are created once and walk the
//     blocks one after another in increasing linear block index (x fastest, then y, then z). So
//       - `__shared__` (mapped to `static`) is shared by exactly the threads of the running block;
//         shared memory is NOT zeroed between blocks (like CUDA, where it is uninitialised);
//       - a block may wait (spin on an atomic) for results of a block with a SMALLER index (e.g. decoupled
//         look-back scans), never for a larger one (that would deadlock here);
//       - `launch()` returns when the grid has finished, like a launch followed by a device sync.
//   * `__syncthreads()` is a std::barrier over the block's threads. A thread that returns from the
//     kernel early drops out of the barrier (as exited threads do on current GPUs).
//     `__syncthreads_count/_and/_or` are provided.
//   * Warps: `warpSize` is 32, lanes are consecutive linear thread ids. `__syncwarp`, `__shfl_sync`,
//     `__shfl_up_sync`, `__shfl_down_sync`, `__shfl_xor_sync`, `__ballot_sync`, `__any_sync`,
//     `__all_sync` work when ALL non-exited lanes of the warp call them together (the mask is ignored).
//   * Atomics (`atomicAdd/Sub/Min/Max/CAS/Exch/And/Or/Xor/Inc/Dec`) use std::atomic_ref with the CUDA
//     overload set for int, unsigned, unsigned long long (and float/double where CUDA has them).
//   * Float arithmetic is IEEE binary32 on x86-64 SSE; the build passes -ffp-contract=off, so `a*b+c`
//     is NOT fused here, while nvcc fuses it by default. Kernels whose result must match a CPU
//     reference bit for bit should use the `__fmul_rn`/`__fadd_rn`/`__fsub_rn`/`__fdiv_rn` intrinsics
//     (never contracted by nvcc either). Fast-math intrinsics (`__expf`, `__sinf`, ...) map to the
//     exact libm function, so they are NOT bit-faithful.
//   * Conversions `__float2int_rz` etc. follow CUDA's saturating semantics (NaN -> 0).
//   * Not supported: dynamic shared memory (`extern __shared__`), cooperative groups, textures,
//     CUDA headers (cuda_fp16.h, ...), device-side malloc, dynamic parallelism.
//
// Example (a wrapper passed to build(); the .cu file defines `extern "C" __global__ void add_one(float*, int)`):
//
//     extern "C" int run_add_one(float* data, int n) {
//         launch(add_one, dim3((n + 127) / 128), dim3(128), data, n);
//         return 0;
//     }
//
// Pointers given to kernels are plain host pointers (numpy buffers passed through ctypes work directly).
#pragma once

#include <algorithm>
#include <atomic>
#include <barrier>
#include <bit>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

// ---------------------------------------------------------------------------------------------------
// Qualifiers
#define __global__
#define __device__
#define __host__
#define __constant__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __restrict__ __restrict
#define __shared__ static
#define __launch_bounds__(...)

// ---------------------------------------------------------------------------------------------------
// Built-in vector types and indices
struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
};
using uint3 = dim3;

inline thread_local dim3 threadIdx{0, 0, 0};
inline thread_local dim3 blockIdx{0, 0, 0};
inline thread_local dim3 blockDim{1, 1, 1};
inline thread_local dim3 gridDim{1, 1, 1};
constexpr int warpSize = 32;

namespace cuda_on_cpu {

// Per-block synchronisation state, recreated before every block (std::barrier cannot be re-armed
// after threads dropped out of it).
struct WarpState {
    std::optional<std::barrier<>> bar;
    unsigned long long slot[32] = {};
};

struct BlockState {
    std::optional<std::barrier<>> bar;
    std::atomic<int> reduce{0};
    std::vector<std::unique_ptr<WarpState>> warps;
};

inline thread_local BlockState* tl_block = nullptr;
inline thread_local unsigned tl_lane = 0;
inline thread_local unsigned tl_warp = 0;

inline std::mutex& launch_mutex() {
    static std::mutex m;
    return m;
}

inline void arm_block(BlockState& s, unsigned nthreads) {
    s.bar.emplace(static_cast<std::ptrdiff_t>(nthreads));
    s.reduce.store(0);
    for (unsigned w = 0; w < s.warps.size(); ++w) {
        const unsigned lanes = std::min<unsigned>(32u, nthreads - 32u * w);
        s.warps[w]->bar.emplace(static_cast<std::ptrdiff_t>(lanes));
    }
}

inline WarpState& my_warp() { return *tl_block->warps[tl_warp]; }

inline void warp_sync() { my_warp().bar->arrive_and_wait(); }

// Exchange one 64-bit value per lane: every lane publishes `v`, then reads the value of lane `src`.
inline unsigned long long warp_exchange(unsigned long long v, unsigned src) {
    WarpState& w = my_warp();
    w.slot[tl_lane] = v;
    w.bar->arrive_and_wait();
    const unsigned long long r = w.slot[src % 32u];
    w.bar->arrive_and_wait();
    return r;
}

template <class T>
inline unsigned long long to_bits(T v) {
    static_assert(sizeof(T) <= 8, "warp shuffle of a type wider than 64 bits");
    unsigned long long b = 0;
    std::memcpy(&b, &v, sizeof(T));
    return b;
}

template <class T>
inline T from_bits(unsigned long long b) {
    T v;
    std::memcpy(&v, &b, sizeof(T));
    return v;
}

}  // namespace cuda_on_cpu

// ---------------------------------------------------------------------------------------------------
// Block and warp synchronisation
inline void __syncthreads() { cuda_on_cpu::tl_block->bar->arrive_and_wait(); }

inline int __syncthreads_count(int predicate) {
    auto* b = cuda_on_cpu::tl_block;
    const bool leader = threadIdx.x == 0 && threadIdx.y == 0 && threadIdx.z == 0;
    b->bar->arrive_and_wait();  // previous users of `reduce` are done
    if (predicate) b->reduce.fetch_add(1);
    b->bar->arrive_and_wait();
    const int r = b->reduce.load();
    b->bar->arrive_and_wait();  // everybody has read before the leader clears
    if (leader) b->reduce.store(0);
    return r;
}
inline int __syncthreads_or(int predicate) { return __syncthreads_count(predicate) != 0; }
inline int __syncthreads_and(int predicate) {
    const unsigned n = blockDim.x * blockDim.y * blockDim.z;
    return __syncthreads_count(predicate) == static_cast<int>(n);  // valid while no thread has exited
}

inline void __syncwarp(unsigned = 0xffffffffu) { cuda_on_cpu::warp_sync(); }

template <class T>
inline T __shfl_sync(unsigned, T v, int src_lane, int width = 32) {
    const unsigned base = cuda_on_cpu::tl_lane / width * width;
    const unsigned src = base + static_cast<unsigned>(src_lane) % static_cast<unsigned>(width);
    return cuda_on_cpu::from_bits<T>(cuda_on_cpu::warp_exchange(cuda_on_cpu::to_bits(v), src));
}
template <class T>
inline T __shfl_up_sync(unsigned, T v, unsigned delta, int width = 32) {
    const unsigned lane = cuda_on_cpu::tl_lane;
    const unsigned base = lane / width * width;
    const unsigned src = (lane - base >= delta) ? lane - delta : lane;
    return cuda_on_cpu::from_bits<T>(cuda_on_cpu::warp_exchange(cuda_on_cpu::to_bits(v), src));
}
template <class T>
inline T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) {
    const unsigned lane = cuda_on_cpu::tl_lane;
    const unsigned base = lane / width * width;
    const unsigned src = (lane - base + delta < static_cast<unsigned>(width)) ? lane + delta : lane;
    return cuda_on_cpu::from_bits<T>(cuda_on_cpu::warp_exchange(cuda_on_cpu::to_bits(v), src));
}
template <class T>
inline T __shfl_xor_sync(unsigned, T v, int lane_mask, int width = 32) {
    const unsigned lane = cuda_on_cpu::tl_lane;
    const unsigned base = lane / width * width;
    unsigned src = lane ^ static_cast<unsigned>(lane_mask);
    if (src / width * width != base) src = lane;
    return cuda_on_cpu::from_bits<T>(cuda_on_cpu::warp_exchange(cuda_on_cpu::to_bits(v), src));
}

inline unsigned __ballot_sync(unsigned, int predicate) {
    cuda_on_cpu::WarpState& w = cuda_on_cpu::my_warp();
    w.slot[cuda_on_cpu::tl_lane] = predicate ? 1u : 0u;
    w.bar->arrive_and_wait();
    unsigned r = 0;
    for (unsigned i = 0; i < 32; ++i) r |= (w.slot[i] ? 1u : 0u) << i;
    w.bar->arrive_and_wait();
    return r;
}
inline int __any_sync(unsigned mask, int predicate) { return __ballot_sync(mask, predicate) != 0; }
inline int __all_sync(unsigned mask, int predicate) {
    const unsigned n = blockDim.x * blockDim.y * blockDim.z;
    const unsigned lanes = std::min<unsigned>(32u, n - 32u * cuda_on_cpu::tl_warp);
    const unsigned full = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u);
    return __ballot_sync(mask, predicate) == full;
}

inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_system() { std::atomic_thread_fence(std::memory_order_seq_cst); }

// ---------------------------------------------------------------------------------------------------
// Atomics (CUDA overload set). All return the old value.
namespace cuda_on_cpu {
template <class T>
inline std::atomic_ref<T> aref(T* p) { return std::atomic_ref<T>(*p); }

template <class T, class F>
inline T cas_loop(T* p, F f) {
    std::atomic_ref<T> a(*p);
    T old = a.load();
    while (!a.compare_exchange_weak(old, f(old))) {
    }
    return old;
}
}  // namespace cuda_on_cpu

#define CUDA_ON_CPU_INT_ATOMICS(T)                                                                        \
    inline T atomicAdd(T* p, T v) { return cuda_on_cpu::aref(p).fetch_add(v); }                             \
    inline T atomicExch(T* p, T v) { return cuda_on_cpu::aref(p).exchange(v); }                             \
    inline T atomicAnd(T* p, T v) { return cuda_on_cpu::aref(p).fetch_and(v); }                             \
    inline T atomicOr(T* p, T v) { return cuda_on_cpu::aref(p).fetch_or(v); }                               \
    inline T atomicXor(T* p, T v) { return cuda_on_cpu::aref(p).fetch_xor(v); }                             \
    inline T atomicMin(T* p, T v) { return cuda_on_cpu::cas_loop(p, [v](T o) { return o < v ? o : v; }); } \
    inline T atomicMax(T* p, T v) { return cuda_on_cpu::cas_loop(p, [v](T o) { return o > v ? o : v; }); } \
    inline T atomicCAS(T* p, T compare, T v) {                                                              \
        cuda_on_cpu::aref(p).compare_exchange_strong(compare, v);                                           \
        return compare;                                                                                     \
    }

CUDA_ON_CPU_INT_ATOMICS(int)
CUDA_ON_CPU_INT_ATOMICS(unsigned int)
CUDA_ON_CPU_INT_ATOMICS(unsigned long long)
#undef CUDA_ON_CPU_INT_ATOMICS

inline long long atomicMin(long long* p, long long v) {
    return cuda_on_cpu::cas_loop(p, [v](long long o) { return o < v ? o : v; });
}
inline long long atomicMax(long long* p, long long v) {
    return cuda_on_cpu::cas_loop(p, [v](long long o) { return o > v ? o : v; });
}
inline unsigned short atomicCAS(unsigned short* p, unsigned short compare, unsigned short v) {
    cuda_on_cpu::aref(p).compare_exchange_strong(compare, v);
    return compare;
}
inline int atomicSub(int* p, int v) { return cuda_on_cpu::aref(p).fetch_sub(v); }
inline unsigned int atomicSub(unsigned int* p, unsigned int v) { return cuda_on_cpu::aref(p).fetch_sub(v); }
inline unsigned int atomicInc(unsigned int* p, unsigned int limit) {
    return cuda_on_cpu::cas_loop(p, [limit](unsigned int o) { return o >= limit ? 0u : o + 1u; });
}
inline unsigned int atomicDec(unsigned int* p, unsigned int limit) {
    return cuda_on_cpu::cas_loop(p, [limit](unsigned int o) { return (o == 0u || o > limit) ? limit : o - 1u; });
}
inline float atomicAdd(float* p, float v) { return cuda_on_cpu::cas_loop(p, [v](float o) { return o + v; }); }
inline double atomicAdd(double* p, double v) { return cuda_on_cpu::cas_loop(p, [v](double o) { return o + v; }); }
inline float atomicExch(float* p, float v) { return cuda_on_cpu::aref(p).exchange(v); }

// ---------------------------------------------------------------------------------------------------
// Math and bit intrinsics
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }
inline unsigned int max(unsigned int a, unsigned int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }

template <class T>
inline T __ldg(const T* p) { return *p; }

// IEEE round-to-nearest arithmetic that nvcc never contracts into FMA.
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
// Not bit-faithful: CUDA's fast approximations are replaced by the exact functions.
inline float __expf(float a) { return expf(a); }
inline float __logf(float a) { return logf(a); }
inline float __sinf(float a) { return sinf(a); }
inline float __cosf(float a) { return cosf(a); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float a) { return 1.0f / std::sqrt(a); }

// Float -> integer conversions with CUDA semantics: saturate at the type's range, NaN -> 0.
namespace cuda_on_cpu {
template <class I>
inline I sat_convert(double r) {
    if (std::isnan(r)) return 0;
    if (r <= static_cast<double>(std::numeric_limits<I>::min())) return std::numeric_limits<I>::min();
    if (r >= static_cast<double>(std::numeric_limits<I>::max())) return std::numeric_limits<I>::max();
    return static_cast<I>(r);
}
}  // namespace cuda_on_cpu
inline int __float2int_rz(float a) { return cuda_on_cpu::sat_convert<int>(std::trunc(static_cast<double>(a))); }
inline int __float2int_rd(float a) { return cuda_on_cpu::sat_convert<int>(std::floor(static_cast<double>(a))); }
inline int __float2int_ru(float a) { return cuda_on_cpu::sat_convert<int>(std::ceil(static_cast<double>(a))); }
inline int __float2int_rn(float a) { return cuda_on_cpu::sat_convert<int>(std::nearbyint(static_cast<double>(a))); }
inline unsigned int __float2uint_rz(float a) {
    return cuda_on_cpu::sat_convert<unsigned int>(std::trunc(static_cast<double>(a)));
}
inline long long __float2ll_rz(float a) { return cuda_on_cpu::sat_convert<long long>(std::trunc(static_cast<double>(a))); }
inline int __double2int_rz(double a) { return cuda_on_cpu::sat_convert<int>(std::trunc(a)); }
inline float __int2float_rn(int a) { return static_cast<float>(a); }
inline float __uint2float_rn(unsigned int a) { return static_cast<float>(a); }
inline float __double2float_rn(double a) { return static_cast<float>(a); }

inline float __int_as_float(int a) { return std::bit_cast<float>(a); }
inline float __uint_as_float(unsigned int a) { return std::bit_cast<float>(a); }
inline int __float_as_int(float a) { return std::bit_cast<int>(a); }
inline unsigned int __float_as_uint(float a) { return std::bit_cast<unsigned int>(a); }
inline double __longlong_as_double(long long a) { return std::bit_cast<double>(a); }
inline long long __double_as_longlong(double a) { return std::bit_cast<long long>(a); }

inline int __popc(unsigned int a) { return std::popcount(a); }
inline int __popcll(unsigned long long a) { return std::popcount(a); }
inline int __clz(int a) { return std::countl_zero(static_cast<unsigned int>(a)); }
inline int __clzll(long long a) { return std::countl_zero(static_cast<unsigned long long>(a)); }
inline int __ffs(int a) { return a == 0 ? 0 : std::countr_zero(static_cast<unsigned int>(a)) + 1; }
inline int __ffsll(long long a) { return a == 0 ? 0 : std::countr_zero(static_cast<unsigned long long>(a)) + 1; }
inline unsigned int __brev(unsigned int a) {
    unsigned int r = 0;
    for (int i = 0; i < 32; ++i) r |= ((a >> i) & 1u) << (31 - i);
    return r;
}

// ---------------------------------------------------------------------------------------------------
// Kernel launch: launch(kernel, grid, block, args...) runs the whole grid and returns afterwards.
// Arguments are converted to the kernel's parameter types once and passed by value to every thread.
// An exception thrown by a kernel thread is re-thrown here after the grid finished.
template <class... P, class... A>
void launch(void (*kernel)(P...), dim3 grid, dim3 block, A&&... args) {
    static_assert(sizeof...(P) == sizeof...(A), "launch: wrong number of kernel arguments");
    const unsigned nthreads = block.x * block.y * block.z;
    const unsigned long long nblocks = 1ull * grid.x * grid.y * grid.z;
    if (nthreads == 0 || nthreads > 1024) throw std::invalid_argument("launch: block must have 1..1024 threads");
    if (nblocks == 0) return;  // CUDA would report an invalid configuration; treat as a no-op

    std::lock_guard<std::mutex> lock(cuda_on_cpu::launch_mutex());  // statics (__shared__) are global
    const std::tuple<P...> params(static_cast<P>(std::forward<A>(args))...);

    cuda_on_cpu::BlockState state;
    for (unsigned w = 0; w < (nthreads + 31) / 32; ++w) state.warps.push_back(std::make_unique<cuda_on_cpu::WarpState>());
    cuda_on_cpu::arm_block(state, nthreads);
    // Runs once per block when every thread has finished it: re-arm the barriers for the next block.
    auto rearm = [&state, nthreads]() noexcept { cuda_on_cpu::arm_block(state, nthreads); };
    std::barrier<decltype(rearm)> block_done(static_cast<std::ptrdiff_t>(nthreads), rearm);

    std::mutex error_mutex;
    std::exception_ptr error;

    auto worker = [&](unsigned tid) {
        threadIdx = dim3(tid % block.x, tid / block.x % block.y, tid / (block.x * block.y));
        blockDim = block;
        gridDim = grid;
        cuda_on_cpu::tl_block = &state;
        cuda_on_cpu::tl_lane = tid % 32u;
        cuda_on_cpu::tl_warp = tid / 32u;
        for (unsigned long long b = 0; b < nblocks; ++b) {
            blockIdx = dim3(static_cast<unsigned>(b % grid.x), static_cast<unsigned>(b / grid.x % grid.y),
                            static_cast<unsigned>(b / (1ull * grid.x * grid.y)));
            try {
                std::apply(kernel, params);
            } catch (...) {
                std::lock_guard<std::mutex> g(error_mutex);
                if (!error) error = std::current_exception();
            }
            // This thread has exited the kernel: it no longer takes part in __syncthreads / warp sync.
            state.bar->arrive_and_drop();
            state.warps[tid / 32u]->bar->arrive_and_drop();
            block_done.arrive_and_wait();
        }
    };
    std::vector<std::thread> threads;
    threads.reserve(nthreads);
    for (unsigned t = 0; t < nthreads; ++t) threads.emplace_back(worker, t);
    for (auto& t : threads) t.join();
    if (error) std::rethrow_exception(error);
}
