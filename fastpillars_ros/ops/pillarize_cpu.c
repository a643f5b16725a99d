/* Dynamic pillarization and decoration on the CPU (fastpillars_ros/ops/pillarize_cpu.py).
 *
 * Semantics are those of the numpy reference fastpillars_ros/ops/pillarize.py, bit for bit: float32 maths with one
 * rounding per operation (built without -ffast-math and with -ffp-contract=off, so the compiler neither reorders
 * nor fuses a multiply and an add), kept points in ascending input order, pillar ids in row-major order of the
 * occupied cells. Why compiled: numpy needs a dozen passes over the points (subtract, divide, four compares, a
 * gather per column, the record copies of decoration), this one pass to pillarize and one to decorate.
 */
#include <math.h>
#include <stdint.h>

/* Points (N, columns) float32 -> kept points' input indices and pillar ids, and the pillars' [row, col].
 * occupied: [ny * nx] all 0 on entry and on return; lut: [ny * nx] scratch. point_index, point_pillar: [N];
 * coords: [min(N, ny * nx), 2]. Returns the number of kept points L; *num_pillars receives M. */
int64_t pillarize(const float *points, int64_t num_points, int64_t columns, float x_min, float y_min, float px,
                  float py, int64_t nx, int64_t ny, uint8_t *occupied, int64_t *lut, int64_t *point_index,
                  int64_t *point_pillar, int32_t *coords, int64_t *num_pillars) {
    const float columns_f = (float)nx, rows_f = (float)ny;
    int64_t kept = 0;
    for (int64_t i = 0; i < num_points; ++i) {
        const float *p = points + i * columns;
        const float qx = (p[0] - x_min) / px, qy = (p[1] - y_min) / py;
        /* NaN fails every comparison: a point with a non-finite x or y is dropped here */
        if (qx >= 0.0f && qx < columns_f && qy >= 0.0f && qy < rows_f && isfinite(p[2])) {
            const int64_t cell = (int64_t)qy * nx + (int64_t)qx; /* truncation == floor for q >= 0 */
            point_index[kept] = i;
            point_pillar[kept] = cell; /* the cell until the ids are known */
            occupied[cell] = 1;
            ++kept;
        }
    }
    int64_t m = 0;
    for (int64_t cell = 0; cell < nx * ny; ++cell) {
        if (occupied[cell]) {
            occupied[cell] = 0;
            lut[cell] = m;
            coords[2 * m] = (int32_t)(cell / nx);
            coords[2 * m + 1] = (int32_t)(cell % nx);
            ++m;
        }
    }
    for (int64_t l = 0; l < kept; ++l) point_pillar[l] = lut[point_pillar[l]];
    *num_pillars = m;
    return kept;
}

/* Decorated features (L, columns + 3): the raw columns, then the offsets from the pillar centre in x, y, z.
 * Returns -1 (out incomplete) at the first point index outside [0, N) or pillar id outside [0, M), else 0. */
int decorate(const float *points, int64_t num_points, int64_t columns, const int64_t *point_index,
             const int64_t *point_pillar, int64_t num_kept, const int32_t *coords, int64_t num_pillars, float x_min,
             float y_min, float z_min, float px, float py, float z_centre, float *out) {
    for (int64_t l = 0; l < num_kept; ++l) {
        if (point_index[l] < 0 || point_index[l] >= num_points || point_pillar[l] < 0 ||
            point_pillar[l] >= num_pillars)
            return -1;
        const float *p = points + point_index[l] * columns;
        const int32_t *cell = coords + 2 * point_pillar[l];
        float *o = out + l * (columns + 3);
        for (int64_t c = 0; c < columns; ++c) o[c] = p[c];
        const float centre_x = ((float)cell[1] + 0.5f) * px, centre_y = ((float)cell[0] + 0.5f) * py;
        o[columns] = (p[0] - x_min) - centre_x;
        o[columns + 1] = (p[1] - y_min) - centre_y;
        o[columns + 2] = (p[2] - z_min) - z_centre;
    }
    return 0;
}
