/* Nearest-neighbour affine warp of the listed samples (any element size), picking source pixels as
 * Pillow's ImagingTransformAffine does (libImaging/Geometry.c) and as _nearest_source in geometry.py
 * computes them: the output pixel (x, y) reads the input at the integer part of
 *
 * - axis-aligned data (b == d == 0): c + a/2 + a + ... + a (x additions) and f + e/2 + e + ... (y
 *   additions), accumulated one addition at a time in double precision;
 * - otherwise, when the image corners map inside +-32768: the 16.16 fixed-point sum
 *   A2 + y A1 + x A0 (and A5 + y A4 + x A3) with every coefficient rounded to floor(v 65536 + 0.5);
 * - otherwise: (c + b/2 + a/2) + b + ... (y additions) + a + ... (x additions), in double precision;
 *
 * and `fill` where that falls outside the image.
 */
#include "kernels.h"

#define WARP_COPY(type)                                                                          \
    do {                                                                                         \
        const type *s = (const type *)src, fill_value = ((const type *)job->fill)[ch];           \
        type *o = (type *)dst;                                                                   \
        for (int64_t x = 0; x < w; x++) o[y * w + x] = at[x] >= 0 ? s[at[x]] : fill_value;     \
    } while (0)

enum { PATH_AXIS, PATH_FIXED, PATH_FLOAT };

/* Integer part of a source coordinate, -1 below 0 and `bound` at or beyond it (both outside). */
static inline int64_t coord(double v, int64_t bound) {
    return v < 0.0 ? -1 : (v >= (double)bound ? bound : (int64_t)v);
}

static inline int64_t fix(double v) { return (int64_t)floor(v * 65536.0 + 0.5); }

/* Pillow's check_fixed at the corners (0, 0), (w, h), (0, h), (w, 0). */
static int fits_fixed(const double *d, int64_t h, int64_t w) {
    const double cx[4] = {0.0, (double)w, 0.0, (double)w}, cy[4] = {0.0, (double)h, (double)h, 0.0};
    for (int k = 0; k < 4; k++) {
        const double u = (cx[k] * d[0] + cy[k] * d[1]) + d[2], v = (cx[k] * d[3] + cy[k] * d[4]) + d[5];
        if (!(fabs(u) < 32768.0 && fabs(v) < 32768.0)) return 0;
    }
    return 1;
}

typedef struct {
    int path;
    int64_t a0, a1, a2, a3, a4, a5; /* fixed point */
    double row_x, row_y;            /* float walks: the coordinate at the start of the current row */
    int32_t *cols;                  /* axis: source column of each output column, -1 outside */
} walk_t;

static void walk_start(walk_t *k, const double *d, int64_t h, int64_t w) {
    k->path = d[1] == 0.0 && d[3] == 0.0 ? PATH_AXIS : (fits_fixed(d, h, w) ? PATH_FIXED : PATH_FLOAT);
    if (k->path == PATH_AXIS) {
        double xo = d[2] + d[0] * 0.5;
        for (int64_t x = 0; x < w; x++, xo += d[0]) {
            const int64_t ix = coord(xo, w);
            k->cols[x] = ix >= 0 && ix < w ? (int32_t)ix : -1;
        }
        k->row_y = d[5] + d[4] * 0.5;
    } else if (k->path == PATH_FIXED) {
        k->a0 = fix(d[0]), k->a1 = fix(d[1]), k->a3 = fix(d[3]), k->a4 = fix(d[4]);
        k->a2 = fix(d[2] + d[0] * 0.5 + d[1] * 0.5), k->a5 = fix(d[5] + d[3] * 0.5 + d[4] * 0.5);
    } else {
        k->row_x = d[2] + d[1] * 0.5 + d[0] * 0.5;
        k->row_y = d[5] + d[4] * 0.5 + d[3] * 0.5;
    }
}

