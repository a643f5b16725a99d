// Dynamic pillarization kernels (FastPillars pre-processing), loaded with CuPy RawModule (NVRTC).
//
// Semantics are defined by the CPU reference fastpillars_ros/ops/pillarize.py; every output must equal
// it element for element. All float maths uses the explicit round-to-nearest intrinsics so that nvcc
// cannot contract a multiply and an add into an FMA (which would round differently from numpy).
//
// Host sequence (ops/pillarize_cuda.py; the CPU test harness wrapper does the same):
//   1. extract_fields    raw PointCloud2 bytes -> points (N, C) float32 + valid (N) uint8
//   2. pillar_cells      points -> cell (N) int64 (-1 = dropped), keep (N) uint32, occupancy (G) uint32
//   3. scan_blocks / add_block_offsets   inclusive prefix sums of keep (-> output slots) and of
//                        occupancy (-> pillar id + 1); M and L are the last elements (read by the host)
//   4. pillar_coords     (M, 2) int32 [row, col];  compact_points: point_index, point_pillar (L) int64
//   5. decorate_points   (L, C + 3) float32 features
//
// Element-wise kernels use grid-stride loops, so any grid size is correct.
// No #include: NVRTC compiles this without the C++ standard library.

// sensor_msgs/PointField datatype codes.
#define FP_INT8 1
#define FP_UINT8 2
#define FP_INT16 3
#define FP_UINT16 4
#define FP_INT32 5
#define FP_UINT32 6
#define FP_FLOAT32 7
#define FP_FLOAT64 8

// Upper bound on the threads of a block for the scan kernels' shared memory.
#define SCAN_MAX_THREADS 1024

__device__ __forceinline__ bool is_finite(float v) {
    return (__float_as_uint(v) & 0x7f800000u) != 0x7f800000u;
}

// Little- or big-endian load of `size` bytes from a possibly unaligned address.
__device__ __forceinline__ unsigned long long load_bytes(const unsigned char* p, int size, int big_endian) {
    unsigned long long v = 0;
    for (int k = 0; k < size; ++k) {
        const int shift = 8 * (big_endian ? size - 1 - k : k);
        v |= static_cast<unsigned long long>(p[k]) << shift;
    }
    return v;
}

__device__ __forceinline__ int datatype_size(int datatype) {
    switch (datatype) {
        case FP_INT8: case FP_UINT8: return 1;
        case FP_INT16: case FP_UINT16: return 2;
        case FP_INT32: case FP_UINT32: case FP_FLOAT32: return 4;
        case FP_FLOAT64: return 8;
        default: return 0;
    }
}

// One field converted to float32 with round-to-nearest (as numpy's astype(float32)); NaN for an
// unknown datatype (the host validates layouts, this is a last line of defence).
__device__ __forceinline__ float load_field(const unsigned char* p, int datatype, int big_endian) {
    const unsigned long long v = load_bytes(p, datatype_size(datatype), big_endian);
    switch (datatype) {
        case FP_INT8: return static_cast<float>(static_cast<signed char>(static_cast<unsigned char>(v)));
        case FP_UINT8: return static_cast<float>(static_cast<unsigned char>(v));
        case FP_INT16: return static_cast<float>(static_cast<short>(static_cast<unsigned short>(v)));
        case FP_UINT16: return static_cast<float>(static_cast<unsigned short>(v));
        case FP_INT32: return static_cast<float>(static_cast<int>(static_cast<unsigned int>(v)));
        case FP_UINT32: return static_cast<float>(static_cast<unsigned int>(v));
        case FP_FLOAT32: return __uint_as_float(static_cast<unsigned int>(v));
        case FP_FLOAT64: return __double2float_rn(__longlong_as_double(static_cast<long long>(v)));
        default: return __uint_as_float(0x7fc00000u);
    }
}

