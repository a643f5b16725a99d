/* MAPE's per-pillar reductions on the CPU in two passes over the points (fastpillars_ros/ops/mape_cpu.py).
 *
 * Input: point features f and attention logits s, [L, C] float32 row-major each, and the pillar id of each point.
 * Output: [M, C] (attention + max) / 2 with attention = sum_i softmax_i(s_i) f_i and max = max(0, max_i f_i) per
 * pillar and channel, as MAPE.forward. Scratch: [3, M, C] (logit maxima, softmax denominators, weighted sums).
 * The points need no order. Built with -ffast-math for the vectorised expf of glibc's libmvec; every value is
 * finite, so the logit maxima start at -FLT_MAX, not -inf.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>

static inline void reduce(const float *restrict f, const float *restrict s, const int64_t *restrict pillar,
                          int64_t num_points, int64_t num_pillars, int64_t channels, float *restrict scratch,
                          float *restrict out) {
    const int64_t cells = num_pillars * channels;
    float *restrict s_max = scratch, *restrict denom = scratch + cells, *restrict weighted = scratch + 2 * cells;
    for (int64_t k = 0; k < cells; ++k) {
        s_max[k] = -FLT_MAX;
        out[k] = 0.0f; /* holds max(0, max_i f_i) until the last pass */
        denom[k] = 0.0f;
        weighted[k] = 0.0f;
    }
    for (int64_t i = 0; i < num_points; ++i) {
        const float *si = s + i * channels, *fi = f + i * channels;
        float *sm = s_max + pillar[i] * channels, *fm = out + pillar[i] * channels;
        for (int64_t c = 0; c < channels; ++c) {
            sm[c] = si[c] > sm[c] ? si[c] : sm[c];
            fm[c] = fi[c] > fm[c] ? fi[c] : fm[c];
        }
    }
    for (int64_t i = 0; i < num_points; ++i) {
        const float *si = s + i * channels, *fi = f + i * channels, *sm = s_max + pillar[i] * channels;
        float *d = denom + pillar[i] * channels, *w = weighted + pillar[i] * channels;
        for (int64_t c = 0; c < channels; ++c) {
            const float e = expf(si[c] - sm[c]);
            d[c] += e;
            w[c] += e * fi[c];
        }
    }
    for (int64_t k = 0; k < cells; ++k) {
        const float d = denom[k] > 1e-12f ? denom[k] : 1e-12f; /* empty pillars: 0 / 1e-12 = 0 */
        out[k] = (weighted[k] / d + out[k]) * 0.5f;
    }
}

/* The channel counts of the shipped configs get loops of constant length (fully vectorised); others the general one. */
void mape_reduce(const float *f, const float *s, const int64_t *pillar, int64_t num_points, int64_t num_pillars,
                 int64_t channels, float *scratch, float *out) {
    switch (channels) {
    case 32: reduce(f, s, pillar, num_points, num_pillars, 32, scratch, out); break;
    case 64: reduce(f, s, pillar, num_points, num_pillars, 64, scratch, out); break;
    default: reduce(f, s, pillar, num_points, num_pillars, channels, scratch, out);
    }
}