/* at[x] = flat source index of output pixel (x, y), -1 outside; then steps the walk to row y + 1. */
TAXAUG_CLONES static void walk_row(walk_t *k, const double *d, int64_t y, int64_t h, int64_t w, int32_t *restrict at) {
    if (k->path == PATH_AXIS) {
        const int64_t iy = coord(k->row_y, h);
        const int inside = iy >= 0 && iy < h;
        const int32_t base = inside ? (int32_t)(iy * w) : -1;
        for (int64_t x = 0; x < w; x++) at[x] = inside & (k->cols[x] >= 0) ? base + k->cols[x] : -1;
        k->row_y += d[4];
    } else if (k->path == PATH_FIXED) { /* 32-bit sums that wrap as Pillow's int accumulators (vectorises) */
        const uint32_t rx = (uint32_t)(k->a2 + y * k->a1), ry = (uint32_t)(k->a5 + y * k->a4);
        const uint32_t a0 = (uint32_t)k->a0, a3 = (uint32_t)k->a3, wi = (uint32_t)w, hi = (uint32_t)h;
        if (a3 == 0) { /* the source row is the same along the output row (shear_x) */
            const int32_t iy = (int32_t)ry >> 16, base = (uint32_t)iy < hi ? iy * (int32_t)wi : -1;
            uint32_t xx = rx;
            for (uint32_t x = 0; x < wi; x++, xx += a0) {
                const int32_t ix = (int32_t)xx >> 16;
                at[x] = (base >= 0) & ((uint32_t)ix < wi) ? base + ix : -1;
            }
            return;
        }
        uint32_t xx = rx, yy = ry;
        for (uint32_t x = 0; x < wi; x++, xx += a0, yy += a3) {
            const int32_t ix = (int32_t)xx >> 16, iy = (int32_t)yy >> 16; /* arithmetic shift: floor division */
            at[x] = ((uint32_t)ix < wi) & ((uint32_t)iy < hi) ? iy * (int32_t)wi + ix : -1;
        }
    } else {
        double xx = k->row_x, yy = k->row_y;
        for (int64_t x = 0; x < w; x++, xx += d[0], yy += d[3]) {
            const int64_t ix = coord(xx, w), iy = coord(yy, h);
            at[x] = ix >= 0 && ix < w && iy >= 0 && iy < h ? (int32_t)(iy * w + ix) : -1;
        }
        k->row_x += d[1];
        k->row_y += d[4];
    }
}

TAXAUG_CLONES static void warp_items(job_t *job, int64_t first, int64_t last) {
    const int64_t c = job->channels, h = job->height, w = job->width, es = job->elem_size, plane = h * w;
    const int in_place = job->out == job->images; /* then each sample is warped into scratch, then copied */
    int32_t *at = malloc(sizeof(int32_t) * (size_t)(2 * w)); /* planes under 2**31 pixels (checked by the caller) */
    uint8_t *scratch = in_place ? malloc((size_t)job->sample_bytes) : NULL;
    if (!at || (in_place && !scratch)) {
        free(at);
        free(scratch);
        job->failed = 1;
        return;
    }
    walk_t walk = {.cols = at + w};
    for (int64_t r = first; r < last; r++) {
        const double *d = job->data + 6 * r;
        const int64_t offset = job->rows[r] * job->sample_bytes;
        uint8_t *target = in_place ? scratch : job->out + offset;
        walk_start(&walk, d, h, w);
        for (int64_t y = 0; y < h; y++) {
            walk_row(&walk, d, y, h, w, at);
            for (int64_t ch = 0; ch < c; ch++) {
                const uint8_t *src = job->images + offset + ch * plane * es;
                uint8_t *dst = target + ch * plane * es;
                switch (es) {
                case 1: WARP_COPY(uint8_t); break;
                case 2: WARP_COPY(uint16_t); break;
                case 4: WARP_COPY(uint32_t); break;
                default: WARP_COPY(uint64_t); break;
                }
            }
        }
        if (in_place) memcpy(job->out + offset, scratch, (size_t)job->sample_bytes);
    }
    free(at);
    free(scratch);
}

void run_warp(job_t *job, int64_t first, int64_t last) { warp_items(job, first, last); }

/* Nearest-neighbour warp of samples rows[0..n_rows) of a (B, C, H, W) batch from `images` into `out`
 * (the same layout; the same buffer warps in place), with data (n_rows, 6) and fill (C elements);
 * -1 if memory ran out. */
TAXAUG_EXPORT int taxaug_warp_nearest(uint8_t *out, const uint8_t *images, const int64_t *rows, const double *data,
                                      const uint8_t *fill, int64_t n_rows, int64_t channels, int64_t height,
                                      int64_t width, int64_t elem_size, int threads) {
    const job_t job = {.kind = 3, .out = out, .images = images, .rows = rows, .data = data, .fill = fill,
                       .channels = channels, .height = height, .width = width, .elem_size = elem_size,
                       .sample_bytes = channels * height * width * elem_size};
    return run_parallel(job, n_rows, threads);
}
