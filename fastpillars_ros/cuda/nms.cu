// nms.cu: rotated-box overlap (BEV / 3D IoU) and bitmask greedy NMS on the GPU.
//
// Loaded with CuPy RawModule (fastpillars_ros/cuda/loader.py, NVRTC, no CUDA headers) by
// fastpillars_ros/ops/nms_cuda.py; the CPU reference is fastpillars_ros/ops/iou.py + ops/nms.py, and this
// file follows the same algorithm (float32 boxes in, geometry in double as on the CPU).
//
// Boxes: contiguous float32 rows [x, y, z_center, length, width, height, yaw] (REP 103: metres, yaw in
// radians counter-clockwise from +x about +z, length along the heading).
//
// Overlap area (Green's theorem): twice the area of the convex intersection of boxes a and b is the sum,
// over its boundary pieces, of cross(start, end). The pieces are the parts of a's 4 edges inside b and of
// b's 4 edges inside a. Each edge is clipped (Liang-Barsky) in the frame of the other box, where that box
// is axis-aligned. For the piece t in [t0, t1] of an edge S + t E, cross(start, end) = (t1 - t0) cross(S, E);
// all pieces are taken in b's frame (one common origin), where each edge of b itself contributes
// (t1 - t0) * 2 * hl_b * hw_b.
// Degeneracies: relative rotations within SNAP_ANGLE of a multiple of 90 degrees are snapped onto it, so
// nearly parallel edges become exactly parallel; an edge lying on a side of the other box (within
// ON_LINE_TOL) is counted only for box a and only when it runs the same way as that side, so shared
// boundary is counted once and boxes touching from outside overlap by exactly 0.
//
// NMS (boxes pre-sorted by descending score on the host): nms_mask_kernel fills, for every box i and every
// block of 64 boxes, a 64-bit mask of the later boxes j > i that i suppresses; nms_reduce_kernel (one
// block) walks the boxes in order and ORs the masks of the kept ones. nms_groups_kernel does both for many
// independent groups (the detection head's tasks) in one launch, one block per group, on the fixed-shape
// candidate block the decoder sorted on the device (model/head.py decode_dense).

#define NMS_BLOCK 64          // boxes per mask word; nms_mask_kernel runs with blockDim.x == NMS_BLOCK
#define IOU_TILE 16           // iou_matrix_kernel runs with blockDim == (IOU_TILE, IOU_TILE)
#define BOX_DIM 7

// Same constants as ops/iou.py (see the reasons there). The geometry runs in double: for edges crossing at
// a shallow angle the clipping parameters have an error of ~rounding / angle, so float32 would need a
// snapping angle of ~3e-4 rad and be off by ~1e-4 in IoU on nearly parallel boxes. Pairs whose bounding
// circles do not meet (almost all pairs in NMS) are rejected in float32 first, so double arithmetic is
// spent on the few near pairs only (cheap even where FP64 is slow, e.g. Jetson Orin).
#define SNAP_ANGLE 1e-8
#define ON_LINE_TOL 1e-10

#define MODE_BEV 0
#define MODE_3D 1
#define MODE_CIRCLE 2

// Liang-Barsky along one axis: narrows [t0, t1] to where |p0 + t e| <= h. For an edge parallel to the
// axis' sides (e == 0), keeps it when strictly inside, or (only if `closed`) when it lies on a side and
// runs the way that side runs counter-clockwise (ccw_other: the edge's component along the side, signed
// so that > 0 means "same way" on the + side).
__device__ __forceinline__ void clip_axis(double p0, double e, double h, double ccw_other, bool closed,
                                          double& t0, double& t1) {
    if (e != 0.0) {
        const double inv = 1.0 / e;
        const double ta = (-h - p0) * inv;
        const double tb = (h - p0) * inv;
        t0 = fmax(t0, fmin(ta, tb));
        t1 = fmin(t1, fmax(ta, tb));
    } else {
        const double dist = fabs(p0) - h;
        const bool on_ccw = fabs(dist) <= ON_LINE_TOL && p0 * ccw_other > 0.0;
        if (!(dist < -ON_LINE_TOL || (closed && on_ccw))) t1 = -1.0;
    }
}

// Fraction of the edge (x0, y0) + t (ex, ey), t in [0, 1], inside |x| <= hx, |y| <= hy.
__device__ __forceinline__ double clipped_fraction(double x0, double y0, double ex, double ey, double hx,
                                                   double hy, bool closed) {
    double t0 = 0.0, t1 = 1.0;
    clip_axis(x0, ex, hx, ey, closed, t0, t1);
    clip_axis(y0, ey, hy, -ex, closed, t0, t1);
    return fmax(t1 - t0, 0.0);
}

