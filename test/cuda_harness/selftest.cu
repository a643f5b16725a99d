// Kernels that exercise the CUDA-on-CPU harness itself (see test_harness_selftest.py). Also compiled
// by nvcc in test_cuda_compile.py, so they must be valid CUDA.

// Block-wide inclusive scan in shared memory (Hillis-Steele) with early-exiting threads past n.
extern "C" __global__ void block_scan(const int* in, int* out, int n) {
    __shared__ int buf[1024];
    const int t = threadIdx.x;
    const int i = blockIdx.x * blockDim.x + t;
    buf[t] = i < n ? in[i] : 0;
    __syncthreads();
    for (unsigned int step = 1; step < blockDim.x; step <<= 1) {
        const int add = t >= static_cast<int>(step) ? buf[t - step] : 0;
        __syncthreads();
        buf[t] += add;
        __syncthreads();
    }
    if (i >= n) return;
    out[i] = buf[t];
}

// Histogram with atomics of several types plus max/min/CAS/exch/or.
extern "C" __global__ void atomics(const int* in, int n, int* hist, unsigned long long* total, float* fsum,
                                   int* mx, int* mn, unsigned int* bits, int* first) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const int v = in[i];
    atomicAdd(&hist[v & 7], 1);
    atomicAdd(total, static_cast<unsigned long long>(v));
    atomicAdd(fsum, 1.0f);
    atomicMax(mx, v);
    atomicMin(mn, v);
    atomicOr(bits, 1u << (v & 31));
    atomicCAS(first, -1, i);
}

// Warp primitives: every lane gets the warp sum (xor butterfly), the value of lane 0, and a ballot.
extern "C" __global__ void warp_ops(const int* in, int* sum, int* lane0, unsigned int* ballot, int* down,
                                    int* sync_count) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const int v = in[i];
    int s = v;
    for (int m = 16; m >= 1; m >>= 1) s += __shfl_xor_sync(0xffffffffu, s, m);
    sum[i] = s;
    lane0[i] = __shfl_sync(0xffffffffu, v, 0);
    ballot[i] = __ballot_sync(0xffffffffu, v & 1);
    down[i] = __shfl_down_sync(0xffffffffu, v, 1);
    sync_count[i] = __syncthreads_count(v > 0);
}

// CUDA conversion and bit intrinsics.
extern "C" __global__ void intrinsics(const float* f, int n, int* rz, int* pc, int* ffs) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    rz[i] = __float2int_rz(f[i]);
    const unsigned long long b = static_cast<unsigned long long>(__float_as_uint(f[i])) << 7;
    pc[i] = __popcll(b);
    ffs[i] = __ffsll(static_cast<long long>(b));
}

// Single-pass chained scan: each block takes a ticket (dynamic block order, as real GPUs need), sums
// its items, waits for the inclusive prefix of the previous ticket and publishes its own.
// prefix[] must be zeroed; ready[] flags must be zeroed.
extern "C" __global__ void chained_block_sums(const int* in, int n, int* ticket, int* prefix, int* ready, int* out) {
    __shared__ int order;
    __shared__ int partial;
    if (threadIdx.x == 0) {
        order = atomicAdd(ticket, 1);
        partial = 0;
    }
    __syncthreads();
    const int i = order * static_cast<int>(blockDim.x) + static_cast<int>(threadIdx.x);
    if (i < n) atomicAdd(&partial, in[i]);
    __syncthreads();
    if (threadIdx.x == 0) {
        int before = 0;
        if (order > 0) {
            while (atomicAdd(&ready[order - 1], 0) == 0) {
            }
            __threadfence();
            before = atomicAdd(&prefix[order - 1], 0);
        }
        atomicExch(&prefix[order], before + partial);
        __threadfence();
        atomicExch(&ready[order], 1);
        out[order] = before + partial;
    }
}