// 1. Field extraction from a PointCloud2 data buffer.
//    Point i is at byte (i / width) * row_step + (i % width) * point_step (organized or not).
//    Column c = field at offsets[c] of type datatypes[c], converted to float32, times scales[c].
//    Columns 0, 1, 2 must be x, y, z; valid[i] = 1 when all three are finite.
extern "C" __global__ void extract_fields(const unsigned char* __restrict__ buffer, long long n_points,
                                          long long width, long long row_step, long long point_step,
                                          const int* __restrict__ offsets, const int* __restrict__ datatypes,
                                          const float* __restrict__ scales, int n_cols, int big_endian,
                                          float* __restrict__ points, unsigned char* __restrict__ valid) {
    const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
    for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n_points; i += stride) {
        const unsigned char* base = buffer + (i / width) * row_step + (i % width) * point_step;
        float* out = points + i * n_cols;
        for (int c = 0; c < n_cols; ++c) {
            out[c] = __fmul_rn(load_field(base + offsets[c], datatypes[c], big_endian), scales[c]);
        }
        valid[i] = (is_finite(out[0]) && is_finite(out[1]) && is_finite(out[2])) ? 1 : 0;
    }
}

// 2. Pillar cell of every point (float32: q = (x - x_min) / px, kept iff 0 <= q < n, index = floor(q) = trunc(q)),
//    i.e. the x_min <= x < x_max rule.
//    cell[i] = row * nx + col or -1; keep[i] = 0/1; occupancy[cell] = 1 (must be zeroed by the host).
//    `valid` is only read when use_valid != 0 (plain float arrays have none); non-finite z is dropped
//    either way.
extern "C" __global__ void pillar_cells(const float* __restrict__ points, int n_cols, long long n_points,
                                        const unsigned char* __restrict__ valid, int use_valid, float x_min,
                                        float y_min,
                                        float px, float py, int nx, int ny, long long* __restrict__ cell,
                                        unsigned int* __restrict__ keep, unsigned int* __restrict__ occupancy) {
    const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
    for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n_points; i += stride) {
        const float* p = points + i * n_cols;
        const float qx = __fdiv_rn(__fsub_rn(p[0], x_min), px);
        const float qy = __fdiv_rn(__fsub_rn(p[1], y_min), py);
        // Comparisons are false for NaN, so non-finite x/y are dropped here.
        const bool inside = qx >= 0.0f && qx < static_cast<float>(nx) && qy >= 0.0f && qy < static_cast<float>(ny)
                            && is_finite(p[2]) && (use_valid == 0 || valid[i] != 0);
        long long c = -1;
        if (inside) {
            c = static_cast<long long>(__float2int_rz(qy)) * nx + __float2int_rz(qx);
            occupancy[c] = 1u;  // every writer stores the same value: no atomic needed
        }
        cell[i] = c;
        keep[i] = inside ? 1u : 0u;
    }
}

// 3a. Inclusive scan within blocks. Block b covers items [b * T * k, (b + 1) * T * k) with T = blockDim.x
//     and k = items_per_thread; thread t scans its k consecutive items serially, the T thread totals are
//     scanned in shared memory (Hillis-Steele). block_sums[b] = total of block b. In-place is allowed.
extern "C" __global__ void scan_blocks(const unsigned int* in, unsigned int* out, unsigned int* __restrict__ block_sums,
                                       long long n, int items_per_thread) {
    __shared__ unsigned int totals[SCAN_MAX_THREADS];
    const int t = threadIdx.x;
    const long long first = (static_cast<long long>(blockIdx.x) * blockDim.x + t) * items_per_thread;
    unsigned int own = 0;
    for (int k = 0; k < items_per_thread; ++k) {
        const long long i = first + k;
        if (i < n) own += in[i];
    }
    totals[t] = own;
    __syncthreads();
    for (unsigned int step = 1; step < blockDim.x; step <<= 1) {
        const unsigned int add = static_cast<unsigned int>(t) >= step ? totals[t - step] : 0u;
        __syncthreads();
        totals[t] += add;
        __syncthreads();
    }
    unsigned int running = totals[t] - own;  // exclusive prefix of this thread's chunk
    for (int k = 0; k < items_per_thread; ++k) {
        const long long i = first + k;
        if (i < n) {
            running += in[i];
            out[i] = running;
        }
    }
    if (t == static_cast<int>(blockDim.x) - 1) block_sums[blockIdx.x] = totals[t];
}