// BEV intersection area (m^2) of boxes a and b.
__device__ double box_overlap_bev(const float* a, const float* b) {
    const double ca = cos((double)a[6]), sa = sin((double)a[6]);
    const double cb = cos((double)b[6]), sb = sin((double)b[6]);
    // Rotation of a relative to b from the angle-difference identities (as ops/iou.py).
    double c = ca * cb + sa * sb;
    double s = sa * cb - ca * sb;
    if (fabs(s) < SNAP_ANGLE) {
        c = c < 0.0 ? -1.0 : 1.0;
        s = 0.0;
    } else if (fabs(c) < SNAP_ANGLE) {
        s = s < 0.0 ? -1.0 : 1.0;
        c = 0.0;
    }
    const double dx = (double)a[0] - (double)b[0], dy = (double)a[1] - (double)b[1];
    const double hla = 0.5 * fmax((double)a[3], 0.0), hwa = 0.5 * fmax((double)a[4], 0.0);
    const double hlb = 0.5 * fmax((double)b[3], 0.0), hwb = 0.5 * fmax((double)b[4], 0.0);
    const double oax = cb * dx + sb * dy, oay = cb * dy - sb * dx;     // a's centre in b's frame
    const double obx = -(ca * dx + sa * dy), oby = sa * dx - ca * dy;  // b's centre in a's frame
    // Counter-clockwise corner signs: (+l,-w), (+l,+w), (-l,+w), (-l,-w).
    const double sx[4] = {1.0, 1.0, -1.0, -1.0};
    const double sy[4] = {-1.0, 1.0, 1.0, -1.0};
    double twice = 0.0;
    double b_fraction = 0.0;
    for (int k = 0; k < 4; ++k) {
        const int n = (k + 1) & 3;
        // Edge k of a, in b's frame: start o + R L, vector R E (R: rotation by +rel).
        {
            const double lx = sx[k] * hla, ly = sy[k] * hwa;
            const double ex = sx[n] * hla - lx, ey = sy[n] * hwa - ly;
            const double x0 = oax + c * lx - s * ly, y0 = oay + s * lx + c * ly;
            const double exo = c * ex - s * ey, eyo = s * ex + c * ey;
            const double f = clipped_fraction(x0, y0, exo, eyo, hlb, hwb, true);
            twice += f * (x0 * eyo - y0 * exo);
        }
        // Edge k of b, in a's frame (rotation by -rel); its contribution is taken in b's own frame.
        {
            const double lx = sx[k] * hlb, ly = sy[k] * hwb;
            const double ex = sx[n] * hlb - lx, ey = sy[n] * hwb - ly;
            const double x0 = obx + c * lx + s * ly, y0 = oby - s * lx + c * ly;
            const double exo = c * ex + s * ey, eyo = c * ey - s * ex;
            b_fraction += clipped_fraction(x0, y0, exo, eyo, hla, hwa, false);
        }
    }
    twice += 2.0 * hlb * hwb * b_fraction;
    return fmax(0.5 * twice, 0.0);
}

// Whether the BEV bounding circles of a and b meet (float32, with a margin far above its rounding). Boxes
// whose circles do not meet cannot overlap.
__device__ __forceinline__ bool circles_meet(const float* a, const float* b) {
    const float ra = 0.5f * sqrtf(a[3] * a[3] + a[4] * a[4]);
    const float rb = 0.5f * sqrtf(b[3] * b[3] + b[4] * b[4]);
    const float dx = a[0] - b[0], dy = a[1] - b[1];
    const float reach = (ra + rb) * 1.0001f + 1e-4f;
    return dx * dx + dy * dy <= reach * reach;
}

// IoU of a and b: BEV (mode MODE_BEV) or 3D (MODE_3D, BEV area x vertical overlap).
__device__ double box_iou(const float* a, const float* b, int mode) {
    if (!circles_meet(a, b)) return 0.0;
    double inter = box_overlap_bev(a, b);
    double area_a = fmax((double)a[3], 0.0) * fmax((double)a[4], 0.0);
    double area_b = fmax((double)b[3], 0.0) * fmax((double)b[4], 0.0);
    if (mode == MODE_3D) {
        const double ha = fmax((double)a[5], 0.0), hb = fmax((double)b[5], 0.0);
        const double top = fmin(a[2] + 0.5 * ha, b[2] + 0.5 * hb);
        const double bottom = fmax(a[2] - 0.5 * ha, b[2] - 0.5 * hb);
        inter *= fmax(top - bottom, 0.0);
        area_a *= ha;
        area_b *= hb;
    }
    inter = fmin(inter, fmin(area_a, area_b));  // rounding only; keeps IoU in [0, 1]
    const double uni = area_a + area_b - inter;
    return uni > 0.0 ? inter / uni : 0.0;
}

