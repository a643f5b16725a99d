/* MAPE's eval-mode forward on the CPU, fused per pillar (fastpillars_ros/ops/mape_cpu.py).
 *
 * Input: decorated points x [L, F] float32 row-major in any order, the pillar id of each point, and MAPE's weights
 * with its batch norm folded in: w1t [F, C], b1 [C] (point features f = LeakyReLU(x w1t + b1)) and w2t [C, C], b2
 * [C] (attention logits s = LeakyReLU(f w2t + b2)), both transposed so that a row of output channels is contiguous.
 * Output: [M, C] (attention + max) / 2 with attention = sum_i softmax_i(s_i) f_i and max = max(0, max_i f_i) per
 * pillar and channel, as MAPE.forward; pillars without points are 0.
 *
 * Why fused: the unfused path writes f and s for every point ([L, C] each, 15 MB on a 120k-point scan) and then
 * reads them back in scattered order. Here a counting sort lists each pillar's points, and a pillar's f and s live
 * in a small per-thread buffer (cache-resident) from the GEMM to the reduction: nothing per point reaches memory.
 * Points are taken four at a time so that every weight row loaded feeds four points (register blocking). Pillars
 * are split between threads by point count; a thread owns whole pillars, so no two threads write the same output.
 * Built with -ffast-math for the vectorised expf of glibc's libmvec; every value is finite, so the logit maxima
 * start at -FLT_MAX, not -inf.
 */
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_THREADS 8
#define BLOCK 4 /* points per register block */

typedef struct {
    const float *x, *w1t, *b1, *w2t, *b2;
    const int32_t *order;  /* point indices grouped by pillar */
    const int64_t *start;  /* [M + 1]: pillar p's points are order[start[p] .. start[p + 1]) */
    float slope;
    int64_t features, channels, first, last; /* pillars [first, last) */
    float *buf;            /* [max points per pillar, 2C]: f then s of each point */
    float *out;
} job_t;

static inline float leaky(float v, float slope) { return v > 0.0f ? v : v * slope; }

/* f and s of `count` points (a constant after inlining: the loops over points unroll), written to buf rows, and
 * folded into the running per-channel maxima. */
static inline void point_block(const job_t *j, const int32_t *idx, float *restrict buf, int count, int64_t C,
                               float *restrict fmax, float *restrict smax) {
    const int64_t F = j->features;
    const float *restrict w1t = j->w1t, *restrict w2t = j->w2t;
    float acc[BLOCK][C];
    for (int p = 0; p < count; ++p)
        for (int64_t c = 0; c < C; ++c) acc[p][c] = j->b1[c];
    for (int64_t k = 0; k < F; ++k)
        for (int p = 0; p < count; ++p) {
            const float v = j->x[(int64_t)idx[p] * F + k];
            for (int64_t c = 0; c < C; ++c) acc[p][c] += w1t[k * C + c] * v;
        }
    for (int p = 0; p < count; ++p)
        for (int64_t c = 0; c < C; ++c) {
            const float v = leaky(acc[p][c], j->slope);
            buf[p * 2 * C + c] = v;
            fmax[c] = v > fmax[c] ? v : fmax[c];
            acc[p][c] = j->b2[c];
        }
    for (int64_t k = 0; k < C; ++k)
        for (int p = 0; p < count; ++p) {
            const float v = buf[p * 2 * C + k];
            for (int64_t c = 0; c < C; ++c) acc[p][c] += w2t[k * C + c] * v;
        }
    for (int p = 0; p < count; ++p)
        for (int64_t c = 0; c < C; ++c) {
            const float v = leaky(acc[p][c], j->slope);
            buf[p * 2 * C + C + c] = v;
            smax[c] = v > smax[c] ? v : smax[c];
        }
}

