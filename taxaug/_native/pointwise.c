/* The policies' per-pixel ops: each maps every pixel through a per-sample rule (some from per-sample
 * statistics: contrast's mean luma, autocontrast's range, equalize's histogram), on the listed
 * samples, from `images` into `out` (the same layout; they may be the same buffer). Each
 * reproduces the float32 arithmetic of the torch kernel in taxaug/functional/photometric.py
 * operation by operation, so the bytes are the same; the dispatcher then needs no gather and
 * scatter for these ops.
 */
#include "kernels.h"

enum { OP_BRIGHTNESS = 0, OP_POSTERIZE = 1, OP_SOLARIZE = 2, OP_INVERT = 3, OP_COLOR = 4, OP_CONTRAST = 5, OP_HUE = 6,
       OP_AUTOCONTRAST = 7, OP_EQUALIZE = 8, OP_SHARPNESS = 9 };

static const float GRAY_R = 19595.0f / 65536.0f, GRAY_G = 38470.0f / 65536.0f, GRAY_B = 7471.0f / 65536.0f;

static inline float clamp01(float v) { return v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v); }
static inline uint8_t to_u8(float v) { return (uint8_t)(v < 0.0f ? 0.0f : (v > 255.0f ? 255.0f : v)); }
static inline int32_t gray_u8(const uint8_t *x, int64_t i, int64_t plane, int64_t c) {
    if (c == 1) return x[i];
    return (x[i] * 19595 + x[plane + i] * 38470 + x[2 * plane + i] * 7471 + 0x8000) >> 16;
}
static inline float gray_f32(const float *x, int64_t i, int64_t plane, int64_t c) {
    if (c == 1) return x[i];
    const float r = x[i] * GRAY_R, g = x[plane + i] * GRAY_G;
    return (r + g) + x[2 * plane + i] * GRAY_B;
}

/* Hue rotation of n RGB pixels in [0, 1] (planes r, g, b), as _k_hue computes it (see photometric.py);
 * `shift6` = 6 * shift with |shift| <= 0.5, so the hue before the wrap lies in [-4, 8] and
 * torch.remainder(h, 6) is h + 6, h or h - 6 exactly. Branch-free, so the loop vectorises. */
static inline void hue_pixels(const float *restrict r, const float *restrict g, const float *restrict b, int64_t n,
                              float shift6, float *restrict out_r, float *restrict out_g, float *restrict out_b) {
    for (int64_t i = 0; i < n; i++) {
        const float red = r[i], green = g[i], blue = b[i];
        const float max_rg = red > green ? red : green, min_rg = red < green ? red : green;
        const float maxc = max_rg > blue ? max_rg : blue, minc = min_rg < blue ? min_rg : blue;
        const float delta = maxc - minc;
        const float safe_delta = delta + (delta == 0.0f ? 1.0f : 0.0f);
        /* 0/1 masks as floats: products, not &&, keep the loop vectorisable (GCC 12 gives up on mixed masks) */
        const float is_r = maxc == red ? 1.0f : 0.0f, eq_g = maxc == green ? 1.0f : 0.0f;
        const float is_g = eq_g * (1.0f - is_r), is_b = (1.0f - is_r) * (1.0f - eq_g);
        const float num = ((green - blue) * is_r + (blue - red) * is_g) + (red - green) * is_b;
        const float hue6 = num / safe_delta + (is_g * 2.0f + is_b * 4.0f);
        const float sat = delta / (maxc + (maxc == 0.0f ? 1.0f : 0.0f));
        const float turned = hue6 + shift6;
        const float wrapped = turned < 0.0f ? turned + 6.0f : (turned >= 6.0f ? turned - 6.0f : turned);
        const float chroma = sat * maxc;
        float k = wrapped + 5.0f;
        k = k - (k >= 6.0f ? 6.0f : 0.0f);
        float side = k < 4.0f - k ? k : 4.0f - k;
        out_r[i] = clamp01(maxc - (side < 0.0f ? 0.0f : (side > 1.0f ? 1.0f : side)) * chroma);
        k = wrapped + 3.0f;
        k = k - (k >= 6.0f ? 6.0f : 0.0f);
        side = k < 4.0f - k ? k : 4.0f - k;
        out_g[i] = clamp01(maxc - (side < 0.0f ? 0.0f : (side > 1.0f ? 1.0f : side)) * chroma);
        k = wrapped + 1.0f;
        k = k - (k >= 6.0f ? 6.0f : 0.0f);
        side = k < 4.0f - k ? k : 4.0f - k;
        out_b[i] = clamp01(maxc - (side < 0.0f ? 0.0f : (side > 1.0f ? 1.0f : side)) * chroma);
    }
}