// Whether a kept box a suppresses box b: IoU > threshold, or (MODE_CIRCLE) centre distance <= threshold.
__device__ __forceinline__ bool suppresses(const float* a, const float* b, int mode, double threshold) {
    if (mode == MODE_CIRCLE) {
        const double dx = (double)a[0] - (double)b[0], dy = (double)a[1] - (double)b[1];
        return dx * dx + dy * dy <= threshold * threshold;
    }
    return box_iou(a, b, mode) > threshold;
}

// Bits k of the boxes cols[k], k in [start, size), that box cur suppresses.
__device__ __forceinline__ unsigned long long suppression_bits(const float* cur, const float* cols, int start,
                                                               int size, int mode, double threshold) {
    unsigned long long bits = 0ULL;
    for (int k = start; k < size; ++k) {
        if (suppresses(cur, &cols[k * BOX_DIM], mode, threshold)) bits |= 1ULL << k;
    }
    return bits;
}

// Greedy pass of one block over the masks of n ranked boxes (row stride `stride` words): a box is kept
// when no kept box before it suppresses it. removed: zeroed words (workspace). Kept ranks go to keep_list
// (ascending, count to *num_keep) or are flagged in keep_flags (1), whichever is not null; at most max_keep.
__device__ void greedy_pass(const unsigned long long* __restrict__ mask, int stride, int n,
                            unsigned long long* removed, int max_keep, long long* keep_list, int* num_keep,
                            unsigned char* keep_flags) {
    const int col_blocks = (n + NMS_BLOCK - 1) / NMS_BLOCK;
    int count = 0;  // identical in every thread
    for (int i = 0; i < n && count < max_keep; ++i) {
        const int word = i / NMS_BLOCK;
        const bool alive = ((removed[word] >> (i % NMS_BLOCK)) & 1ULL) == 0ULL;
        __syncthreads();  // every thread has read removed[word] before any thread updates it
        if (alive) {
            if (threadIdx.x == 0) {
                if (keep_list != nullptr) keep_list[count] = i;
                if (keep_flags != nullptr) keep_flags[i] = 1;
            }
            const unsigned long long* row = mask + (long long)i * stride;
            for (int w = word + threadIdx.x; w < col_blocks; w += blockDim.x) removed[w] |= row[w];
            ++count;
        }
        __syncthreads();  // updates visible before the next box is read
    }
    if (threadIdx.x == 0 && num_keep != nullptr) *num_keep = count;
}

// out[i * m + j] = IoU(a_i, b_j). grid ((m + IOU_TILE - 1) / IOU_TILE, (n + IOU_TILE - 1) / IOU_TILE),
// block (IOU_TILE, IOU_TILE). The tile's boxes are staged in shared memory (each is read IOU_TILE times).
extern "C" __global__ void iou_matrix_kernel(const float* __restrict__ a, int n, const float* __restrict__ b,
                                             int m, int mode, float* __restrict__ out) {
    __shared__ float tile_a[IOU_TILE * BOX_DIM];
    __shared__ float tile_b[IOU_TILE * BOX_DIM];
    const int row0 = blockIdx.y * IOU_TILE, col0 = blockIdx.x * IOU_TILE;
    const int lin = threadIdx.y * IOU_TILE + threadIdx.x;
    for (int k = lin; k < IOU_TILE * BOX_DIM; k += IOU_TILE * IOU_TILE) {
        const int box = k / BOX_DIM;
        tile_a[k] = row0 + box < n ? a[(row0 + box) * BOX_DIM + k % BOX_DIM] : 0.0f;
        tile_b[k] = col0 + box < m ? b[(col0 + box) * BOX_DIM + k % BOX_DIM] : 0.0f;
    }
    __syncthreads();
    const int i = row0 + threadIdx.y, j = col0 + threadIdx.x;
    if (i < n && j < m) {
        out[(long long)i * m + j] = (float)box_iou(&tile_a[threadIdx.y * BOX_DIM], &tile_b[threadIdx.x * BOX_DIM], mode);
    }
}

