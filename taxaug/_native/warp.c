/* Nearest-neighbour affine warp of the listed samples (any element size), as _warp_nearest in
 * geometry.py computes it: the output pixel (x, y) reads the input at
 * floor(a (x + .5) + (b (y + .5) + c)), floor(d (x + .5) + (e (y + .5) + f)), in double precision
 * operation by operation, and `fill` where that falls outside the image.
 */
#include "kernels.h"

#define WARP_COPY(type)                                                                          \
    do {                                                                                         \
        const type *s = (const type *)src, fill_value = ((const type *)job->fill)[ch];           \
        type *o = (type *)dst;                                                                   \
        for (int64_t x = 0; x < w; x++) o[y * w + x] = at[x] >= 0 ? s[at[x]] : fill_value;     \
    } while (0)

TAXAUG_CLONES static void warp_items(job_t *job, int64_t first, int64_t last) {
    const int64_t c = job->channels, h = job->height, w = job->width, es = job->elem_size, plane = h * w;
    const int in_place = job->out == job->images; /* then each sample is warped into scratch, then copied */
    double *ax = malloc(sizeof(double) * (size_t)(2 * w));
    int32_t *at = malloc(sizeof(int32_t) * (size_t)w); /* planes under 2**31 pixels (checked by the caller) */
    uint8_t *scratch = in_place ? malloc((size_t)job->sample_bytes) : NULL;
    if (!ax || !at || (in_place && !scratch)) {
        free(ax);
        free(at);
        free(scratch);
        job->failed = 1;
        return;
    }
    double *dx = ax + w;
    for (int64_t r = first; r < last; r++) {
        const double *d = job->data + 6 * r;
        const int64_t offset = job->rows[r] * job->sample_bytes;
        uint8_t *target = in_place ? scratch : job->out + offset;
        for (int64_t x = 0; x < w; x++) {
            ax[x] = d[0] * ((double)x + 0.5);
            dx[x] = d[3] * ((double)x + 0.5);
        }
        for (int64_t y = 0; y < h; y++) {
            const double ys = (double)y + 0.5;
            const double row_x = d[1] * ys + d[2], row_y = d[4] * ys + d[5];
            for (int64_t x = 0; x < w; x++) { /* clamped to [-1, w] x [-1, h] as torch does; -1 = outside */
                double sx = floor(ax[x] + row_x), sy = floor(dx[x] + row_y);
                sx = sx < -1.0 ? -1.0 : (sx > (double)w ? (double)w : sx);
                sy = sy < -1.0 ? -1.0 : (sy > (double)h ? (double)h : sy);
                const int32_t ix = (int32_t)sx, iy = (int32_t)sy;
                const int32_t inside = ((uint32_t)ix < (uint32_t)w) & ((uint32_t)iy < (uint32_t)h);
                at[x] = inside ? iy * (int32_t)w + ix : -1;
            }
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
    free(ax);
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