/* Smallest and largest of n > 0 floats (no NaNs in images). */
static void range_scalar(const float *s, int64_t n, float *lo, float *hi) {
    float l = s[0], h = s[0];
    for (int64_t i = 1; i < n; i++) {
        l = s[i] < l ? s[i] : l;
        h = s[i] > h ? s[i] : h;
    }
    *lo = l;
    *hi = h;
}

#ifdef TAXAUG_X86
__attribute__((target("avx2"))) static void range_avx2(const float *s, int64_t n, float *lo, float *hi) {
    if (n < 8) {
        range_scalar(s, n, lo, hi);
        return;
    }
    __m256 l = _mm256_loadu_ps(s), h = l;
    int64_t i = 8;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_loadu_ps(s + i);
        l = _mm256_min_ps(v, l);
        h = _mm256_max_ps(v, h);
    }
    float lanes_lo[8], lanes_hi[8];
    _mm256_storeu_ps(lanes_lo, l);
    _mm256_storeu_ps(lanes_hi, h);
    float lo_all = lanes_lo[0], hi_all = lanes_hi[0];
    for (int k = 1; k < 8; k++) {
        lo_all = lanes_lo[k] < lo_all ? lanes_lo[k] : lo_all;
        hi_all = lanes_hi[k] > hi_all ? lanes_hi[k] : hi_all;
    }
    for (; i < n; i++) {
        lo_all = s[i] < lo_all ? s[i] : lo_all;
        hi_all = s[i] > hi_all ? s[i] : hi_all;
    }
    *lo = lo_all;
    *hi = hi_all;
}
#endif

static void float_range(const float *s, int64_t n, float *lo, float *hi) {
#ifdef TAXAUG_X86
    if (cpu_has_avx2()) {
        range_avx2(s, n, lo, hi);
        return;
    }
#endif
    range_scalar(s, n, lo, hi);
}

/* Pillow's ImageOps.equalize lut of one 8-bit plane, from its histogram (as _equalize_lut). */
static void equalize_lut(const int64_t hist[256], int64_t pixels, uint8_t lut[256]) {
    int levels = 0, last = 0;
    for (int i = 0; i < 256; i++)
        if (hist[i] > 0) {
            levels++;
            last = i;
        }
    const int64_t step = (pixels - hist[last]) / 255;
    if (levels <= 1 || step <= 0) {
        for (int i = 0; i < 256; i++) lut[i] = (uint8_t)i;
        return;
    }
    int64_t before = 0;
    for (int i = 0; i < 256; i++) {
        const int64_t v = (step / 2 + before) / step;
        lut[i] = (uint8_t)(v > 255 ? 255 : v);
        before += hist[i];
    }
}

/* The 8-bit level of a float pixel as quantize_uint8 makes it: round(x * 255), clamped. */
static inline uint8_t float_level(float v) {
    const float scaled = nearbyintf(v * 255.0f);
    return (uint8_t)(scaled < 0.0f ? 0.0f : (scaled > 255.0f ? 255.0f : scaled));
}

#define CHUNK 1024 /* pixels whose luma is kept at once (on the stack) */