static inline void encode(const job_t *j, int64_t C) {
    float fmax[C], smax[C], denom[C], weighted[C];
    for (int64_t pillar = j->first; pillar < j->last; ++pillar) {
        const int32_t *idx = j->order + j->start[pillar];
        const int64_t n = j->start[pillar + 1] - j->start[pillar];
        float *restrict out = j->out + pillar * C;
        if (n == 0) {
            memset(out, 0, (size_t)C * sizeof(float));
            continue;
        }
        for (int64_t c = 0; c < C; ++c) {
            fmax[c] = 0.0f;
            smax[c] = -FLT_MAX;
            denom[c] = 0.0f;
            weighted[c] = 0.0f;
        }
        int64_t q = 0;
        for (; q + BLOCK <= n; q += BLOCK) point_block(j, idx + q, j->buf + q * 2 * C, BLOCK, C, fmax, smax);
        for (; q < n; ++q) point_block(j, idx + q, j->buf + q * 2 * C, 1, C, fmax, smax);
        for (q = 0; q < n; ++q) {
            const float *restrict f = j->buf + q * 2 * C, *restrict s = f + C;
            for (int64_t c = 0; c < C; ++c) {
                const float e = expf(s[c] - smax[c]);
                denom[c] += e;
                weighted[c] += e * f[c];
            }
        }
        /* denom >= 1: the arg-max point contributes exp(0) */
        for (int64_t c = 0; c < C; ++c) out[c] = (weighted[c] / denom[c] + fmax[c]) * 0.5f;
    }
}

/* The channel counts of the shipped configs get loops of constant length (fully vectorised); others the general one. */
static void *run(void *arg) {
    const job_t *j = arg;
    switch (j->channels) {
    case 16: encode(j, 16); break; /* tiny360_lite (config/training) */
    case 32: encode(j, 32); break;
    case 64: encode(j, 64); break;
    default: encode(j, j->channels);
    }
    return NULL;
}

/* Returns 0; -1 when memory could not be allocated, -2 for a pillar id outside [0, M) (out is then undefined). */
int mape_encode(const float *x, const int64_t *pillar, int64_t num_points, int64_t num_pillars, int64_t features,
                int64_t channels, const float *w1t, const float *b1, const float *w2t, const float *b2, float slope,
                int64_t threads, float *out) {
    int64_t *start = calloc((size_t)num_pillars + 2, sizeof(int64_t));
    int32_t *order = malloc((size_t)(num_points + 1) * sizeof(int32_t));
    float *bufs = NULL;
    int status = -1;
    if (!start || !order) goto done;
    /* counting sort: start[p + 2] counts pillar p, prefix sums make start[p + 1] the next free slot of pillar p,
     * and after the fill start[p + 1] is pillar p's end = pillar p + 1's start */
    for (int64_t i = 0; i < num_points; ++i) {
        if (pillar[i] < 0 || pillar[i] >= num_pillars) {
            status = -2;
            goto done;
        }
        start[pillar[i] + 2]++;
    }
    int64_t max_count = 0;
    for (int64_t p = 0; p < num_pillars; ++p) {
        max_count = start[p + 2] > max_count ? start[p + 2] : max_count;
        start[p + 2] += start[p + 1];
    }
    for (int64_t i = 0; i < num_points; ++i) order[start[pillar[i] + 1]++] = (int32_t)i;

    threads = threads < 1 ? 1 : threads > MAX_THREADS ? MAX_THREADS : threads;
    if (num_points < 8192) threads = 1; /* a thread costs more than it saves on small clouds */
    const size_t per_thread = (size_t)(max_count + 1) * 2 * (size_t)channels;
    bufs = malloc((size_t)threads * per_thread * sizeof(float));
    if (!bufs) goto done;
    job_t jobs[MAX_THREADS];
    pthread_t ids[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    int64_t first = 0;
    for (int64_t t = 0; t < threads; ++t) {
        int64_t last = num_pillars;
        if (t < threads - 1) { /* the first pillar at which (t + 1) / threads of the points are listed */
            const int64_t target = num_points * (t + 1) / threads;
            for (last = first; last < num_pillars && start[last] < target; ++last) {}
        }
        jobs[t] = (job_t){x, w1t, b1, w2t, b2, order, start, slope, features, channels, first, last,
                          bufs + (size_t)t * per_thread, out};
        first = last;
    }
    for (int64_t t = 1; t < threads; ++t) started[t] = pthread_create(&ids[t], NULL, run, &jobs[t]) == 0;
    run(&jobs[0]);
    for (int64_t t = 1; t < threads; ++t) {
        if (started[t]) pthread_join(ids[t], NULL);
        else run(&jobs[t]); /* no thread to be had: do its share here */
    }
    status = 0;
done:
    free(bufs);
    free(order);
    free(start);
    return status;
}