// 3b. Adds the scanned total of all earlier blocks to every item of scan block b (b >= 1).
//     Launch with one CUDA block per scan block; items_per_block = T * k of scan_blocks.
extern "C" __global__ void add_block_offsets(unsigned int* data, const unsigned int* __restrict__ scanned_block_sums,
                                             long long n, long long items_per_block) {
    if (blockIdx.x == 0) return;
    const unsigned int offset = scanned_block_sums[blockIdx.x - 1];
    const long long begin = static_cast<long long>(blockIdx.x) * items_per_block;
    const long long end = min(begin + items_per_block, n);
    for (long long i = begin + threadIdx.x; i < end; i += blockDim.x) data[i] += offset;
}

// 4a. [row, col] of each non-empty pillar; occ_scan = inclusive scan of occupancy (id = occ_scan - 1).
extern "C" __global__ void pillar_coords(const unsigned int* __restrict__ occupancy,
                                         const unsigned int* __restrict__ occ_scan, long long n_cells, int nx,
                                         int* __restrict__ coords) {
    const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
    for (long long c = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; c < n_cells; c += stride) {
        if (occupancy[c] != 0u) {
            const long long id = static_cast<long long>(occ_scan[c]) - 1;
            coords[2 * id] = static_cast<int>(c / nx);
            coords[2 * id + 1] = static_cast<int>(c % nx);
        }
    }
}

// 4b. Kept points in ascending input order: slot = keep_scan[i] - 1 (stable by construction).
extern "C" __global__ void compact_points(const long long* __restrict__ cell, const unsigned int* __restrict__ keep_scan,
                                          const unsigned int* __restrict__ occ_scan, long long n_points,
                                          long long* __restrict__ point_index, long long* __restrict__ point_pillar) {
    const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
    for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n_points; i += stride) {
        const long long c = cell[i];
        if (c >= 0) {
            const long long slot = static_cast<long long>(keep_scan[i]) - 1;
            point_index[slot] = i;
            point_pillar[slot] = static_cast<long long>(occ_scan[c]) - 1;
        }
    }
}

// 5. Decoration: out (L, C + 3) = C raw columns, then xr - (col + 0.5) * px, yr - (row + 0.5) * py,
//    zr - z_centre with xr = x - x_min etc.; one rounding per operation, as numpy does it.
extern "C" __global__ void decorate_points(const float* __restrict__ points, int n_cols,
                                           const long long* __restrict__ point_index,
                                           const long long* __restrict__ point_pillar, const int* __restrict__ coords,
                                           long long n_kept, float x_min, float y_min, float z_min, float px,
                                           float py, float z_centre, float* __restrict__ out) {
    const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
    for (long long j = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; j < n_kept; j += stride) {
        const float* p = points + point_index[j] * n_cols;
        float* o = out + j * (n_cols + 3);
        for (int c = 0; c < n_cols; ++c) o[c] = p[c];
        const long long id = point_pillar[j];
        const float row = static_cast<float>(coords[2 * id]);
        const float col = static_cast<float>(coords[2 * id + 1]);
        o[n_cols] = __fsub_rn(__fsub_rn(p[0], x_min), __fmul_rn(__fadd_rn(col, 0.5f), px));
        o[n_cols + 1] = __fsub_rn(__fsub_rn(p[1], y_min), __fmul_rn(__fadd_rn(row, 0.5f), py));
        o[n_cols + 2] = __fsub_rn(__fsub_rn(p[2], z_min), z_centre);
    }
}