TAXAUG_CLONES static void pointwise_u8(const job_t *job, uint8_t *dst, const uint8_t *src, float p, float q) {
    const int64_t plane = job->plane, c = job->channels, n = plane * c;
    switch (job->op) {
    case OP_BRIGHTNESS:
        for (int64_t i = 0; i < n; i++) dst[i] = to_u8((float)src[i] * p);
        break;
    case OP_POSTERIZE: { /* p: the bit mask */
        const uint8_t mask = (uint8_t)p;
        for (int64_t i = 0; i < n; i++) dst[i] = src[i] & mask;
        break;
    }
    case OP_SOLARIZE: { /* p: the first inverted level (the threshold rounded up), q: 255 or 0 (256 inverts nothing) */
        const uint8_t level = (uint8_t)p, flip = (uint8_t)q;
        for (int64_t i = 0; i < n; i++) dst[i] = src[i] >= level ? (uint8_t)(src[i] ^ flip) : src[i];
        break;
    }
    case OP_INVERT:
        for (int64_t i = 0; i < n; i++) dst[i] = (uint8_t)(255 - src[i]);
        break;
    case OP_COLOR: /* blend with the luma of the same pixel, a chunk of pixels at a time */
        for (int64_t start = 0; start < plane; start += CHUNK) {
            const int64_t len = plane - start < CHUNK ? plane - start : CHUNK;
            float gray[CHUNK];
            for (int64_t i = 0; i < len; i++) gray[i] = (float)gray_u8(src, start + i, plane, c);
            for (int64_t ch = 0; ch < c; ch++) {
                const uint8_t *s = src + ch * plane + start;
                uint8_t *o = dst + ch * plane + start;
                for (int64_t i = 0; i < len; i++) o[i] = to_u8(((float)s[i] - gray[i]) * p + gray[i]);
            }
        }
        break;
    case OP_CONTRAST: { /* blend with the rounded mean luma of the sample */
        int64_t total = 0;
        for (int64_t i = 0; i < plane; i++) total += gray_u8(src, i, plane, c);
        const double mean = floor((double)total / (double)(plane > 0 ? plane : 1) + 0.5);
        const float d = (float)(uint8_t)mean;
        for (int64_t i = 0; i < n; i++) dst[i] = to_u8(((float)src[i] - d) * p + d);
        break;
    }
    case OP_HUE: { /* p: the shift in turns, |p| <= 0.5; RGB only */
        const float shift6 = 6.0f * p;
        for (int64_t start = 0; start < plane; start += CHUNK) {
            const int64_t len = plane - start < CHUNK ? plane - start : CHUNK;
            float rgb[3][CHUNK], turned[3][CHUNK];
            for (int ch = 0; ch < 3; ch++)
                for (int64_t i = 0; i < len; i++) rgb[ch][i] = (float)src[ch * plane + start + i] / 255.0f;
            hue_pixels(rgb[0], rgb[1], rgb[2], len, shift6, turned[0], turned[1], turned[2]);
            for (int ch = 0; ch < 3; ch++)
                for (int64_t i = 0; i < len; i++) dst[ch * plane + start + i] = (uint8_t)nearbyintf(turned[ch][i] * 255.0f);
        }
        break;
    }
    case OP_AUTOCONTRAST: /* Pillow's lut from each channel's range, in double precision */
        for (int64_t ch = 0; ch < c; ch++) {
            const uint8_t *s = src + ch * plane;
            uint8_t *o = dst + ch * plane, lut[256];
            uint8_t lo = 255, hi = 0;
            for (int64_t i = 0; i < plane; i++) {
                lo = s[i] < lo ? s[i] : lo;
                hi = s[i] > hi ? s[i] : hi;
            }
            const int flat = hi <= lo;
            const double span = (double)hi - (double)lo;
            const double scale = flat ? 1.0 : 255.0 / (span < 1.0 ? 1.0 : span);
            const double offset = flat ? 0.0 : -(double)lo * scale;
            for (int level = 0; level < 256; level++) {
                const double v = (double)level * scale + offset;
                lut[level] = (uint8_t)(v < 0.0 ? 0.0 : (v > 255.0 ? 255.0 : v));
            }
            for (int64_t i = 0; i < plane; i++) o[i] = lut[s[i]];
        }
        break;
    case OP_EQUALIZE:
        for (int64_t ch = 0; ch < c; ch++) {
            const uint8_t *s = src + ch * plane;
            uint8_t *o = dst + ch * plane, lut[256];
            int64_t hist[256] = {0};
            for (int64_t i = 0; i < plane; i++) hist[s[i]]++;
            equalize_lut(hist, plane, lut);
            for (int64_t i = 0; i < plane; i++) o[i] = lut[s[i]];
        }
        break;
    }
}