// mask[i * col_blocks + cb] bit k set  <=>  box i suppresses box j = cb * NMS_BLOCK + k (j > i).
// grid (col_blocks, col_blocks), block (NMS_BLOCK). Boxes sorted by descending score. Only blocks on or
// above the diagonal run (the reduction never reads the others).
extern "C" __global__ void nms_mask_kernel(const float* __restrict__ boxes, int n, double threshold, int mode,
                                           unsigned long long* __restrict__ mask) {
    const int row_block = blockIdx.y, col_block = blockIdx.x;
    if (row_block > col_block) return;  // whole block: uniform, before any barrier
    const int col_blocks = (n + NMS_BLOCK - 1) / NMS_BLOCK;
    const int row_left = n - row_block * NMS_BLOCK, col_left = n - col_block * NMS_BLOCK;
    const int row_size = row_left < NMS_BLOCK ? row_left : NMS_BLOCK;
    const int col_size = col_left < NMS_BLOCK ? col_left : NMS_BLOCK;

    __shared__ float block_boxes[NMS_BLOCK * BOX_DIM];
    const int tx = threadIdx.x;
    if (tx < col_size) {
        for (int d = 0; d < BOX_DIM; ++d) {
            block_boxes[tx * BOX_DIM + d] = boxes[(col_block * NMS_BLOCK + tx) * BOX_DIM + d];
        }
    }
    __syncthreads();

    if (tx < row_size) {
        const int i = row_block * NMS_BLOCK + tx;
        float cur[BOX_DIM];
        for (int d = 0; d < BOX_DIM; ++d) cur[d] = boxes[i * BOX_DIM + d];
        const int start = row_block == col_block ? tx + 1 : 0;
        mask[(long long)i * col_blocks + col_block] = suppression_bits(cur, block_boxes, start, col_size, mode,
                                                                       threshold);
    }
}

// Greedy pass over the masks, one block (any blockDim.x). removed: col_blocks zeroed words (workspace).
// Writes the kept ranks (ascending = by descending score) to keep[0 .. *num_keep), at most max_keep.
extern "C" __global__ void nms_reduce_kernel(const unsigned long long* __restrict__ mask, int n,
                                             unsigned long long* removed, long long* __restrict__ keep,
                                             int* __restrict__ num_keep, int max_keep) {
    greedy_pass(mask, (n + NMS_BLOCK - 1) / NMS_BLOCK, n, removed, max_keep, keep, num_keep, nullptr);
}

// Greedy NMS of many groups in one launch: grid (groups), block (any blockDim.x). Group g's candidates are
// rows [g * p, g * p + p) of boxes, sorted by descending score, of which the first min(count[g], p) take
// part. Phase 1 fills the group's suppression masks (mask: groups x p x ceil(p / 64) words, each written
// before it is read), phase 2 is the greedy pass. removed: groups x ceil(p / 64) words (any contents).
// keep[g * p + i] = 1 for kept ranks i (at most max_keep per group), 0 otherwise.
extern "C" __global__ void nms_groups_kernel(const float* __restrict__ boxes, const int* __restrict__ count, int p,
                                             double threshold, int mode, int max_keep,
                                             unsigned long long* __restrict__ mask,
                                             unsigned long long* __restrict__ removed,
                                             unsigned char* __restrict__ keep) {
    const int g = blockIdx.x;
    const int n = count[g] < p ? (count[g] > 0 ? count[g] : 0) : p;
    const int stride = (p + NMS_BLOCK - 1) / NMS_BLOCK;
    const int col_blocks = (n + NMS_BLOCK - 1) / NMS_BLOCK;
    const float* rows = boxes + (long long)g * p * BOX_DIM;
    unsigned long long* group_mask = mask + (long long)g * p * stride;
    unsigned long long* group_removed = removed + (long long)g * stride;
    unsigned char* group_keep = keep + (long long)g * p;
    for (int i = threadIdx.x; i < p; i += blockDim.x) group_keep[i] = 0;
    for (int w = threadIdx.x; w < stride; w += blockDim.x) group_removed[w] = 0ULL;
    // Mask words (i, cb) on or right of the diagonal block; each thread takes whole words.
    for (long long item = threadIdx.x; item < (long long)n * col_blocks; item += blockDim.x) {
        const int i = (int)(item / col_blocks), cb = (int)(item % col_blocks);
        if (cb < i / NMS_BLOCK) continue;
        const int base = cb * NMS_BLOCK;
        const int size = n - base < NMS_BLOCK ? n - base : NMS_BLOCK;
        const int start = i + 1 > base ? i + 1 - base : 0;
        group_mask[(long long)i * stride + cb] = suppression_bits(&rows[i * BOX_DIM], &rows[base * BOX_DIM], start,
                                                                  size, mode, threshold);
    }
    __syncthreads();  // masks, flags and workspace written by the block are visible to all its threads
    greedy_pass(group_mask, stride, n, group_removed, max_keep, nullptr, nullptr, group_keep);
}