TAXAUG_CLONES static void pointwise_f32(const job_t *job, float *dst, const float *src, float p, float q) {
    const int64_t plane = job->plane, c = job->channels, n = plane * c;
    switch (job->op) {
    case OP_BRIGHTNESS:
        for (int64_t i = 0; i < n; i++) dst[i] = clamp01(src[i] * p);
        break;
    case OP_POSTERIZE: /* p: the step 2 ** (8 - bits) */
        for (int64_t i = 0; i < n; i++) dst[i] = floorf(nearbyintf(src[i] * 255.0f) / p) * p / 255.0f;
        break;
    case OP_SOLARIZE: /* p: the smallest pixel value whose level src * 255 reaches the threshold */
        for (int64_t i = 0; i < n; i++) dst[i] = fabsf((src[i] >= p ? 1.0f : 0.0f) - src[i]);
        break;
    case OP_INVERT:
        for (int64_t i = 0; i < n; i++) dst[i] = 1.0f - src[i];
        break;
    case OP_COLOR:
        for (int64_t start = 0; start < plane; start += CHUNK) {
            const int64_t len = plane - start < CHUNK ? plane - start : CHUNK;
            float gray[CHUNK];
            for (int64_t i = 0; i < len; i++) gray[i] = gray_f32(src, start + i, plane, c);
            for (int64_t ch = 0; ch < c; ch++) {
                const float *s = src + ch * plane + start;
                float *o = dst + ch * plane + start;
                for (int64_t i = 0; i < len; i++) o[i] = clamp01((s[i] - gray[i]) * p + gray[i]);
            }
        }
        break;
    case OP_HUE: /* writes each chunk only after reading it: src may be dst */
        for (int64_t start = 0; start < plane; start += CHUNK) {
            const int64_t len = plane - start < CHUNK ? plane - start : CHUNK;
            float turned[3][CHUNK];
            hue_pixels(src + start, src + plane + start, src + 2 * plane + start, len, 6.0f * p, turned[0], turned[1],
                       turned[2]);
            for (int ch = 0; ch < 3; ch++) memcpy(dst + ch * plane + start, turned[ch], (size_t)len * sizeof(float));
        }
        break;
    case OP_AUTOCONTRAST: /* each channel stretched to [0, 1] */
        for (int64_t ch = 0; ch < c; ch++) {
            const float *s = src + ch * plane;
            float *o = dst + ch * plane;
            float lo, hi;
            float_range(s, plane, &lo, &hi);
            const int flat = hi <= lo;
            const float span = flat ? 1.0f : hi - lo, low = flat ? 0.0f : lo;
            for (int64_t i = 0; i < plane; i++) o[i] = clamp01((s[i] - low) / span);
        }
        break;
    case OP_EQUALIZE: /* on the 8-bit levels; the lut read back as level / 255 */
        for (int64_t ch = 0; ch < c; ch++) {
            const float *s = src + ch * plane;
            float *o = dst + ch * plane, table[256];
            int64_t hist[256] = {0};
            uint8_t lut[256];
            for (int64_t i = 0; i < plane; i++) hist[float_level(s[i])]++;
            equalize_lut(hist, plane, lut);
            for (int level = 0; level < 256; level++) table[level] = (float)lut[level] / 255.0f;
            for (int64_t i = 0; i < plane; i++) o[i] = table[float_level(s[i])];
        }
        break;
    }
    (void)q;
}

/* Sharpness of one plane (h x w, read as float levels by `level`): Pillow's SMOOTH filter
 * ([[1,1,1],[1,5,1],[1,1,1]] / 13, border unchanged) as _smooth computes it, then the blend of
 * _k_sharpness. `sums` holds 3 * w floats. */
#define SHARPEN_PLANE(in_type, LEVEL, STORE)                                                            \
    do {                                                                                                \
        const in_type *s = (const in_type *)src_plane;                                                  \
        for (int64_t x = 0; x < w; x++) { /* the border rows are the image's own */                   \
            STORE(x, LEVEL(s[x]), LEVEL(s[x]));                                                         \
            STORE((h - 1) * w + x, LEVEL(s[(h - 1) * w + x]), LEVEL(s[(h - 1) * w + x]));               \
        }                                                                                               \
        for (int k = 0; k < 2; k++) {                                                                   \
            float *row = sums + k * w;                                                                  \
            const in_type *line = s + k * w;                                                            \
            for (int64_t x = 0; x + 2 < w; x++) row[x] = (LEVEL(line[x]) + LEVEL(line[x + 1])) + LEVEL(line[x + 2]); \
        }                                                                                               \
        for (int64_t y = 1; y + 1 < h; y++) {                                                           \
            float *above = sums + ((y - 1) % 3) * w, *here = sums + (y % 3) * w, *below = sums + ((y + 1) % 3) * w; \
            const in_type *line = s + (y + 1) * w;                                                      \
            for (int64_t x = 0; x + 2 < w; x++) below[x] = (LEVEL(line[x]) + LEVEL(line[x + 1])) + LEVEL(line[x + 2]); \
            const in_type *mid = s + y * w;                                                             \
            STORE(y * w, LEVEL(mid[0]), LEVEL(mid[0]));                                                 \
            STORE(y * w + w - 1, LEVEL(mid[w - 1]), LEVEL(mid[w - 1]));                                 \
            for (int64_t x = 1; x + 1 < w; x++) {                                                       \
                const float box = (above[x - 1] + here[x - 1]) + below[x - 1];                          \
                const float smooth = (box + 4.0f * LEVEL(mid[x])) / 13.0f;                              \
                STORE(y * w + x, smooth, LEVEL(mid[x]));                                                \
            }                                                                                           \
        }                                                                                               \
    } while (0)

#define LEVEL_U8(v) ((float)(v))
#define LEVEL_F32(v) (v)
/* uint8: the smoothed level rounds half up and clamps (then floors); the blend truncates */
#define STORE_U8(i, smooth, own)                                                                        \
    do {                                                                                                \
        const float rounded = (smooth) + 0.5f;                                                          \
        const float d = floorf(rounded < 0.0f ? 0.0f : (rounded > 255.0f ? 255.0f : rounded));          \
        ((uint8_t *)dst_plane)[i] = to_u8(((own) - d) * p + d);                                          \
    } while (0)
/* float: the smoothed value clamps to [0, 1]; the blend is d + f * (x - d), clamped */
#define STORE_F32(i, smooth, own)                                                                       \
    do {                                                                                                \
        const float sm = (smooth), d = sm < 0.0f ? 0.0f : (sm > 1.0f ? 1.0f : sm);                      \
        ((float *)dst_plane)[i] = clamp01(d + p * ((own) - d));                                         \
    } while (0)

TAXAUG_CLONES static void sharpen_sample(const job_t *job, uint8_t *dst, const uint8_t *src, float p, float *sums) {
    const int64_t c = job->channels, h = job->height, w = job->width, es = job->is_float ? 4 : 1;
    for (int64_t ch = 0; ch < c; ch++) {
        const uint8_t *src_plane = src + ch * h * w * es;
        uint8_t *dst_plane = dst + ch * h * w * es;
        if (h < 3 || w < 3) { /* too small to filter: the blend of an image with itself */
            for (int64_t i = 0; i < h * w; i++) {
                if (job->is_float) {
                    const float v = ((const float *)src_plane)[i];
                    ((float *)dst_plane)[i] = clamp01(v + p * (v - v));
                } else {
                    const float v = (float)src_plane[i];
                    dst_plane[i] = to_u8((v - v) * p + v);
                }
            }
            continue;
        }
        if (job->is_float)
            SHARPEN_PLANE(float, LEVEL_F32, STORE_F32);
        else
            SHARPEN_PLANE(uint8_t, LEVEL_U8, STORE_U8);
    }
}

void run_pointwise(job_t *job, int64_t first, int64_t last) {
    float *sums = NULL;
    uint8_t *scratch = NULL; /* sharpness in place reads neighbours it has already written: filter into this */
    if (job->op == OP_SHARPNESS) {
        sums = malloc(sizeof(float) * (size_t)(3 * job->width));
        scratch = job->out == job->images ? malloc((size_t)job->sample_bytes) : NULL;
        if (!sums || (job->out == job->images && !scratch)) {
            free(sums);
            free(scratch);
            job->failed = 1;
            return;
        }
    }
    for (int64_t r = first; r < last; r++) {
        const int64_t offset = job->rows[r] * job->sample_bytes;
        const float p = job->param[r], q = job->param2 ? job->param2[r] : 0.0f;
        if (job->op == OP_SHARPNESS && scratch) {
            sharpen_sample(job, scratch, job->images + offset, p, sums);
            memcpy(job->out + offset, scratch, (size_t)job->sample_bytes);
        } else if (job->op == OP_SHARPNESS)
            sharpen_sample(job, job->out + offset, job->images + offset, p, sums);
        else if (job->is_float)
            pointwise_f32(job, (float *)(job->out + offset), (const float *)(job->images + offset), p, q);
        else
            pointwise_u8(job, job->out + offset, job->images + offset, p, q);
    }
    free(sums);
    free(scratch);
}

/* Pointwise op `op` (OP_* above) on samples rows[0..n_rows) of a (B, C, H, W) uint8 or float32 batch,
 * from `images` into `out`; param (and param2) hold one value per listed sample. */
TAXAUG_EXPORT int taxaug_pointwise(int op, int is_float, uint8_t *out, const uint8_t *images, const int64_t *rows,
                                   const float *param, const float *param2, int64_t n_rows, int64_t channels,
                                   int64_t height, int64_t plane, int threads) {
    if (op < OP_BRIGHTNESS || op > OP_SHARPNESS || (is_float && op == OP_CONTRAST) || (op == OP_HUE && channels != 3))
        return -1;
    const job_t job = {.kind = 2, .op = op, .is_float = is_float, .out = out, .images = images, .rows = rows,
                       .param = param, .param2 = param2, .channels = channels, .plane = plane,
                       .height = height, .width = plane / (height > 0 ? height : 1),
                       .sample_bytes = channels * plane * (is_float ? 4 : 1)};
    return run_parallel(job, n_rows, threads);
}
